"""The per-connection control-frame limit (EDGE_CONTROL_RATE / EDGE_CONTROL_BURST).

Unit tests drive a Session with a fake clock; the rest run a real edge and RabbitMQ and
look at what a client sees: a RATE_LIMITED error per refused frame, the connection kept
open while it slows down, and a 1008 close once it floods far past the limit.
"""

import asyncio
from collections.abc import AsyncIterator, Callable

import orjson
import pytest
import websockets
from support.edge import EdgeProcess, connected, recv_frame, running_edge

from realtime_edge.protocol import (
    FLOOD_FACTOR,
    ControlRefused,
    Publish,
    PublishRefused,
    RateLimits,
    Session,
)
from realtime_shared.auth import Claims

MakeToken = Callable[..., str]

BURST = 4


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def control_session(clock: Clock, rate: float = 1.0, burst: int = BURST) -> Session:
    session = Session(
        Claims(sub="alice", exp=2**31),
        max_streams=8,
        control_limits=RateLimits(rate=rate, burst=burst, clock=clock),
    )
    session.commit(session.plan(["notifications"]))
    return session


def test_control_frames_get_a_burst_then_the_rate() -> None:
    clock = Clock()
    session = control_session(clock)
    for _ in range(BURST):
        session.admit_control()
    with pytest.raises(ControlRefused) as refused:
        session.admit_control("f-1")
    assert refused.value.code == "RATE_LIMITED"
    assert orjson.loads(refused.value.frame)["data"]["id"] == "f-1"
    clock.now += 1.0  # one token back
    session.admit_control()
    with pytest.raises(ControlRefused):
        session.admit_control()


def test_flooding_counts_refusals_in_a_row_and_an_admitted_frame_resets_it() -> None:
    clock = Clock()
    session = control_session(clock, burst=2)
    session.admit_control()
    session.admit_control()
    for _ in range(FLOOD_FACTOR * 2 - 1):
        with pytest.raises(ControlRefused):
            session.admit_control()
    assert not session.flooding
    clock.now += 1.0
    session.admit_control()  # it slowed down: the run is over
    assert session.refused_in_row == 0
    for _ in range(FLOOD_FACTOR * 2):
        with pytest.raises(ControlRefused):
            session.admit_control()
    assert session.flooding


def test_a_refused_publish_takes_a_control_token_so_it_cannot_flood_either() -> None:
    clock = Clock()
    session = control_session(clock, burst=1)
    not_held = Publish("chat", "m", {}, "c-1")
    with pytest.raises(PublishRefused) as first:
        session.admit_publish(not_held)
    assert first.value.code == "FORBIDDEN"
    with pytest.raises(ControlRefused) as second:
        session.admit_publish(not_held)
    assert second.value.code == "RATE_LIMITED" and second.value.frame_id == "c-1"


# Against a real edge: a bucket of BURST frames refilled at 1 per 10 s, so nothing refills
# during a test unless it waits on purpose.


async def read_until_closed(ws: websockets.ClientConnection, codes: list[object]) -> int | None:
    """Record each reply (an error's code, or the event) until the edge closes; the code."""
    try:
        while True:
            frame = await recv_frame(ws)
            data = frame.get("data")
            codes.append(data["code"] if isinstance(data, dict) else frame["event"])
    except websockets.ConnectionClosed as exc:
        return exc.rcvd.code if exc.rcvd is not None else None


@pytest.fixture
async def edge(amqp_url: str, exchange: str) -> AsyncIterator[EdgeProcess]:
    async with running_edge(
        amqp_url, exchange, EDGE_CONTROL_RATE="0.1", EDGE_CONTROL_BURST=str(BURST)
    ) as edge:
        yield edge


async def refused_metric(edge: EdgeProcess, code: str = "RATE_LIMITED") -> float:
    return await edge.metric("edge_client_messages_refused_total", f'code="{code}",kind="control"')


@pytest.mark.integration
async def test_past_the_burst_each_control_frame_is_refused_with_rate_limited(
    edge: EdgeProcess, make_token: MakeToken
) -> None:
    ws = await connected(edge.ws_url("/ws/notifications", token=make_token("alice")))
    for _ in range(BURST):
        await ws.send(orjson.dumps({"action": "ping"}).decode())
    for _ in range(BURST):
        assert (await recv_frame(ws))["event"] == "pong"
    refused = [
        {"action": "ping"},
        {"action": "subscribe", "streams": ["chat"]},
        {"action": "unsubscribe", "streams": ["notifications"]},
        {"action": "refresh", "token": make_token("alice")},
        {"action": "no-such-action"},
    ]
    for frame in refused:
        await ws.send(orjson.dumps(frame).decode())
    await ws.send("not json")
    await ws.send(b"\x00binary")
    for _ in range(len(refused) + 2):
        frame = await recv_frame(ws)
        assert frame["stream"] == "system" and frame["event"] == "error", frame
        assert frame["data"]["code"] == "RATE_LIMITED", frame  # type: ignore[index]
    assert await refused_metric(edge) == len(refused) + 2
    text = edge.log_text()
    assert text.count("control frames rate limited") == 1  # one line per run, not per frame
    assert "Traceback" not in text
    await ws.close()


@pytest.mark.integration
async def test_an_honest_pace_is_never_limited(
    amqp_url: str, exchange: str, make_token: MakeToken
) -> None:
    # The defaults: a client resubscribing to every stream one by one and pinging is fine.
    async with running_edge(amqp_url, exchange) as edge:
        ws = await connected(edge.ws_url("/ws", token=make_token("alice")))
        for stream in ["notifications", "chat", "ssh"] * 5:
            await ws.send(orjson.dumps({"action": "subscribe", "streams": [stream]}).decode())
            await ws.send(orjson.dumps({"action": "ping"}).decode())
        replies = [await recv_frame(ws) for _ in range(30)]
        assert {r["event"] for r in replies} == {"subscribed", "pong"}, replies
        await ws.close()
        assert await refused_metric(edge) == 0


@pytest.mark.integration
async def test_a_client_flooding_far_past_the_limit_is_closed_1008(
    edge: EdgeProcess, make_token: MakeToken
) -> None:
    ws = await connected(edge.ws_url("/ws/notifications", token=make_token("alice")))
    ping = orjson.dumps({"action": "ping"}).decode()
    flood = BURST + FLOOD_FACTOR * BURST + 50  # past the point where the edge gives up
    for _ in range(flood):
        await ws.send(ping)
    codes: list[object] = []
    assert await read_until_closed(ws, codes) == 1008
    assert codes == ["pong"] * BURST + ["RATE_LIMITED"] * (FLOOD_FACTOR * BURST)
    assert await edge.metric("edge_connections_closed_total", 'code="1008"') == 1
    assert "kept flooding" in edge.log_text()


@pytest.mark.integration
async def test_a_client_that_slows_down_is_served_again(
    amqp_url: str, exchange: str, make_token: MakeToken
) -> None:
    async with running_edge(
        amqp_url, exchange, EDGE_CONTROL_RATE="20", EDGE_CONTROL_BURST="2"
    ) as edge:
        ws = await connected(edge.ws_url("/ws/notifications", token=make_token("alice")))
        ping = orjson.dumps({"action": "ping"}).decode()
        for _ in range(3):
            await ws.send(ping)
        events = [(await recv_frame(ws))["event"] for _ in range(3)]
        assert events == ["pong", "pong", "error"]
        await asyncio.sleep(0.2)  # the refill itself is what is tested: 4 tokens' worth
        await ws.send(ping)
        assert (await recv_frame(ws))["event"] == "pong"
        await ws.close()
