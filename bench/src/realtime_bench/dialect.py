"""How each target speaks on the wire: URL, the "fully subscribed" signal, and message frames.

A dialect turns a text frame into the benchmark payload (``{"seq", "ts", "kind"}``)
or handles it as a control frame. The benchmark payload is what the publisher
put in the message: ``data`` of an envelope (floor, ws-edge), the event argument
(python-socketio), or a notification's ``metadata`` (REST scenario).
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from realtime_bench.connection import Connection

Payload = dict[str, Any]

BENCH_EVENT = "bench"


class Dialect(Protocol):
    name: str

    def url(self, base: str, token: str) -> str: ...

    def on_open(self, conn: Connection, token: str) -> None: ...

    def on_text(self, conn: Connection, text: bytes) -> Payload | None: ...


def _envelope_payload(frame: Payload) -> Payload | None:
    data = frame.get("data")
    if not isinstance(data, dict):
        return None
    if "ts" in data:
        return data
    notification = data.get("notification")
    if isinstance(notification, dict):
        meta = notification.get("metadata")
        if isinstance(meta, dict) and "ts" in meta:
            return meta
    return None


def _ready(conn: Connection) -> None:
    if not conn.ready.done():
        conn.ready.set_result(None)


class FloorDialect:
    """The floor binds before it accepts, so an open socket is a subscribed one."""

    name = "floor"

    def url(self, base: str, token: str) -> str:
        return f"{base}/ws?token={token}"

    def on_open(self, conn: Connection, token: str) -> None:
        _ready(conn)

    def on_text(self, conn: Connection, text: bytes) -> Payload | None:
        frame = orjson.loads(text)
        return _envelope_payload(frame)


class EdgeDialect:
    """ws-edge: subscribed once the `connected` frame arrives (docs/protocol.md)."""

    name = "ws-edge"

    def url(self, base: str, token: str) -> str:
        return f"{base}/ws?token={token}"

    def on_open(self, conn: Connection, token: str) -> None:
        return None

    def on_text(self, conn: Connection, text: bytes) -> Payload | None:
        frame = orjson.loads(text)
        if frame.get("stream") == "system":
            if frame.get("event") == "connected":
                _ready(conn)
            return None
        return _envelope_payload(frame)


class SocketIODialect:
    """Engine.IO 4 over WebSocket only: `0` open, `40` namespace connect, `2`/`3` ping/pong."""

    name = "python-socketio"

    def url(self, base: str, token: str) -> str:
        return f"{base}/socket.io/?EIO=4&transport=websocket"

    def on_open(self, conn: Connection, token: str) -> None:
        return None  # the server speaks first (`0{...}`)

    def on_text(self, conn: Connection, text: bytes) -> Payload | None:
        kind = text[:2]
        if kind == b"42":
            event = orjson.loads(text[2:])
            if isinstance(event, list) and len(event) == 2 and event[0] == BENCH_EVENT:
                payload: Payload = event[1]
                return payload
            return None
        if text == b"2":
            conn.send_text("3")
        elif text[:1] == b"0":
            conn.send_text("40" + orjson.dumps({"token": conn.token}).decode())
        elif kind == b"40":
            _ready(conn)
        elif kind == b"44":
            conn.fail(ConnectionRefusedError(f"namespace refused: {text[2:200]!r}"))
        return None


DIALECTS: dict[str, type[Dialect]] = {
    "floor": FloorDialect,
    "ws-edge": EdgeDialect,
    "python-socketio": SocketIODialect,
}
