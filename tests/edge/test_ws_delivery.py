"""Messages from RabbitMQ reach exactly the connections that hold their stream and user."""

import asyncio
from collections.abc import AsyncIterator, Callable

import aio_pika
import orjson
import pytest
import websockets
from support.edge import EdgeProcess, connected, publish, recv_event, recv_frame, running_edge

from realtime_shared.routing import stream_key, user_key

pytestmark = pytest.mark.integration

MakeToken = Callable[..., str]

REPLY_BINDINGS = 1
"""`@<node>.*`: every edge process holds it for its connections' replies."""


class Publisher:
    def __init__(self, exchange: aio_pika.abc.AbstractExchange) -> None:
        self.exchange = exchange

    async def send(
        self, key: str, event: str, data: dict[str, object] | None = None, stream: str | None = None
    ) -> None:
        await publish(self.exchange, key, event, data, stream=stream)


@pytest.fixture
async def publisher(amqp_url: str, exchange: str) -> AsyncIterator[Publisher]:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        yield Publisher(await channel.get_exchange(exchange))


@pytest.fixture
async def edge(amqp_url: str, exchange: str) -> AsyncIterator[EdgeProcess]:
    # Some tests cycle subscribe/unsubscribe hundreds of times a second on purpose.
    async with running_edge(
        amqp_url, exchange, EDGE_UNBIND_DELAY="0.2", EDGE_CONTROL_RATE="100000"
    ) as process:
        yield process


async def connect(edge: EdgeProcess, token: str, **params: str) -> websockets.ClientConnection:
    return await connected(edge.ws_url(token=token, **params))


async def test_connected_comes_first_and_later_messages_arrive(
    edge: EdgeProcess, publisher: Publisher, make_token: MakeToken
) -> None:
    async with websockets.connect(edge.ws_url("/ws/chat", token=make_token("alice"))) as ws:
        first = await recv_frame(ws)
        assert first["stream"] == "system"
        assert first["event"] == "connected"
        assert first["data"]["streams"] == ["chat"]  # type: ignore[index]
        assert isinstance(first["data"]["connection_id"], str)  # type: ignore[index]
        await publisher.send(user_key("chat", "alice"), "to.alice", {"n": 1})
        await publisher.send(user_key("chat", "bob"), "to.bob")
        await publisher.send(user_key("notifications", "alice"), "other.stream")
        await publisher.send(stream_key("chat"), "to.everyone")
        assert await recv_frame(ws) == {"stream": "chat", "event": "to.alice", "data": {"n": 1}}
        assert await recv_frame(ws) == {"stream": "chat", "event": "to.everyone"}
        await ws.send('{"action":"ping"}')
        assert await recv_frame(ws) == {"stream": "system", "event": "pong"}


async def test_the_edge_sets_stream_from_the_routing_key(
    edge: EdgeProcess, publisher: Publisher, make_token: MakeToken
) -> None:
    async with await connect(edge, make_token("alice")) as ws:
        await publisher.send(user_key("notifications", "alice"), "e", {"x": 1}, stream="chat")
        assert await recv_frame(ws) == {"stream": "notifications", "event": "e", "data": {"x": 1}}


async def test_a_message_right_after_subscribed_is_always_delivered(
    edge: EdgeProcess, publisher: Publisher, make_token: MakeToken
) -> None:
    """`subscribed` comes once the binding is in place: nothing published after it is lost."""
    async with await connect(edge, make_token("alice")) as ws:
        for cycle in range(300):
            await ws.send('{"action":"subscribe","streams":["chat"]}')
            reply = await recv_frame(ws)
            assert reply["event"] == "subscribed", reply
            await publisher.send(user_key("chat", "alice"), "cycle", {"n": cycle})
            assert await recv_frame(ws) == {
                "stream": "chat",
                "event": "cycle",
                "data": {"n": cycle},
            }
            await ws.send('{"action":"unsubscribe","streams":["chat"]}')
            assert (await recv_frame(ws))["data"] == {"streams": ["notifications"]}  # type: ignore[comparison-overlap]


async def test_nothing_of_an_unsubscribed_stream_arrives_after_the_reply(
    edge: EdgeProcess, publisher: Publisher, make_token: MakeToken
) -> None:
    async with await connect(edge, make_token("alice"), streams="chat,notifications") as ws:
        await ws.send('{"action":"unsubscribe","streams":["chat"]}')
        assert (await recv_frame(ws))["event"] == "unsubscribed"
        await publisher.send(user_key("chat", "alice"), "gone")
        await publisher.send(stream_key("chat"), "gone.too")
        await publisher.send(user_key("notifications", "alice"), "still.here")
        assert (await recv_frame(ws))["event"] == "still.here"


async def test_user_ids_with_dots_and_non_ascii_get_only_their_messages(
    edge: EdgeProcess, publisher: Publisher, make_token: MakeToken
) -> None:
    odd, plain = "jos\u00e9.o'brien@\u6771\u4eac.example", "jos\u00e9"
    async with (
        await connect(edge, make_token(odd)) as a,
        await connect(edge, make_token(plain)) as b,
    ):
        await publisher.send(user_key("notifications", odd), "for.odd")
        await publisher.send(user_key("notifications", plain), "for.plain")
        assert (await recv_frame(a))["event"] == "for.odd"
        assert (await recv_frame(b))["event"] == "for.plain"
        await a.send('{"action":"ping"}')
        assert (await recv_frame(a))["event"] == "pong"  # and nothing for the other user before it


async def test_every_tab_of_a_user_gets_the_message_and_one_leaving_keeps_the_rest(
    edge: EdgeProcess, publisher: Publisher, make_token: MakeToken
) -> None:
    token = make_token("alice")
    tabs = [await connect(edge, token) for _ in range(3)]
    # one user key + one stream key, shared; and the process's one binding for replies
    assert await edge.metric("edge_bindings") == 2 + REPLY_BINDINGS
    await publisher.send(user_key("notifications", "alice"), "all.tabs")
    for ws in tabs:
        assert (await recv_frame(ws))["event"] == "all.tabs"
    await tabs.pop().close()
    await publisher.send(user_key("notifications", "alice"), "two.tabs")
    for ws in tabs:
        assert (await recv_frame(ws))["event"] == "two.tabs"
        await ws.close()


async def test_bindings_are_removed_after_the_last_holder_leaves(
    edge: EdgeProcess, make_token: MakeToken
) -> None:
    ws = await connect(edge, make_token("alice"), streams="chat")
    assert await edge.metric("edge_bindings") == 2 + REPLY_BINDINGS
    await ws.close()
    deadline = asyncio.get_running_loop().time() + 5
    while await edge.metric("edge_bindings") != REPLY_BINDINGS:
        assert asyncio.get_running_loop().time() < deadline, "bindings were not released"
        await asyncio.sleep(0.05)


async def test_bad_frames_get_error_replies_and_the_connection_stays_usable(
    edge: EdgeProcess, make_token: MakeToken
) -> None:
    async with await connect(edge, make_token("alice", streams=["notifications"])) as ws:
        for bad, code in [
            ("{", "INVALID_JSON"),
            ('{"action":"fly"}', "UNKNOWN_ACTION"),
            ('{"action":"subscribe","streams":"chat"}', "INVALID_FRAME"),
            (b"\x00\x01", "UNSUPPORTED_FRAME"),
            ('{"action":"refresh","token":"garbage"}', "UNAUTHORIZED"),
        ]:
            await ws.send(bad)
            reply = await recv_frame(ws)
            assert (reply["event"], reply["data"]["code"]) == ("error", code)  # type: ignore[index]
        await ws.send('{"action":"subscribe","streams":["chat","nope","notifications"]}')
        assert (await recv_frame(ws))["data"] == {
            "streams": ["notifications"],
            "rejected": [
                {"stream": "chat", "code": "FORBIDDEN"},
                {"stream": "nope", "code": "NOT_FOUND"},
            ],
        }
        await ws.send('{"action":"ping"}')
        assert (await recv_frame(ws))["event"] == "pong"


async def test_a_frame_over_the_limit_closes_with_1009(
    edge: EdgeProcess, make_token: MakeToken
) -> None:
    async with await connect(edge, make_token("alice")) as ws:
        await ws.send('{"action":"ping","pad":"' + "x" * 70_000 + '"}')
        with pytest.raises(websockets.ConnectionClosed):
            await recv_frame(ws)
        assert ws.close_code == 1009


async def test_two_edges_each_receive_only_their_own_users(
    amqp_url: str, exchange: str, publisher: Publisher, make_token: MakeToken
) -> None:
    async with running_edge(amqp_url, exchange) as one, running_edge(amqp_url, exchange) as two:
        async with (
            await connect(one, make_token("alice")) as a,
            await connect(two, make_token("bob")) as b,
        ):
            for n in range(5):
                await publisher.send(user_key("notifications", "alice"), "a", {"n": n})
            for n in range(3):
                await publisher.send(user_key("notifications", "bob"), "b", {"n": n})
            for n in range(5):
                assert (await recv_frame(a))["data"] == {"n": n}
            for n in range(3):
                assert (await recv_frame(b))["data"] == {"n": n}
            await publisher.send(stream_key("notifications"), "everyone")
            assert (await recv_event(a, "everyone"))["stream"] == "notifications"
            assert (await recv_event(b, "everyone"))["stream"] == "notifications"
        assert await one.metric("edge_messages_consumed_total") == 6
        assert await two.metric("edge_messages_consumed_total") == 4


async def test_too_many_connections_for_one_user_is_refused(
    amqp_url: str, exchange: str, make_token: MakeToken
) -> None:
    async with running_edge(amqp_url, exchange, EDGE_MAX_CONNECTIONS_PER_USER="2") as edge:
        token = make_token("alice")
        async with await connect(edge, token), await connect(edge, token):
            with pytest.raises(websockets.InvalidStatus) as info:
                await connect(edge, token)
            assert info.value.response.status_code == 429
        async with await connect(edge, make_token("bob")):
            pass


async def test_a_refresh_to_a_narrower_token_stops_the_streams_it_no_longer_allows(
    edge: EdgeProcess, publisher: Publisher, make_token: MakeToken
) -> None:
    both = make_token("alice", streams=["notifications", "chat"])
    ws = await connect(edge, both, streams="notifications,chat")
    narrower = make_token("alice", streams=["notifications"])
    await ws.send(orjson.dumps({"action": "refresh", "token": narrower}).decode())
    reply = await recv_event(ws, "refreshed")
    assert reply["data"]["streams"] == ["notifications"]  # type: ignore[index]
    assert reply["data"]["dropped"] == ["chat"]  # type: ignore[index]
    await publisher.send(user_key("chat", "alice"), "chat.after")
    await publisher.send(stream_key("chat"), "chat.everyone.after")
    await publisher.send(user_key("notifications", "alice"), "notification.after")
    assert (await recv_frame(ws))["event"] == "notification.after"  # nothing of chat first
    await ws.send('{"action":"subscribe","streams":["chat"]}')
    subscribed = await recv_event(ws, "subscribed")
    assert subscribed["data"] == {  # type: ignore[comparison-overlap]
        "streams": ["notifications"],
        "rejected": [{"stream": "chat", "code": "FORBIDDEN"}],
    }
    await ws.close()
