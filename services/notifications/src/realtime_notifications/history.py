"""The notifications stream's history: recovery answered from the outbox.

Sent events stay in the outbox while they are in the history window
(`outbox.HistoryWindow`), so the outbox is the history: `OutboxHistory` reads
pages of it for `realtime_shared.history`'s responder, which takes requests on
`<REALTIME_EXCHANGE>.history.notifications` over a RabbitMQ connection of its own
(the relay resets its connection when a publish fails; answers must not stop with it).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Protocol

from realtime_notifications import outbox
from realtime_notifications.db import Database
from realtime_notifications.domain import STREAM
from realtime_notifications.metrics import Metrics
from realtime_notifications.settings import NotificationsSettings
from realtime_shared.history import HistoryResponder, HistorySource, Page


class HistoryOwner(Protocol):
    """What the app runs: the responder, or a stand-in where tests fake the broker."""

    def start(self) -> None: ...

    async def is_ready(self) -> bool:
        """Consuming the history queue now (for /readyz)."""

    async def stop(self) -> None: ...


HistoryFactory = Callable[[HistorySource], HistoryOwner]


class OutboxHistory:
    """`HistorySource` over the outbox; the epoch was read once, at start."""

    def __init__(self, database: Database, epoch: str) -> None:
        self._database = database
        self._epoch = epoch

    async def epoch(self) -> str:
        return self._epoch

    async def page(self, user_id: str, after: int, limit: int) -> Page:
        # A read: on SQLite it runs on a reader thread, never queued behind the writer.
        return await self._database.read(
            partial(outbox.history, user_id=user_id, after=after, limit=limit, epoch=self._epoch)
        )


def responder(settings: NotificationsSettings, metrics: Metrics) -> HistoryFactory:
    def build(source: HistorySource) -> HistoryOwner:
        return HistoryResponder(
            settings.amqp_url,
            exchange=settings.realtime_exchange,
            stream=STREAM,
            source=source,
            metrics=metrics,
        )

    return build
