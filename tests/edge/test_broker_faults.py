"""Broker faults only one side sees: the edge delivers again within seconds, after resync.

- The link dies on the edge's side only (a NAT or load balancer reset): RabbitMQ keeps
  the old connection, and its exclusive queue, until heartbeats time it out.
- The edge's queue is deleted (an operator, a policy): RabbitMQ cancels the consumer but
  keeps the channel open.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import aio_pika
import httpx
import pytest
from support.edge import EdgeProcess, connected, publish, recv_event, running_edge
from support.tcp_proxy import TcpProxy

from realtime_shared.amqp import DEFAULT_HEARTBEAT
from realtime_shared.routing import user_key

pytestmark = pytest.mark.integration

MakeToken = Callable[..., str]

BACK_WITHIN = 10.0
"""The contract: delivering again, and ready, within 10 s of the broker being usable."""


@pytest.fixture
async def exchange_handle(
    amqp_url: str, exchange: str
) -> AsyncIterator[aio_pika.abc.AbstractExchange]:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        yield await channel.get_exchange(exchange)


async def ready_again(edge: EdgeProcess, since: float) -> float:
    """Seconds from `since` until /readyz answers 200; fails past BACK_WITHIN."""
    async with httpx.AsyncClient() as http:
        while (await http.get(f"{edge.base_url}/readyz")).status_code != 200:
            assert time.monotonic() - since < BACK_WITHIN, "not ready again in time"
            await asyncio.sleep(0.05)
    return time.monotonic() - since


async def rabbitmqctl(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl", "-q", *args, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"rabbitmqctl {args} failed"
    return out.decode()


async def edge_queues(amqp_url: str, node_id: str) -> list[str]:
    """The edge's queue names, from the broker's own list."""
    names = (await rabbitmqctl("list_queues", "name")).split()
    return [name for name in names if name.startswith(f"ws-edge.{node_id}")]


async def test_a_link_reset_on_the_edges_side_only_delivers_again_within_seconds(
    amqp_url: str,
    exchange: str,
    exchange_handle: aio_pika.abc.AbstractExchange,
    make_token: MakeToken,
) -> None:
    async with (
        TcpProxy.for_url(amqp_url) as proxy,
        running_edge(proxy.rewrite(amqp_url), exchange) as edge,
    ):
        alice = await connected(edge.ws_url(token=make_token("alice")))
        proxy.strand()  # the broker still holds the old connection and its queue
        cut_at = time.monotonic()
        await recv_event(alice, "resync", within=BACK_WITHIN)
        await ready_again(edge, cut_at)
        await publish(exchange_handle, user_key("notifications", "alice"), "after")
        await recv_event(alice, "after")
        await alice.close()
    assert "RESOURCE_LOCKED" not in edge.log_text()


async def test_a_deleted_queue_is_noticed_counted_and_replaced(
    amqp_url: str,
    exchange: str,
    exchange_handle: aio_pika.abc.AbstractExchange,
    make_token: MakeToken,
) -> None:
    async with running_edge(amqp_url, exchange) as edge:
        alice = await connected(edge.ws_url(token=make_token("alice")))
        (queue,) = await edge_queues(amqp_url, edge.node_id)
        # As an operator would: a client may not delete another connection's exclusive queue.
        await rabbitmqctl("delete_queue", queue)
        deleted_at = time.monotonic()
        await recv_event(alice, "resync", within=BACK_WITHIN)
        await ready_again(edge, deleted_at)
        assert await edge.metric("edge_consumer_cancels_total") == 1
        await publish(exchange_handle, user_key("notifications", "alice"), "after")
        await recv_event(alice, "after")
        assert await edge_queues(amqp_url, edge.node_id) not in ([], [queue])
        await alice.close()


async def test_the_edge_asks_rabbitmq_for_a_short_heartbeat(amqp_url: str, exchange: str) -> None:
    async with running_edge(amqp_url, exchange) as edge:
        rows = (await rabbitmqctl("list_connections", "timeout", "client_properties")).splitlines()
    (timeout,) = [row.split("\t", 1)[0] for row in rows if f"ws-edge {edge.node_id}" in row]
    assert int(timeout) == DEFAULT_HEARTBEAT  # a silent broker is noticed in ~30 s, not ~3 min
