"""The outbox relay: fair batches across users."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.engine import Connection
from support.notifications import (
    FakePublisher,
    make_settings,
)

from realtime_notifications import outbox
from realtime_notifications.db import open_database
from realtime_notifications.domain import Event, EventName
from realtime_notifications.metrics import Metrics
from realtime_notifications.relay import OutboxRelay

BACKLOG = 1_000


@pytest.mark.integration
async def test_one_users_backlog_does_not_hold_back_another_users_event(
    database_url: str,
) -> None:
    settings = make_settings(database_url)
    database = open_database(database_url)
    relay_database = database.for_relay()
    try:
        await database.migrate()
        alices = [Event("alice", EventName.READ_ALL, {"count": i}) for i in range(BACKLOG)]
        bobs = Event("bob", EventName.READ_ALL, {"count": 0})

        def commit(conn: Connection) -> None:
            for event in [*alices, bobs]:
                outbox.add(conn, event)

        await database.write(commit)
        publisher = FakePublisher()
        relay = OutboxRelay(
            relay_database,
            publisher,
            Metrics(),
            poll_interval=settings.outbox_poll_interval,
            batch_size=settings.outbox_batch_size,
            batch_per_user=settings.outbox_batch_per_user,
            retention=timedelta(seconds=settings.outbox_retention_seconds),
            backoff_cap=settings.outbox_backoff_cap,
        )

        assert await relay.drain() == BACKLOG + 1  # one call: capped batches do not end it

        order = [event.event_id for event in publisher.published]
        assert order.index(bobs.id) < settings.outbox_batch_size  # in the first batch
        assert [event_id for event_id in order if event_id != bobs.id] == [e.id for e in alices]
    finally:
        await relay_database.dispose()
        await database.dispose()
