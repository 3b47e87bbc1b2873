"""One edge process: the hub, the broker link and the bindings, wired together.

Built by `create_app` without I/O; the app's lifespan starts and stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Iterable

from realtime_edge.closecodes import CloseCode, metric_label
from realtime_edge.connection import Connection
from realtime_edge.consumer import Bindings, BrokerLink
from realtime_edge.handshake import Handshake
from realtime_edge.hub import Hub, keys_for
from realtime_edge.inbound import Inbound, InboundRefused, replies_binding, reply_key
from realtime_edge.metrics import EdgeMetrics
from realtime_edge.origin import OriginPolicy
from realtime_edge.protocol import Publish, RateLimits, error_frame
from realtime_edge.recovery import HistoryClient
from realtime_edge.settings import EdgeSettings
from realtime_shared.auth import TokenVerifier

log = logging.getLogger(__name__)


class Node:
    def __init__(self, settings: EdgeSettings, verifier: TokenVerifier) -> None:
        self.settings = settings
        self.verifier = verifier
        self.metrics = EdgeMetrics()
        self.hub = Hub(self.metrics, settings.edge_max_message_bytes)
        self.bindings = Bindings(settings.edge_unbind_delay, self.metrics)
        self.inbound = Inbound(settings.realtime_inbound_exchange, self.metrics)
        self.publish_limits = RateLimits(settings.edge_publish_rate, settings.edge_publish_burst)
        self.control_limits = RateLimits(settings.edge_control_rate, settings.edge_control_burst)
        self._publishing: set[asyncio.Task[None]] = set()
        self.history = HistoryClient(
            settings.realtime_exchange,
            limit=settings.edge_recovery_max,
            wait=settings.edge_recovery_timeout,
        )
        self.link = BrokerLink(
            url=settings.amqp_url,
            exchange=settings.realtime_exchange,
            bindings=self.bindings,
            on_message=self.hub.dispatch,
            on_resumed=self._resync,
            metrics=self.metrics,
            queue_max_bytes=settings.edge_queue_max_bytes,
            history=self.history,
            inbound=self.inbound,
        )
        self.handshake = Handshake(
            OriginPolicy(settings.edge_allowed_origins),
            verifier,
            settings.edge_max_streams_per_connection,
        )
        self.draining = False
        self._open: set[Connection] = set()
        self._per_user: Counter[str] = Counter()
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def ready(self) -> bool:
        return self.link.ready and not self.draining

    def reply_key(self, conn: Connection) -> str:
        return reply_key(self.link.node_id, conn.id)

    async def start(self) -> None:
        # Held for the process's life: every reply to one of its connections comes by it.
        self.bindings.acquire(replies_binding(self.link.node_id))
        if await self.link.start():
            log.info("consuming from RabbitMQ as %r", self.link.connection_name)
        else:
            log.warning("RabbitMQ is not reachable yet: /readyz answers 503 until it is")

    async def stop(self) -> None:
        await self.link.stop()

    # -- bindings for a connection's streams ---------------------------------------------

    def hold(self, user_id: str, streams: Iterable[str]) -> list[asyncio.Future[None]]:
        return [self.bindings.acquire(key) for s in streams for key in keys_for(s, user_id)]

    def release(self, user_id: str, streams: Iterable[str]) -> None:
        for stream in streams:
            for key in keys_for(stream, user_id):
                self.bindings.release(key)

    @staticmethod
    async def bound(futures: list[asyncio.Future[None]]) -> None:
        """Wait for bindings without cancelling them when this waiter is cancelled."""
        for fut in futures:
            if not fut.done():
                await asyncio.shield(fut)

    # -- connection lifecycle -------------------------------------------------------------

    def user_connections(self, user_id: str) -> int:
        return self._per_user[user_id]

    def opened(self, conn: Connection) -> None:
        """Accepted; its bindings may still be on their way."""
        self._open.add(conn)
        self._per_user[conn.user_id] += 1
        self.metrics.opened.inc()
        self._idle.clear()

    def started(self, conn: Connection) -> None:
        """Bindings in place: `connected` goes first, then the hub may route to it."""
        conn.started = True
        conn.deliver(conn.session.connected_frame(conn.id))
        self.hub.register(conn)

    def closed(self, conn: Connection, code: int) -> None:
        self._open.discard(conn)
        self._per_user[conn.user_id] -= 1
        if self._per_user[conn.user_id] <= 0:
            del self._per_user[conn.user_id]
        self.hub.unregister(conn)
        self.release(conn.user_id, conn.session.streams)
        self.metrics.closed.labels(metric_label(code)).inc()
        if not self._open:
            self._idle.set()

    def publish(self, conn: Connection, command: Publish) -> None:
        """Publish a client message that passed the checks; reply when RabbitMQ answered."""
        task = asyncio.create_task(self._publish(conn, command))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _publish(self, conn: Connection, command: Publish) -> None:
        meta: dict[str, object] = {
            "user_id": conn.user_id,  # from the token, whatever the frame said
            "connection_id": conn.id,
            "reply_to": self.reply_key(conn),
        }
        if command.session_id is not None:
            meta["session_id"] = command.session_id
        try:
            message_id = await self.inbound.publish(
                keys_for(command.stream, conn.user_id)[0],
                command.stream,
                command.event,
                command.data,
                meta,
            )
        except InboundRefused as exc:
            self.metrics.client_refused.labels(exc.code, "publish").inc()
            self.send(conn, error_frame(exc.code, exc.message, command.id))
            return
        self.metrics.client_published.labels(command.stream).inc()
        self.send(conn, conn.session.published_frame(command.id, message_id))

    def cannot_abort(self) -> None:
        """A stalled client's socket cannot be dropped: the server offers no abort."""
        self.metrics.abort_unavailable.inc()
        log.warning(
            "cannot drop the socket of a client that stopped reading: the server gives the "
            "app no way to abort it (run ws-edge's own server, not a bare ASGI server)"
        )

    def send(self, conn: Connection, frame: str) -> None:
        """Queue a reply; a connection whose queue is full is a slow consumer."""
        if not conn.deliver(frame) and not conn.closing:
            self.hub.drop_slow(conn)

    def _resync(self) -> None:
        """After an outage: tell every live connection it may have missed messages."""
        count = 0
        for conn in self.hub:
            if conn.started and not conn.closing:
                self.send(conn, conn.session.resync_frame())
                count += 1
        log.info("sent resync to %d connections", count)

    async def drain(self, within: float) -> None:
        """Refuse new connections, close every open one with 1001, wait for them to go."""
        self.draining = True
        conns = list(self._open)
        for conn in conns:
            conn.close(CloseCode.GOING_AWAY)
        if conns:
            log.info("closing %d connections (going away)", len(conns))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), within)
