"""The node's broker link in-process, against the real RabbitMQ: bound keys only, in order."""

import asyncio

import aio_pika
import pytest
from support.edge import publish

from realtime_edge.consumer import Bindings, BrokerLink
from realtime_edge.metrics import EdgeMetrics

pytestmark = pytest.mark.integration


async def test_every_message_of_a_bound_key_arrives_in_order_and_nothing_else(
    amqp_url: str, exchange: str
) -> None:
    received: list[tuple[str, bytes]] = []
    done = asyncio.Event()
    total = 500

    def on_message(key: str, body: bytes) -> None:
        received.append((key, body))
        if len(received) == total:
            done.set()

    metrics = EdgeMetrics()
    link = BrokerLink(
        url=amqp_url,
        exchange=exchange,
        bindings=Bindings(unbind_delay=0, metrics=metrics),
        on_message=on_message,
        on_resumed=_never,
        metrics=metrics,
    )
    assert await link.start()
    try:
        await link.bindings.acquire("notifications.alice")
        assert link.inline_delivery, "aiormq changed: deliveries fall back to a task each"
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            ex = await channel.get_exchange(exchange)
            await publish(ex, "notifications.bob", "not.bound")
            for n in range(total):
                await publish(ex, "notifications.alice", "e", {"n": n})
        await asyncio.wait_for(done.wait(), 10)
    finally:
        await link.stop()
    assert {key for key, _ in received} == {"notifications.alice"}
    assert [body for _, body in received] == [
        b'{"stream":"notifications","event":"e","data":{"n":%d}}' % n for n in range(total)
    ]


def _never() -> None:
    raise AssertionError("no reconnect happens in this test")
