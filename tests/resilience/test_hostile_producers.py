"""Scenario 6, hostile producers: whatever lands on the exchange, browsers get valid JSON.

tests/edge/test_hub.py drops each bad body once, in-process. Here a real edge consumes a
mixed run from a real RabbitMQ: several users, two browser-like connections each (raw
websockets, every frame parsed strictly), and on each user's key valid envelopes
interleaved with every kind of bad body. Each bad one is dropped with one log line and
one counter increment; every valid one arrives once, in order (the invariant checker);
consumption never stops.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import orjson
import pytest
import websockets
from support.edge import EdgeProcess, connected, running_edge
from support.invariants import Checker

from realtime_shared.envelope import Envelope
from realtime_shared.routing import user_key

pytestmark = [pytest.mark.integration, pytest.mark.resilience, pytest.mark.timeout(60)]

MakeToken = Callable[..., str]
STREAM = "notifications"
MAX_MESSAGE = 4096
USERS = ("hostile-a", "hostile-b", "hostile-c")
CONNECTIONS_PER_USER = 2
ROUNDS = 40
"""Per user: ROUNDS valid envelopes, each followed by one bad body (the last by none)."""


def valid(user: str, n: int) -> Envelope:
    meta = {"event_id": f"{user}-{n}", "seq": n, "epoch": "hostile"}
    return Envelope(STREAM, "campaign.valid", {"n": n, "text": "ünïcødé ✓"}, meta)


def deep(depth: int) -> bytes:
    return b'{"event":"e","data":' + b"[" * depth + b"]" * depth + b"}"


INVALID: list[bytes] = [
    b"not json",
    b"",
    b"\xff\xfe\x00\x01binary",
    b"[1,2,3]",
    b'"a string"',
    b"42",
    b"null",
    b'{"stream":"notifications","data":{}}',  # no event
    b'{"event":5}',  # event not a string
    b'{"stream":"notifications","event":"e","data":{"x":1',  # starts well, cut short
    b'{"stream":"notifications","event":"e","data":{"x":NaN}}',
    b'{"stream":"notifications","event":"e","data":{"x":Infinity}}',
    b'{"stream":"notifications","event":"e","data":{"x":1e999}}',
    b'{"stream":"notifications","event":"e\xff"}',  # not UTF-8 inside a string
    b'{"stream":"notifications","event":"\\ud800"}',  # a lone surrogate
    deep(2000),  # deeper than any parser should follow
    deep(300),  # parses, but deeper than the edge can write back out
]
OVERSIZED = [
    valid("x", 0).to_bytes()[:-1] + b',"pad":"' + b"x" * MAX_MESSAGE + b'"}',
    b"[" * (MAX_MESSAGE + 1),
]
BAD = INVALID + OVERSIZED


def with_duplicate_key(envelope: Envelope) -> bytes:
    """Valid JSON with `event` twice: parsers keep the last, so it is that envelope."""
    return b'{"event":"forged",' + envelope.to_bytes()[1:]


def strict(raw: str | bytes) -> dict[str, Any]:
    """Parse as a strict browser would: no NaN/Infinity, no duplicate keys, an object."""

    def refuse(constant: str) -> None:
        raise ValueError(f"{constant} in a frame")

    def unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        keys = [key for key, _ in pairs]
        assert len(keys) == len(set(keys)), f"duplicate keys in a frame: {raw!r}"
        return dict(pairs)

    assert isinstance(raw, str), f"a binary frame: {raw!r}"
    frame = json.loads(raw, parse_constant=refuse, object_pairs_hook=unique)
    assert isinstance(frame, dict), raw
    return frame


@pytest.fixture
async def edge(amqp_url: str, exchange: str) -> AsyncIterator[EdgeProcess]:
    async with running_edge(amqp_url, exchange, EDGE_MAX_MESSAGE_BYTES=str(MAX_MESSAGE)) as e:
        yield e


async def produce(amqp_url: str, exchange: str, checker: Checker) -> int:
    """Every user's run, interleaved across users; returns how many bad bodies went out."""
    connection = await aio_pika.connect(amqp_url)
    sent_bad = 0
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        ex = await channel.get_exchange(exchange)
        for n in range(1, ROUNDS + 1):
            for u, user in enumerate(USERS):
                envelope = valid(user, n)
                checker.publish(user, envelope)
                body = with_duplicate_key(envelope) if n % 5 == 0 else envelope.to_bytes()
                await ex.publish(aio_pika.Message(body), routing_key=user_key(STREAM, user))
                if n < ROUNDS:
                    bad = BAD[(n * len(USERS) + u) % len(BAD)]
                    await ex.publish(aio_pika.Message(bad), routing_key=user_key(STREAM, user))
                    sent_bad += 1
    return sent_bad


async def read_all(ws: websockets.ClientConnection, client: str, checker: Checker) -> None:
    """Every frame until the user's last valid envelope, each parsed strictly."""
    while True:
        envelope = Envelope.from_dict(strict(await ws.recv()))
        checker.receive(client, envelope)
        if envelope.meta.get("seq") == ROUNDS:
            return


async def test_bad_bodies_are_dropped_counted_and_logged_valid_ones_arrive_in_order(
    edge: EdgeProcess, amqp_url: str, exchange: str, make_token: MakeToken
) -> None:
    checker = Checker()
    sockets: dict[str, websockets.ClientConnection] = {}
    try:
        for user in USERS:
            for i in range(CONNECTIONS_PER_USER):
                sockets[f"{user}/{i}"] = await connected(edge.ws_url(token=make_token(user)))
                checker.follow(f"{user}/{i}", user)
        readers = [read_all(ws, client, checker) for client, ws in sockets.items()]
        sent_bad = await produce(amqp_url, exchange, checker)
        async with asyncio.timeout(20):
            await asyncio.gather(*readers)

        report = checker.report()
        assert report.ok, report.summary()
        assert report.delivered == ROUNDS * len(USERS) * CONNECTIONS_PER_USER
        assert report.gaps == []

        oversized = sum(
            1
            for n in range(1, ROUNDS)
            for u in range(len(USERS))
            if BAD[(n * len(USERS) + u) % len(BAD)] in OVERSIZED
        )
        assert await edge.metric("edge_messages_oversized_total") == oversized
        assert await edge.metric("edge_messages_invalid_total") == sent_bad - oversized
        log = edge.log_text()
        assert log.count("dropping a") == sent_bad, log[-3000:]
        assert "Traceback" not in log, log[-3000:]

        for ws in sockets.values():  # every connection still answers
            await ws.send('{"action":"ping"}')
            assert strict(await asyncio.wait_for(ws.recv(), 5))["event"] == "pong"
    finally:
        for ws in sockets.values():
            await ws.close()


def test_every_kind_of_bad_body_is_in_the_run() -> None:
    # ROUNDS - 1 bad bodies per user, taken in turn: each kind goes out at least once.
    picked = {BAD[(n * len(USERS) + u) % len(BAD)] for n in range(1, ROUNDS) for u in range(3)}
    assert picked == set(BAD)
    assert all(len(body) > MAX_MESSAGE for body in OVERSIZED)
    assert all(len(body) <= MAX_MESSAGE for body in INVALID)
    assert orjson.loads(with_duplicate_key(valid("u", 1))) == valid("u", 1).to_dict()
