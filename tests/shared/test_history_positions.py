"""Numbering per key in a producer's own transactions, on real SQLite and PostgreSQL:
1, 2, 3... per key, no gap and no duplicate, however many writers run at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from realtime_shared.positions import KEY_LOCK_NAMESPACE, Positions, lock_key

pytestmark = pytest.mark.integration

T = TypeVar("T")

metadata = sa.MetaData()
positions = Positions(metadata)
# A producer's own table: what its transactions wrote, in insertion (id) order.
log = sa.Table(
    "log",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("key", sa.String(255), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
)


class Store:
    """One database as a producer uses it: Core work in one transaction per call."""

    def __init__(self, url: str) -> None:
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            # The producer's own engine, as a team would make it: a synchronous one on threads.
            self.sync = sa.create_engine(
                url.replace("+aiosqlite", ""), connect_args={"timeout": 30}, poolclass=sa.NullPool
            )
        else:
            self.engine = create_async_engine(url, pool_size=10)

    async def write(self, work: Callable[[Connection], T]) -> T:
        if self.sqlite:
            return await asyncio.to_thread(self._write_sync, work)
        async with self.engine.begin() as conn:
            return await conn.run_sync(work)

    def _write_sync(self, work: Callable[[Connection], T]) -> T:
        with self.sync.begin() as conn:
            return work(conn)

    async def dispose(self) -> None:
        if self.sqlite:
            self.sync.dispose()
        else:
            await self.engine.dispose()


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two producers (replicas) on one empty database holding the tables."""
    first, second = Store(database_url), Store(database_url)
    await first.write(metadata.create_all)
    yield first, second
    await first.dispose()
    await second.dispose()


def number(key: str, *, lock: bool = True) -> Callable[[Connection], int]:
    """A producer's write: lock the key, change state, number the message it publishes."""

    def work(conn: Connection) -> int:
        if lock:
            lock_key(conn, key)
        seq = positions.next_seq(conn, key)
        conn.execute(log.insert().values(key=key, seq=seq))
        return seq

    return work


async def test_each_key_counts_from_one_and_a_rollback_gives_its_number_back(
    stores: tuple[Store, Store],
) -> None:
    store, _ = stores
    assert [await store.write(number("a")) for _ in range(3)] == [1, 2, 3]
    assert await store.write(number("b")) == 1

    def fails(conn: Connection) -> None:
        number("a")(conn)
        raise RuntimeError("the state change failed after its message was numbered")

    with pytest.raises(RuntimeError):
        await store.write(fails)
    assert await store.write(number("a")) == 4  # not 5: no gap
    assert await store.write(lambda conn: positions.last_seq(conn, "a")) == 4
    assert await store.write(lambda conn: positions.last_seq(conn, "nobody")) == 0


async def test_concurrent_writers_on_two_replicas_take_every_number_once_in_commit_order(
    stores: tuple[Store, Store],
) -> None:
    keys, per_key = ["alice", "bob"], 30
    # Without lock_key: the numbering alone must hold (its row stays locked until commit).
    await asyncio.gather(
        *(stores[i % 2].write(number(key, lock=False)) for i in range(per_key) for key in keys)
    )

    def written(conn: Connection) -> list[Any]:
        return list(conn.execute(sa.select(log.c.key, log.c.seq).order_by(log.c.id)))

    rows = await stores[0].write(written)
    for key in keys:
        # In insertion order, which follows commit order: each writer waited for the last.
        assert [seq for k, seq in rows if k == key] == list(range(1, per_key + 1))


async def test_the_epoch_is_stored_once_and_then_only_read(stores: tuple[Store, Store]) -> None:
    first, second = stores
    assert await first.write(positions.read_epoch) is None
    stored = await first.write(positions.create_epoch)
    assert 1 <= len(stored) <= 64
    # A second replica starting later gets the same epoch, whatever it would have made.
    assert await second.write(lambda conn: positions.create_epoch(conn, "other")) == stored
    assert await second.write(positions.read_epoch) == stored


async def test_an_overlong_epoch_is_refused(stores: tuple[Store, Store]) -> None:
    with pytest.raises(ValueError, match="1-64"):
        await stores[0].write(lambda conn: positions.create_epoch(conn, "e" * 65))


WAITING = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND NOT granted AND classid = $1
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_lock_key_makes_a_second_writer_wait_for_the_first_to_commit(
    database_url: str, stores: tuple[Store, Store]
) -> None:
    first, second = stores
    watcher = await asyncpg.connect(database_url.replace("+asyncpg", "", 1))
    try:
        async with first.engine.begin() as conn:
            await conn.run_sync(lambda sync: lock_key(sync, "alice"))
            waiting = asyncio.ensure_future(second.write(number("alice")))
            deadline = time.monotonic() + 10
            while await watcher.fetchval(WAITING, KEY_LOCK_NAMESPACE) < 1:
                assert time.monotonic() < deadline and not waiting.done()
                await asyncio.sleep(0.01)  # pg_locks has no event to wait for
            other_key = await second.write(number("bob"))  # another key does not wait
            assert not waiting.done()
        assert await waiting == 1
        assert other_key == 1
    finally:
        await watcher.close()
