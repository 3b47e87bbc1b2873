"""The outbox table: events written with their state change, claimed and marked by the relay.

Claiming differs per backend. PostgreSQL may have several replicas relaying
at once, and row locks alone cannot keep one user's events in order (replica
B could skip A's locked rows and publish a newer event first). So a relay
takes a session-level advisory lock per *user* (`pg_try_advisory_lock`, never
waiting: users held by another replica are skipped) and publishes only the
pending rows of the users it holds, oldest first. The order of statements is
what makes it safe: rows are read only after the locks are taken (a later
statement, a fresh snapshot), and marked sent before the locks are released,
so the relay can run them in autocommit. SQLite is one process with one relay,
which needs no lock.

Ids are taken at insert, so they are in commit order per user only if one
user's writes never overlap: every writing transaction first takes that
user's transaction-scoped lock (`lock_user`). A batch takes at most
`per_user` rows of each user, so one user's backlog cannot fill it and hold
every other user's events back.

Each event is numbered in its transaction (`add`): `meta.seq` 1, 2, 3... per
user (`realtime_shared.positions`), `meta.epoch` this database's epoch. Sent
rows stay as the user's history (`history`) while they are among the user's
last events or young enough (`prune` deletes the rest, a batch at a time).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from realtime_notifications.domain import Event, utcnow
from realtime_notifications.models import outbox, positions
from realtime_shared.history import Page
from realtime_shared.positions import lock_key

USER_LOCK_NAMESPACE = 0x6F757462  # "outb": first key of pg_try_advisory_lock(int, int)
WRITE_LOCK_NAMESPACE = 0x77726974  # "writ": a user's writers, apart from the relays' locks

# Built once, values passed as parameters: no statement to build and key per execution.
_INSERT = outbox.insert()
_MARK_SENT = (
    outbox.update()
    .where(outbox.c.id.in_(sa.bindparam("ids", expanding=True)))
    .values(sent_at=sa.bindparam("now", type_=outbox.c.sent_at.type))
)


@dataclass(frozen=True, slots=True)
class PendingEvent:
    id: int
    event_id: str
    user_id: str
    routing_key: str
    body: bytes


@dataclass(frozen=True, slots=True)
class HistoryWindow:
    """Sent events kept as history: each user's last `max_events`, and every event younger
    than `min_age` however many (an event stays while either holds)."""

    max_events: int
    min_age: timedelta


@dataclass(frozen=True, slots=True)
class Backlog:
    size: int
    oldest: datetime | None


def add(conn: Connection, event: Event, epoch: str) -> int:
    """Number `event` (the user's next seq) and queue it, in `conn`'s transaction; its seq.

    The caller holds the user's lock (`lock_user`), so seqs follow commit order as ids do.
    """
    seq = positions.next_seq(conn, event.user_id)
    conn.execute(
        _INSERT,
        {
            "event_id": event.id,
            "user_id": event.user_id,
            "routing_key": event.routing_key,
            "body": event.envelope(seq, epoch).to_bytes(),
            "created_at": event.occurred_at,
            "seq": seq,
        },
    )
    return seq


def lock_user(conn: Connection, user_id: str) -> None:
    """Make this transaction the only writer of `user_id`'s rows until it ends.

    Taken first in every transaction that writes a user's notifications or events: a
    second writer waits here, before it reads anything or takes an outbox id or seq, so
    ids, seqs (and what each transaction read) follow commit order. A transaction lock:
    commit or rollback releases it, nothing can leak. SQLite's writes are serial already.
    """
    lock_key(conn, user_id, namespace=WRITE_LOCK_NAMESPACE)


_PENDING_COLUMNS = (
    outbox.c.id,
    outbox.c.event_id,
    outbox.c.user_id,
    outbox.c.routing_key,
    outbox.c.body,
)
"""A `PendingEvent`'s fields, in its order."""


def claim(conn: Connection, limit: int, per_user: int) -> list[PendingEvent]:
    """Pending events this relay may publish now: at most `limit`, at most `per_user` of
    each user, in id (commit) order per user.

    Where `takes_locks`, the caller must `release` on the same connection afterwards.
    """
    pending: sa.ColumnElement[bool] = outbox.c.sent_at.is_(None)
    if takes_locks(conn.dialect.name):
        users = _lock_users(conn, limit)
        if not users:
            return []
        pending = pending & outbox.c.user_id.in_(users)
    # Each user's rows numbered in id order, so a batch takes the oldest `per_user` of each.
    rank = sa.func.row_number().over(partition_by=outbox.c.user_id, order_by=outbox.c.id)
    ranked = sa.select(*_PENDING_COLUMNS, rank.label("rank")).where(pending).subquery()
    query = (
        sa.select(*(ranked.c[column.name] for column in _PENDING_COLUMNS))
        .where(ranked.c.rank <= per_user)
        .order_by(ranked.c.id)
        .limit(limit)
    )
    return [PendingEvent(*row) for row in conn.execute(query)]


def is_full(events: Sequence[PendingEvent], limit: int, per_user: int) -> bool:
    """Whether a claim may have left pending rows behind (it hit one of its caps)."""
    if len(events) >= limit:
        return True
    counts = Counter(event.user_id for event in events)
    return bool(counts) and max(counts.values()) >= per_user


def _lock_users(conn: Connection, limit: int) -> list[str]:
    first = sa.func.min(outbox.c.id).label("first")
    candidates = (
        sa.select(outbox.c.user_id, first)
        .where(outbox.c.sent_at.is_(None))
        .group_by(outbox.c.user_id)
        .order_by(first)
        .limit(limit)
    )
    # One round trip: the LIMITed subquery is evaluated first (PostgreSQL does not flatten
    # it), so only these candidates are tried, each once; a user held elsewhere is skipped.
    chosen = candidates.subquery()
    lock = sa.func.pg_try_advisory_lock(USER_LOCK_NAMESPACE, sa.func.hashtext(chosen.c.user_id))
    return list((conn.execute(sa.select(chosen.c.user_id).where(lock))).scalars())


def takes_locks(dialect: str) -> bool:
    """Whether `claim` holds locks that `release` must give back (not on SQLite)."""
    return dialect != "sqlite"


def release(conn: Connection) -> None:
    """Give back the locks `claim` took (only where `takes_locks`; the relay checks)."""
    conn.execute(sa.select(sa.func.pg_advisory_unlock_all()))


def mark_sent(conn: Connection, ids: Sequence[int], now: datetime | None = None) -> None:
    conn.execute(_MARK_SENT, {"ids": list(ids), "now": now or utcnow()})


def history(conn: Connection, user_id: str, after: int, limit: int, epoch: str) -> Page:
    """`user_id`'s stored events after seq `after` (at most `limit`), and their last seq.

    The last seq is read first and bounds the rows, so an event committed in between is
    left for the live stream instead of making the page look incomplete. `meta.seq` and
    `meta.epoch` are set from the row and `epoch`: rows sent before events were numbered
    lack them in their bodies.
    """
    last = positions.last_seq(conn, user_id)
    if limit <= 0 or last <= after:
        return Page([], last)
    rows = conn.execute(
        _HISTORY, {"user_id": user_id, "after": after, "last": last, "limit": limit}
    )
    return Page([_stamped(body, seq, epoch) for seq, body in rows], last)


_HISTORY = (
    sa.select(outbox.c.seq, outbox.c.body)
    .where(
        outbox.c.user_id == sa.bindparam("user_id"),
        outbox.c.seq > sa.bindparam("after"),
        outbox.c.seq <= sa.bindparam("last"),
    )
    .order_by(outbox.c.seq)
    .limit(sa.bindparam("limit", type_=sa.Integer))
)


def _stamped(body: bytes, seq: int, epoch: str) -> dict[str, Any]:
    envelope: dict[str, Any] = orjson.loads(body)
    envelope.setdefault("meta", {}).update(seq=seq, epoch=epoch)
    return envelope


def prune(conn: Connection, before: datetime, keep_last: int, limit: int) -> int:
    """Delete at most `limit` rows sent before `before` that are not among their user's
    last `keep_last` events (the history window); how many it deleted.

    It starts from the counters, so only users with more than `keep_last` events are
    visited, each through its (user_id, seq) index, however many rows the others keep.
    """
    counters = positions.counters
    doomed = (
        sa.select(outbox.c.id)
        .select_from(counters.join(outbox, outbox.c.user_id == counters.c.key))
        .where(
            counters.c.seq > keep_last,
            outbox.c.seq <= counters.c.seq - keep_last,
            outbox.c.sent_at < before,
        )
        .limit(limit)
    )
    result = conn.execute(outbox.delete().where(outbox.c.id.in_(doomed)))
    return result.rowcount


def backlog(conn: Connection) -> Backlog:
    query = sa.select(sa.func.count(), sa.func.min(outbox.c.created_at)).where(
        outbox.c.sent_at.is_(None)
    )
    size, oldest = (conn.execute(query)).one()
    return Backlog(int(size), oldest)
