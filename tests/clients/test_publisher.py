"""The publisher helper against the real broker: keys, body, properties, and refusals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aio_pika
import orjson
import pytest
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue

from realtime_shared.publisher import Publisher, PublishError

pytestmark = pytest.mark.integration

RECEIVE_TIMEOUT = 5.0


class Tap:
    """An exclusive queue bound to some keys of the test's exchange."""

    def __init__(self, queue: AbstractQueue) -> None:
        self.queue = queue

    async def next(self) -> AbstractIncomingMessage:
        async with asyncio.timeout(RECEIVE_TIMEOUT):
            async with self.queue.iterator() as messages:
                async for message in messages:
                    await message.ack()
                    return message
        raise AssertionError("queue iterator ended")

    async def empty(self) -> bool:
        # Publishes are confirmed before the helper returns, so anything routed is here now.
        return await self.queue.get(fail=False) is None


Bind = Callable[..., Awaitable[Tap]]


@pytest.fixture
async def tap(amqp_url: str, exchange: str) -> AsyncIterator[Bind]:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()

        async def bind(*keys: str) -> Tap:
            queue = await channel.declare_queue(exclusive=True)
            for key in keys:
                await queue.bind(exchange, key)
            return Tap(queue)

        yield bind


@pytest.fixture
async def publisher(amqp_url: str, exchange: str) -> AsyncIterator[Publisher]:
    async with Publisher(amqp_url, exchange) as pub:
        yield pub


async def test_publish_to_user_routes_to_that_user_only(publisher: Publisher, tap: Bind) -> None:
    alice = await tap("notifications.alice%2Eb")
    bob = await tap("notifications.bob")

    message_id = await publisher.publish_to_user(
        "notifications", "alice.b", "invoice.paid", {"invoice": 7}, {"trace": "t1"}
    )

    message = await alice.next()
    assert message.content_type == "application/json"
    assert message.message_id == message_id
    body = orjson.loads(message.body)
    assert body["stream"] == "notifications"
    assert body["event"] == "invoice.paid"
    assert body["data"] == {"invoice": 7}
    assert body["meta"]["trace"] == "t1"
    assert body["meta"]["event_id"] and body["meta"]["occurred_at"]
    assert await bob.empty()


async def test_publish_to_users_is_one_message_per_user_with_unique_ids(
    publisher: Publisher, tap: Bind
) -> None:
    taps = {user: await tap(f"chat.{user}") for user in ("ann", "ben", "cy")}

    ids = await publisher.publish_to_users("chat", ["ann", "ben", "ann"], "message.new", {"t": 1})

    assert len(ids) == len(set(ids)) == 2
    got = [await taps["ann"].next(), await taps["ben"].next()]
    assert {m.message_id for m in got} == set(ids)
    bodies = [orjson.loads(m.body) for m in got]
    assert bodies[0]["meta"]["event_id"] == bodies[1]["meta"]["event_id"]
    assert await taps["ann"].empty() and await taps["cy"].empty()


async def test_publish_to_stream_reaches_stream_subscribers_not_user_keys(
    publisher: Publisher, tap: Bind
) -> None:
    everyone = await tap("chat")
    one_user = await tap("chat.ann")

    await publisher.publish_to_stream("chat", "maintenance", {"at": "21:00"})

    body = orjson.loads((await everyone.next()).body)
    assert (body["stream"], body["event"], body["data"]) == ("chat", "maintenance", {"at": "21:00"})
    assert await one_user.empty()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda p: p.publish_to_user("system", "ann", "x", {}), "not in the catalog"),
        (lambda p: p.publish_to_user("nope", "ann", "x", {}), "not in the catalog"),
        (lambda p: p.publish_to_user("chat", "", "x", {}), "cannot route"),
        (lambda p: p.publish_to_user("chat", "a" * 300, "x", {}), "cannot route"),
        (lambda p: p.publish_to_user("chat", "ann", "", {}), "event must be"),
        (lambda p: p.publish_to_user("chat", "ann", "x", [1, 2]), "data must be"),
        (lambda p: p.publish_to_user("chat", "ann", "x", {"d": object()}), "JSON"),
        (lambda p: p.publish_to_users("chat", ["ann", "a" * 300], "x", {}), "cannot route"),
        (lambda p: p.publish_to_stream("system", "x", {}), "not in the catalog"),
    ],
)
async def test_bad_input_is_refused_and_nothing_is_published(
    publisher: Publisher, tap: Bind, call: Callable[[Publisher], Awaitable[Any]], message: str
) -> None:
    ann = await tap("chat.ann", "chat", "system", "system.ann")
    with pytest.raises(PublishError, match=message):
        await call(publisher)
    await publisher.publish_to_user("chat", "ann", "marker", {})
    assert orjson.loads((await ann.next()).body)["event"] == "marker"
