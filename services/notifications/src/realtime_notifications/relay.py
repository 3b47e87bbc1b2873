"""The outbox relay: publishes committed events to RabbitMQ, per user in commit order.

An event is marked sent only after the broker confirmed it, so a crash between
the two republishes it (at-least-once; consumers dedupe on `meta.event_id`).
Broker or database errors never stop the loop: it retries with capped
exponential backoff while the API keeps serving and the backlog grows.

Anything else that ends the loop (an error the retry refuses, a fault in the
retry machinery itself) would leave the API answering 201 while nothing is
ever published, so a supervisor logs it at ERROR, counts it, reports the relay
stopped (`/readyz` 503) and starts the loop again after a growing pause.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import defaultdict
from datetime import timedelta
from functools import partial

from sqlalchemy.engine import Connection
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, wait_exponential_jitter

from realtime_notifications import outbox
from realtime_notifications.broker import EventPublisher
from realtime_notifications.db import Database, Pinned
from realtime_notifications.domain import utcnow
from realtime_notifications.metrics import Metrics
from realtime_notifications.repository import IdempotencyRepository

log = logging.getLogger(__name__)

FIRST_RETRY_DELAY = 0.05
"""Seconds; short because a blip (a restarted broker, a busy database) is the common failure."""

STOP_TIMEOUT = 5.0
"""Seconds a stopping relay may spend finishing its batch before it is cancelled."""

PRUNE_INTERVAL = 60.0
"""Seconds between passes that delete sent rows outside the history window (and idempotency
keys older than the retention)."""

PRUNE_BATCH = 1_000
"""Rows deleted per statement, one statement per relay round: each holds SQLite's writer a
few ms, so API writes and the relay's publishing go on between them while a big backlog
of old rows (after an upgrade, a long outage) is cleared."""

RESTART_DELAY = 1.0
"""Seconds before a crashed relay runs again, doubled after each crash in a row: a crash is a
fault of the code or a library, not an outage, so retrying at once would only fill the log."""

RESTART_DELAY_CAP = 60.0
"""Longest pause between restarts: a relay that keeps crashing still tries once a minute, so
it recovers by itself within a minute of what made it crash going away."""


class OutboxRelay:
    def __init__(
        self,
        database: Database,
        publisher: EventPublisher,
        metrics: Metrics,
        *,
        poll_interval: float,
        batch_size: int,
        batch_per_user: int,
        retention: timedelta,
        history: outbox.HistoryWindow,
        backoff_cap: float,
    ) -> None:
        self._database = database
        self._publisher = publisher
        self._metrics = metrics
        self._poll_interval = poll_interval
        self._batch_size = batch_size
        self._batch_per_user = batch_per_user
        self._retention = retention
        self._history = history
        self._backoff_cap = backoff_cap
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._last_prune = -math.inf  # the first round prunes
        self._pruning = False
        self._pruned = (0, 0)
        self._running = False

    def wake(self) -> None:
        """Called after a commit that wrote events: publish now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._running = True
        self._task = asyncio.create_task(self._supervise(), name="outbox-relay")

    @property
    def running(self) -> bool:
        """False from a crash until the restarted relay has finished a round (for /readyz)."""
        return self._running

    async def stop(self) -> None:
        """Let the current batch finish (so what was confirmed is marked sent), then end."""
        if self._task is None:
            return
        self._stopping.set()
        self._wake.set()
        task, self._task = self._task, None
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        except Exception:
            log.debug("outbox relay ended with an error while stopping", exc_info=True)

    async def _supervise(self) -> None:
        """Run the loop; whenever it ends while the service is not stopping, restart it."""
        delay = RESTART_DELAY
        while True:
            try:
                await self._run()
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                if self._stopping.is_set() or _is_our_cancellation(exc):
                    raise
                delay = self._crashed(exc, delay)
            else:
                if self._stopping.is_set():
                    return
                delay = self._crashed(None, delay)
            await self._pause(delay)
            if self._stopping.is_set():
                return
            delay = min(delay * 2, RESTART_DELAY_CAP)

    def _crashed(self, exc: BaseException | None, delay: float) -> float:
        """Say so and count it; return the pause before the restart (reset after a good round)."""
        if self._running:
            delay = RESTART_DELAY
        self._running = False
        self._metrics.relay_crashes.inc()
        log.error(
            "outbox relay stopped unexpectedly (%s); nothing is published until it runs "
            "again; restarting it in %.1f s",
            repr(exc) if exc is not None else "its loop returned",
            delay,
            exc_info=exc,
        )
        return delay

    async def _run(self) -> None:
        retrying = AsyncRetrying(
            retry=retry_if_exception(self._retryable),
            wait=wait_exponential_jitter(
                multiplier=FIRST_RETRY_DELAY, max=self._backoff_cap, jitter=FIRST_RETRY_DELAY
            ),
            before_sleep=self._on_failure,
            sleep=self._pause,
            reraise=True,
        )
        while not self._stopping.is_set():
            self._wake.clear()  # before draining: a commit during the drain wakes us again
            async for attempt in retrying:
                with attempt:
                    await self._publisher.connect()
                    await self.drain()
                    await self._maybe_prune()
            self._running = True  # a full round went through: ready again after a crash
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_interval)

    def _retryable(self, exc: BaseException) -> bool:
        # Not CancelledError, and nothing once stopping: retrying must never keep us alive.
        return isinstance(exc, Exception) and not self._stopping.is_set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    def _on_failure(self, state: RetryCallState) -> None:
        self._metrics.publish_failures.inc()
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning("outbox relay: %s; retrying in %.2f s", exc, delay)

    async def drain(self) -> int:
        """Publish until nothing this relay may publish is pending; returns how many it sent."""
        total = 0
        while True:
            sent, full = await self._publish_batch()
            total += sent
            if not full:
                return total

    async def _publish_batch(self) -> tuple[int, bool]:
        """Claim, publish and mark one batch: how many were sent, and whether the claim hit
        a cap (so more may be pending)."""
        sent: list[int] = []
        limit, per_user = self._batch_size, self._batch_per_user
        async with self._database.pinned() as conn:
            try:
                events = await conn.run(partial(outbox.claim, limit=limit, per_user=per_user))
                try:
                    await self._publish_per_user(events, sent)
                finally:
                    if sent:
                        confirmed = list(sent)
                        await conn.run(partial(outbox.mark_sent, ids=confirmed))
                        self._metrics.published.inc(len(confirmed))
            finally:
                if outbox.takes_locks(self._database.dialect):
                    await self._release(conn)
        return len(sent), outbox.is_full(events, limit, per_user)

    async def _release(self, conn: Pinned) -> None:
        try:
            await conn.run(outbox.release)
        except BaseException as exc:
            # Dropping the session is what releases its locks, then; pooled, it would keep
            # them and hold those users up for every other replica.
            await conn.invalidate()
            if not isinstance(exc, Exception):
                raise  # cancelled: the locks are gone with the session

    async def _publish_per_user(self, events: list[outbox.PendingEvent], sent: list[int]) -> None:
        """Users in parallel, each user's events one at a time in order; confirmed ids go
        into `sent` as they come, so a failure leaves a prefix per user to mark."""
        by_user: dict[str, list[outbox.PendingEvent]] = defaultdict(list)
        for event in events:
            by_user[event.user_id].append(event)

        async def publish_in_order(queue: list[outbox.PendingEvent]) -> None:
            for event in queue:
                await self._publisher.publish(event)
                sent.append(event.id)

        results = await asyncio.gather(
            *(publish_in_order(queue) for queue in by_user.values()), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _maybe_prune(self) -> None:
        """A batch per round while a pass has more to delete, else a pass per interval."""
        now = time.monotonic()
        if not self._pruning:
            if now - self._last_prune < PRUNE_INTERVAL:
                return
            self._last_prune = now
        events, keys = await self.prune()
        self._pruning = max(events, keys) >= PRUNE_BATCH
        self._pruned = (self._pruned[0] + events, self._pruned[1] + keys)
        if not self._pruning and any(self._pruned):
            log.info("pruned %d sent events and %d idempotency keys", *self._pruned)
            self._pruned = (0, 0)

    async def prune(self) -> tuple[int, int]:
        """Delete a batch of sent events that are outside the history window and older than
        the retention, and a batch of expired idempotency keys; how many of each."""
        now = utcnow()
        events_before = now - max(self._retention, self._history.min_age)
        keys_before = now - self._retention  # a retry later than that is a new request
        keep_last = self._history.max_events

        def prune(conn: Connection) -> tuple[int, int]:
            return (
                outbox.prune(conn, events_before, keep_last, PRUNE_BATCH),
                IdempotencyRepository(conn).prune(keys_before, PRUNE_BATCH),
            )

        return await self._database.write(prune)


def _is_our_cancellation(exc: BaseException) -> bool:
    """Whether `exc` cancels this task (stop, shutdown), not a `CancelledError` that a
    library raised from inside a call (a closed channel's futures): only that is a crash."""
    task = asyncio.current_task()
    return isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling() > 0
