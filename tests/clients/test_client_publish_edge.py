"""RealtimeClient.publish and session routing through the real edge and RabbitMQ.

A queue bound to the inbound exchange with ``chat.*`` plays the backend: RabbitMQ routes
`chat` messages to it (so the edge's `published` comes), while nothing consumes `ssh`
(so the edge answers NO_HANDLER).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import orjson
import pytest
from support.edge import EdgeProcess, running_edge

from realtime_shared.client import PublishRefused, RealtimeClient, RemoteSession
from realtime_shared.envelope import Envelope

pytestmark = pytest.mark.integration

MakeToken = Callable[..., str]


class Backend:
    """Consumes the client messages of `chat` and answers on the realtime exchange."""

    def __init__(self, exchange: aio_pika.abc.AbstractExchange) -> None:
        self.exchange = exchange
        self.received: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()

    async def take(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()
        await self.received.put(message)

    async def next(self) -> tuple[aio_pika.abc.AbstractIncomingMessage, dict[str, Any]]:
        async with asyncio.timeout(5):
            message = await self.received.get()
        return message, orjson.loads(message.body)

    async def reply(self, reply_to: str, envelope: dict[str, Any]) -> None:
        await self.exchange.publish(aio_pika.Message(orjson.dumps(envelope)), routing_key=reply_to)


@pytest.fixture
def inbound(exchange: str) -> str:
    return f"{exchange}.inbound"


@pytest.fixture
async def edge(amqp_url: str, exchange: str, inbound: str) -> AsyncIterator[EdgeProcess]:
    async with running_edge(amqp_url, exchange, REALTIME_INBOUND_EXCHANGE=inbound) as process:
        yield process


@pytest.fixture
async def backend(
    amqp_url: str, exchange: str, inbound: str, edge: EdgeProcess
) -> AsyncIterator[Backend]:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        incoming = await channel.declare_exchange(
            inbound, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(incoming, "chat.*")
        found = Backend(await channel.get_exchange(exchange))
        await queue.consume(found.take)
        yield found
        await channel.exchange_delete(inbound)


async def receive(client: RealtimeClient | RemoteSession) -> Envelope:
    async with asyncio.timeout(5):
        return await anext(client)


async def test_a_publish_returns_the_id_the_backend_receives_it_under(
    edge: EdgeProcess, backend: Backend, make_token: MakeToken
) -> None:
    async with RealtimeClient(edge.ws_url(), make_token("alice"), ["chat"]) as client:
        message_id = await client.publish(
            "chat", "message.send", {"text": "hi"}, session_id="room-7"
        )
        message, body = await backend.next()
        assert message.message_id == message_id == body["meta"]["message_id"]
        assert (body["stream"], body["event"], body["data"]) == (
            "chat",
            "message.send",
            {"text": "hi"},
        )
        meta = body["meta"]
        assert (meta["user_id"], meta["session_id"]) == ("alice", "room-7")
        assert meta["connection_id"] == client.connection_id


async def test_refusals_raise_their_code_and_publish_nothing(
    edge: EdgeProcess, backend: Backend, make_token: MakeToken
) -> None:
    streams = ["notifications", "chat", "ssh"]
    async with RealtimeClient(edge.ws_url(), make_token("bob"), streams) as client:
        for stream, code in [("ssh", "NO_HANDLER"), ("notifications", "FORBIDDEN")]:
            with pytest.raises(PublishRefused) as caught:
                await client.publish(stream, "e", {"n": 1})
            assert caught.value.code == code, caught.value
        await client.publish("chat", "e", {"n": 2})
        _, body = await backend.next()
        assert body["data"] == {"n": 2}  # the first the backend got: nothing refused came

    only_ssh = make_token("bob", extra={"publish": ["ssh"]})
    async with RealtimeClient(edge.ws_url(), only_ssh, ["chat"]) as client:
        with pytest.raises(PublishRefused) as caught:
            await client.publish("chat", "e")
        assert caught.value.code == "FORBIDDEN"
        assert caught.value.message == "the token does not allow publishing on 'chat'"
    assert backend.received.empty()


async def test_a_reply_to_the_connection_reaches_the_session_it_names(
    edge: EdgeProcess, backend: Backend, make_token: MakeToken
) -> None:
    token = make_token("carol")
    async with (
        RealtimeClient(edge.ws_url(), token, ["chat"]) as client,
        client.session("chat", "s1") as room,
    ):
        await room.publish("message.send", {"text": "hi"})
        _, body = await backend.next()
        assert body["meta"]["session_id"] == "s1"
        reply_to = body["meta"]["reply_to"]
        for n, session_id in [(1, "s2"), (2, "s1")]:
            await backend.reply(
                reply_to,
                {
                    "stream": "chat",
                    "event": "message.ack",
                    "data": {"n": n},
                    "meta": {"session_id": session_id},
                },
            )
        got = await receive(room)
        assert (got.event, got.data, got.meta) == (
            "message.ack",
            {"n": 2},
            {"session_id": "s1"},
        )
        other = await receive(client)  # another session's reply stays with the client
        assert (other.data, other.meta) == ({"n": 1}, {"session_id": "s2"})
