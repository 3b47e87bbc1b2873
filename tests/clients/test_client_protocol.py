"""RealtimeClient against an in-process stand-in for the edge (its wire protocol, no broker).

The scripted edge lets these tests force what the real one does rarely: a 4001, a
terminal close, a refused handshake, the order of replayed and live messages during a
recovery. tests/clients/test_client_edge.py runs the client against the real edge.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import suppress
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from realtime_shared.auth import issue_token
from realtime_shared.client import (
    Backoff,
    ConnectionEnded,
    ConnectionRejected,
    PublishRefused,
    PublishUnconfirmed,
    RealtimeClient,
    RequestFailed,
    token_expiry,
)
from realtime_shared.envelope import Envelope

pytestmark = pytest.mark.component

FAST = Backoff(base=0.01, cap=0.05, stable_after=60)
KNOWN = {"notifications", "chat", "ssh", "rdp"}


def system(event: str, **data: Any) -> str:
    frame: dict[str, Any] = {"stream": "system", "event": event}
    if data:
        frame["data"] = data
    return orjson.dumps(frame).decode()


class ScriptedEdge:
    """Speaks the edge's protocol; tests reach in through `connections` to script the rest."""

    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.urls: list[str] = []
        self.frames: list[dict[str, Any]] = []
        self.reject: int | None = None
        self.unready = 0  # answer this many handshakes with 503 first
        self.connections: asyncio.Queue[ServerConnection] = asyncio.Queue()
        # `subscribe` frames with `recover`: the test answers them (replays, then the reply).
        self.recoveries: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        # `publish` frames: the test answers them (published or error, by id, in any order).
        self.publishes: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.server: Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"ws://127.0.0.1:{port}/ws"

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.tokens.append(request.headers.get("Authorization", "").removeprefix("Bearer "))
        self.urls.append(request.path)
        if self.unready > 0:
            self.unready -= 1
            return connection.respond(503, "not ready")
        if self.reject is not None:
            body = {"success": False, "error": {"code": "UNAUTHORIZED", "message": "bad token"}}
            return connection.respond(self.reject, orjson.dumps(body).decode())
        return None

    async def handler(self, ws: ServerConnection) -> None:
        query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
        held = [s for s in query.get("streams", ["notifications"])[0].split(",") if s]
        await ws.send(system("connected", connection_id="c", user_id="alice", streams=held))
        await self.connections.put(ws)
        async for raw in ws:
            frame = orjson.loads(raw)
            self.frames.append(frame)
            action, streams = frame.get("action"), frame.get("streams", [])
            if action == "subscribe" and "recover" in frame:
                await self.recoveries.put(frame)
            elif action == "publish":
                await self.publishes.put(frame)
            elif action == "subscribe":
                rejected = [{"stream": s, "code": "NOT_FOUND"} for s in streams if s not in KNOWN]
                held += [s for s in streams if s in KNOWN and s not in held]
                data: dict[str, Any] = {"streams": held}
                if rejected:
                    data["rejected"] = rejected
                await ws.send(system("subscribed", **data))
            elif action == "unsubscribe":
                held = [s for s in held if s not in streams]
                await ws.send(system("unsubscribed", streams=held))
            elif action == "refresh":
                await ws.send(system("refreshed", exp=token_expiry(frame["token"])))


@pytest.fixture
async def edge() -> AsyncIterator[ScriptedEdge]:
    fake = ScriptedEdge()
    async with serve(fake.handler, "127.0.0.1", 0, process_request=fake.process_request) as server:
        fake.server = server
        yield fake


def tokens(first_ttl: int = 3600) -> Callable[[], str]:
    """Mints a new token (distinct `jti`) at each call; the first lives `first_ttl` seconds."""
    count = 0

    def provide() -> str:
        nonlocal count
        count += 1
        ttl = first_ttl if count == 1 else 3600
        return issue_token("alice", "k" * 32, ttl=ttl, extra={"jti": str(count)})

    return provide


async def next_envelope(client: RealtimeClient) -> Envelope:
    async with asyncio.timeout(5):
        return await anext(client)


async def recovery_request(edge: ScriptedEdge) -> dict[str, Any]:
    async with asyncio.timeout(5):
        return await edge.recoveries.get()


def numbered(seq: int, epoch: str = "e1") -> str:
    """A notification event as the notifications service numbers them."""
    meta = {"seq": seq, "epoch": epoch}
    return orjson.dumps(
        {"stream": "notifications", "event": "n", "data": {"n": seq}, "meta": meta}
    ).decode()


def recovered(ok: bool) -> str:
    return system("subscribed", streams=["notifications"], recovered={"notifications": ok})


async def received(client: RealtimeClient, count: int) -> list[Any]:
    """The next `count` envelopes, as seqs for stream messages and tuples for system ones."""
    out: list[Any] = []
    for _ in range(count):
        envelope = await next_envelope(client)
        if envelope.stream == "system":
            out.append((envelope.event, envelope.data))
        else:
            out.append(envelope.meta.get("seq"))
    return out


def outcome(ok: bool, replayed: int, reason: str) -> tuple[str, dict[str, Any]]:
    data = {"stream": "notifications", "recovered": ok, "replayed": replayed, "reason": reason}
    return ("recovered", data)


async def test_yields_stream_envelopes_but_not_the_edges_replies(edge: ScriptedEdge) -> None:
    async with RealtimeClient(edge.url, tokens(), backoff=FAST) as client:
        ws = await edge.connections.get()
        assert client.state == "open"
        assert client.streams == ["notifications"]
        await client.subscribe("chat")
        await ws.send(system("pong"))
        await ws.send('{"stream":"chat","event":"message.new","data":{"text":"hi"}}')
        envelope = await next_envelope(client)
        assert (envelope.stream, envelope.event, envelope.data) == (
            "chat",
            "message.new",
            {"text": "hi"},
        )
        assert edge.tokens[0] and "streams=notifications" in edge.urls[0]


async def test_reconnects_with_a_fresh_token_resubscribes_and_signals_resync(
    edge: ScriptedEdge,
) -> None:
    async with RealtimeClient(edge.url, tokens(), backoff=FAST) as client:
        first = await edge.connections.get()
        await client.subscribe("chat", "ssh")
        await first.close(1001, "server shutting down")

        second = await edge.connections.get()
        resync = await next_envelope(client)
        assert (resync.stream, resync.event, resync.data["reason"]) == (
            "system",
            "resync",
            "reconnect",
        )
        assert "streams=notifications%2Cchat%2Cssh" in edge.urls[1]
        assert len(set(edge.tokens)) == 2
        await second.send('{"stream":"ssh","event":"output","data":{"line":"$"}}')
        assert (await next_envelope(client)).event == "output"
        assert client.state == "open"


async def test_an_edge_resync_event_reaches_the_consumer(edge: ScriptedEdge) -> None:
    async with RealtimeClient(edge.url, tokens(), backoff=FAST) as client:
        ws = await edge.connections.get()
        await ws.send(system("resync", streams=["notifications"]))
        envelope = await next_envelope(client)
        assert (envelope.event, envelope.data["reason"]) == ("resync", "event")


async def test_a_refused_handshake_raises_instead_of_retrying(edge: ScriptedEdge) -> None:
    edge.reject = 401
    client = RealtimeClient(edge.url, tokens(), backoff=FAST)
    with pytest.raises(ConnectionRejected) as caught:
        await client.connect()
    assert (caught.value.status, caught.value.code) == (401, "UNAUTHORIZED")
    assert len(edge.tokens) == 1
    assert client.state == "closed"


async def test_an_edge_that_is_not_ready_yet_is_retried(edge: ScriptedEdge) -> None:
    edge.unready = 3
    async with RealtimeClient(edge.url, tokens(), backoff=FAST) as client:
        assert client.state == "open"
    assert len(edge.urls) == 4


async def test_a_terminal_close_ends_the_iteration_with_its_code(edge: ScriptedEdge) -> None:
    async with RealtimeClient(edge.url, tokens(), backoff=FAST) as client:
        ws = await edge.connections.get()
        await ws.close(1008, "too many connections")
        with pytest.raises(ConnectionEnded) as caught:
            await next_envelope(client)
        assert caught.value.code == 1008
        assert len(edge.urls) == 1


async def test_token_expiry_means_a_new_token_then_a_reconnect(edge: ScriptedEdge) -> None:
    async with RealtimeClient(edge.url, tokens(), backoff=FAST) as client:
        ws = await edge.connections.get()
        await ws.send(system("token.expired"))
        await ws.close(4001, "token expired")
        await edge.connections.get()
        assert (await next_envelope(client)).event == "resync"
        assert len(set(edge.tokens)) == 2


async def test_refreshes_the_token_before_exp(edge: ScriptedEdge) -> None:
    provider = tokens(first_ttl=2)
    async with RealtimeClient(edge.url, provider, backoff=FAST):
        await edge.connections.get()
        deadline = time.monotonic() + 5
        while not any(f.get("action") == "refresh" for f in edge.frames):
            assert time.monotonic() < deadline, "no refresh was sent before exp"
            await asyncio.sleep(0.05)
        refresh = next(f for f in edge.frames if f.get("action") == "refresh")
        assert refresh["token"] != edge.tokens[0]
        assert len(edge.urls) == 1  # refreshed in place, no reconnect


async def test_rejected_streams_raise_and_are_not_asked_for_again(edge: ScriptedEdge) -> None:
    async with RealtimeClient(edge.url, tokens(), backoff=FAST) as client:
        ws = await edge.connections.get()
        with pytest.raises(RequestFailed) as caught:
            await client.subscribe("chat", "nope")
        assert caught.value.rejected == [{"stream": "nope", "code": "NOT_FOUND"}]
        assert client.streams == ["notifications", "chat"]
        await ws.close(1001)
        await edge.connections.get()
        assert "nope" not in edge.urls[1] and "chat" in edge.urls[1]


async def test_streams_a_refresh_drops_are_forgotten_and_not_asked_for_again(
    edge: ScriptedEdge,
) -> None:
    async with RealtimeClient(
        edge.url, tokens(), ["notifications", "chat"], backoff=FAST
    ) as client:
        ws = await edge.connections.get()
        await ws.send(
            system("refreshed", exp=2_000_000_000, streams=["notifications"], dropped=["chat"])
        )
        await ws.send(system("pong"))  # a frame after it, so the client has read both
        deadline = time.monotonic() + 5
        while client.streams != ["notifications"]:
            assert time.monotonic() < deadline, "the dropped stream is still listed as held"
            await asyncio.sleep(0.01)
        await ws.close(1001)
        await edge.connections.get()
        assert "chat" not in edge.urls[1]


async def test_unsubscribe_drops_the_stream(edge: ScriptedEdge) -> None:
    async with RealtimeClient(
        edge.url, tokens(), ["notifications", "chat"], backoff=FAST
    ) as client:
        await edge.connections.get()
        assert await client.unsubscribe("chat") == ["notifications"]


async def test_close_stops_for_good(edge: ScriptedEdge) -> None:
    client = RealtimeClient(edge.url, tokens(), backoff=FAST)
    await client.connect()
    ws = await edge.connections.get()
    await client.close()
    assert client.state == "closed"
    with pytest.raises(StopAsyncIteration):
        await next_envelope(client)
    with suppress(Exception):
        await ws.wait_closed()
    assert len(edge.urls) == 1


async def test_recovers_after_a_reconnect_in_order_and_without_duplicates(
    edge: ScriptedEdge,
) -> None:
    async with RealtimeClient(edge.url, tokens(), backoff=FAST) as client:
        first = await edge.connections.get()
        for seq in (1, 2):
            await first.send(numbered(seq))
        assert await received(client, 2) == [1, 2]
        await first.close(1001, "server shutting down")

        second = await edge.connections.get()
        request = await recovery_request(edge)
        assert request == {
            "action": "subscribe",
            "streams": ["notifications"],
            "recover": {"notifications": {"epoch": "e1", "seq": 2}},
        }
        # Live 5 went out before the edge read the frame; then the missed ones (5 again);
        # after the reply, what the edge held back (5 once more, and 6).
        for seq in (5, 3, 4, 5):
            await second.send(numbered(seq))
        await second.send(recovered(True))
        for seq in (5, 6):
            await second.send(numbered(seq))

        assert await received(client, 5) == [3, 4, 5, outcome(True, 3, "reconnect"), 6]
        assert client.positions["notifications"].seq == 6


async def test_a_failed_recovery_yields_a_resync_and_the_next_message_starts_afresh(
    edge: ScriptedEdge,
) -> None:
    async with RealtimeClient(edge.url, tokens(), backoff=FAST) as client:
        first = await edge.connections.get()
        await first.send(numbered(1))
        assert await received(client, 1) == [1]
        await first.close(1001)

        second = await edge.connections.get()
        await recovery_request(edge)
        await second.send(recovered(False))
        for seq in (40, 41):  # no gap after 1: the recovery failed, the consumer refetches
            await second.send(numbered(seq))
        assert await received(client, 4) == [
            outcome(False, 0, "reconnect"),
            ("resync", {"reason": "reconnect", "streams": ["notifications"]}),
            40,
            41,
        ]


async def test_a_skipped_seq_holds_the_stream_and_recovers_the_gap(edge: ScriptedEdge) -> None:
    async with RealtimeClient(edge.url, tokens(), backoff=FAST) as client:
        ws = await edge.connections.get()
        for seq in (1, 4, 5):
            await ws.send(numbered(seq))
        request = await recovery_request(edge)
        assert request["recover"] == {"notifications": {"epoch": "e1", "seq": 1}}
        for seq in (2, 3, 4):
            await ws.send(numbered(seq))
        await ws.send(recovered(True))
        assert await received(client, 6) == [1, 2, 3, 4, 5, outcome(True, 4, "gap")]


async def test_the_edges_resync_recovers_instead_of_asking_for_a_refetch(
    edge: ScriptedEdge,
) -> None:
    async with RealtimeClient(edge.url, tokens(), backoff=FAST) as client:
        ws = await edge.connections.get()
        await ws.send(numbered(1))
        await ws.send(system("resync", streams=["notifications"]))
        request = await recovery_request(edge)
        assert request["recover"] == {"notifications": {"epoch": "e1", "seq": 1}}
        await ws.send(numbered(2))
        await ws.send(recovered(True))
        assert await received(client, 3) == [1, 2, outcome(True, 1, "event")]


async def test_a_new_epoch_resets_the_position_and_asks_for_a_refetch(
    edge: ScriptedEdge,
) -> None:
    async with RealtimeClient(edge.url, tokens(), backoff=FAST) as client:
        first = await edge.connections.get()
        for text in (numbered(7), numbered(3, "e2"), numbered(3, "e2"), numbered(4, "e2")):
            await first.send(text)
        assert await received(client, 4) == [
            7,
            3,
            ("resync", {"reason": "epoch", "streams": ["notifications"]}),
            4,
        ]
        await first.close(1001)
        await edge.connections.get()
        request = await recovery_request(edge)
        assert request["recover"] == {"notifications": {"epoch": "e2", "seq": 4}}


async def test_an_edge_that_never_answers_a_recovery_does_not_hold_the_stream_for_good(
    edge: ScriptedEdge,
) -> None:
    async with RealtimeClient(edge.url, tokens(), backoff=FAST, recovery_timeout=0.2) as client:
        ws = await edge.connections.get()
        for seq in (1, 3):
            await ws.send(numbered(seq))
        await recovery_request(edge)  # and never answered
        assert await received(client, 4) == [
            1,
            3,
            outcome(False, 1, "gap"),
            ("resync", {"reason": "gap", "streams": ["notifications"]}),
        ]


async def publish_request(edge: ScriptedEdge) -> dict[str, Any]:
    async with asyncio.timeout(5):
        return await edge.publishes.get()


def published(frame: dict[str, Any], message_id: str) -> str:
    return system("published", id=frame["id"], message_id=message_id)


def refused(frame: dict[str, Any], code: str) -> str:
    return system("error", code=code, message=f"refused: {code}", id=frame["id"])


async def eventually(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 5
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


async def test_publish_returns_the_message_id_once_the_edge_says_published(
    edge: ScriptedEdge,
) -> None:
    async with RealtimeClient(edge.url, tokens(), ["chat"], backoff=FAST) as client:
        ws = await edge.connections.get()
        sending = asyncio.create_task(
            client.publish("chat", "message.send", {"text": "hi"}, session_id="room-7")
        )
        frame = await publish_request(edge)
        assert frame == {
            "action": "publish",
            "stream": "chat",
            "event": "message.send",
            "data": {"text": "hi"},
            "session_id": "room-7",
            "id": frame["id"],
        }
        assert 0 < len(frame["id"]) <= 64
        await asyncio.sleep(0.05)
        assert not sending.done()  # not before the edge's answer
        await ws.send(published(frame, "m-1"))
        async with asyncio.timeout(5):
            assert await sending == "m-1"


async def test_answers_are_matched_by_id_in_any_order_and_a_refusal_raises_its_code(
    edge: ScriptedEdge,
) -> None:
    async with RealtimeClient(edge.url, tokens(), ["chat"], backoff=FAST) as client:
        ws = await edge.connections.get()
        sending = {
            text: asyncio.create_task(client.publish("chat", "message.send", {"text": text}))
            for text in ("a", "b", "c")
        }
        frames = {}
        for _ in range(3):
            frame = await publish_request(edge)
            frames[frame["data"]["text"]] = frame
        assert len({f["id"] for f in frames.values()}) == 3
        await ws.send(published(frames["c"], "m-c"))
        await ws.send(refused(frames["a"], "RATE_LIMITED"))
        await ws.send(published(frames["b"], "m-b"))
        async with asyncio.timeout(5):
            assert await sending["c"] == "m-c"
            assert await sending["b"] == "m-b"
            with pytest.raises(PublishRefused) as caught:
                await sending["a"]
        assert caught.value.code == "RATE_LIMITED"
        assert caught.value.message == "refused: RATE_LIMITED"
        # The answers are the client's business: the iteration yields none of them.
        await ws.send('{"stream":"chat","event":"message.new","data":{"text":"next"}}')
        assert (await next_envelope(client)).event == "message.new"


async def test_a_publish_while_reconnecting_is_refused_at_once_and_never_sent(
    edge: ScriptedEdge,
) -> None:
    async with RealtimeClient(edge.url, tokens(), ["chat"], backoff=FAST) as client:
        ws = await edge.connections.get()
        edge.unready = 1_000_000  # the edge stays away
        await ws.close(1001)
        await eventually(lambda: client.state == "connecting", "the client did not notice")
        with pytest.raises(PublishRefused) as caught:
            await client.publish("chat", "message.send", {"text": "hi"})
        assert caught.value.code == "NOT_CONNECTED"
        assert edge.publishes.empty()


async def test_a_drop_before_the_answer_leaves_the_publish_unconfirmed_and_it_is_not_resent(
    edge: ScriptedEdge,
) -> None:
    async with RealtimeClient(edge.url, tokens(), ["chat"], backoff=FAST) as client:
        ws = await edge.connections.get()
        sending = asyncio.create_task(client.publish("chat", "message.send", {"text": "hi"}))
        await publish_request(edge)
        await ws.close(1001)
        async with asyncio.timeout(5):
            with pytest.raises(PublishUnconfirmed) as caught:
                await sending
        assert caught.value.code == "DISCONNECTED"
        await edge.connections.get()
        await client.subscribe("ssh")  # answered in order: a resent publish would come first
        assert edge.publishes.empty()


async def test_no_answer_in_time_leaves_the_publish_unconfirmed_and_a_late_one_is_ignored(
    edge: ScriptedEdge,
) -> None:
    async with RealtimeClient(
        edge.url, tokens(), ["chat"], backoff=FAST, publish_timeout=0.3
    ) as client:
        ws = await edge.connections.get()
        started = time.monotonic()
        with pytest.raises(PublishUnconfirmed) as default_wait:
            await client.publish("chat", "message.send")
        assert default_wait.value.code == "TIMEOUT"
        assert 0.3 <= time.monotonic() - started < 3
        await ws.send(published(await publish_request(edge), "late"))
        # Nothing of the late answers fails a later request or reaches the iteration.
        assert await client.subscribe("ssh") == ["chat", "ssh"]
        await ws.send('{"stream":"chat","event":"message.new"}')
        assert (await next_envelope(client)).event == "message.new"
        assert client.state == "open"


async def test_a_publish_may_set_its_own_deadline(edge: ScriptedEdge) -> None:
    async with RealtimeClient(
        edge.url, tokens(), ["chat"], backoff=FAST, publish_timeout=60
    ) as client:
        ws = await edge.connections.get()
        async with asyncio.timeout(5):
            with pytest.raises(PublishUnconfirmed) as caught:
                await client.publish("chat", "message.send", timeout=0.1)
        assert caught.value.code == "TIMEOUT"
        await ws.send(refused(await publish_request(edge), "UNAVAILABLE"))
        assert await client.subscribe("ssh") == ["chat", "ssh"]  # the late error fails nothing


async def test_a_message_over_the_frame_limit_is_refused_before_sending(
    edge: ScriptedEdge,
) -> None:
    async with RealtimeClient(
        edge.url, tokens(), ["chat"], backoff=FAST, max_frame_bytes=200
    ) as client:
        ws = await edge.connections.get()
        with pytest.raises(PublishRefused) as caught:
            await client.publish("chat", "message.send", {"text": "é" * 80})
        assert caught.value.code == "TOO_LARGE"
        sending = asyncio.create_task(client.publish("chat", "message.send", {"text": "é" * 40}))
        frame = await publish_request(edge)
        assert frame["data"]["text"] == "é" * 40  # the first one was never sent
        await ws.send(published(frame, "m-2"))
        async with asyncio.timeout(5):
            assert await sending == "m-2"


def output(n: int, session_id: str | None = None, stream: str = "ssh") -> str:
    frame: dict[str, Any] = {"stream": stream, "event": "output", "data": {"n": n}}
    if session_id is not None:
        frame["meta"] = {"session_id": session_id}
    return orjson.dumps(frame).decode()


async def test_a_session_takes_its_envelopes_out_of_the_clients_iteration(
    edge: ScriptedEdge,
) -> None:
    async with RealtimeClient(edge.url, tokens(), ["chat", "ssh"], backoff=FAST) as client:
        ws = await edge.connections.get()
        lasting = client.session("ssh", "t9")
        async with client.session("SSH", "t1") as terminal:
            with pytest.raises(ValueError, match="already routed"):
                client.session("ssh", "t1")
            for text in (output(1, "t1"), output(2, "t2"), output(3), output(4, "t1", "chat")):
                await ws.send(text)
            await ws.send(output(5, "t1"))
            async with asyncio.timeout(5):
                assert [(await anext(terminal)).data["n"] for _ in range(2)] == [1, 5]
            assert [(await next_envelope(client)).data["n"] for _ in range(3)] == [2, 3, 4]

            sending = asyncio.create_task(terminal.publish("keys", {"text": "ls"}))
            frame = await publish_request(edge)
            assert (frame["stream"], frame["session_id"]) == ("ssh", "t1")
            await ws.send(published(frame, "m-1"))
            async with asyncio.timeout(5):
                assert await sending == "m-1"
        # Closed: that session's envelopes are the client's again.
        await ws.send(output(6, "t1"))
        assert (await next_envelope(client)).data["n"] == 6
        with pytest.raises(StopAsyncIteration):
            await anext(terminal)
    with pytest.raises(StopAsyncIteration):  # the client's end ends every session
        await anext(lasting)
