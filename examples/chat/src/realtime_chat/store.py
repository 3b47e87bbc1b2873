"""Where messages are kept: the messages, each user's numbered history, its positions.

A message is stored in one transaction with what it publishes: the message row, then
for each of its users the next seq of that user's key (`realtime_shared.positions`)
and the `message.created` envelope carrying it, kept as that user's history. The
envelope is published as stored, after the commit, so a recovering client replays
exactly what it would have seen live; the same store answers history requests (it is a
`realtime_shared.history.HistorySource`).

The message row's key is the client message's `message_id`: a message RabbitMQ
delivers again (the backend stopped before acknowledging it) finds its envelopes
stored, and they are published again, not numbered twice (clients drop a seq they have).

SQLite (the default, a file) or PostgreSQL, through SQLAlchemy's asyncio engine. The
schema is created at start with `create_all`: a real service would use migrations.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from realtime_chat.domain import CREATED, STREAM, DirectMessage
from realtime_shared.envelope import Envelope
from realtime_shared.history import Page
from realtime_shared.positions import MAX_KEY_CHARS, Positions, lock_key

SQLITE_BUSY_TIMEOUT_MS = 5_000
"""Another process writing (a second replica on the same file) is waited for this long."""

metadata = sa.MetaData()
positions = Positions(metadata)  # stream_positions, stream_epoch
messages = sa.Table(
    "chat_messages",
    metadata,
    sa.Column("id", sa.String(255), primary_key=True, comment="the client message's id"),
    sa.Column("sender", sa.String(MAX_KEY_CHARS), nullable=False),
    sa.Column("recipient", sa.String(MAX_KEY_CHARS), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("sent_at", sa.DateTime(timezone=True), nullable=False),
)
history = sa.Table(
    "chat_history",
    metadata,
    sa.Column("user_id", sa.String(MAX_KEY_CHARS), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True),
    sa.Column("message_id", sa.ForeignKey(messages.c.id), nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False, comment="the envelope, as published"),
    sa.Index("ix_chat_history_message_id", "message_id"),
)


@dataclass(frozen=True, slots=True)
class Delivery:
    """One numbered envelope, for one user's key."""

    user_id: str
    envelope: Envelope


def store_message(
    conn: Connection, message_id: str, message: DirectMessage, sent_at: datetime, epoch: str
) -> list[Delivery]:
    """Store `message` and number it for each of its users, in `conn`'s transaction."""
    for user in message.users:  # sorted: two senders lock in the same order, never deadlock
        lock_key(conn, user)
    stored = _deliveries(conn, message_id)
    if stored:
        return stored
    conn.execute(
        messages.insert().values(
            id=message_id,
            sender=message.sender,
            recipient=message.recipient,
            text=message.text,
            sent_at=sent_at,
        )
    )
    data = {
        "id": message_id,
        "from": message.sender,
        "to": message.recipient,
        "text": message.text,
        "sent_at": sent_at.isoformat(),
    }
    deliveries = []
    for user in message.users:
        seq = positions.next_seq(conn, user)
        # One event for both users: they share its event_id. Complete as published, so
        # that a replayed message is the live one, byte for byte.
        meta = {
            "event_id": message_id,
            "occurred_at": data["sent_at"],
            "seq": seq,
            "epoch": epoch,
        }
        envelope = Envelope(STREAM, CREATED, data, meta)
        conn.execute(
            history.insert().values(
                user_id=user, seq=seq, message_id=message_id, body=envelope.to_bytes()
            )
        )
        deliveries.append(Delivery(user, envelope))
    return deliveries


def _deliveries(conn: Connection, message_id: str) -> list[Delivery]:
    rows = conn.execute(
        sa.select(history.c.user_id, history.c.body)
        .where(history.c.message_id == message_id)
        .order_by(history.c.user_id)
    )
    return [Delivery(user, Envelope.from_bytes(body)) for user, body in rows]


def read_page(conn: Connection, user_id: str, after: int, limit: int) -> Page:
    last = positions.last_seq(conn, user_id)  # first: a message committed after it comes live
    rows = conn.execute(
        sa.select(history.c.body)
        .where(history.c.user_id == user_id, history.c.seq > after, history.c.seq <= last)
        .order_by(history.c.seq)
        .limit(limit)
    )
    return Page([orjson.loads(body) for body in rows.scalars()], last)


def _create(conn: Connection) -> str:
    metadata.create_all(conn)
    return positions.create_epoch(conn)


class ChatStore:
    """The database, as the backend uses it; also the chat stream's `HistorySource`."""

    def __init__(self, url: str) -> None:
        self.engine: AsyncEngine = create_async_engine(url)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine.sync_engine, "connect", _sqlite_connect)
            event.listen(self.engine.sync_engine, "begin", _sqlite_begin)
        self._epoch: str | None = None

    async def open(self) -> str:
        """Create the tables and the epoch if missing; return the epoch."""
        async with self.engine.begin() as conn:
            self._epoch = await conn.run_sync(_create)
        return self._epoch

    async def send(
        self, message_id: str, message: DirectMessage, sent_at: datetime
    ) -> list[Delivery]:
        """Store and number `message` (once per `message_id`); what to publish, in order."""
        epoch = await self.epoch()
        async with self.engine.begin() as conn:
            return await conn.run_sync(store_message, message_id, message, sent_at, epoch)

    async def epoch(self) -> str:
        if self._epoch is None:
            raise RuntimeError("ChatStore.open() first")
        return self._epoch

    async def page(self, user_id: str, after: int, limit: int) -> Page:
        async with self.engine.connect() as conn:
            # Each statement on its own: a read never holds a transaction (nor, on SQLite,
            # the write lock) while it waits.
            conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
            return await conn.run_sync(read_page, user_id, after, limit)

    async def dispose(self) -> None:
        await self.engine.dispose()


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Transactions are begun by `_sqlite_begin`, not by the driver.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # readers do not wait for the writer
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
        return
    # IMMEDIATE: take the write lock now, waiting for it if need be; a transaction that
    # read first and wrote later could fail to upgrade its lock, without waiting.
    conn.exec_driver_sql("BEGIN IMMEDIATE")
