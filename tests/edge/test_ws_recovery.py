"""Recovery through a real edge and RabbitMQ, with a history owner the test scripts.

Exactly what was missed, in order, once; or `recovered: false` and a working
connection. The interleavings that matter (live messages arriving while the history
is fetched) are forced, not hoped for.
"""

import asyncio
import time
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import websockets
from support.edge import EdgeProcess, connected, recv_event, recv_frame, running_edge
from support.history import ScriptedOwner

pytestmark = pytest.mark.integration

MakeToken = Callable[..., str]
RECOVERY_MAX = 20


async def recover(
    ws: websockets.ClientConnection, epoch: str, seq: int, stream: str = "notifications"
) -> None:
    frame = {
        "action": "subscribe",
        "streams": [],
        "recover": {stream: {"epoch": epoch, "seq": seq}},
    }
    await ws.send(orjson.dumps(frame).decode())


async def until_subscribed(ws: websockets.ClientConnection) -> tuple[list[int], dict[str, Any]]:
    """The seqs of the stream frames before the `subscribed` reply, and that reply."""
    seqs: list[int] = []
    while True:
        frame = await recv_frame(ws, within=10)
        if frame["stream"] == "system":
            if frame["event"] == "subscribed":
                return seqs, frame["data"]  # type: ignore[return-value]
            continue
        seqs.append(frame["meta"]["seq"])  # type: ignore[index]


async def seqs_of(ws: websockets.ClientConnection, count: int) -> list[int]:
    return [(await recv_frame(ws))["meta"]["seq"] for _ in range(count)]  # type: ignore[index]


@pytest.fixture
async def edge(amqp_url: str, exchange: str) -> Any:
    async with running_edge(
        amqp_url,
        exchange,
        EDGE_RECOVERY_MAX=str(RECOVERY_MAX),
        EDGE_RECOVERY_TIMEOUT="1",
    ) as process:
        yield process


@pytest.mark.parametrize("missed", [1, 17, RECOVERY_MAX])
async def test_a_client_that_was_away_gets_exactly_what_it_missed(
    edge: EdgeProcess, amqp_url: str, exchange: str, make_token: MakeToken, missed: int
) -> None:
    async with ScriptedOwner(amqp_url, exchange) as owner:
        ws = await connected(edge.ws_url(token=make_token("alice")))
        for n in range(3):
            await owner.publish("alice", "before", {"n": n})
        assert await seqs_of(ws, 3) == [1, 2, 3]
        await ws.close()
        for n in range(missed):
            await owner.publish("alice", "while.away", {"n": n})

        ws = await connected(edge.ws_url(token=make_token("alice")))
        await recover(ws, "e1", 3)
        replayed, reply = await until_subscribed(ws)
        assert replayed == list(range(4, 4 + missed))
        assert reply["recovered"] == {"notifications": True}
        await owner.publish("alice", "after")
        assert await seqs_of(ws, 1) == [4 + missed]
        await ws.close()
        assert await edge.metric("edge_recovery_replayed_messages_total") == missed


async def test_more_missed_than_the_limit_is_not_recovered_and_nothing_is_replayed(
    edge: EdgeProcess, amqp_url: str, exchange: str, make_token: MakeToken
) -> None:
    async with ScriptedOwner(amqp_url, exchange) as owner:
        for n in range(RECOVERY_MAX + 1):
            await owner.publish("alice", "while.away", {"n": n}, live=False)
        ws = await connected(edge.ws_url(token=make_token("alice")))
        await recover(ws, "e1", 0)
        replayed, reply = await until_subscribed(ws)
        assert replayed == []
        assert reply["recovered"] == {"notifications": False}
        await owner.publish("alice", "live")
        assert await seqs_of(ws, 1) == [RECOVERY_MAX + 2]
        await ws.close()
        labels = 'reason="too_many"'
        assert await edge.metric("edge_recovery_failures_total", labels) == 1


@pytest.mark.parametrize("answer_includes_live", [False, True])
async def test_live_messages_during_the_fetch_come_once_in_order_after_the_history(
    edge: EdgeProcess,
    amqp_url: str,
    exchange: str,
    make_token: MakeToken,
    answer_includes_live: bool,
) -> None:
    async with ScriptedOwner(amqp_url, exchange) as owner:
        ws = await connected(edge.ws_url(token=make_token("alice")))  # holds notifications
        for _ in range(5):
            await owner.publish("alice", "missed", live=False)
        owner.pause()
        await recover(ws, "e1", 0)
        await owner.requested.wait()  # the edge holds live messages back from now on
        if not answer_includes_live:
            owner.freeze()  # the answer leaves out what is published next
        for n in range(3):
            await owner.publish("alice", "live during the fetch", {"n": n})
        owner.resume()
        replayed, reply = await until_subscribed(ws)
        assert reply["recovered"] == {"notifications": True}
        after = await seqs_of(ws, 8 - len(replayed))
        assert replayed + after == list(range(1, 9))  # every seq once, in order
        await owner.publish("alice", "next")
        assert await seqs_of(ws, 1) == [9]
        await ws.close()


async def until_closed(ws: websockets.ClientConnection) -> list[int]:
    """The seqs still arriving on a connection whose node died, until it closes."""
    seqs: list[int] = []
    try:
        while True:
            seqs += await seqs_of(ws, 1)
    except websockets.ConnectionClosed:
        return seqs


async def still_works(ws: websockets.ClientConnection) -> None:
    await ws.send('{"action":"ping"}')
    await recv_event(ws, "pong")


@pytest.mark.parametrize("fault", ["epoch", "trimmed"])
async def test_a_changed_epoch_or_trimmed_history_is_not_recovered(
    edge: EdgeProcess, amqp_url: str, exchange: str, make_token: MakeToken, fault: str
) -> None:
    async with ScriptedOwner(amqp_url, exchange) as owner:
        for _ in range(6):
            await owner.publish("alice", "e", live=False)
        owner.trim_before = 4 if fault == "trimmed" else 1
        ws = await connected(edge.ws_url(token=make_token("alice")))
        await recover(ws, "old-epoch" if fault == "epoch" else "e1", 1)
        replayed, reply = await until_subscribed(ws)
        assert (replayed, reply["recovered"]) == ([], {"notifications": False})
        await still_works(ws)
        await ws.close()
        assert await edge.metric("edge_recovery_failures_total", f'reason="{fault}"') == 1


async def test_an_owner_that_does_not_answer_in_time_is_not_waited_for_longer(
    edge: EdgeProcess, amqp_url: str, exchange: str, make_token: MakeToken
) -> None:
    async with ScriptedOwner(amqp_url, exchange) as owner:
        await owner.stop()  # its queue is there, nobody consumes it
        ws = await connected(edge.ws_url(token=make_token("alice")))
        started = time.monotonic()
        await recover(ws, "e1", 0)
        replayed, reply = await until_subscribed(ws)
        waited = time.monotonic() - started
        assert (replayed, reply["recovered"]) == ([], {"notifications": False})
        assert 0.9 < waited < 3  # EDGE_RECOVERY_TIMEOUT is 1 s here
        await still_works(ws)
        await ws.close()
        assert await edge.metric("edge_recovery_failures_total", 'reason="timeout"') == 1


async def test_a_stream_nobody_keeps_history_for_answers_at_once(
    edge: EdgeProcess, make_token: MakeToken
) -> None:
    ws = await connected(edge.ws_url(token=make_token("alice")))
    started = time.monotonic()
    await recover(ws, "e1", 3, stream="ssh")  # not held yet: recovering subscribes it too
    _, reply = await until_subscribed(ws)
    assert time.monotonic() - started < 0.9  # no waiting for a timeout
    assert reply == {"streams": ["notifications", "ssh"], "recovered": {"ssh": False}}
    await still_works(ws)
    await ws.close()
    assert await edge.metric("edge_recovery_failures_total", 'reason="no_owner"') == 1


async def test_after_the_node_dies_a_client_recovers_on_another_node(
    amqp_url: str, exchange: str, make_token: MakeToken
) -> None:
    async with (
        ScriptedOwner(amqp_url, exchange) as owner,
        running_edge(amqp_url, exchange) as a,
        running_edge(amqp_url, exchange) as b,
    ):
        ws = await connected(a.ws_url(token=make_token("alice")))
        for _ in range(10):
            await owner.publish("alice", "before")
        seen = await seqs_of(ws, 10)

        async def keep_creating() -> None:
            for _ in range(40):
                await owner.publish("alice", "during")

        creating = asyncio.create_task(keep_creating())
        a.proc.kill()  # SIGKILL: no goodbye, its queue dies with its connection
        await creating
        seen += await until_closed(ws)
        ws = await connected(b.ws_url(token=make_token("alice")))
        await recover(ws, "e1", seen[-1])
        replayed, reply = await until_subscribed(ws)
        assert reply["recovered"] == {"notifications": True}
        for _ in range(5):
            await owner.publish("alice", "after")
        everything = seen + replayed + await seqs_of(ws, 5)
        assert everything == list(range(1, 56))  # each event exactly once, in order
        await ws.close()
