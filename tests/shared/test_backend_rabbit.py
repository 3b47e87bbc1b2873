"""The backend helper on the real RabbitMQ, behind a real edge: a client publishes on
`chat`, a `Backend` answers, and only the connection that asked hears the answer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aio_pika
import orjson
import pytest
import websockets
from faststream.rabbit import RabbitBroker
from support.edge import EdgeProcess, connected, recv_event, recv_frame, running_edge

from realtime_shared.backend import Backend, InboundMessage, Outcome

pytestmark = pytest.mark.integration

NAME = "echo"
Handler = Callable[[Backend, InboundMessage], Awaitable[None]]
MakeToken = Callable[..., str]


class Outcomes:
    """What the backends did with each message, in order; awaitable by count."""

    def __init__(self) -> None:
        self.seen: list[Outcome] = []
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def observe_inbound(self, stream: str, outcome: Outcome, seconds: float) -> None:
        self.seen.append(outcome)
        for count, waiter in self._waiters:
            if len(self.seen) >= count and not waiter.done():
                waiter.set_result(None)

    async def until(self, count: int, within: float = 10.0) -> list[Outcome]:
        if len(self.seen) < count:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append((count, waiter))
            await asyncio.wait_for(waiter, within)
        return self.seen


@pytest.fixture
async def inbound(amqp_url: str, exchange: str) -> AsyncIterator[str]:
    """The test's inbound exchange (the `exchange` fixture deletes it and the history
    queues); the backend's durable queue is deleted here."""
    name = f"{exchange}.inbound"
    yield name
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        await (await connection.channel()).queue_delete(f"{name}.{NAME}.chat")


@pytest.fixture
async def edge(amqp_url: str, exchange: str, inbound: str) -> AsyncIterator[EdgeProcess]:
    async with running_edge(amqp_url, exchange, REALTIME_INBOUND_EXCHANGE=inbound) as process:
        yield process


@asynccontextmanager
async def running_backend(
    amqp_url: str, exchange: str, inbound: str, handler: Handler, outcomes: Outcomes | None = None
) -> AsyncIterator[Backend]:
    """One replica: its own connection, consuming the shared queue until the block ends."""
    broker = RabbitBroker(amqp_url)
    backend = Backend(
        broker, name=NAME, exchange=exchange, inbound_exchange=inbound, metrics=outcomes
    )

    @backend.subscriber("chat")
    async def on_chat(message: InboundMessage) -> None:
        await handler(backend, message)

    await broker.start()
    try:
        yield backend
    finally:
        await broker.stop()


async def echo(backend: Backend, message: InboundMessage) -> None:
    await backend.reply(message, "message.echo", {"text": message.data.get("text")})


async def send(ws: websockets.ClientConnection, **frame: Any) -> None:
    await ws.send(orjson.dumps({"action": "publish", "stream": "chat", **frame}).decode())


async def test_a_reply_reaches_the_connection_that_published_and_no_other(
    amqp_url: str, exchange: str, inbound: str, edge: EdgeProcess, make_token: MakeToken
) -> None:
    async with running_backend(amqp_url, exchange, inbound, echo):
        asking = await connected(edge.ws_url("/ws/chat", token=make_token("alice")))
        other_tab = await connected(edge.ws_url("/ws/chat", token=make_token("alice")))
        await send(asking, event="message.send", data={"text": "hi"}, id="c-1", session_id="s1")
        # The answer may overtake `published`: both come, in either order.
        frames = {frame["event"]: frame for frame in [await recv_frame(asking) for _ in "ab"]}
        assert frames["published"]["data"]["id"] == "c-1"  # type: ignore[index]
        reply = frames["message.echo"]
        assert reply["stream"] == "chat" and reply["event"] == "message.echo"
        assert reply["data"] == {"text": "hi"}
        assert reply["meta"]["session_id"] == "s1"  # type: ignore[index]
        with pytest.raises(TimeoutError):
            await recv_frame(other_tab, within=0.3)
        await asking.close()
        await other_tab.close()


async def test_messages_sent_while_no_replica_runs_wait_in_the_queue(
    amqp_url: str, exchange: str, inbound: str, edge: EdgeProcess, make_token: MakeToken
) -> None:
    async with running_backend(amqp_url, exchange, inbound, echo):
        pass  # declared and bound its durable queue, then stopped (a deploy)
    ws = await connected(edge.ws_url("/ws/chat", token=make_token("alice")))
    await send(ws, event="message.send", data={"text": "while away"}, id="c-1")
    await recv_event(ws, "published")  # RabbitMQ holds it: not NO_HANDLER
    async with running_backend(amqp_url, exchange, inbound, echo):
        reply = await recv_event(ws, "message.echo")
    assert reply["data"] == {"text": "while away"}
    await ws.close()


def body(message_id: str, user: str = "alice") -> bytes:
    meta = {
        "user_id": user,
        "connection_id": "c1",
        "message_id": message_id,
        "sent_at": datetime.now(UTC).isoformat(),
        "reply_to": "@gone.c1",
    }
    return orjson.dumps({"stream": "chat", "event": "message.send", "data": {}, "meta": meta})


@asynccontextmanager
async def client_side(amqp_url: str, inbound: str) -> AsyncIterator[aio_pika.abc.AbstractExchange]:
    """The inbound exchange, as the edge publishes to it (confirmed, mandatory)."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        yield await channel.get_exchange(inbound)


async def publish(exchange: aio_pika.abc.AbstractExchange, raw: bytes, key: str) -> None:
    await exchange.publish(aio_pika.Message(raw), routing_key=key, mandatory=True)


async def test_two_replicas_share_one_queue_and_each_message_is_handled_once(
    amqp_url: str, exchange: str, inbound: str
) -> None:
    handled: dict[str, list[str]] = {"a": [], "b": []}
    outcomes = Outcomes()

    def replica(name: str) -> Handler:
        async def record(backend: Backend, message: InboundMessage) -> None:
            handled[name].append(message.message_id)

        return record

    ids = [f"m{n}" for n in range(40)]
    async with (
        running_backend(amqp_url, exchange, inbound, replica("a"), outcomes),
        running_backend(amqp_url, exchange, inbound, replica("b"), outcomes),
        client_side(amqp_url, inbound) as inbound_exchange,
    ):
        for message_id in ids:
            await publish(inbound_exchange, body(message_id), "chat.alice")
        await outcomes.until(len(ids))
    assert handled["a"] and handled["b"]  # RabbitMQ hands them out to both
    assert sorted(handled["a"] + handled["b"]) == sorted(ids)
    assert outcomes.seen == [Outcome.HANDLED] * len(ids)


async def queued(amqp_url: str, queue: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        declared = await (await connection.channel()).declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0


async def test_a_failing_handler_gets_one_more_attempt_then_the_message_is_dropped(
    amqp_url: str, exchange: str, inbound: str
) -> None:
    attempts: dict[str, int] = {}
    outcomes = Outcomes()

    async def flaky(backend: Backend, message: InboundMessage) -> None:
        attempts[message.message_id] = attempts.get(message.message_id, 0) + 1
        if message.message_id == "always" or attempts[message.message_id] == 1:
            raise RuntimeError("database down")

    async with (
        running_backend(amqp_url, exchange, inbound, flaky, outcomes) as backend,
        client_side(amqp_url, inbound) as inbound_exchange,
    ):
        await publish(inbound_exchange, body("once"), "chat.alice")
        assert await outcomes.until(2) == [Outcome.RETRIED, Outcome.HANDLED]
        await publish(inbound_exchange, body("always"), "chat.alice")
        await outcomes.until(4)
        # A third attempt would come back to the head of the queue before this one.
        await publish(inbound_exchange, body("after"), "chat.alice")
        await outcomes.until(6)
        assert await queued(amqp_url, backend.queue_name("chat")) == 0
    assert outcomes.seen[2:] == [Outcome.RETRIED, Outcome.FAILED, Outcome.RETRIED, Outcome.HANDLED]
    assert attempts == {"once": 2, "always": 2, "after": 2}


async def test_a_malformed_body_is_dropped_and_the_next_message_handled(
    amqp_url: str, exchange: str, inbound: str
) -> None:
    handled: list[str] = []
    outcomes = Outcomes()

    async def record(backend: Backend, message: InboundMessage) -> None:
        handled.append(message.message_id)

    async with (
        running_backend(amqp_url, exchange, inbound, record, outcomes) as backend,
        client_side(amqp_url, inbound) as inbound_exchange,
    ):
        await publish(inbound_exchange, b"{not json", "chat.alice")
        await publish(inbound_exchange, body("m1", user="bob"), "chat.alice")  # not alice's
        await publish(inbound_exchange, body(uuid.uuid4().hex), "chat.alice")
        await outcomes.until(3)
        assert await queued(amqp_url, backend.queue_name("chat")) == 0
    # Handled concurrently: in any order.
    assert sorted(outcomes.seen) == [Outcome.HANDLED, Outcome.MALFORMED, Outcome.MALFORMED]
    assert len(handled) == 1
