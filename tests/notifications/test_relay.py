"""The outbox relay: fair batches across users, and a relay that dies is seen and restarted."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import timedelta

import pytest
from sqlalchemy.engine import Connection
from support.notifications import (
    FakePublisher,
    make_settings,
    running_app,
    until_metric,
    until_ready,
)

from realtime_notifications import outbox
from realtime_notifications.db import open_database
from realtime_notifications.domain import Event, EventName
from realtime_notifications.metrics import Metrics
from realtime_notifications.relay import RESTART_DELAY, OutboxRelay

Auth = Callable[..., dict[str, str]]
BASE = "/api/notifications"
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
                outbox.add(conn, event, "e1")

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
            history=outbox.HistoryWindow(1_000, timedelta(days=7)),
            backoff_cap=settings.outbox_backoff_cap,
        )

        assert await relay.drain() == BACKLOG + 1  # one call: capped batches do not end it

        order = [event.event_id for event in publisher.published]
        assert order.index(bobs.id) < settings.outbox_batch_size  # in the first batch
        assert [event_id for event_id in order if event_id != bobs.id] == [e.id for e in alices]
    finally:
        await relay_database.dispose()
        await database.dispose()


class Crash(BaseException):
    """Not an `Exception`: the relay's retry lets it through, as it must for cancellation."""


@pytest.mark.component
@pytest.mark.parametrize(
    "fault",
    # aiormq fails a closed channel's pending calls with CancelledError, not our cancel.
    [asyncio.CancelledError, Crash],
    ids=["library CancelledError", "BaseException"],
)
async def test_a_relay_that_dies_is_logged_counted_not_ready_and_restarted(
    database_url: str, auth: Auth, caplog: pytest.LogCaptureFixture, fault: type[BaseException]
) -> None:
    publisher = FakePublisher()
    publisher.fault = fault
    async with running_app(make_settings(database_url), publisher) as client:
        created = await client.post(
            BASE, json={"user_id": "alice", "type": "t"}, headers=auth("ops", manage=True)
        )
        assert created.status_code == 201

        await until_metric(client, "notifications_relay_crashes_total", 1, at_least=True)
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert "outbox relay stopped" in ready.json()["error"]["message"]
        [crash, *_] = [
            r
            for r in caplog.records
            if r.name == "realtime_notifications.relay" and r.levelno == logging.ERROR
        ]
        assert "outbox relay stopped unexpectedly" in crash.getMessage()
        assert crash.exc_info is not None and crash.exc_info[0] is fault

        publisher.fault = None  # whatever it was went away: the next restart publishes
        [event] = await publisher.wait_for(1, within=RESTART_DELAY * 4 + 5)
        assert event.data["notification_id"] == created.json()["id"]
        await until_ready(client, 200)
