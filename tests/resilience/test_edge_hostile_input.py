"""Scenario 5, hostile input to the edge: fuzzed frames, control floods, bad handshakes.

A real edge and RabbitMQ. Meanwhile a healthy user receives a steady stream of published
messages; it must get every one, in order, whatever the others send. Every answer the
hostile clients get is a strict-JSON `error` frame (or another documented reply), or a
documented close code; the edge never dies and logs no traceback.

The fuzzer's frames come from hypothesis strategies: each example is one frame on one of
several connections (sent concurrently), followed by a marker frame whose answer (an
error echoing the marker's id) says the edge has answered the frame. `derandomize=True`
and a bounded `max_examples` keep it deterministic and short for CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import httpx
import pytest
import websockets
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.edge import EdgeProcess, connected, publish, running_edge

from realtime_edge.closecodes import CloseCode
from realtime_shared.auth import issue_token
from realtime_shared.routing import user_key

pytestmark = [pytest.mark.integration, pytest.mark.resilience, pytest.mark.timeout(90)]

MakeToken = Callable[..., str]
STREAM = "notifications"
MAX_FRAME = 4096  # EDGE_MAX_FRAME_BYTES for these edges: oversized frames stay cheap to make
FUZZ_CONNECTIONS = 4
FUZZ_EXAMPLES = 3000
HANDSHAKES = 300

ERROR_CODES = {
    "INVALID_JSON",
    "INVALID_FRAME",
    "UNKNOWN_ACTION",
    "UNSUPPORTED_FRAME",
    "UNAUTHORIZED",
    "NOT_FOUND",
    "FORBIDDEN",
    "TOO_MANY_STREAMS",
    "RATE_LIMITED",
    "NO_HANDLER",
    "UNAVAILABLE",
}
REPLIES = {"pong", "subscribed", "unsubscribed", "refreshed", "published", "error"}
CLOSES = {
    int(CloseCode.POLICY_VIOLATION),  # kept flooding
    int(CloseCode.MESSAGE_TOO_BIG),  # over EDGE_MAX_FRAME_BYTES
    1007,  # a text frame that is not UTF-8: the WebSocket layer's own check
}
TRACE_MARKERS = ("Traceback", "Unhandled", "Exception in ASGI", "exception was never retrieved")


def strict(raw: str | bytes) -> dict[str, Any]:
    """Parse as a strict browser would: text, no NaN/Infinity, no duplicate keys, an object."""
    assert isinstance(raw, str), f"binary frame from the edge: {raw!r}"

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [k for k, _ in pairs]
        assert len(keys) == len(set(keys)), raw
        return dict(pairs)

    def no_constant(name: str) -> Any:
        raise AssertionError(f"{name} in {raw!r}")

    obj = json.loads(raw, object_pairs_hook=no_duplicates, parse_constant=no_constant)
    assert isinstance(obj, dict), raw
    return obj


def assert_clean_log(edge: EdgeProcess) -> None:
    text = edge.log_text()
    for marker in TRACE_MARKERS:
        assert marker not in text, text[-4000:]
    assert edge.proc.poll() is None, "the edge died"


# ---- the healthy user: a steady stream, every message, in order


@dataclass
class Healthy:
    """One user's connection and the producer publishing to it every `period` seconds."""

    ws: websockets.ClientConnection
    exchange: aio_pika.abc.AbstractExchange
    key: str
    period: float = 0.01
    sent: int = 0
    received: list[int] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def produce(self) -> None:
        while not self._stop.is_set():
            await publish(self.exchange, self.key, "steady", {"n": self.sent})
            self.sent += 1
            await asyncio.sleep(self.period)

    async def consume(self) -> None:
        async for raw in self.ws:
            frame = strict(raw)
            if frame.get("event") == "steady":
                self.received.append(frame["data"]["n"])
                self._arrived.set()

    async def finish(self, at_least: int = 100) -> None:
        """Stop producing (after `at_least` messages), then wait until the last has arrived."""
        deadline = time.monotonic() + 20
        while len(self.received) < at_least and time.monotonic() < deadline:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), deadline - time.monotonic())
        self._stop.set()
        while len(self.received) < self.sent and time.monotonic() < deadline:
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), deadline - time.monotonic())


@pytest.fixture
async def healthy_run(
    amqp_url: str, exchange: str, make_token: MakeToken
) -> AsyncIterator[Callable[[EdgeProcess], Any]]:
    """`async with healthy_run(edge) as healthy:` runs a healthy user through the block,
    then asserts it got every message, in order."""
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    ex = await channel.get_exchange(exchange)

    class Run:
        def __init__(self, edge: EdgeProcess) -> None:
            self.edge = edge

        async def __aenter__(self) -> Healthy:
            ws = await connected(self.edge.ws_url(f"/ws/{STREAM}", token=make_token("healthy")))
            self.healthy = Healthy(ws, ex, user_key(STREAM, "healthy"))
            self.tasks = [
                asyncio.create_task(self.healthy.produce()),
                asyncio.create_task(self.healthy.consume()),
            ]
            return self.healthy

        async def __aexit__(self, *exc: object) -> None:
            healthy = self.healthy
            await healthy.finish()
            await healthy.ws.close()
            await asyncio.gather(*self.tasks, return_exceptions=True)
            if exc[0] is None:
                assert healthy.received == list(range(healthy.sent))

    try:
        yield Run
    finally:
        await connection.close()


# ---- the fuzzer's frames

ACTIONS = ["subscribe", "unsubscribe", "ping", "refresh", "publish", "", "SUBSCRIBE", "nope"]
KEYS = ["action", "streams", "stream", "recover", "token", "event", "data", "id", "session_id"]

UNICODE = st.sampled_from(
    [
        "\ud800",  # lone surrogates (escaped in JSON, unencodable in UTF-8)
        "\udfff",
        "\x00",
        "\ufeff",  # BOM
        "\u202e",  # right-to-left override
        "\U0001f600",
        "e\u0301",
        "\uffff",
        "\uff2e\uff2f\uff34\uff29\uff26\uff29\uff23\uff21\uff34\uff29\uff2f\uff2e",  # fullwidth
        "notifications\x00",
        "x" * 200,  # over every length limit on names and ids
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    UNICODE,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def nested(depth: int) -> Any:
    value: Any = {}
    for _ in range(depth):
        value = {"d": [value]}
    return value


@st.composite
def action_frames(draw: st.DrawFn) -> str:
    """Every action with fields of the right name but often the wrong type, and extras."""
    obj: dict[str, Any] = {"action": draw(st.sampled_from(ACTIONS) | JSON_VALUES)}
    for key in draw(st.lists(st.sampled_from(KEYS[1:]), max_size=5, unique=True)):
        obj[key] = draw(
            JSON_VALUES
            | st.sampled_from([["chat"], [STREAM, "nope"], "chat", {"chat": {}}, nested(20)])
        )
    if draw(st.booleans()):
        obj[draw(st.text(max_size=10))] = draw(JSON_VALUES)  # an extra field
    text = json.dumps(obj, ensure_ascii=draw(st.booleans()))
    return text


def deep_json(depth: int, kind: str) -> str:
    inner = "[" * depth + "]" * depth
    if kind == "bare":
        return inner
    if kind == "publish":
        return f'{{"action":"publish","stream":"chat","event":"e","data":{{"x":{inner}}}}}'
    return f'{{"action":"subscribe","streams":["chat"],"recover":{{"chat":{inner}}}}}'


FRAMES = st.one_of(
    action_frames(),
    st.binary(max_size=64),  # sent as a binary frame
    st.text(max_size=64),  # random text
    st.builds(
        deep_json,
        st.sampled_from([10, 200, 254, 256, 600, 1100]),
        st.sampled_from(["bare", "publish", "subscribe"]),
    ),
    st.builds(  # huge: just under and over the frame limit
        lambda n, action: json.dumps({"action": action, "token": "t" * n}),
        st.sampled_from([MAX_FRAME - 64, MAX_FRAME + 1]),
        st.sampled_from(["refresh", "ping"]),
    ),
    st.sampled_from(
        [
            '{"action":"ping"',  # cut short
            '\ufeff{"action":"ping"}',  # BOM before the JSON
            '{"action":"ping","action":"publish"}',  # duplicate key
            '{"action":"\\ud800"}',  # a lone surrogate, escaped
            '{"action":"subscribe","streams":["\\u0000"]}',
            '{"action":"ping","x":NaN}',
            '{"action":"ping","x":1e999}',
            '{"action":"refresh","token":"\\udfff"}',
            "null",
            "[]",
        ]
    ),
    st.just(b"\xff\xfe invalid utf-8 as text"),  # marked: sent as a text frame
)


class Fuzzed:
    """A pool of hostile connections, each sending frame + marker; replies are checked."""

    def __init__(self, edge: EdgeProcess, token: str) -> None:
        self.edge = edge
        self.token = token
        self.conns: list[websockets.ClientConnection | None] = [None] * FUZZ_CONNECTIONS
        self.frames = 0
        self.closes: dict[int, int] = {}
        self.errors: dict[str, int] = {}

    async def _conn(self, index: int) -> websockets.ClientConnection:
        ws = self.conns[index]
        if ws is None:
            url = self.edge.ws_url("/ws/chat", token=self.token)
            ws = self.conns[index] = await connected(url, max_size=None)
        return ws

    async def send(self, index: int, frame: str | bytes, as_text: bool) -> None:
        ws = await self._conn(index)
        self.frames += 1
        try:
            await ws.send(frame, text=as_text)
            # A marker the edge answers with its own id: a fuzzed frame may be a ping too.
            marker = f"marker-{self.frames}"
            await ws.send(f'{{"action":"publish","id":"{marker}"}}')
            while True:  # replies come in order; `published`/`NO_HANDLER` may come later
                reply = strict(await asyncio.wait_for(ws.recv(), 10))
                assert reply["stream"] == "system" and reply["event"] in REPLIES, reply
                if reply["event"] == "error":
                    if reply["data"].get("id") == marker:
                        return
                    code = reply["data"]["code"]
                    assert code in ERROR_CODES and reply["data"]["message"], reply
                    self.errors[code] = self.errors.get(code, 0) + 1
        except websockets.ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            assert code in CLOSES, f"closed with {code} after {frame[:200]!r}"
            self.closes[code] = self.closes.get(code, 0) + 1
            self.conns[index] = None

    async def run(self, index: int, frames: list[str | bytes]) -> None:
        """One connection's share of the examples, in order, each answered before the next."""
        for frame in frames:
            as_text = isinstance(frame, str) or frame.startswith(b"\xff\xfe invalid")
            if isinstance(frame, str):
                try:
                    frame.encode()
                except UnicodeEncodeError:  # lone surrogates: a client sends them escaped
                    frame = json.dumps(frame)
            await asyncio.wait_for(self.send(index, frame, as_text), 15)

    async def close(self) -> None:
        for ws in self.conns:
            if ws is not None:
                await ws.close()


@pytest.fixture
async def edge(amqp_url: str, exchange: str) -> AsyncIterator[EdgeProcess]:
    async with running_edge(
        amqp_url,
        exchange,
        REALTIME_INBOUND_EXCHANGE=f"{exchange}.inbound",
        EDGE_MAX_FRAME_BYTES=str(MAX_FRAME),
        # The fuzzer sends far faster than the default control rate: the limit is tested
        # below; here every frame should reach the parser.
        EDGE_CONTROL_RATE="100000",
        EDGE_CONTROL_BURST="100000",
    ) as edge:
        yield edge


async def test_fuzzed_frames_get_clear_errors_and_the_healthy_user_everything(
    edge: EdgeProcess, healthy_run: Any, make_token: MakeToken
) -> None:
    fuzz = Fuzzed(edge, make_token("fuzzer", streams=["chat", STREAM]))
    # Hypothesis draws the examples up front: drawing while the event loop runs clients in
    # another thread would share `random`'s global state with them (and shrinking a run
    # against a live process would not isolate anything). A failure names its frame.
    examples: list[list[str | bytes]] = [[] for _ in range(FUZZ_CONNECTIONS)]

    @settings(
        max_examples=FUZZ_EXAMPLES,
        derandomize=True,
        database=None,  # derandomize: nothing to replay, nothing written to the tree
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(index=st.integers(0, FUZZ_CONNECTIONS - 1), frame=FRAMES)
    def draw(index: int, frame: str | bytes) -> None:
        examples[index].append(frame)

    draw()
    started = time.monotonic()
    async with healthy_run(edge) as healthy:
        await asyncio.gather(*(fuzz.run(i, frames) for i, frames in enumerate(examples)))
    await fuzz.close()
    assert_clean_log(edge)
    print(
        f"\nscenario 5 fuzz: {fuzz.frames} frames in {time.monotonic() - started:.1f} s, "
        f"errors {dict(sorted(fuzz.errors.items()))}, closes {fuzz.closes}, "
        f"healthy {len(healthy.received)}/{healthy.sent} in order"
    )


async def test_control_floods_are_limited_and_closed_the_healthy_user_unaffected(
    amqp_url: str, exchange: str, healthy_run: Any, make_token: MakeToken
) -> None:
    # The default limits (10/s, burst 50, closed after 500 refused in a row).
    async with running_edge(
        amqp_url, exchange, REALTIME_INBOUND_EXCHANGE=f"{exchange}.inbound"
    ) as edge:
        flooders = [
            await connected(edge.ws_url("/ws/chat", token=make_token(f"flood-{n}")))
            for n in range(4)
        ]
        frames = [
            '{"action":"ping"}',
            '{"action":"subscribe","streams":["chat"]}',
            '{"action":"unsubscribe","streams":["ssh"]}',
            '{"action":"refresh","token":"garbage"}',
            '{"action":"what"}',
        ]
        sent = 0

        async def flood(ws: websockets.ClientConnection, frame: str) -> list[str]:
            nonlocal sent
            seen: list[str] = []
            for _ in range(700):  # past burst + 10 x burst
                await ws.send(frame)
                sent += 1
            code = await read_until_closed(ws, seen)
            assert code == CloseCode.POLICY_VIOLATION
            return seen

        async with healthy_run(edge):
            results = await asyncio.gather(
                *(flood(ws, frames[n % len(frames)]) for n, ws in enumerate(flooders))
            )
        for seen in results:
            assert seen.count("RATE_LIMITED") == 500, seen[-5:]
            assert all(code != "RATE_LIMITED" for code in seen[:50])
        assert await edge.metric("edge_connections_closed_total", 'code="1008"') == 4
        assert_clean_log(edge)
        print(f"\nscenario 5 control flood: {sent} frames on 4 connections, 4 closed 1008")


async def read_until_closed(ws: websockets.ClientConnection, seen: list[str]) -> int | None:
    """Record each reply (an error's code, or "ok") until the edge closes; the close code."""
    try:
        while True:
            reply = strict(await asyncio.wait_for(ws.recv(), 5))
            seen.append(reply["data"]["code"] if reply["event"] == "error" else "ok")
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None


def garbage_tokens(make_token: MakeToken) -> list[str]:
    header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0"  # {"alg":"none","typ":"JWT"}
    return [
        make_token("late", ttl=-60),  # expired
        issue_token("forged", "not-the-secret-" * 4),  # signed with another key
        issue_token("forged", "x" * 64, algorithm="HS512"),
        f"{header}.eyJzdWIiOiJhZG1pbiJ9.",  # alg none
        make_token("tampered")[:-3] + "AAA",
        "",
        "garbage",
        "a.b.c",
        "ünïcødé.\x00.\ufeff",
        "x" * 4000,
        "..",
        "%00",
    ]


async def test_handshake_floods_with_bad_tokens_are_401_and_harmless(
    edge: EdgeProcess, healthy_run: Any, make_token: MakeToken
) -> None:
    tokens = garbage_tokens(make_token)
    statuses: dict[int, int] = {}

    async def handshake(n: int) -> None:
        token = tokens[n % len(tokens)]
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(edge.ws_url(f"/ws/{STREAM}", token=token), open_timeout=10)
        response = refused.value.response
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        body = strict(response.body.decode())
        assert body["error"]["code"] == "UNAUTHORIZED", body

    started = time.monotonic()
    async with healthy_run(edge):
        for batch in range(0, HANDSHAKES, 50):
            await asyncio.gather(*(handshake(n) for n in range(batch, batch + 50)))
    assert statuses == {401: HANDSHAKES}
    failures = await edge.metric("edge_connections_opened_total")
    assert failures == 1  # only the healthy user got in
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{edge.base_url}/readyz")).status_code == 200
    assert_clean_log(edge)
    print(
        f"\nscenario 5 handshakes: {HANDSHAKES} bad tokens in "
        f"{time.monotonic() - started:.1f} s, all 401"
    )
