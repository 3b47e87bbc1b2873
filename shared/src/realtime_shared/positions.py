"""Positions: number a stream's messages per key (`meta.seq`) within an epoch (`meta.epoch`).

A producer that keeps history numbers each message it publishes to a key (one
user of one stream): 1 for the key's first message, +1 for each next one, no
gaps, and stamps it with the epoch of its database, which changes only when
the numbering restarts. Clients keep the last `(epoch, seq)` they saw and ask
for what follows (`realtime_shared.history`).

The numbers are taken in the producer's own transaction, beside the state
change the message describes, with one statement (`next_seq`, an upsert with
RETURNING). The counter row stays locked until that transaction ends, so two
transactions of one key get consecutive numbers in commit order, and a
rollback gives its number back: no gap, no duplicate, on SQLite and
PostgreSQL, with any number of replicas.

    positions = Positions(metadata)          # adds the two tables to your metadata
    ...                                      # migrate: create them, then create_epoch
    epoch = positions.create_epoch(conn)     # once at start; cache it
    with engine.begin() as conn:
        lock_key(conn, key)                  # first: one writer per key (PostgreSQL)
        ...                                  # the state change
        seq = positions.next_seq(conn, key)  # then number the message it publishes
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from realtime_shared.envelope import MAX_EPOCH_CHARS

MAX_KEY_CHARS = 255
"""A key is at most a routing key (an AMQP short string, 255 bytes): every key fits."""


EPOCH_ROW = 1
"""The epoch table's only row: a fixed primary key makes a second one impossible."""

KEY_LOCK_NAMESPACE = 0x72747371  # "rtsq": first key of pg_advisory_xact_lock(int, int)

DEFAULT_COUNTERS_TABLE = "stream_positions"
DEFAULT_EPOCH_TABLE = "stream_epoch"

_UPSERTS: dict[str, Callable[..., Any]] = {
    "postgresql": postgresql.insert,
    "sqlite": sqlite.insert,
}


def new_epoch() -> str:
    """A fresh epoch: 16 random hex characters, so two databases never share one."""
    return secrets.token_hex(8)


def lock_key(conn: Connection, key: str, *, namespace: int = KEY_LOCK_NAMESPACE) -> None:
    """Make this transaction the only writer of `key` until it ends (commit or rollback).

    Call it first, before reading what the change depends on: `next_seq` alone keeps the
    numbers in commit order, but only this makes what each transaction *read* follow that
    order too (a "mark all read" must see the notification created just before it).
    PostgreSQL: a transaction-scoped advisory lock on a hash of `key` (two keys hashing
    alike only queue). SQLite: nothing to do, it has one writer at a time.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(_LOCK_KEY, {"namespace": namespace, "key": key})


_LOCK_KEY = sa.select(
    sa.func.pg_advisory_xact_lock(
        sa.bindparam("namespace", type_=sa.Integer),
        sa.func.hashtext(sa.bindparam("key", type_=sa.Text)),
    )
)


class Positions:
    """The counters and epoch tables, added to a producer's own metadata, and their use.

    Create both tables in a migration like any other of yours (`alembic revision
    --autogenerate` sees them), and store the epoch there or at start (`create_epoch`).
    """

    def __init__(
        self,
        metadata: sa.MetaData,
        *,
        counters: str = DEFAULT_COUNTERS_TABLE,
        epoch: str = DEFAULT_EPOCH_TABLE,
    ) -> None:
        self.counters = sa.Table(
            counters,
            metadata,
            sa.Column("key", sa.String(MAX_KEY_CHARS), primary_key=True),
            # The last seq given out for the key.
            sa.Column("seq", sa.BigInteger, nullable=False),
        )
        self.epoch = sa.Table(
            epoch,
            metadata,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("epoch", sa.String(MAX_EPOCH_CHARS), nullable=False),
        )
        # Built once per dialect: the same statement object lets SQLAlchemy reuse its
        # compiled form, so numbering costs one execution and no compilation.
        self._next: dict[str, sa.Executable] = {}
        self._create_epoch: dict[str, sa.Executable] = {}
        self._last = sa.select(self.counters.c.seq).where(
            self.counters.c.key == sa.bindparam("key")
        )
        self._read_epoch = sa.select(self.epoch.c.epoch).where(self.epoch.c.id == EPOCH_ROW)

    def next_seq(self, conn: Connection, key: str) -> int:
        """Take the next seq of `key` (1 for its first message) in `conn`'s transaction."""
        statement = self._next.get(conn.dialect.name)
        if statement is None:
            insert = _insert(self.counters, conn.dialect.name)
            statement = insert.values(key=sa.bindparam("key"), seq=1).on_conflict_do_update(
                index_elements=[self.counters.c.key], set_={"seq": self.counters.c.seq + 1}
            )
            statement = statement.returning(self.counters.c.seq)
            self._next[conn.dialect.name] = statement
        return int(conn.execute(statement, {"key": key}).scalar_one())

    def last_seq(self, conn: Connection, key: str) -> int:
        """The last seq given out for `key`, committed; 0 when it has none."""
        return int(conn.execute(self._last, {"key": key}).scalar_one_or_none() or 0)

    def read_epoch(self, conn: Connection) -> str | None:
        return conn.execute(self._read_epoch).scalar_one_or_none()

    def create_epoch(self, conn: Connection, epoch: str | None = None) -> str:
        """Store `epoch` (default: a new one) unless an epoch is stored; return the stored one.

        Replicas starting together may all call it: one stores, every one reads that.
        """
        epoch = epoch or new_epoch()
        if len(epoch) > MAX_EPOCH_CHARS:
            raise ValueError(f"an epoch is 1-{MAX_EPOCH_CHARS} characters")
        statement = self._create_epoch.get(conn.dialect.name)
        if statement is None:
            insert = _insert(self.epoch, conn.dialect.name)
            statement = insert.values(
                id=EPOCH_ROW, epoch=sa.bindparam("epoch")
            ).on_conflict_do_nothing(index_elements=[self.epoch.c.id])
            self._create_epoch[conn.dialect.name] = statement
        conn.execute(statement, {"epoch": epoch})
        stored = self.read_epoch(conn)
        assert stored is not None
        return stored


def _insert(table: sa.Table, dialect: str) -> Any:
    insert = _UPSERTS.get(dialect)
    if insert is None:
        raise NotImplementedError(f"positions need PostgreSQL or SQLite, not {dialect}")
    return insert(table)
