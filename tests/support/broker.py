"""Leaving the shared broker as a test found it (CI's broker is the one on this machine).

A test's exchange is not all a test declares: the services beside it declare durable
things named after it, which outlive them: the history queues `<name>.history.<stream>`
and the inbound exchange the tests name `<name>.inbound`.
"""

from __future__ import annotations

import aio_pika

from realtime_shared.history import history_queue
from realtime_shared.streams import CATALOG


async def forget_exchange(channel: aio_pika.abc.AbstractChannel, name: str) -> None:
    """Delete exchange `name` and what the services durably declared beside it."""
    await channel.exchange_delete(name)
    await channel.exchange_delete(f"{name}.inbound")
    for stream in CATALOG:
        await channel.queue_delete(history_queue(name, stream))


async def delete_exchange(amqp_url: str, name: str) -> None:
    """`forget_exchange` on a connection of its own."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        await forget_exchange(await connection.channel(), name)
