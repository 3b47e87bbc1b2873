"""A peer that floods control frames and never reads: bounded memory, closed by the heartbeat.

The flooder is a raw socket with a tiny receive window that writes WebSocket PING frames
(masked, 125-byte payloads, each provoking a 127-byte PONG) as fast as the edge takes
them and never reads a byte.
"""

import asyncio
import base64
import contextlib
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import pytest
import uvicorn
from support.edge import EdgeProcess, connected, publish, recv_frame, running_edge
from support.notifications import free_port

from realtime_edge.app import create_app
from realtime_edge.settings import EdgeSettings
from realtime_edge.wsprotocol import EdgeWebSocketProtocol
from realtime_shared.routing import user_key

pytestmark = pytest.mark.integration

MakeToken = Callable[..., str]

PING = b"\x89\xfd" + b"\x00\x00\x00\x00" + b"p" * 125  # FIN+PING, masked (zero key), 125 bytes
FLOOD_CHUNK = PING * 8192  # about 1 MiB


def _upgrade(port: int, token: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class Flooder:
    """A thread that upgrades, reads the 101, then writes pings until told to stop."""

    def __init__(self, port: int, token: str, limit: int) -> None:
        self.sent = 0
        self.limit = limit
        self.stopped = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        self.sock.sendall(_upgrade(port, token))
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)  # byte by byte: nothing past the 101 is read
        assert head.startswith(b"HTTP/1.1 101"), head
        self.sock.settimeout(0.2)
        self.thread = threading.Thread(target=self._flood, daemon=True)

    def _flood(self) -> None:
        view = memoryview(FLOOD_CHUNK)
        offset = 0
        while not self.stopped.is_set() and self.sent < self.limit:
            try:
                n = self.sock.send(view[offset:])
            except TimeoutError:
                continue  # the edge is not reading: keep trying until stopped
            except OSError:
                return  # the edge hung up
            self.sent += n
            offset = (offset + n) % len(FLOOD_CHUNK)

    def __enter__(self) -> "Flooder":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def port_of(edge: EdgeProcess) -> int:
    return int(edge.base_url.rsplit(":", 1)[1])


async def until(predicate: Callable[[], Any], within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_a_ping_flood_from_a_peer_that_never_reads_does_not_grow_the_edge(
    amqp_url: str, exchange: str, make_token: MakeToken
) -> None:
    async with running_edge(amqp_url, exchange) as edge:
        pid = edge.proc.pid
        before = rss_bytes(pid)
        with Flooder(port_of(edge), make_token("flooder"), limit=40 << 20) as flood:
            # Unbounded, the edge reads all 40 MiB and buffers ~36 MiB of pongs in a second
            # or two; bounded, it stops reading and the sender stalls at the kernel buffers.
            await asyncio.to_thread(flood.thread.join, 4)
            grown = rss_bytes(pid) - before
            assert grown < 8 << 20, f"the edge grew {grown >> 20} MiB for {flood.sent >> 20} MiB"
            # Everyone else is served as usual meanwhile.
            other = await connected(edge.ws_url(token=make_token("other")))
            await other.send('{"action":"ping"}')
            assert (await recv_frame(other))["event"] == "pong"
            await other.close()


async def test_the_heartbeat_ends_a_flooder_that_never_reads_and_frees_its_slot(
    amqp_url: str, exchange: str, make_token: MakeToken
) -> None:
    async with running_edge(
        amqp_url,
        exchange,
        EDGE_PING_INTERVAL="0.5",
        EDGE_PONG_TIMEOUT="1.5",
        EDGE_MAX_CONNECTIONS_PER_USER="1",
    ) as edge:
        with Flooder(port_of(edge), make_token("flooder"), limit=1 << 40):

            async def ended() -> bool:
                return await edge.metric("edge_connections_closed_total", 'code="1011"') == 1

            await until(ended)
            assert await edge.metric("edge_connections") == 0
            # Its per-user slot is free again: the same user may connect.
            again = await connected(edge.ws_url(token=make_token("flooder")))
            await again.close()


# -- an ASGI middleware that wraps `send` (tracing, uvicorn's message logger) -------------


def wrapping_send(app: Any) -> Any:
    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        async def traced_send(message: Any) -> None:
            await send(message)

        await app(scope, receive, traced_send)

    return wrapped


@contextlib.asynccontextmanager
async def in_process_edge(
    amqp_url: str, exchange: str, **env: Any
) -> AsyncIterator[tuple[uvicorn.Server, int]]:
    settings = EdgeSettings(
        _env_file=None,  # type: ignore[call-arg]
        amqp_url=amqp_url,
        realtime_exchange=exchange,
        dev=True,
        **env,
    )
    port = free_port()
    config = uvicorn.Config(
        wrapping_send(create_app(settings)),
        host="127.0.0.1",
        port=port,
        ws=EdgeWebSocketProtocol,
        log_config=None,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with httpx.AsyncClient() as http:

            async def ready() -> bool:
                assert not task.done(), "the server exited"
                with contextlib.suppress(httpx.HTTPError):
                    return (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200
                return False

            await until(ready, within=20)
        yield server, port
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


async def test_a_stalled_client_is_dropped_even_when_a_middleware_wraps_send(
    amqp_url: str, exchange: str, make_token: MakeToken
) -> None:
    async with in_process_edge(amqp_url, exchange, edge_send_queue=2, edge_close_timeout=0.5) as (
        server,
        port,
    ):
        open_sockets = server.server_state.connections
        # Upgraded, then never reads (made off the loop: the server runs on this one).
        stalled = await asyncio.to_thread(Flooder, port, make_token("stalled"), 0)
        try:
            connection = await aio_pika.connect(amqp_url)
            async with connection:
                channel = await connection.channel()
                ex = await channel.get_exchange(exchange)
                for n in range(100):
                    await publish(
                        ex,
                        user_key("notifications", "stalled"),
                        "big",
                        {"n": n, "pad": "x" * 60_000},
                    )

            # Slow consumer (1013), then the close timeout: the edge drops the socket itself.
            async def dropped() -> bool:
                return not open_sockets

            await until(dropped)
        finally:
            stalled.sock.close()
