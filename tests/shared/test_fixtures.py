"""The shared fixtures reach real services: a broker exchange per test, a database per test."""

import asyncio

import aio_pika
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from realtime_notifications.db import open_database
from realtime_shared.envelope import Envelope
from realtime_shared.routing import user_key

pytestmark = pytest.mark.integration


async def test_a_message_on_the_fresh_exchange_reaches_a_bound_queue(
    amqp_url: str, exchange: str
) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        ex = await channel.get_exchange(exchange)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(ex, user_key("notifications", "a.b"))
        body = Envelope("notifications", "notification.created", {"x": 1}).to_bytes()
        await ex.publish(aio_pika.Message(body), routing_key=user_key("notifications", "a.b"))
        await ex.publish(aio_pika.Message(b"other"), routing_key=user_key("notifications", "a"))
        message = await asyncio.wait_for(_next(queue), timeout=5)
        assert Envelope.from_bytes(message) == Envelope.from_bytes(body)


async def _next(queue: aio_pika.abc.AbstractQueue) -> bytes:
    async with queue.iterator() as it:
        async for message in it:
            await message.ack()
            return message.body
    raise AssertionError("queue closed")


async def test_database_url_is_an_empty_usable_database(database_url: str) -> None:
    def probe(conn: Connection) -> object:
        conn.execute(sa.text("CREATE TABLE probe (id INTEGER PRIMARY KEY)"))
        conn.execute(sa.text("INSERT INTO probe (id) VALUES (1)"))
        return conn.execute(sa.text("SELECT count(*) FROM probe")).scalar()

    database = open_database(database_url)
    try:
        assert await database.write(probe) == 1
    finally:
        await database.dispose()
