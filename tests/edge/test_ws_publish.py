"""Client messages on interactive streams, through a real edge and RabbitMQ.

A test queue bound to the inbound exchange plays the backend: it sees exactly what the
edge published, so "nothing was published" is checked, not assumed.
"""

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import aio_pika
import httpx
import orjson
import pytest
import websockets
from support.edge import EdgeProcess, connected, recv_event, recv_frame, running_edge
from support.tcp_proxy import TcpProxy

from realtime_shared.routing import user_key

pytestmark = pytest.mark.integration

MakeToken = Callable[..., str]


class Backend:
    """A queue on the inbound exchange bound to `<stream>.*`, and a way to answer."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, queue: aio_pika.abc.AbstractQueue):
        self.channel = channel
        self.queue = queue

    async def next(self, within: float = 5.0) -> tuple[aio_pika.abc.AbstractIncomingMessage, Any]:
        message = await self.queue.get(timeout=within, fail=False)
        deadline = asyncio.get_running_loop().time() + within
        while message is None:
            assert asyncio.get_running_loop().time() < deadline, "nothing was published"
            await asyncio.sleep(0.02)
            message = await self.queue.get(fail=False)
        await message.ack()
        return message, orjson.loads(message.body)

    async def is_empty(self) -> bool:
        await asyncio.sleep(0.2)  # anything published before now has been routed by then
        return (await self.queue.get(fail=False)) is None

    async def reply(self, exchange: str, reply_to: str, envelope: dict[str, Any]) -> None:
        ex = await self.channel.get_exchange(exchange)
        await ex.publish(aio_pika.Message(orjson.dumps(envelope)), routing_key=reply_to)


@pytest.fixture
def inbound(exchange: str) -> str:
    return f"{exchange}.inbound"


@pytest.fixture
async def edge(amqp_url: str, exchange: str, inbound: str) -> AsyncIterator[EdgeProcess]:
    async with running_edge(
        amqp_url,
        exchange,
        REALTIME_INBOUND_EXCHANGE=inbound,
        EDGE_PUBLISH_RATE="1",
        EDGE_PUBLISH_BURST="5",
    ) as process:
        yield process


@pytest.fixture
async def backend(amqp_url: str, inbound: str, edge: EdgeProcess) -> AsyncIterator[Backend]:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            inbound, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, "chat.*")
        yield Backend(channel, queue)
        await channel.exchange_delete(inbound)


async def send(ws: websockets.ClientConnection, **frame: Any) -> None:
    await ws.send(orjson.dumps({"action": "publish", **frame}).decode())


async def test_a_message_reaches_the_backend_with_the_user_from_the_token(
    edge: EdgeProcess, backend: Backend, make_token: MakeToken
) -> None:
    ws = await connected(edge.ws_url("/ws/chat", token=make_token("alice")))
    await send(
        ws,
        stream="chat",
        event="message.send",
        data={"text": "hi"},
        id="c-1",
        session_id="room-7",
        # None of these is the client's to choose:
        user_id="mallory",
        meta={"user_id": "mallory", "reply_to": "@elsewhere.x"},
        routing_key="chat.mallory",
    )
    published = await recv_event(ws, "published")
    message, body = await backend.next()
    assert published["data"] == {"id": "c-1", "message_id": message.message_id}
    assert message.routing_key == user_key("chat", "alice")
    assert body["stream"] == "chat" and body["event"] == "message.send"
    assert body["data"] == {"text": "hi"}
    meta = body["meta"]
    assert meta["user_id"] == "alice"
    assert meta["message_id"] == message.message_id
    assert meta["session_id"] == "room-7"
    assert meta["reply_to"].startswith(f"@{edge.node_id}.")
    assert meta["connection_id"] == meta["reply_to"].rsplit(".", 1)[1]
    assert set(meta) == {
        "user_id",
        "connection_id",
        "message_id",
        "sent_at",
        "reply_to",
        "session_id",
    }
    await ws.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (
            {"stream": "chat", "event": "e"},
            "FORBIDDEN",
        ),  # not held (the socket holds notifications)
        ({"stream": "notifications", "event": "e"}, "FORBIDDEN"),  # not interactive
        ({"stream": "system", "event": "e"}, "FORBIDDEN"),
        ({"stream": "nope", "event": "e"}, "FORBIDDEN"),
        ({"stream": "chat"}, "INVALID_FRAME"),
        ({"stream": "chat", "event": "e" * 129}, "INVALID_FRAME"),
        ({"stream": "chat", "event": "e", "data": [1]}, "INVALID_FRAME"),
        ({"stream": "chat", "event": "e", "session_id": 7}, "INVALID_FRAME"),
    ],
)
async def test_a_refused_message_is_answered_with_its_code_and_id_and_never_published(
    edge: EdgeProcess, backend: Backend, make_token: MakeToken, frame: dict[str, Any], code: str
) -> None:
    ws = await connected(edge.ws_url(token=make_token("alice")))
    await send(ws, id="c-9", **frame)
    error = await recv_event(ws, "error")
    assert error["data"]["code"] == code  # type: ignore[index]
    assert error["data"]["id"] == "c-9"  # type: ignore[index]
    assert await backend.is_empty()
    await ws.close()


async def test_an_id_that_is_not_a_short_string_is_not_echoed(
    edge: EdgeProcess, backend: Backend, make_token: MakeToken
) -> None:
    ws = await connected(edge.ws_url("/ws/chat", token=make_token("alice")))
    await send(ws, stream="chat", event="e", id="x" * 65)
    error = await recv_event(ws, "error")
    assert error["data"]["code"] == "INVALID_FRAME" and "id" not in error["data"]  # type: ignore[index, operator]
    assert await backend.is_empty()
    await ws.close()


async def test_the_publish_claim_limits_the_streams_a_token_may_publish_on(
    edge: EdgeProcess, backend: Backend, make_token: MakeToken
) -> None:
    token = make_token("alice", extra={"publish": ["ssh"]})
    ws = await connected(edge.ws_url("/ws/chat", token=token))
    await send(ws, stream="chat", event="e", id="c-1")
    error = await recv_event(ws, "error")
    assert error["data"] == {  # type: ignore[comparison-overlap]
        "code": "FORBIDDEN",
        "message": "the token does not allow publishing on 'chat'",
        "id": "c-1",
    }
    assert await backend.is_empty()
    await ws.close()


async def test_past_the_burst_messages_are_rate_limited_and_not_published(
    edge: EdgeProcess, backend: Backend, make_token: MakeToken
) -> None:
    ws = await connected(edge.ws_url("/ws/chat", token=make_token("alice")))
    for n in range(7):  # a burst of 5 at 1 per second
        await send(ws, stream="chat", event="e", id=f"c-{n}")
    replies = [await recv_frame(ws) for _ in range(7)]
    by_id = {r["data"]["id"]: r for r in replies}  # type: ignore[index]
    published = [i for i, r in by_id.items() if r["event"] == "published"]
    limited = [i for i, r in by_id.items() if r["data"].get("code") == "RATE_LIMITED"]  # type: ignore[union-attr]
    assert len(published) == 5 and len(limited) == 2
    for _ in range(5):
        await backend.next()
    assert await backend.is_empty()
    await ws.close()
    assert (
        await edge.metric(
            "edge_client_messages_refused_total", 'code="RATE_LIMITED",kind="publish"'
        )
        == 2
    )


async def test_no_backend_bound_is_no_handler(edge: EdgeProcess, make_token: MakeToken) -> None:
    ws = await connected(edge.ws_url("/ws/ssh", token=make_token("alice")))
    await send(ws, stream="ssh", event="keys", data={"k": "ls\n"}, id="s-1")
    error = await recv_event(ws, "error")
    assert error["data"]["code"] == "NO_HANDLER" and error["data"]["id"] == "s-1"  # type: ignore[index]
    await ws.close()


async def test_a_frame_over_the_size_limit_closes_1009_and_nothing_is_published(
    edge: EdgeProcess, backend: Backend, make_token: MakeToken
) -> None:
    ws = await connected(edge.ws_url("/ws/chat", token=make_token("alice")), max_size=None)
    await send(ws, stream="chat", event="e", data={"pad": "x" * 70_000})
    with pytest.raises(websockets.ConnectionClosed):
        await recv_frame(ws)
    assert ws.close_code == 1009
    assert await backend.is_empty()


async def test_a_reply_reaches_only_the_connection_that_asked(
    amqp_url: str,
    exchange: str,
    inbound: str,
    edge: EdgeProcess,
    backend: Backend,
    make_token: MakeToken,
) -> None:
    async with running_edge(amqp_url, exchange, REALTIME_INBOUND_EXCHANGE=inbound) as other:
        asking = await connected(edge.ws_url("/ws/chat", token=make_token("alice")))
        same_user = await connected(edge.ws_url("/ws/chat", token=make_token("alice")))
        elsewhere = await connected(other.ws_url("/ws/chat", token=make_token("alice")))
        not_on_chat = await connected(edge.ws_url(token=make_token("alice")))
        await send(asking, stream="chat", event="message.send", data={"text": "hi"}, id="c-1")
        await recv_event(asking, "published")
        _, body = await backend.next()
        reply_to = body["meta"]["reply_to"]
        await backend.reply(
            exchange,
            reply_to,
            {
                "stream": "chat",
                "event": "message.ack",
                "data": {"ok": True},
                "meta": {"session_id": "s"},
            },
        )
        assert await recv_frame(asking) == {
            "stream": "chat",
            "event": "message.ack",
            "data": {"ok": True},
            "meta": {"session_id": "s"},
        }
        # A reply on a stream the connection does not hold is dropped, not delivered.
        await backend.reply(exchange, reply_to, {"stream": "notifications", "event": "sneaky"})
        await backend.reply(exchange, reply_to, {"stream": "chat", "event": "second"})
        assert (await recv_frame(asking))["event"] == "second"
        for ws in (same_user, elsewhere, not_on_chat):
            with pytest.raises(TimeoutError):
                await recv_frame(ws, within=0.3)
        for ws in (asking, same_user, elsewhere, not_on_chat):
            await ws.close()
    assert await edge.metric("edge_replies_total", 'outcome="not_held"') == 1


async def test_while_rabbitmq_is_unreachable_a_message_is_unavailable(
    amqp_url: str, exchange: str, inbound: str, make_token: MakeToken
) -> None:
    async with (
        TcpProxy.for_url(amqp_url) as proxy,
        running_edge(proxy.rewrite(amqp_url), exchange, REALTIME_INBOUND_EXCHANGE=inbound) as edge,
        httpx.AsyncClient() as http,
    ):
        ws = await connected(edge.ws_url("/ws/chat", token=make_token("alice")))
        proxy.cut()
        deadline = asyncio.get_running_loop().time() + 10
        while (await http.get(f"{edge.base_url}/readyz")).status_code != 503:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.05)
        await send(ws, stream="chat", event="e", id="c-1")
        error = await recv_event(ws, "error")
        assert error["data"]["code"] == "UNAVAILABLE" and error["data"]["id"] == "c-1"  # type: ignore[index]
        await ws.close()
