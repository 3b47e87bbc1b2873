"""One database transaction per use case: state changes and their outbox rows commit together."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from realtime_notifications import outbox
from realtime_notifications.db import READ_ONLY, WriteGate
from realtime_notifications.domain import Event
from realtime_notifications.repository import IdempotencyRepository, NotificationRepository


class UnitOfWork:
    """``async with uow: ...; await uow.commit()``; leaving without a commit rolls back."""

    notifications: NotificationRepository
    idempotency: IdempotencyRepository

    def __init__(
        self,
        engine: AsyncEngine,
        on_events_committed: Callable[[], None],
        gate: WriteGate,
        *,
        read_only: bool = False,
    ) -> None:
        self._engine = engine
        self._gate = gate
        self._held: AbstractAsyncContextManager[None] | None = None
        self._on_events_committed = on_events_committed
        self._read_only = read_only
        self._conn: AsyncConnection | None = None
        self._events = 0

    async def __aenter__(self) -> UnitOfWork:
        if not self._read_only:
            self._held = self._gate()
            await self._held.__aenter__()
        try:
            self._conn = await self._engine.connect()
            if self._read_only:
                await self._conn.execution_options(**READ_ONLY)
            await self._conn.begin()
        except BaseException:
            await self._release_gate()
            raise
        self.notifications = NotificationRepository(self._conn)
        self.idempotency = IdempotencyRepository(self._conn)
        self._events = 0
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._conn is not None
        try:
            await self._conn.rollback()  # no-op after a commit
        finally:
            try:
                await self._conn.close()
            finally:
                self._conn = None
                await self._release_gate()

    async def _release_gate(self) -> None:
        if self._held is not None:
            held, self._held = self._held, None
            await held.__aexit__(None, None, None)

    async def publish(self, event: Event) -> None:
        """Queue `event` in the outbox; it leaves only if this transaction commits."""
        assert self._conn is not None and not self._read_only
        await outbox.add(self._conn, event)
        self._events += 1

    async def commit(self) -> None:
        assert self._conn is not None
        await self._conn.commit()
        if self._events:
            self._events = 0
            self._on_events_committed()  # wake the relay now instead of at its next poll
