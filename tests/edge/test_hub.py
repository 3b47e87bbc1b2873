"""The hub's fan-out without sockets: who gets a message, in what form, and who is dropped."""

import asyncio
from typing import Any

import orjson
import pytest

from realtime_edge.closecodes import CloseCode
from realtime_edge.connection import Connection
from realtime_edge.hub import Hub
from realtime_edge.metrics import EdgeMetrics
from realtime_edge.protocol import Session
from realtime_shared.auth import Claims
from realtime_shared.routing import stream_key, user_key

pytestmark = pytest.mark.component


class Client:
    """An ASGI `send` that records frames; `stall()` makes it stop taking them."""

    def __init__(self) -> None:
        self.frames: list[dict[str, Any]] = []
        self.closed: int | None = None
        self.aborted = False
        self.texts: list[str] = []
        self._writable = asyncio.Event()
        self._writable.set()

    def abort(self) -> None:
        self.aborted = True

    def stall(self) -> None:
        self._writable.clear()

    async def send(self, message: Any) -> None:
        await self._writable.wait()
        if message["type"] == "websocket.close":
            self.closed = message["code"]
        else:
            self.texts.append(message["text"])
            self.frames.append(orjson.loads(message["text"]))


def connection(hub: Hub, user: str, streams: list[str], limit: int = 4) -> Connection:
    session = Session(Claims(sub=user, exp=2**31), max_streams=8)
    session.commit(session.plan(streams))
    client = Client()
    conn = Connection(f"c-{user}-{len(hub.connections)}", session, client.send, limit, client.abort)
    CLIENTS[conn] = client
    hub.register(conn)
    return conn


CLIENTS: dict[Connection, Client] = {}

MAX_MESSAGE = 1 << 20


def queued(conn: Connection) -> list[dict[str, Any]]:
    """What the client has received so far."""
    return CLIENTS[conn].frames


def body(stream: str, event: str, **data: object) -> bytes:
    return orjson.dumps({"stream": stream, "event": event, "data": data})


async def test_a_user_key_reaches_that_users_connections_on_that_stream_only() -> None:
    hub = Hub(EdgeMetrics(), MAX_MESSAGE)
    a1 = connection(hub, "a.b", ["notifications"])
    a2 = connection(hub, "a.b", ["notifications", "chat"])
    other = connection(hub, "a", ["notifications"])
    hub.dispatch(user_key("notifications", "a.b"), body("notifications", "hi", n=1))
    hub.dispatch(user_key("chat", "a.b"), body("chat", "chat.only"))
    assert [f["event"] for f in queued(a1)] == ["hi"]
    assert [f["event"] for f in queued(a2)] == ["hi", "chat.only"]
    assert queued(other) == []


async def test_a_stream_key_reaches_every_holder() -> None:
    hub = Hub(EdgeMetrics(), MAX_MESSAGE)
    conns = [connection(hub, user, ["chat"]) for user in ("x", "y")]
    bystander = connection(hub, "z", ["notifications"])
    hub.dispatch(stream_key("chat"), body("chat", "all"))
    assert all(queued(c) == [{"stream": "chat", "event": "all", "data": {}}] for c in conns)
    assert queued(bystander) == []


async def test_the_frame_is_forwarded_untouched_when_already_right() -> None:
    hub = Hub(EdgeMetrics(), MAX_MESSAGE)
    a, b = connection(hub, "u", ["chat"]), connection(hub, "v", ["chat"])
    raw = b'{"stream":"chat","event":"e","meta":{"k":[1,2]}}'
    hub.dispatch("chat", raw)
    assert queued(a) == queued(b) == [orjson.loads(raw)]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"stream":"notifications","event":"e","data":{"x":1}}',
        b'{"event": "e", "data": {"x": 1}}',
        b'{ "stream" : "chat", "event": "e", "data": {"x": 1}}',
    ],
)
async def test_stream_is_set_from_the_routing_key(raw: bytes) -> None:
    hub = Hub(EdgeMetrics(), MAX_MESSAGE)
    conn = connection(hub, "u", ["chat"])
    hub.dispatch(user_key("chat", "u"), raw)
    assert queued(conn) == [{"stream": "chat", "event": "e", "data": {"x": 1}}]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"stream":"chat","event":"e","stream":"system"}',  # the last key wins in JSON.parse
        b'{"stream":"chat","stream":"system","event":"subscribed","data":{"rejected":[]}}',
    ],
)
async def test_a_producer_cannot_forge_another_streams_frame(raw: bytes) -> None:
    hub = Hub(EdgeMetrics(), MAX_MESSAGE)
    conn = connection(hub, "u", ["chat"])
    hub.dispatch(user_key("chat", "u"), raw)
    (frame,) = CLIENTS[conn].texts
    assert frame.count('"stream"') == 1  # one key, so every JSON parser agrees on it
    assert orjson.loads(frame)["stream"] == "chat"


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1]",
        b'{"data":{}}',
        b"\xff\xfe",
        b'{"stream":"chat","event":"e","data":{"x":NaN}}',  # the fast-path prefix, invalid
        b'{"stream":"chat","event":"e","data":{"x":1',  # cut short
        b'{"stream":"chat","event":"e","data":{"x":Infinity}}',
        # orjson reads 300 levels but writes no more than 254: parsed, yet no frame.
        b'{"stream":"chat","event":"e","data":' + b"[" * 300 + b"]" * 300 + b"}",
    ],
)
async def test_a_body_that_is_not_an_envelope_is_dropped_and_counted(raw: bytes) -> None:
    metrics = EdgeMetrics()
    hub = Hub(metrics, MAX_MESSAGE)
    conn = connection(hub, "u", ["chat"])
    hub.dispatch(user_key("chat", "u"), raw)
    assert queued(conn) == []
    assert metrics.dropped._value.get() == 1


async def test_a_message_over_the_size_limit_is_dropped_counted_and_the_next_arrives() -> None:
    metrics = EdgeMetrics()
    hub = Hub(metrics, max_message_bytes=4096)
    conn = connection(hub, "u", ["chat"])
    hub.dispatch(user_key("chat", "u"), body("chat", "big", pad="x" * 5000))
    hub.dispatch(user_key("chat", "u"), body("chat", "small"))
    assert [f["event"] for f in queued(conn)] == ["small"]
    assert metrics.oversized._value.get() == 1


async def test_a_client_that_stops_reading_is_closed_with_1013_and_no_one_else_is() -> None:
    metrics = EdgeMetrics()
    hub = Hub(metrics, MAX_MESSAGE)
    slow = connection(hub, "slow", ["chat"], limit=2)
    fast = connection(hub, "fast", ["chat"], limit=2)
    CLIENTS[slow].stall()
    for n in range(4):  # one in flight, two queued, the fourth overflows
        hub.dispatch("chat", body("chat", "e", n=n))
    assert slow.close_code is CloseCode.TRY_AGAIN_LATER
    assert slow.id not in hub.connections
    assert fast.close_code is None
    assert [f["data"]["n"] for f in queued(fast)] == [0, 1, 2, 3]
    assert metrics.slow_consumers._value.get() == 1
    hub.dispatch("chat", body("chat", "after"))
    assert queued(fast)[-1]["event"] == "after"
    assert queued(slow) == []
    CLIENTS[slow]._writable.set()  # if it ever reads again: the frame in flight, then 1013
    deadline = asyncio.get_running_loop().time() + 2
    while CLIENTS[slow].closed is None:
        assert asyncio.get_running_loop().time() < deadline, "no close frame after resuming"
        await asyncio.sleep(0)
    assert [f["data"]["n"] for f in queued(slow)] == [0]
    assert CLIENTS[slow].closed == 1013
    await slow.dispose()


async def test_leaving_a_stream_and_unregistering_stop_delivery_and_update_the_summary() -> None:
    hub = Hub(EdgeMetrics(), MAX_MESSAGE)
    a = connection(hub, "a", ["notifications", "chat"])
    b = connection(hub, "b", ["notifications"])
    c = connection(hub, "a", ["notifications"])
    assert hub.summary() == {
        "connections": 3,
        "users": 2,
        "streams": {
            "notifications": {"connections": 3, "users": 2},
            "chat": {"connections": 1, "users": 1},
        },
    }
    hub.leave(a, "chat")
    hub.unregister(b)
    hub.unregister(b)  # idempotent
    hub.dispatch("chat", body("chat", "gone"))
    hub.dispatch(user_key("notifications", "b"), body("notifications", "gone"))
    assert queued(a) == queued(b) == queued(c) == []
    assert hub.summary() == {
        "connections": 2,
        "users": 1,
        "streams": {"notifications": {"connections": 2, "users": 1}},
    }
