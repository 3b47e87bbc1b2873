"""The database: an async engine tuned per backend, and schema migrations (Alembic).

SQLite is the embedded default: WAL lets readers run beside the one writer, a
busy timeout makes writers queue instead of failing, and every transaction
starts with BEGIN IMMEDIATE so a reader never has to upgrade to a writer
(the upgrade is where SQLite answers "database is locked" without waiting).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.util import await_

SQLITE_BUSY_TIMEOUT_MS = 5_000

READ_ONLY_OPTION = "realtime_read_only"
"""Execution option for connections that only read: on SQLite they take no lock, so they
neither wait for nor block the writer (WAL); elsewhere it changes nothing."""
READ_ONLY = {READ_ONLY_OPTION: True}
WRITABLE = {READ_ONLY_OPTION: False}
MIGRATION_LOCK_ID = 0x6E6F7469  # "noti": replicas starting together migrate one at a time


class WriteGate:
    """Queues this process's SQLite writers in asyncio, FIFO, before they ask for the lock.

    SQLite has one writer; a connection that finds the lock taken waits in its busy
    handler, which sleeps in growing steps (1, 2, 5, 10... ms), so under concurrent
    writes latency jumps by tens of milliseconds. PostgreSQL needs no gate.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._lock = asyncio.Lock() if is_sqlite(engine) else None

    @asynccontextmanager
    async def __call__(self) -> AsyncIterator[None]:
        if self._lock is None:
            yield
            return
        async with self._lock:
            yield


def is_sqlite(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "sqlite"


def create_engine(url: str, pool_size: int = 10, *, autocommit: bool = False) -> AsyncEngine:
    """`autocommit` (ignored on SQLite, whose transactions `_tune_sqlite` owns): every
    statement commits alone, saving the BEGIN and COMMIT round trips."""
    # No overflow: connections beyond the pool would be opened and closed per request
    # under load (a thread per SQLite connection, a TCP+auth handshake per PostgreSQL
    # one); waiting briefly for a pooled connection is cheaper.
    # No reset on return: every user ends its transaction, and Connection.close() rolls
    # back one left open, so the pool's extra ROLLBACK per checkout is a wasted round trip.
    pool = {
        "pool_size": pool_size,
        "max_overflow": 0,
        "pool_timeout": 10,
        "pool_reset_on_return": None,
    }
    if url.startswith("sqlite"):
        timeout = SQLITE_BUSY_TIMEOUT_MS / 1000
        engine = create_async_engine(url, connect_args={"timeout": timeout}, **pool)
        _tune_sqlite(engine)
        return engine
    if autocommit:
        return create_async_engine(url, isolation_level="AUTOCOMMIT", **pool)
    return create_async_engine(url, **pool)


def _tune_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so "begin" below decides how to start.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        # Readers issue no BEGIN at all: each of their statements is its own snapshot
        # (they run one query each), and it saves a round trip to the driver's thread.
        if connection.get_execution_options().get(READ_ONLY_OPTION, False):
            return
        # Straight to aiosqlite: one hop to its thread, where a statement through
        # SQLAlchemy's cursor takes three (open, execute, close the cursor).
        driver = connection.connection.driver_connection
        assert driver is not None  # inside "begin" the connection is checked out
        try:
            await_(driver.execute("BEGIN IMMEDIATE"))
        except sqlite3.Error as exc:
            raise DBAPIError.instance("BEGIN IMMEDIATE", None, exc, sqlite3.Error) from exc


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("realtime_notifications") / "migrations"))
    return config


async def migrate(engine: AsyncEngine) -> None:
    """Bring the schema to the newest revision (idempotent; safe with replicas starting at once)."""
    async with engine.begin() as conn:
        if not is_sqlite(engine):
            # Transaction-scoped: released at commit, after the DDL is visible to others.
            await conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_ID)))
        await conn.run_sync(_upgrade)


def _upgrade(connection: Connection) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def ping(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        await conn.execution_options(**READ_ONLY)
        await conn.execute(sa.text("SELECT 1"))
