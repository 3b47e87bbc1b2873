"""Scenario 4, slow and dead clients at scale: 1,000 healthy clients beside 50 bad ones.

A real edge with a short heartbeat and a small send queue, steady fan-out on the
stream-wide key and on each healthy user's key, and two phases: a baseline with only
the healthy clients (the shipped `RealtimeClient`), then the same load with 25 clients
that stop reading (raw sockets with a tiny receive buffer, flooded on their own keys)
and 25 that read but never answer a ping (a hand-made WebSocket client: nothing pongs
for it). Each bad client must be closed with its code (1013 slow consumer, 1011 missed
pong, docs/protocol.md "Close codes"); every healthy client gets every event once, in
order (the invariant checker), is never disconnected, and its p99 latency stays within
a generous bound of the baseline's; the edge's RSS after the bad clients is bounded.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit

import aio_pika
import pytest
from support.edge import EdgeProcess, running_edge
from support.invariants import Checker

from realtime_shared.client import RealtimeClient
from realtime_shared.envelope import Envelope
from realtime_shared.routing import stream_key, user_key

pytestmark = [pytest.mark.integration, pytest.mark.resilience, pytest.mark.timeout(150)]

MakeToken = Callable[..., str]
STREAM = "notifications"
HEALTHY = 1000
USERS = 200
NON_READERS = 25
SILENT = 25
PHASE = 6.0
"""Seconds of steady fan-out per phase."""
TICK = 0.05
"""Each tick: one event for the next healthy user; every fifth, one for everyone."""
FLOOD_BODY = 65_536
"""Large, so a non-reader's queue fills before its missed pong closes it: the kernel
buffers up to 4 MiB (tcp_wmem) for it first."""
PING_INTERVAL = 2.5
PONG_TIMEOUT = 10.0
"""Their queues filled in 4.6 s here: twice that before a missed pong could close them."""
P99_FACTOR = 5.0
P99_FLOOR = 0.25
"""Seconds: below this a p99 is noise on a shared 2-core box, whatever the ratio."""
RSS_GROWTH = 64 << 20


def healthy_user(i: int) -> str:
    return f"fan-{i:03d}"


@pytest.fixture
async def edge(amqp_url: str, exchange: str) -> AsyncIterator[EdgeProcess]:
    async with running_edge(
        amqp_url,
        exchange,
        EDGE_PING_INTERVAL=str(PING_INTERVAL),
        EDGE_PONG_TIMEOUT=str(PONG_TIMEOUT),
        EDGE_SEND_QUEUE="8",
        EDGE_CLOSE_TIMEOUT="1",
        EDGE_MAX_CONNECTIONS_PER_USER="8",
    ) as process:
        yield process


def rss(pid: int) -> int:
    """Resident set size in bytes, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def handshake(url: str, rcvbuf: int | None = None) -> tuple[socket.socket, bytes]:
    """A WebSocket upgrade by hand on a plain socket; returns it and what followed the
    101 response. Nothing reads it afterwards unless the caller does (no pongs, ever)."""
    parts = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connect, so the window the edge sees stays small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(sock, (parts.hostname, parts.port))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    await loop.sock_sendall(sock, request.encode())
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
        assert chunk, "the edge closed during the handshake"
        received += chunk
    head, _, rest = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock, rest


async def close_code_of_silent(sock: socket.socket, buffered: bytes, within: float) -> int:
    """Read frames (never answering a ping) until the edge's close frame; its code."""
    loop = asyncio.get_running_loop()
    data = bytearray(buffered)

    async def need(n: int) -> None:
        while len(data) < n:
            chunk = await loop.sock_recv(sock, 65536)
            if not chunk:
                raise ConnectionError("closed without a close frame")
            data.extend(chunk)

    async with asyncio.timeout(within):
        while True:
            await need(2)
            opcode, length = data[0] & 0x0F, data[1] & 0x7F
            start = 2
            if length == 126:
                await need(4)
                (length,) = struct.unpack("!H", data[2:4])
                start = 4
            elif length == 127:
                await need(10)
                (length,) = struct.unpack("!Q", data[2:10])
                start = 10
            await need(start + length)
            payload = bytes(data[start : start + length])
            del data[: start + length]
            if opcode == 0x8:
                return int(struct.unpack("!H", payload[:2])[0]) if payload else 1005


class Healthy:
    """The healthy fleet: what each client yielded, into the checker, with latencies."""

    def __init__(self, checker: Checker) -> None:
        self.checker = checker
        self.clients: dict[str, RealtimeClient] = {}
        self.users: dict[str, str] = {}
        self.latency: dict[str, list[float]] = {"baseline": [], "bad": []}
        self.received = 0
        self.changed = asyncio.Event()

    async def read(self, name: str, client: RealtimeClient) -> None:
        async for envelope in client:
            if envelope.stream == "system":
                continue
            self.checker.receive(name, per_user(envelope, self.users[name]))
            sent = envelope.data.get("t")
            if isinstance(sent, float):
                self.latency[str(envelope.data["phase"])].append(time.time() - sent)
            self.received += 1
            self.changed.set()

    async def until(self, count: int, within: float) -> None:
        async with asyncio.timeout(within):
            while self.received < count:
                self.changed.clear()
                await self.changed.wait()


def per_user(envelope: Envelope, user: str) -> Envelope:
    """A stream-wide event as the checker counts it: one event per user it reaches (the
    checker's event ids are global; the wire's is the same for everyone)."""
    if envelope.event != "fan.all":
        return envelope
    meta = {**envelope.meta, "event_id": f"{envelope.meta['event_id']}@{user}"}
    return Envelope(envelope.stream, envelope.event, envelope.data, meta)


async def fan_out(
    exchange: aio_pika.abc.AbstractExchange, checker: Checker, phase: str, counter: list[int]
) -> int:
    """PHASE seconds of steady events; returns how many frames the healthy fleet is owed."""
    owed = 0
    start = time.monotonic()
    tick = 0
    while time.monotonic() - start < PHASE:
        n = counter[0] = counter[0] + 1
        who = healthy_user(n % USERS)
        if tick % 5 == 0:
            data = {"t": time.time(), "phase": phase}
            envelope = Envelope(STREAM, "fan.all", data, {"event_id": f"all-{n}"})
            for i in range(USERS):
                checker.publish(healthy_user(i), per_user(envelope, healthy_user(i)))
            await exchange.publish(aio_pika.Message(envelope.to_bytes()), stream_key(STREAM))
            owed += HEALTHY
        else:
            data = {"t": time.time(), "phase": phase}
            envelope = Envelope(STREAM, "fan.one", data, {"event_id": f"one-{n}"})
            checker.publish(who, envelope)
            await exchange.publish(aio_pika.Message(envelope.to_bytes()), user_key(STREAM, who))
            owed += HEALTHY // USERS
        tick += 1
        # A steady rate is a schedule, not a wait for an event.
        await asyncio.sleep(max(0.0, start + tick * TICK - time.monotonic()))
    return owed


async def flood(
    exchange: aio_pika.abc.AbstractExchange, users: list[str], stop: asyncio.Event
) -> None:
    """Large events on the non-readers' own keys until they are all gone."""
    body = Envelope(STREAM, "flood", {"pad": "x" * FLOOD_BODY}).to_bytes()
    while not stop.is_set():
        for who in users:
            await exchange.publish(aio_pika.Message(body), user_key(STREAM, who))
        await asyncio.sleep(0.05)  # a rate, not a wait


async def test_slow_and_silent_clients_are_closed_and_healthy_ones_do_not_notice(
    edge: EdgeProcess, amqp_url: str, exchange: str, make_token: MakeToken
) -> None:
    checker = Checker()
    fleet = Healthy(checker)
    tasks: list[asyncio.Task[None]] = []
    bad: list[socket.socket] = []
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        ex = await channel.get_exchange(exchange)
        for start in range(0, HEALTHY, 200):
            batch = []
            for n in range(start, start + 200):
                name, who = f"h{n}", healthy_user(n % USERS)
                checker.follow(name, who)
                fleet.users[name] = who
                fleet.clients[name] = RealtimeClient(edge.ws_url(), make_token(who), [STREAM])
                batch.append(fleet.clients[name].connect())
            await asyncio.gather(*batch)
        tasks += [asyncio.create_task(fleet.read(n, c)) for n, c in fleet.clients.items()]
        counter = [0]

        owed = await fan_out(ex, checker, "baseline", counter)
        await fleet.until(owed, 30)
        rss_before = rss(edge.proc.pid)
        slow_before = await edge.metric("edge_slow_consumer_drops_total")

        non_readers = [f"stalled-{i}" for i in range(NON_READERS)]
        for who in non_readers:
            sock, _ = await handshake(edge.ws_url(token=make_token(who)), rcvbuf=1024)
            bad.append(sock)
        stop = asyncio.Event()
        flooding = asyncio.create_task(flood(ex, non_readers, stop))
        tasks.append(flooding)
        silent = []
        for i in range(SILENT):
            sock, rest = await handshake(edge.ws_url(token=make_token(f"silent-{i}")))
            bad.append(sock)
            silent.append((sock, rest))
        codes = asyncio.gather(
            *(close_code_of_silent(s, rest, PONG_TIMEOUT * 4) for s, rest in silent)
        )
        owed += await fan_out(ex, checker, "bad", counter)
        silent_codes = await codes
        deadline = time.monotonic() + 30
        while (slow := await edge.metric("edge_slow_consumer_drops_total")) < (
            slow_before + NON_READERS
        ):
            assert time.monotonic() < deadline, f"{slow - slow_before} slow consumers closed"
            await asyncio.sleep(0.1)  # the counter is only visible over HTTP
        stop.set()
        await flooding
        await fleet.until(owed, 30)
        closed_1013 = await edge.metric("edge_connections_closed_total", 'code="1013"')
        closed_1011 = await edge.metric("edge_connections_closed_total", 'code="1011"')
        reconnects = sum(c.connects - 1 for c in fleet.clients.values())
        for sock in bad:
            sock.close()
        deadline = time.monotonic() + 30
        while (open_now := await edge.metric("edge_connections")) > HEALTHY:
            assert time.monotonic() < deadline, f"{open_now} connections still open"
            await asyncio.sleep(0.1)
        rss_after = rss(edge.proc.pid)
    finally:
        for client in fleet.clients.values():
            await client.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for sock in bad:
            sock.close()
        await connection.close()

    report = checker.report()
    base, worse = p99(fleet.latency["baseline"]), p99(fleet.latency["bad"])
    print(
        f"\nbad clients: {HEALTHY} healthy, {NON_READERS} non-readers, {SILENT} silent; "
        f"healthy p99 {base * 1000:.1f} ms baseline, {worse * 1000:.1f} ms with bad clients; "
        f"closed 1013: {closed_1013:.0f}, 1011: {closed_1011:.0f}; edge RSS "
        f"{rss_before / 2**20:.1f} MiB before, {rss_after / 2**20:.1f} MiB after; "
        f"healthy reconnects {reconnects}\n" + report.summary()
    )
    assert report.ok, report.summary()
    assert not report.gaps, report.summary()
    assert reconnects == 0
    assert silent_codes == [1011] * SILENT
    assert slow - slow_before == NON_READERS
    assert closed_1013 == NON_READERS
    assert closed_1011 == SILENT
    assert worse <= max(P99_FACTOR * base, P99_FLOOR), (base, worse)
    assert rss_after - rss_before < RSS_GROWTH
