"""How each target speaks on the wire: URL, the "fully subscribed" signal, and message frames.

A dialect turns a text frame into the benchmark payload (``{"seq", "ts", "kind"}``)
or handles it as a control frame. The benchmark payload is what the publisher
put in the message: ``data`` of an envelope (floor, ws-edge), the event argument
(python-socketio), a notification's ``metadata`` (REST scenario), or ``data`` of a
backend's echo (publish round trip).

Two more edge dialects drive the edge's newer features: `RecoveringDialect` recovers
each user's missed notifications when it connects and checks the replay is exact;
`ChatDialect` publishes on `chat` and times the acknowledgement and the echo.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson

from realtime_bench.connection import Connection
from realtime_shared.envelope import Position, position_of

Payload = dict[str, Any]

BENCH_EVENT = "bench"
NOTIFICATIONS = "notifications"
CHAT = "chat"
SEND_EVENT = "message.send"
ECHO_EVENT = "message.echo"


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


class RecoveryMismatch(ConnectionError):
    """A recovery that was not exact: counted as failed, with the verdict as its reason."""


OK = "exact"


def recovery_verdict(seqs: Sequence[int], after: int, missed: int, recovered: bool) -> str:
    """What a recovery delivered before `subscribed`, against `after + 1 .. after + missed`.

    `exact` only when every missed seq came once, in order, and nothing else; otherwise
    the first thing wrong, in the order a user would mind it.
    """
    if not recovered:
        return "not_recovered"
    expected = list(range(after + 1, after + missed + 1))
    if list(seqs) == expected:
        return OK
    if len(set(seqs)) < len(seqs):
        return "duplicate"
    if set(expected) - set(seqs):
        return "missing"
    if set(seqs) - set(expected):
        return "unexpected"
    return "out_of_order"


class RecoveringDialect(EdgeDialect):
    """ws-edge with positions: each user's connection recovers `notifications` on connect.

    A user with a position sends `subscribe` with `recover` as soon as `connected` comes,
    and is subscribed once the `subscribed` reply says `recovered: true` and the frames
    before it were exactly the `expect[user]` missed ones; any other outcome fails the
    connection, with the verdict as the reason. A user without a position is subscribed
    at `connected`. Positions follow every numbered frame, so a later round recovers from
    where this one ended.
    """

    name = "ws-edge-recover"

    def __init__(
        self,
        positions: dict[str, Sequence[Any]] | None = None,
        expect: dict[str, int] | None = None,
    ) -> None:
        self.positions: dict[str, Position] = {
            user: (str(epoch), int(seq)) for user, (epoch, seq) in (positions or {}).items()
        }
        self.expect = expect or {}
        self.pending: dict[Connection, tuple[Position, list[int]]] = {}
        self.verdicts: Counter[str] = Counter()
        self.replayed = 0
        self.late_duplicates = 0

    def on_text(self, conn: Connection, text: bytes) -> Payload | None:
        frame = orjson.loads(text)
        if frame.get("stream") == "system":
            event = frame.get("event")
            if event == "connected":
                self._recover(conn)
            elif event == "subscribed":
                self._subscribed(conn, frame)
            return None
        position = position_of(frame)
        if position is not None and frame.get("stream") == NOTIFICATIONS:
            pending = self.pending.get(conn)
            if pending is not None:
                pending[1].append(position[1])
                self.replayed += 1
            elif position[1] <= self.positions.get(conn.user, ("", 0))[1]:
                self.late_duplicates += 1  # after the reply, yet the replay had it
            self.positions[conn.user] = position
        return _envelope_payload(frame)

    def _recover(self, conn: Connection) -> None:
        position = self.positions.get(conn.user)
        if position is None:
            _ready(conn)
            return
        self.pending[conn] = (position, [])
        epoch, seq = position
        recover = {NOTIFICATIONS: {"epoch": epoch, "seq": seq}}
        frame = {"action": "subscribe", "streams": [NOTIFICATIONS], "recover": recover}
        conn.send_text(orjson.dumps(frame).decode())

    def _subscribed(self, conn: Connection, frame: Payload) -> None:
        pending = self.pending.pop(conn, None)
        if pending is None:
            return
        (_, after), seqs = pending
        data = frame.get("data")
        recovered = data.get("recovered") if isinstance(data, dict) else None
        ok = isinstance(recovered, dict) and recovered.get(NOTIFICATIONS) is True
        verdict = recovery_verdict(seqs, after, self.expect.get(conn.user, 0), ok)
        self.verdicts[verdict] += 1
        if verdict == OK:
            _ready(conn)
        else:
            conn.fail(RecoveryMismatch(verdict))


class ChatDialect(EdgeDialect):
    """ws-edge on `chat`: publishes, and times `published` and the backend's echo.

    Each `publish` carries its send time in `data.ts` (monotonic, one clock per host) and
    the same id in `data.id` and the frame's `id`; the echo backend sends `data` back, so
    the echo is timed like any benchmark message (its payload is the echoed data).
    """

    name = "ws-edge-chat"

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        """Send time by id, until its `published` or error frame."""
        self.awaiting: set[str] = set()
        """Ids of this phase whose echo has not come yet."""
        self.acks: list[float] = []
        self.refused: Counter[str] = Counter()
        self.unexpected = 0
        self.count = 0

    def next_phase(self) -> None:
        """What has not come back yet is not this phase's: a late echo counts as unexpected."""
        self.awaiting.clear()
        self.acks = []
        self.refused = Counter()
        self.unexpected = 0

    def url(self, base: str, token: str) -> str:
        return f"{base}/ws?token={token}&stream={CHAT}"

    def publish(self, conn: Connection) -> None:
        self.count += 1
        frame_id = str(self.count)
        ts = time.monotonic()
        self.sent[frame_id] = ts
        self.awaiting.add(frame_id)
        data = {"id": frame_id, "ts": ts}
        frame = {"action": "publish", "stream": CHAT, "event": SEND_EVENT, "data": data}
        conn.send_text(orjson.dumps({**frame, "id": frame_id}).decode())

    def on_text(self, conn: Connection, text: bytes) -> Payload | None:
        frame = orjson.loads(text)
        stream, event = frame.get("stream"), frame.get("event")
        if stream == "system":
            data = frame.get("data") or {}
            if event == "connected":
                _ready(conn)
            elif event == "published":
                sent = self.sent.pop(str(data.get("id")), None)
                if sent is not None:
                    self.acks.append(time.monotonic() - sent)
            elif event == "error":
                self.refused[str(data.get("code"))] += 1
                self.sent.pop(str(data.get("id")), None)
            return None
        if stream == CHAT and event == ECHO_EVENT:
            payload = _envelope_payload(frame)
            if payload is None or str(payload.get("id")) not in self.awaiting:
                self.unexpected += 1  # a second echo, or a late one: not a round trip
                return None
            self.awaiting.discard(str(payload["id"]))
            return payload
        return None


DIALECTS: dict[str, Callable[..., Dialect]] = {
    "floor": FloorDialect,
    "ws-edge": EdgeDialect,
    "python-socketio": SocketIODialect,
    "ws-edge-recover": RecoveringDialect,
    "ws-edge-chat": ChatDialect,
}
