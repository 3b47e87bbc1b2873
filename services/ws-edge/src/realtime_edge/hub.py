"""The node's routing table: which connections want the messages of each routing key.

A connection holding stream ``s`` is listed under the user key ``s.<user>`` and the
stream key ``s``, exactly the keys the consumer binds; so a consumed message's routing
key names its recipients directly, with no parsing of the key on the hot path.

A producer's body is parsed once per message (not per recipient) and always
re-encoded with `stream` set from the routing key: a body that merely *starts* with the
right `stream` could repeat the key further on (the last one wins in `JSON.parse`, so a
producer could forge `system` frames), hold `NaN`, or be cut short. orjson rejects
what RFC 8259 does not allow, and its output has no duplicate keys.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

import orjson

from realtime_edge.closecodes import CloseCode
from realtime_edge.connection import Connection
from realtime_edge.metrics import EdgeMetrics
from realtime_shared.envelope import Position, position_of
from realtime_shared.routing import stream_key, user_key

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=65536)
def keys_for(stream: str, user_id: str) -> tuple[str, str]:
    """The two routing keys a connection of `user_id` holding `stream` receives (cached:
    every connect, subscribe and close needs them, and percent-encoding is not free)."""
    return user_key(stream, user_id), stream_key(stream)


class Hub:
    def __init__(self, metrics: EdgeMetrics, max_message_bytes: int) -> None:
        self._metrics = metrics
        self._max_message_bytes = max_message_bytes
        self._routes: dict[str, dict[Connection, None]] = {}
        self.connections: dict[str, Connection] = {}
        self._users: Counter[str] = Counter()

    # -- membership -------------------------------------------------------------------

    def register(self, conn: Connection) -> None:
        """Route to `conn` the keys of every stream its session holds."""
        self.connections[conn.id] = conn
        self._users[conn.user_id] += 1
        self._metrics.connections.inc()
        for stream in conn.session.streams:
            self.join(conn, stream)

    def unregister(self, conn: Connection) -> None:
        if self.connections.pop(conn.id, None) is None:
            return
        for stream in conn.session.streams:
            self.leave(conn, stream)
        self._users[conn.user_id] -= 1
        if self._users[conn.user_id] <= 0:
            del self._users[conn.user_id]
        self._metrics.connections.dec()

    def join(self, conn: Connection, stream: str) -> None:
        for key in keys_for(stream, conn.user_id):
            self._routes.setdefault(key, {})[conn] = None
        self._metrics.stream_connections.labels(stream).inc()

    def leave(self, conn: Connection, stream: str) -> None:
        found = False
        for key in keys_for(stream, conn.user_id):
            members = self._routes.get(key)
            if members is not None and conn in members:
                found = True
                del members[conn]
                if not members:
                    del self._routes[key]
        if found:
            self._metrics.stream_connections.labels(stream).dec()

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self.connections.values()))

    # -- fan-out (the hot path) ---------------------------------------------------------

    def dispatch(self, routing_key: str, body: bytes) -> None:
        """Encode once, queue to every recipient without waiting; close the ones that are full."""
        self._metrics.consumed.inc()
        members = self._routes.get(routing_key)
        if not members:
            if routing_key.startswith("@"):
                self._reply(routing_key, body)
            return
        parsed = self._frame(routing_key, body)
        if parsed is None:
            return
        stream, frame, position = parsed
        delivered = 0
        slow: list[Connection] | None = None
        for conn in members:
            gate = conn.gate
            if gate is not None and gate.take(stream, position, frame):
                continue  # held back while its stream recovers, or already replayed
            if conn.deliver(frame):
                delivered += 1
            elif not conn.closing:
                slow = slow or []
                slow.append(conn)
        self._metrics.delivered.inc(delivered)
        if slow:
            for conn in slow:
                self.drop_slow(conn)

    def _reply(self, routing_key: str, body: bytes) -> None:
        """A backend's answer to one connection (`@<node>.<connection>`): delivered only
        while that connection holds the envelope's own stream, else dropped."""
        conn = self.connections.get(routing_key.partition(".")[2])
        if conn is None:
            self._metrics.replies.labels("gone").inc()
            return
        parsed = self._envelope(routing_key, body)
        if parsed is None:
            return
        stream = parsed.get("stream")
        if not isinstance(stream, str) or not conn.session.holds(stream):
            self._metrics.replies.labels("not_held").inc()
            return
        parsed.pop("stream")
        frame = self._encode(routing_key, stream, parsed)
        if frame is None:
            return
        if conn.deliver(frame):
            self._metrics.replies.labels("delivered").inc()
        elif not conn.closing:
            self.drop_slow(conn)

    def drop_slow(self, conn: Connection) -> None:
        log.warning(
            "closing a slow consumer: its send queue is full",
            extra={"connection_id": conn.id, "user_id": conn.user_id, "close_code": 1013},
        )
        self._metrics.slow_consumers.inc()
        conn.close(CloseCode.TRY_AGAIN_LATER, flush=False)
        self.unregister(conn)

    def _frame(self, routing_key: str, body: bytes) -> tuple[str, str, Position | None] | None:
        """(stream, frame, position): the body as a frame with `stream` from the key and
        its (epoch, seq) if it has one; None when dropped (and counted)."""
        obj = self._envelope(routing_key, body)
        if obj is None:
            return None
        obj.pop("stream", None)
        stream = routing_key.partition(".")[0]
        frame = self._encode(routing_key, stream, obj)
        if frame is None:
            return None
        return stream, frame, position_of(obj)

    def _encode(self, routing_key: str, stream: str, obj: dict[str, Any]) -> str | None:
        """The frame's text, or None (dropped, logged and counted): orjson reads deeper
        nesting than it writes, so a parsed body may still not be a frame."""
        try:
            return orjson.dumps({"stream": stream, **obj}).decode()
        except orjson.JSONEncodeError:
            self._metrics.dropped.inc()
            log.warning("dropping a message on %r that cannot be written as a frame", routing_key)
            return None

    def _envelope(self, routing_key: str, body: bytes) -> dict[str, Any] | None:
        """The body parsed as an envelope, or None (dropped, logged and counted)."""
        if len(body) > self._max_message_bytes:
            # Every recipient would buffer its own copy of it.
            self._metrics.oversized.inc()
            log.warning(
                "dropping a %d-byte message on %r: over EDGE_MAX_MESSAGE_BYTES (%d)",
                len(body),
                routing_key,
                self._max_message_bytes,
            )
            return None
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError:
            obj = None
        if not isinstance(obj, dict) or not isinstance(obj.get("event"), str):
            self._metrics.dropped.inc()
            log.warning("dropping a message on %r that is not a JSON envelope", routing_key)
            return None
        return obj

    # -- admin --------------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        streams: dict[str, dict[str, int]] = {}
        for key, members in self._routes.items():
            if "." in key:
                continue
            streams[key] = {
                "connections": len(members),
                "users": len({conn.user_id for conn in members}),
            }
        return {
            "connections": len(self.connections),
            "users": len(self._users),
            "streams": streams,
        }
