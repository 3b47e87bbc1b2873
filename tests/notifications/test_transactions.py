"""Where transactions run: on SQLite, one writer thread in FIFO order, beside the loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from realtime_notifications.db import Database, SQLiteDatabase, open_database
from realtime_notifications.domain import Notification, created, utcnow
from realtime_notifications.unit_of_work import Transactions, UnitOfWork, UserNotLocked

pytestmark = pytest.mark.integration

EPOCH = "test-epoch"


@pytest.fixture
async def sqlite(tmp_path: Path) -> AsyncIterator[Database]:
    database = open_database(f"sqlite+aiosqlite:///{tmp_path / 'n.db'}")
    await database.migrate()
    yield database
    await database.dispose()


def _new(title: str) -> Notification:
    return Notification.new(user_id="alice", type="t", title=title, now=utcnow())


def _titles(conn: Connection) -> list[str]:
    return list(conn.execute(sa.text("SELECT title FROM notifications ORDER BY seq")).scalars())


async def test_writes_commit_in_the_order_they_were_asked_for(sqlite: Database) -> None:
    tx = Transactions(sqlite, lambda: None, epoch=EPOCH)

    def add(title: str) -> None:
        async def write() -> None:
            await tx.write(lambda uow: uow.notifications.add(_new(title)))

        tasks.append(asyncio.ensure_future(write()))

    tasks: list[asyncio.Future[None]] = []
    for i in range(50):
        add(str(i))
    await asyncio.gather(*tasks)

    assert await sqlite.read(_titles) == [str(i) for i in range(50)]


async def test_a_running_write_whose_caller_is_cancelled_commits_and_wakes_the_relay(
    sqlite: Database,
) -> None:
    woken = asyncio.Event()
    tx = Transactions(sqlite, woken.set, epoch=EPOCH)
    running, release = threading.Event(), threading.Event()

    def body(uow: UnitOfWork) -> None:
        running.set()
        release.wait(10)
        n = _new("late")
        uow.lock_user(n.user_id)
        uow.notifications.add(n)
        uow.publish(created(n, utcnow()))

    caller = asyncio.ensure_future(tx.write(body))
    assert await asyncio.to_thread(running.wait, 10)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert woken.is_set()

    release.set()
    await sqlite.write(lambda _conn: None)  # FIFO: runs after the cancelled caller's write
    # That write still committed: its event waits in the outbox, and the relay is awake.
    assert await sqlite.read(_titles) == ["late"]


async def test_a_queued_write_whose_caller_is_cancelled_never_runs(
    sqlite: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert isinstance(sqlite, SQLiteDatabase)
    submitted: list[object] = []
    both_queued = asyncio.Event()
    submit = sqlite._writer.submit

    def submit_and_tell(*args: Any, **kwargs: Any) -> Any:
        future = submit(*args, **kwargs)
        submitted.append(future)
        if len(submitted) == 2:
            loop.call_soon_threadsafe(both_queued.set)
        return future

    loop = asyncio.get_running_loop()
    monkeypatch.setattr(sqlite._writer, "submit", submit_and_tell)
    tx = Transactions(sqlite, lambda: None, epoch=EPOCH)
    release = threading.Event()
    blocker = asyncio.ensure_future(sqlite.write(lambda _conn: release.wait(10)))
    caller = asyncio.ensure_future(tx.write(lambda uow: uow.notifications.add(_new("gone"))))
    await both_queued.wait()  # the caller's write waits behind the blocker

    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    release.set()
    await blocker
    await sqlite.write(lambda _conn: None)

    assert await sqlite.read(_titles) == []


async def test_a_write_that_raises_leaves_nothing_behind_on_either_database(
    database_url: str,
) -> None:
    api = open_database(database_url)
    relay = api.for_relay()
    try:
        await api.migrate()

        def half_done(conn: Connection) -> None:
            UnitOfWork(conn, EPOCH).notifications.add(_new("half"))
            raise RuntimeError("the rest of the transaction failed")

        for database in (api, relay):
            with pytest.raises(RuntimeError):
                await database.write(half_done)
        assert await api.read(_titles) == []
    finally:
        await relay.dispose()
        await api.dispose()


async def test_an_event_without_its_users_lock_is_refused_and_nothing_commits(
    database_url: str,
) -> None:
    """Events are in commit order per user only if every writer of that user takes its
    lock first: a use case that forgets fails at once, on every database, in every test."""
    database = open_database(database_url)
    try:
        await database.migrate()
        tx = Transactions(database, lambda: None, epoch=EPOCH)

        def unlocked(uow: UnitOfWork) -> None:
            n = _new("unlocked")
            uow.notifications.add(n)
            uow.publish(created(n, utcnow()))

        with pytest.raises(UserNotLocked):
            await tx.write(unlocked)
        assert await database.read(_titles) == []
    finally:
        await database.dispose()
