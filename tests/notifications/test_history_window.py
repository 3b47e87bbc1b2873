"""The history window: sent events stay while they are among their user's last
HISTORY_MAX_EVENTS_PER_USER or younger than HISTORY_MIN_AGE_SECONDS (and at least
OUTBOX_RETENTION_SECONDS); the relay prunes the rest a bounded batch at a time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from support.notifications import FakePublisher

from realtime_notifications import outbox, relay
from realtime_notifications.db import Database, open_database
from realtime_notifications.domain import Event, EventName, utcnow
from realtime_notifications.metrics import Metrics
from realtime_notifications.models import outbox as outbox_table
from realtime_notifications.models import positions
from realtime_notifications.relay import OutboxRelay

pytestmark = pytest.mark.integration

WINDOW = outbox.HistoryWindow(max_events=3, min_age=timedelta(days=7))
TEN_DAYS_AGO = utcnow() - timedelta(days=10)


@pytest.fixture
async def database(database_url: str) -> AsyncIterator[Database]:
    database = open_database(database_url)
    await database.migrate()
    yield database
    await database.dispose()


async def fill(database: Database, user: str, count: int, sent_at: datetime | None) -> str:
    """`count` numbered events of `user`, sent at `sent_at` (None: still pending)."""
    epoch = await database.write(positions.create_epoch)

    def write(conn: Connection) -> None:
        outbox.lock_user(conn, user)
        for i in range(count):
            outbox.add(conn, Event(user, EventName.READ_ALL, {"count": i}), epoch)
        conn.execute(
            outbox_table.update().where(outbox_table.c.user_id == user).values(sent_at=sent_at)
        )

    await database.write(write)
    return epoch


async def kept(database: Database, user: str) -> list[int]:
    query = sa.select(outbox_table.c.seq).where(outbox_table.c.user_id == user)
    return sorted(await database.read(lambda conn: list(conn.execute(query).scalars())))


def relay_for(database: Database, retention: timedelta) -> OutboxRelay:
    return OutboxRelay(
        database,
        FakePublisher(),
        Metrics(),
        poll_interval=0.05,
        batch_size=100,
        batch_per_user=20,
        retention=retention,
        history=WINDOW,
        backoff_cap=0.5,
    )


async def test_events_outside_the_window_are_pruned_in_bounded_batches(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(relay, "PRUNE_BATCH", 2)
    epoch = await fill(database, "alice", 7, sent_at=TEN_DAYS_AGO)  # 4 beyond her last 3
    await fill(database, "bob", 2, sent_at=TEN_DAYS_AGO)  # old, but his last 3
    await fill(database, "carol", 5, sent_at=utcnow())  # more than 3, but this week's
    await fill(database, "dave", 5, sent_at=None)  # never published: never pruned

    # Sent rows are kept at least the retention, whatever the window says.
    assert await relay_for(database, timedelta(days=30)).prune() == (0, 0)
    pruner = relay_for(database, timedelta(days=1))
    assert [(await pruner.prune())[0] for _ in range(3)] == [2, 2, 0]

    assert await kept(database, "alice") == [5, 6, 7]
    assert await kept(database, "bob") == [1, 2]
    assert await kept(database, "carol") == [1, 2, 3, 4, 5]
    assert await kept(database, "dave") == [1, 2, 3, 4, 5]

    # What a history request reads for alice: only what the window kept, and her last seq,
    # so the answer says whether it reaches back to the client's position.
    page = await database.read(lambda conn: outbox.history(conn, "alice", 1, 10, epoch))
    assert [m["meta"]["seq"] for m in page.messages] == [5, 6, 7]
    assert page.last_seq == 7  # 6 missed after seq 1, 3 kept: trimmed, the client refetches


async def test_the_running_relay_prunes_a_large_backlog_a_batch_per_round(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pass that filled its batch goes on at the next round instead of a minute later."""
    monkeypatch.setattr(relay, "PRUNE_BATCH", 2)
    monkeypatch.setattr(relay, "PRUNE_INTERVAL", 3600.0)
    await fill(database, "alice", 11, sent_at=TEN_DAYS_AGO)
    pruner = relay_for(database, timedelta(days=1))
    pruner.start()
    try:
        deadline = time.monotonic() + 10
        while await kept(database, "alice") != [9, 10, 11]:
            assert time.monotonic() < deadline, await kept(database, "alice")
            await asyncio.sleep(0.05)  # the relay's rounds have no event to wait for
    finally:
        await pruner.stop()
