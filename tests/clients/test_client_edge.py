"""RealtimeClient and the publisher helper against the real edge process and RabbitMQ."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.clients import ServiceProcess

from realtime_shared.client import (
    Backoff,
    ConnectionRejected,
    RealtimeClient,
    RequestFailed,
    token_expiry,
)
from realtime_shared.envelope import Envelope
from realtime_shared.publisher import Publisher

pytestmark = pytest.mark.integration

FAST = Backoff(base=0.05, cap=0.5)


@pytest.fixture
async def edge(amqp_url: str, exchange: str, tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    async with ServiceProcess("ws-edge", amqp_url, exchange, tmp_path) as process:
        yield process


@pytest.fixture
async def publisher(amqp_url: str, exchange: str) -> AsyncIterator[Publisher]:
    async with Publisher(amqp_url, exchange) as pub:
        yield pub


async def receive(client: RealtimeClient, within: float = 5.0) -> Envelope:
    async with asyncio.timeout(within):
        return await anext(client)


async def test_a_published_event_reaches_the_users_client_only(
    edge: ServiceProcess, publisher: Publisher, make_token: Any
) -> None:
    async with (
        RealtimeClient(edge.ws_url, make_token("ann.b")) as ann,
        RealtimeClient(edge.ws_url, make_token("ben")) as ben,
    ):
        assert ann.user_id == "ann.b" and ann.streams == ["notifications"]
        await publisher.publish_to_user("notifications", "ann.b", "invoice.paid", {"n": 1})
        await publisher.publish_to_user("notifications", "ben", "invoice.paid", {"n": 2})

        got = await receive(ann)
        assert (got.stream, got.event, got.data) == ("notifications", "invoice.paid", {"n": 1})
        assert got.meta["event_id"]
        assert (await receive(ben)).data == {"n": 2}


async def test_subscribe_and_unsubscribe_at_runtime(
    edge: ServiceProcess, publisher: Publisher, make_token: Any
) -> None:
    async with RealtimeClient(edge.ws_url, make_token("cy")) as client:
        assert await client.subscribe("chat") == ["notifications", "chat"]
        await publisher.publish_to_stream("chat", "maintenance", {"at": "21:00"})
        assert (await receive(client)).event == "maintenance"

        with pytest.raises(RequestFailed) as refused:
            await client.subscribe("system")
        assert refused.value.rejected[0]["stream"] == "system"

        assert await client.unsubscribe("chat") == ["notifications"]
        await publisher.publish_to_stream("chat", "dropped", {})
        await publisher.publish_to_user("notifications", "cy", "kept", {})
        assert (await receive(client)).event == "kept"  # nothing of chat came before it


async def test_the_edge_refuses_a_bad_token_and_the_client_says_why(
    edge: ServiceProcess, make_token: Any
) -> None:
    with pytest.raises(ConnectionRejected) as caught:
        async with RealtimeClient(edge.ws_url, make_token("dee", ttl=-10)):
            pass
    assert (caught.value.status, caught.value.code) == (401, "UNAUTHORIZED")

    with pytest.raises(ConnectionRejected) as unknown:
        async with RealtimeClient(edge.ws_url, make_token("dee"), ["nope"]):
            pass
    assert (unknown.value.status, unknown.value.code) == (404, "NOT_FOUND")


async def test_the_client_survives_an_edge_restart(
    edge: ServiceProcess, publisher: Publisher, make_token: Any
) -> None:
    issued: list[str] = []

    def provider() -> str:
        issued.append(make_token("eve"))
        return issued[-1]

    async with RealtimeClient(edge.ws_url, provider, ["notifications", "chat"], backoff=FAST) as c:
        await edge.stop()  # SIGTERM: the edge closes with 1001
        await edge.start()
        resync = await receive(c, within=15)
        assert (resync.stream, resync.event) == ("system", "resync")
        assert c.streams == ["notifications", "chat"]
        assert len(issued) >= 2  # a token per connect

        await publisher.publish_to_user("notifications", "eve", "after.restart", {})
        assert (await receive(c)).event == "after.restart"


async def test_a_refresh_before_exp_keeps_the_same_connection_alive(
    edge: ServiceProcess, publisher: Publisher, make_token: Any
) -> None:
    issued: list[str] = []

    def provider() -> str:
        issued.append(make_token("fay", ttl=2 if not issued else 3600))
        return issued[-1]

    async with RealtimeClient(edge.ws_url, provider, backoff=FAST) as client:
        first_exp = token_expiry(issued[0])
        assert first_exp is not None
        # Without the refresh the edge would close with 4001 at exp and the client would
        # yield a resync after reconnecting; nothing at all must arrive until past exp.
        with pytest.raises(TimeoutError):
            await receive(client, within=first_exp + 1.5 - time.time())
        await publisher.publish_to_user("notifications", "fay", "still.here", {})
        assert (await receive(client)).event == "still.here"
        assert client.connects == 1 and len(issued) == 2
