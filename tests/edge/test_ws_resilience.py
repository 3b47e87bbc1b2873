"""Failure handling a user notices: slow clients, broker loss, dead peers, expiry, shutdown."""

import asyncio
import base64
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import aio_pika
import httpx
import orjson
import pytest
import websockets
from support.edge import EdgeProcess, connected, publish, recv_frame, running_edge
from support.tcp_proxy import TcpProxy

from realtime_shared.routing import user_key

pytestmark = pytest.mark.integration

MakeToken = Callable[..., str]


@pytest.fixture
async def exchange_handle(
    amqp_url: str, exchange: str
) -> AsyncIterator[aio_pika.abc.AbstractExchange]:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        yield await channel.get_exchange(exchange)


async def connect(edge: EdgeProcess, token: str, **options: object) -> websockets.ClientConnection:
    return await connected(edge.ws_url(token=token), **options)


async def until(predicate: Callable[[], object], within: float = 10.0) -> None:
    """Poll an outside condition (a process, a metric) with a deadline."""
    deadline = time.monotonic() + within
    while not await predicate():  # type: ignore[misc]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_stalled_client_is_dropped_with_1013_while_others_get_everything_in_order(
    amqp_url: str,
    exchange: str,
    exchange_handle: aio_pika.abc.AbstractExchange,
    make_token: MakeToken,
) -> None:
    async with running_edge(amqp_url, exchange, EDGE_SEND_QUEUE="8") as edge:
        stalled = await _stalled_client(edge, make_token("stalled"))
        healthy = await connect(edge, make_token("healthy"), max_size=None)
        pad = "x" * 60_000
        total = 250

        async def produce() -> None:
            for n in range(total):
                await publish(
                    exchange_handle,
                    user_key("notifications", "stalled"),
                    "bulk",
                    {"n": n, "pad": pad},
                )
                await publish(
                    exchange_handle,
                    user_key("notifications", "healthy"),
                    "bulk",
                    {"n": n, "pad": pad},
                )

        async def consume() -> list[object]:
            return [(await recv_frame(healthy, within=10))["data"]["n"] for _ in range(total)]  # type: ignore[index]

        _, received = await asyncio.gather(produce(), consume())
        assert received == list(range(total))

        await until(lambda: _positive(edge.metric("edge_slow_consumer_drops_total")))
        # Once it reads again it finds what was sent before the close, then the close itself.
        with pytest.raises(websockets.ConnectionClosed):
            await _drain(stalled)
        assert stalled.close_code == 1013
        assert stalled.close_reason == "slow consumer"
        await healthy.send('{"action":"ping"}')
        assert (await recv_frame(healthy))["event"] == "pong"
        await healthy.close()
        assert "slow consumer" in edge.log_text()


async def test_a_client_that_never_reads_again_loses_its_socket_after_the_close_timeout(
    amqp_url: str,
    exchange: str,
    exchange_handle: aio_pika.abc.AbstractExchange,
    make_token: MakeToken,
) -> None:
    async with running_edge(
        amqp_url, exchange, EDGE_SEND_QUEUE="4", EDGE_CLOSE_TIMEOUT="0.5"
    ) as edge:
        stalled = await _stalled_client(edge, make_token("stalled"))
        try:
            for n in range(250):
                await publish(
                    exchange_handle,
                    user_key("notifications", "stalled"),
                    "bulk",
                    {"n": n, "pad": "x" * 60_000},
                )
            closed = 'code="1013"'
            await until(lambda: _positive(edge.metric("edge_connections_closed_total", closed)))
            assert await edge.metric("edge_connections") == 0
        finally:
            stalled.transport.abort()


async def _stalled_client(edge: EdgeProcess, token: str) -> websockets.ClientConnection:
    """A client that stops reading: a tiny receive buffer, and nobody calls recv()."""
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    raw.setblocking(False)
    port = int(edge.base_url.rsplit(":", 1)[1])
    await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", port))
    ws = await websockets.connect(edge.ws_url(token=token), sock=raw, max_queue=1, max_size=None)
    assert (await recv_frame(ws))["event"] == "connected"
    return ws


async def _drain(ws: websockets.ClientConnection) -> None:
    while True:
        await asyncio.wait_for(ws.recv(), 10)


async def _positive(value: "asyncio.Future[float] | object") -> bool:
    return await value > 0  # type: ignore[operator, misc]


def _rabbitmqctl(*args: str) -> str:
    return subprocess.run(
        ["rabbitmqctl", *args], check=True, capture_output=True, text=True, timeout=60
    ).stdout


def _close_connection_named(name: str) -> None:
    """`rabbitmqctl close_connection` on the one connection whose client named itself `name`."""
    rows = _rabbitmqctl("-q", "list_connections", "pid", "client_properties").splitlines()
    pids = [row.split("\t", 1)[0] for row in rows if f'"{name}"' in row]
    assert len(pids) == 1, f"expected one connection named {name!r} in {rows}"
    _rabbitmqctl("close_connection", pids[0], "test: cutting the edge's link")


async def test_after_the_broker_link_is_cut_clients_get_resync_then_new_messages(
    amqp_url: str,
    exchange: str,
    exchange_handle: aio_pika.abc.AbstractExchange,
    make_token: MakeToken,
) -> None:
    async with running_edge(amqp_url, exchange) as edge:
        alice = await connect(edge, make_token("alice"))
        bob = await websockets.connect(edge.ws_url("/ws/chat", token=make_token("bob")))
        assert (await recv_frame(bob))["event"] == "connected"

        await asyncio.to_thread(_close_connection_named, f"ws-edge {edge.node_id}")

        assert await recv_frame(alice, within=20) == {
            "stream": "system",
            "event": "resync",
            "data": {"streams": ["notifications"]},
        }
        assert (await recv_frame(bob, within=20))["data"] == {"streams": ["chat"]}
        assert await edge.metric("edge_broker_reconnects_total") == 1
        await publish(exchange_handle, user_key("notifications", "alice"), "after")
        await publish(exchange_handle, user_key("chat", "bob"), "after")
        assert (await recv_frame(alice))["event"] == "after"
        assert (await recv_frame(bob))["event"] == "after"
        # new subscriptions work on the new queue too
        await alice.send('{"action":"subscribe","streams":["chat"]}')
        assert (await recv_frame(alice))["event"] == "subscribed"
        await publish(exchange_handle, user_key("chat", "alice"), "fresh")
        assert (await recv_frame(alice))["event"] == "fresh"
        await alice.close()
        await bob.close()


def _upgrade_request(path: str, port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def test_a_peer_that_never_answers_pings_is_closed_and_a_live_one_is_kept(
    amqp_url: str, exchange: str, make_token: MakeToken
) -> None:
    async with running_edge(
        amqp_url, exchange, EDGE_PING_INTERVAL="0.5", EDGE_PONG_TIMEOUT="1.5"
    ) as edge:
        live = await connect(edge, make_token("live"))  # websockets answers pings itself
        port = int(edge.base_url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(_upgrade_request(f"/ws?token={make_token('silent')}", port))
        started = time.monotonic()
        received = b""
        while True:  # read everything until the edge hangs up; never send a pong
            chunk = await asyncio.wait_for(reader.read(65536), 10)
            if not chunk:
                break
            received += chunk
        elapsed = time.monotonic() - started
        writer.close()
        assert received.startswith(b"HTTP/1.1 101")
        assert b"\x89\x04" in received  # a ping frame (opcode 9, 4-byte payload) was sent
        assert b"\x88" in received  # then a close frame
        assert elapsed < 5
        await live.send('{"action":"ping"}')
        assert (await recv_frame(live))["event"] == "pong"
        assert live.close_code is None
        await live.close()


async def test_token_expiry_closes_4001_unless_refreshed_by_the_same_user(
    amqp_url: str, exchange: str, make_token: MakeToken
) -> None:
    async with running_edge(amqp_url, exchange) as edge:
        refreshed = await connect(edge, make_token("alice", ttl=2))
        wrong = await connect(edge, make_token("alice", ttl=2))
        await refreshed.send(
            orjson.dumps({"action": "refresh", "token": make_token("alice", ttl=60)}).decode()
        )
        reply = await recv_frame(refreshed)
        assert reply["event"] == "refreshed"
        assert reply["data"]["exp"] > time.time() + 30  # type: ignore[index, operator]
        await wrong.send(
            orjson.dumps({"action": "refresh", "token": make_token("bob", ttl=60)}).decode()
        )
        assert (await recv_frame(wrong))["data"]["code"] == "UNAUTHORIZED"  # type: ignore[index]

        assert await recv_frame(wrong, within=5) == {"stream": "system", "event": "token.expired"}
        with pytest.raises(websockets.ConnectionClosed):
            await recv_frame(wrong)
        assert wrong.close_code == 4001
        # the refreshed one outlived the original deadline
        await refreshed.send('{"action":"ping"}')
        assert (await recv_frame(refreshed))["event"] == "pong"
        await refreshed.close()


async def test_sigterm_closes_every_connection_with_1001_and_exits_quickly(
    amqp_url: str, exchange: str, make_token: MakeToken
) -> None:
    tokens = [make_token("alice"), make_token("bob", permissions=["realtime.admin"])]
    async with running_edge(amqp_url, exchange) as edge:
        clients = [await connect(edge, token) for token in tokens]
        # a refused handshake and a refresh also carry tokens that must not be logged
        with pytest.raises(websockets.InvalidStatus):
            await websockets.connect(edge.ws_url("/ws/nope", token=tokens[0]))
        await clients[0].send(orjson.dumps({"action": "refresh", "token": tokens[0]}).decode())
        assert (await recv_frame(clients[0]))["event"] == "refreshed"

        started = time.monotonic()
        code = await edge.stop()
        assert time.monotonic() - started < 5
        assert code in (0, -signal.SIGTERM)  # uvicorn re-raises the signal after a clean drain
        for ws in clients:
            with pytest.raises(websockets.ConnectionClosed):
                await recv_frame(ws)
            assert ws.close_code == 1001
        log = edge.log_text()
    assert "WebSocket /ws" in log  # the access lines are there...
    for token in tokens:
        for part in token.split("."):
            assert part not in log  # ...but no token, nor any part of one
    assert "[redacted]" in log


async def test_while_rabbitmq_is_unreachable_readyz_and_handshakes_say_503_then_all_recovers(
    amqp_url: str,
    exchange: str,
    exchange_handle: aio_pika.abc.AbstractExchange,
    make_token: MakeToken,
) -> None:
    broker = urlsplit(amqp_url)
    async with TcpProxy(broker.hostname or "127.0.0.1", broker.port or 5672) as proxy:
        via_proxy = amqp_url.replace(f"{broker.hostname}:{broker.port}", f"127.0.0.1:{proxy.port}")
        async with running_edge(via_proxy, exchange) as edge, httpx.AsyncClient() as http:
            alice = await connect(edge, make_token("alice"))
            proxy.cut()

            async def unready() -> bool:
                return (await http.get(f"{edge.base_url}/readyz")).status_code == 503

            await until(unready)
            with pytest.raises(websockets.InvalidStatus) as refused:
                await websockets.connect(edge.ws_url(token=make_token("bob")))
            assert refused.value.response.status_code == 503
            await alice.send('{"action":"subscribe","streams":["chat"]}')

            proxy.restore()
            frames = [await recv_frame(alice, within=20), await recv_frame(alice, within=20)]
            by_event = {f["event"]: f["data"] for f in frames}
            assert by_event["subscribed"] == {"streams": ["notifications", "chat"]}
            assert by_event["resync"]["streams"] in (["notifications"], ["notifications", "chat"])  # type: ignore[index]
            assert (await http.get(f"{edge.base_url}/readyz")).status_code == 200
            await publish(exchange_handle, user_key("chat", "alice"), "back")
            await publish(exchange_handle, user_key("notifications", "alice"), "back.too")
            assert (await recv_frame(alice))["event"] == "back"
            assert (await recv_frame(alice))["event"] == "back.too"
            await alice.close()


async def test_an_edge_started_before_rabbitmq_is_reachable_becomes_ready_when_it_is(
    amqp_url: str, exchange: str, make_token: MakeToken
) -> None:
    broker = urlsplit(amqp_url)
    async with TcpProxy(broker.hostname or "127.0.0.1", broker.port or 5672) as proxy:
        proxy.cut()
        via_proxy = amqp_url.replace(f"{broker.hostname}:{broker.port}", f"127.0.0.1:{proxy.port}")
        async with (
            running_edge(via_proxy, exchange, wait_ready=False) as edge,
            httpx.AsyncClient(base_url=edge.base_url) as http,
        ):
            assert (await http.get("/readyz")).status_code == 503
            assert (await http.get("/healthz")).status_code == 200
            proxy.restore()

            async def ready() -> bool:
                return (await http.get("/readyz")).status_code == 200

            await until(ready, within=20)
            ws = await connect(edge, make_token("alice"))
            await ws.close()
            assert await edge.metric("edge_broker_reconnects_total") == 0  # a first connect
        assert "not reachable yet" in edge.log_text()
