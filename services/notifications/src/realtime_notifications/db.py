"""The database: where a transaction runs, per backend, and schema migrations (Alembic).

Repositories are plain synchronous SQLAlchemy Core over a `Connection`; a use
case hands its whole transaction to `Database.write` (or `read`) as one function.
Where that function runs is this module's business:

- **SQLite** (the embedded default) runs it on a thread of its own, in one hop:
  every write on a single writer thread, so writers queue in FIFO order without
  SQLite's busy handler, and the write lock is held only for the statements'
  own time (never for the event loop's turns between them); reads on a few
  reader threads beside it (WAL lets them run while the writer writes).
- **PostgreSQL** runs it on the event loop through asyncpg (`run_sync`), each
  statement a network round trip that other requests overlap with.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib.resources import files
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

T = TypeVar("T")
Work = Callable[[Connection], T]

SQLITE_BUSY_TIMEOUT_MS = 5_000
MIGRATION_LOCK_ID = 0x6E6F7469  # "noti": replicas starting together migrate one at a time

_POOL = {
    # No overflow: connections beyond the pool would be opened and closed per request
    # under load; waiting briefly for a pooled one is cheaper.
    "max_overflow": 0,
    "pool_timeout": 10,
    # No reset on return: every user ends its transaction, and closing a connection rolls
    # back one left open, so the pool's extra ROLLBACK per checkout is a wasted round trip.
    "pool_reset_on_return": None,
}


class Pinned(ABC):
    """One connection kept across several steps (the relay's claim, publish, mark).

    Each statement commits alone (autocommit), so nothing is held open between steps.
    """

    @abstractmethod
    async def run(self, work: Work[T]) -> T:
        """Run `work` on this connection."""

    @abstractmethod
    async def invalidate(self) -> None:
        """Drop the connection instead of pooling it (what it holds is unknown)."""


class Database(ABC):
    dialect: str
    sync_engine: Engine
    """The synchronous engine underneath, for SQLAlchemy events (tests watch the SQL)."""

    @abstractmethod
    async def write(self, work: Work[T]) -> T:
        """Run `work` in one transaction: committed if it returns, rolled back if it raises."""

    @abstractmethod
    async def read(self, work: Work[T]) -> T:
        """Run `work`, which only reads, without taking any write lock."""

    @abstractmethod
    def pinned(self) -> AbstractAsyncContextManager[Pinned]: ...

    @abstractmethod
    def for_relay(self) -> Database:
        """The database the outbox relay uses, so API load cannot starve it."""

    @abstractmethod
    async def migrate(self) -> None:
        """Bring the schema to the newest revision (idempotent; safe with replicas at once)."""

    @abstractmethod
    async def dispose(self) -> None: ...

    async def ping(self) -> None:
        await self.read(_select_one)


def open_database(url: str, pool_size: int = 10) -> Database:
    if make_url(url).get_backend_name() == "sqlite":
        return SQLiteDatabase(url, readers=pool_size)
    return ServerDatabase(url, pool_size)


class SQLiteDatabase(Database):
    """Python's sqlite3 on its own threads: one writer, `readers` readers (see the module)."""

    dialect = "sqlite"

    def __init__(self, url: str, readers: int) -> None:
        parsed = make_url(url)
        if parsed.database in (None, "", ":memory:"):
            raise ValueError("SQLite needs a file (sqlite+aiosqlite:///path.db): threads share it")
        # `sqlite+aiosqlite://` is the contract's spelling; the threads here use sqlite3 itself.
        self.engine = sa.create_engine(
            parsed.set(drivername="sqlite"),
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            pool_size=readers + 1,
            **_POOL,
        )
        event.listen(self.engine, "connect", _tune_sqlite)
        self.sync_engine = self.engine
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="sqlite-writer")
        self._readers = ThreadPoolExecutor(readers, thread_name_prefix="sqlite-reader")

    async def write(self, work: Work[T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._writer, self._write, work)

    async def read(self, work: Work[T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._readers, self._read, work)

    async def autocommit_on_writer(self, work: Work[T]) -> T:
        """Run `work` on the writer thread, each of its statements its own transaction."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, self._read, work)

    def _write(self, work: Work[T]) -> T:
        with self.engine.connect() as conn:
            # IMMEDIATE: take the write lock now, so a read inside `work` never has to
            # upgrade to a write (the upgrade is where SQLite fails without waiting).
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            result = work(conn)
            conn.commit()
            return result

    def _read(self, work: Work[T]) -> T:
        # No BEGIN (the driver is in autocommit mode): each statement is its own transaction.
        with self.engine.connect() as conn:
            return work(conn)

    @asynccontextmanager
    async def pinned(self) -> AsyncIterator[Pinned]:
        yield _WriterSteps(self)

    def for_relay(self) -> Database:
        # The same writer thread: the relay's steps queue in order with the writes that
        # made its events, and readers busy with API queries cannot delay it.
        return self

    async def migrate(self) -> None:
        await self.write(_upgrade)

    async def dispose(self) -> None:
        # Idempotent: the API and the relay share this database.
        for executor in (self._writer, self._readers):
            await asyncio.to_thread(executor.shutdown)
        self.engine.dispose()


class _WriterSteps(Pinned):
    """SQLite's relay steps, on the writer thread in autocommit (a statement is its own
    transaction), so the claim takes no write lock."""

    def __init__(self, database: SQLiteDatabase) -> None:
        self._database = database

    async def run(self, work: Work[T]) -> T:
        return await self._database.autocommit_on_writer(work)

    async def invalidate(self) -> None:
        """Nothing to drop: no step leaves anything open."""


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    # Transaction control is ours (`BEGIN IMMEDIATE` above), not the driver's.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


class ServerDatabase(Database):
    """PostgreSQL through asyncpg; `autocommit`: every statement commits alone."""

    def __init__(self, url: str, pool_size: int, *, autocommit: bool = False) -> None:
        self._url = url
        options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
        self.engine: AsyncEngine = create_async_engine(url, pool_size=pool_size, **_POOL, **options)
        self.dialect = self.engine.dialect.name
        self.sync_engine = self.engine.sync_engine

    async def write(self, work: Work[T]) -> T:
        async with self.engine.begin() as conn:
            return await conn.run_sync(work)

    async def read(self, work: Work[T]) -> T:
        async with self.engine.connect() as conn:
            return await conn.run_sync(work)

    @asynccontextmanager
    async def pinned(self) -> AsyncIterator[Pinned]:
        async with self.engine.connect() as conn:
            # Each statement stands alone (see outbox): no BEGIN/COMMIT round trips, and
            # no transaction held open while the relay waits for RabbitMQ.
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            yield _Connection(conn)

    def for_relay(self) -> Database:
        # Its own two connections: under load the API can hold every pooled one, and a
        # relay queued behind requests would publish seconds late.
        return ServerDatabase(self._url, RELAY_POOL_SIZE)

    async def migrate(self) -> None:
        async with self.engine.begin() as conn:
            # Transaction-scoped: released at commit, after the DDL is visible to others.
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_ID)))
            await conn.run_sync(_upgrade)

    async def dispose(self) -> None:
        await self.engine.dispose()


RELAY_POOL_SIZE = 2
"""One connection for the relay's round, one spare for pruning or a reconnect."""


class _Connection(Pinned):
    def __init__(self, conn: AsyncConnection) -> None:
        self._conn = conn

    async def run(self, work: Work[T]) -> T:
        return await self._conn.run_sync(work)

    async def invalidate(self) -> None:
        await self._conn.invalidate()


def _select_one(conn: Connection) -> None:
    conn.execute(sa.text("SELECT 1"))


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("realtime_notifications") / "migrations"))
    return config


def _upgrade(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
