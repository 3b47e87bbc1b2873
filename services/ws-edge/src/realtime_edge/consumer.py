"""The node's link to RabbitMQ: one exclusive queue, reference-counted bindings, reconnects.

Bindings are counted per routing key: the first holder binds, the last one's release
unbinds after `unbind_delay` (a reload does not churn the broker). Binds are pipelined:
a batch goes out as no-wait `queue.bind` frames closed by one synchronous bind; the
broker handles a channel's methods in order, so its `BindOk` means the whole batch is in
place. One worker sends every bind and unbind in request order, which keeps an unbind
from overtaking a later bind of the same key.

When the connection drops, the queue (exclusive) dies with it; the link reconnects with
backoff, declares a new queue, binds every key still held, resumes consuming, and then
calls `on_resumed` so connections can be told to resync. Each session's queue has a
name of its own: when only the edge's side of a connection died (a NAT or load balancer
reset), RabbitMQ keeps the old connection, and its exclusive queue, until heartbeats
time it out; reusing the name would be refused (RESOURCE_LOCKED) all that while. A
consumer the broker cancels (its queue deleted by an operator or a policy) counts as
a lost link too: the channel stays open, but nothing would be delivered on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import deque
from collections.abc import Callable
from typing import Any

import aiormq
from aiormq.abc import AbstractChannel, ChannelFrame, DeliveredMessage
from pamqp import commands as spec

from realtime_edge.inbound import Inbound
from realtime_edge.metrics import EdgeMetrics
from realtime_edge.recovery import HistoryClient
from realtime_shared.amqp import with_heartbeat

log = logging.getLogger(__name__)

BIND_BATCH = 500
"""Binds per pipelined batch: big enough for a connection storm, small enough to fail fast."""

RECONNECT_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Backoff between attempts to reach RabbitMQ; the last value repeats."""

CONNECT_TIMEOUT = 10.0

START_WAIT = 2.0
"""How long start-up waits for RabbitMQ before serving anyway (not ready, still retrying)."""


def _deliver_inline(channel: AbstractChannel, on_message: Callable[[str, bytes], None]) -> bool:
    """Hand deliveries to `on_message` from aiormq's channel reader, without a task each.

    aiormq starts one task per delivered message to run the consumer callback; the
    edge's callback never awaits, so it can run right where the message is read, in
    order, saving a task, its bookkeeping and a loop turn per message. This replaces a
    private method of this one channel; when aiormq's internals differ, nothing is
    replaced (returns False) and the ordinary consumer callback is used.
    """
    read_header = getattr(channel, "_Channel__get_content_header", None)
    read_content = getattr(channel, "_read_content", None)
    if not callable(read_header) or not callable(read_content):
        return False

    async def on_deliver_frame(frame: Any) -> None:
        message = await read_content(frame, await read_header())
        key = message.routing_key
        if key is None:
            return
        try:
            on_message(key, message.body)
        except Exception:
            log.exception("dispatching a message on %r failed", key)

    channel._on_deliver_frame = on_deliver_frame  # type: ignore[attr-defined]
    return True


class _Binding:
    __slots__ = ("ready", "refs", "timer")

    def __init__(self, ready: asyncio.Future[None]) -> None:
        self.refs = 0
        self.ready = ready
        self.timer: asyncio.TimerHandle | None = None


class Bindings:
    """Routing keys this node's queue must be bound to, with holder counts."""

    def __init__(self, unbind_delay: float, metrics: EdgeMetrics) -> None:
        self._unbind_delay = unbind_delay
        self._metrics = metrics
        self._keys: dict[str, _Binding] = {}
        # (bind?, key, the holder record a bind resolves): a bind confirms only the record
        # it was queued for, never a newer holder of the same key queued behind an unbind.
        self._ops: deque[tuple[bool, str, _Binding | None]] = deque()
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._keys)

    def acquire(self, key: str) -> asyncio.Future[None]:
        """Hold `key`; the future resolves once the binding is in place (maybe already)."""
        binding = self._keys.get(key)
        if binding is None:
            binding = self._keys[key] = _Binding(asyncio.get_running_loop().create_future())
            self._ops.append((True, key, binding))
            self._wake.set()
            self._metrics.bindings.set(len(self._keys))
        binding.refs += 1
        if binding.timer is not None:
            binding.timer.cancel()
            binding.timer = None
        return binding.ready

    def release(self, key: str) -> None:
        binding = self._keys.get(key)
        if binding is None:
            return
        binding.refs -= 1
        if binding.refs > 0:
            return
        if self._unbind_delay > 0:
            loop = asyncio.get_running_loop()
            binding.timer = loop.call_later(self._unbind_delay, self._expire, key)
        else:
            self._expire(key)

    def _expire(self, key: str) -> None:
        binding = self._keys.get(key)
        if binding is None or binding.refs > 0:
            return
        del self._keys[key]
        binding.timer = None
        if not binding.ready.done():
            binding.ready.cancel()
        self._ops.append((False, key, None))
        self._wake.set()
        self._metrics.bindings.set(len(self._keys))

    def lost(self) -> None:
        """The queue is gone: every held key must be bound again on the next one."""
        self._ops.clear()
        for key, binding in list(self._keys.items()):
            if binding.refs <= 0:
                if binding.timer is not None:
                    binding.timer.cancel()
                del self._keys[key]
                continue
            if binding.ready.done():
                binding.ready = asyncio.get_running_loop().create_future()
        self._metrics.bindings.set(len(self._keys))

    def close(self) -> None:
        for binding in self._keys.values():
            if binding.timer is not None:
                binding.timer.cancel()
            if not binding.ready.done():
                binding.ready.cancel()
        self._keys.clear()
        self._ops.clear()

    async def serve(
        self,
        channel: AbstractChannel,
        queue: str,
        exchange: str,
        restored: asyncio.Future[None],
    ) -> None:
        """Bind every held key to the new queue (then `restored`), apply changes until cancelled."""
        self._ops.clear()
        self._ops.extend((True, key, binding) for key, binding in self._keys.items())
        while True:
            while self._ops:
                bind, batch = self._take_batch()
                if bind:
                    await self._bind(channel, queue, exchange, batch)
                else:
                    for key, _ in batch:
                        await channel.queue_unbind(queue, exchange, key)
            if not restored.done():
                restored.set_result(None)
            self._wake.clear()
            await self._wake.wait()

    def _take_batch(self) -> tuple[bool, list[tuple[str, _Binding | None]]]:
        bind = self._ops[0][0]
        batch: list[tuple[str, _Binding | None]] = []
        while self._ops and self._ops[0][0] == bind and len(batch) < BIND_BATCH:
            _, key, binding = self._ops.popleft()
            batch.append((key, binding))
        return bind, batch

    async def _bind(
        self,
        channel: AbstractChannel,
        queue: str,
        exchange: str,
        batch: list[tuple[str, _Binding | None]],
    ) -> None:
        keys = [key for key, _ in batch]
        ahead = keys[:-1]
        write_queue = getattr(channel, "write_queue", None)
        if ahead and write_queue is not None:
            # One buffer, one socket write for the whole batch, instead of a write each.
            binds = [
                spec.Queue.Bind(queue=queue, exchange=exchange, routing_key=key, nowait=True)
                for key in ahead
            ]
            await write_queue.put(ChannelFrame.marshall(channel.number, binds))
        else:
            for key in ahead:
                await channel.queue_bind(queue, exchange, key, nowait=True)
        await channel.queue_bind(queue, exchange, keys[-1])
        for _, binding in batch:
            if binding is not None and not binding.ready.done():
                binding.ready.set_result(None)


class BrokerLink:
    """Keeps this node consuming from its own queue, reconnecting whenever RabbitMQ drops."""

    def __init__(
        self,
        *,
        url: str,
        exchange: str,
        bindings: Bindings,
        on_message: Callable[[str, bytes], None],
        on_resumed: Callable[[], None],
        metrics: EdgeMetrics,
        node_id: str | None = None,
        queue_max_bytes: int = 0,
        history: HistoryClient | None = None,
        inbound: Inbound | None = None,
    ) -> None:
        self.url = url
        self.exchange = exchange
        self.bindings = bindings
        self.node_id = node_id or uuid.uuid4().hex
        self.connection_name = f"ws-edge {self.node_id}"
        self._on_message = on_message
        self._on_resumed = on_resumed
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None
        self._connection: aiormq.abc.AbstractConnection | None = None
        self._consuming = asyncio.Event()
        self._sessions = 0
        self._history = history
        self._inbound = inbound
        self._queue_arguments: dict[str, Any] = {}
        if queue_max_bytes > 0:
            # A lagging edge sheds its oldest messages instead of pushing RabbitMQ into the
            # memory alarm that blocks every publisher (docs/operations.md).
            self._queue_arguments = {"x-max-length-bytes": queue_max_bytes}
        self.queue_name: str | None = None
        self.inline_delivery = False  # see _deliver_inline

    @property
    def ready(self) -> bool:
        return self._consuming.is_set()

    async def start(self, within: float = START_WAIT) -> bool:
        """Begin the link; wait a little for the first connection. False if not there yet.

        The process stays up either way (not ready, retrying), so an edge started before
        RabbitMQ becomes ready when it is, instead of crash-looping.
        """
        self._task = asyncio.create_task(self._run(), name="ws-edge broker link")
        waiter = asyncio.ensure_future(self._consuming.wait())
        done, _ = await asyncio.wait(
            {waiter, self._task}, timeout=within, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter not in done:
            waiter.cancel()
            return False
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.bindings.close()

    async def _run(self) -> None:
        attempt = 0
        resumed = False
        while True:
            try:
                await self._session(resumed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("RabbitMQ link down: %s", exc or type(exc).__name__)
            if self._consuming.is_set():
                attempt = 0
                resumed = True  # consumed before: open connections may have missed messages
            self._consuming.clear()
            self._metrics.broker_up.set(0)
            self.bindings.lost()
            await asyncio.sleep(RECONNECT_DELAYS[min(attempt, len(RECONNECT_DELAYS) - 1)])
            attempt += 1

    async def _session(self, resumed: bool) -> None:
        connection = await asyncio.wait_for(
            aiormq.connect(
                with_heartbeat(self.url),
                client_properties={"connection_name": self.connection_name},
            ),
            timeout=CONNECT_TIMEOUT,
        )
        self._connection = connection
        worker: asyncio.Task[None] | None = None
        try:
            channel = await connection.channel()
            cancelled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            channel.on_consumer_cancel_callbacks.add(
                lambda _frame: None if cancelled.done() else cancelled.set_result(None)
            )
            await channel.exchange_declare(self.exchange, exchange_type="topic", durable=True)
            if self._inbound is not None:
                await channel.exchange_declare(
                    self._inbound.exchange, exchange_type="topic", durable=True
                )
            self._sessions += 1
            declared = await channel.queue_declare(
                f"ws-edge.{self.node_id}.{self._sessions}",
                exclusive=True,
                auto_delete=True,
                arguments=self._queue_arguments,
            )
            queue = declared.queue
            assert queue is not None
            self.queue_name = queue
            restored: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            worker = asyncio.create_task(
                self.bindings.serve(channel, queue, self.exchange, restored)
            )
            await asyncio.wait({restored, worker}, return_when=asyncio.FIRST_COMPLETED)
            if not restored.done():
                worker.result()
                raise ConnectionError("binding worker stopped")
            self.inline_delivery = _deliver_inline(channel, self._on_message)
            await channel.basic_consume(queue, self._deliver, no_ack=True)
            # A channel of its own for what the edge publishes (history requests, client
            # messages): publisher confirms and returns, and direct reply-to answers.
            requests = await connection.channel(publisher_confirms=True)
            if self._history is not None:
                await self._history.attach(requests)
            if self._inbound is not None:
                self._inbound.attach(requests)
            self._consuming.set()
            self._metrics.broker_up.set(1)
            if resumed:
                self._metrics.broker_reconnects.inc()
                log.info("RabbitMQ link restored; %d bindings in place", len(self.bindings))
                self._on_resumed()
            closing = {connection.closing, channel.closing, worker, cancelled}
            done, _ = await asyncio.wait(closing, return_when=asyncio.FIRST_COMPLETED)
            if cancelled in done:
                self._metrics.consumer_cancels.inc()
                raise ConnectionError(f"RabbitMQ cancelled the consumer of {queue} (deleted?)")
            for fut in done:
                if fut.cancelled():
                    raise ConnectionError("RabbitMQ closed the link")
                if fut.exception() is not None:
                    raise fut.exception()  # type: ignore[misc]
            raise ConnectionError("RabbitMQ closed the link")
        finally:
            if self._history is not None:
                self._history.detach()
            if self._inbound is not None:
                self._inbound.detach()
            if worker is not None:
                worker.cancel()
                await asyncio.wait([worker])
                if not worker.cancelled():
                    worker.exception()  # already reported as the reason the link went down
            self._connection = None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), timeout=2)

    async def _deliver(self, message: DeliveredMessage) -> None:
        key = message.routing_key
        if key is not None:
            self._on_message(key, message.body)
