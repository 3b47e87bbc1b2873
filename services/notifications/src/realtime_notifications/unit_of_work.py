"""One database transaction per use case: state changes and their outbox rows commit together.

A use case writes its transaction as one plain function of a `UnitOfWork`;
`Transactions` runs it on the database (see `db`) and wakes the relay after a
commit that wrote events. Its first step is `lock_user` for the user whose
rows it changes: one user's writes then run one after another, so their
events are numbered (`meta.seq`), and published, in commit order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.engine import Connection

from realtime_notifications import outbox
from realtime_notifications.db import Database
from realtime_notifications.domain import Event
from realtime_notifications.repository import IdempotencyRepository, NotificationRepository

T = TypeVar("T")


class UserNotLocked(RuntimeError):
    """A use case wrote an event without `lock_user` first: a bug, never a client error."""


class UnitOfWork:
    """The repositories and the outbox, on one transaction's connection; `epoch` is the
    database's, stamped on every event with its seq."""

    def __init__(self, conn: Connection, epoch: str) -> None:
        self._conn = conn
        self._epoch = epoch
        self.notifications = NotificationRepository(conn)
        self.idempotency = IdempotencyRepository(conn)
        self.events = 0
        self._locked: set[str] = set()

    def lock_user(self, user_id: str) -> None:
        """Wait until no other transaction writes `user_id`'s rows, and keep it so until
        this one ends. Call it first, before reading or locking any row: writers of one
        user then never hold what the other waits for."""
        if user_id not in self._locked:
            outbox.lock_user(self._conn, user_id)
            self._locked.add(user_id)

    def publish(self, event: Event) -> None:
        """Number `event` and queue it in the outbox; it leaves only if this transaction
        commits (and its seq is given back if it does not)."""
        if event.user_id not in self._locked:
            raise UserNotLocked(f"lock_user({event.user_id!r}) must come before its events")
        outbox.add(self._conn, event, self._epoch)
        self.events += 1


class Transactions:
    def __init__(
        self, database: Database, on_events_committed: Callable[[], None], *, epoch: str
    ) -> None:
        self._database = database
        self._on_events_committed = on_events_committed
        self._epoch = epoch

    async def write(self, body: Callable[[UnitOfWork], T]) -> T:
        """Run `body` in one transaction: committed if it returns, rolled back if it raises."""

        def work(conn: Connection) -> tuple[T, int]:
            uow = UnitOfWork(conn, self._epoch)
            return body(uow), uow.events

        try:
            result, events = await self._database.write(work)
        except asyncio.CancelledError:
            # The caller went away, but the transaction may still commit: a spare wake-up
            # costs one empty scan, a missed one delays its events to the next poll.
            self._on_events_committed()
            raise
        if events:
            self._on_events_committed()  # wake the relay now instead of at its next poll
        return result

    async def read(self, body: Callable[[UnitOfWork], T]) -> T:
        """Run `body`, which must only query."""
        return await self._database.read(lambda conn: body(UnitOfWork(conn, self._epoch)))
