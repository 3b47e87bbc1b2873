"""Recovery from the notifications service, on both databases and the real RabbitMQ: its
history queue answers what a client missed with exactly the events it was published, and
is consumed (or `/readyz` says it is not) whatever happened to RabbitMQ."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import aio_pika
import httpx
import pytest
from support.notifications import (
    HistoryRequester,
    history_requester,
    make_settings,
    metric,
    running_app,
    until_ready,
    user_events,
)
from support.tcp_proxy import TcpProxy

from realtime_notifications.domain import STREAM
from realtime_notifications.settings import NotificationsSettings
from realtime_shared.history import history_queue

pytestmark = pytest.mark.integration

Auth = Callable[..., dict[str, str]]
BASE = "/api/notifications"


@pytest.fixture
def settings(database_url: str, amqp_url: str, exchange: str) -> NotificationsSettings:
    return make_settings(database_url, amqp_url=amqp_url, realtime_exchange=exchange)


@pytest.fixture
async def requester(amqp_url: str, exchange: str) -> AsyncIterator[HistoryRequester]:
    async with history_requester(amqp_url, history_queue(exchange, STREAM)) as asker:
        yield asker


async def create(client: httpx.AsyncClient, auth: Auth, user: str, title: str = "t") -> str:
    body = {"user_id": user, "type": "t", "title": title}
    response = await client.post(BASE, json=body, headers=auth("ops", manage=True))
    assert response.status_code == 201, response.text
    notification_id: str = response.json()["id"]
    return notification_id


async def test_a_client_that_missed_events_gets_exactly_them_as_they_were_published(
    settings: NotificationsSettings, amqp_url: str, requester: HistoryRequester, auth: Auth
) -> None:
    async with (
        user_events(amqp_url, settings.realtime_exchange, "alice") as events,
        running_app(settings) as client,
    ):
        await until_ready(client, 200)
        ids = [await create(client, auth, "alice", str(i)) for i in range(4)]
        await client.post(f"{BASE}/{ids[0]}/read", headers=auth("alice"))
        published = [e.to_dict() for e in await events.take(5)]
        epoch = published[0]["meta"]["epoch"]
        assert [e["meta"]["seq"] for e in published] == [1, 2, 3, 4, 5]

        missed = await requester.ask(epoch=epoch, after=2)
        first_two = await requester.ask(epoch=epoch, after=0, limit=2)
        up_to_date = await requester.ask(epoch=epoch, after=5)
        other_epoch = await requester.ask(epoch="before-a-restore", after=2)
        ahead = await requester.ask(epoch=epoch, after=9)
        nobody = await requester.ask("nobody", epoch=epoch, after=0)

        requests = 'notifications_history_requests_total{outcome="%s"}'
        assert await metric(client, requests % "complete") == 3
        assert await metric(client, requests % "incomplete") == 3
        assert await metric(client, "notifications_history_messages_returned_total") == 5

    assert missed == {"epoch": epoch, "messages": published[2:], "complete": True}
    assert first_two == {"epoch": epoch, "messages": published[:2], "complete": False}
    assert up_to_date == {"epoch": epoch, "messages": [], "complete": True}
    assert other_epoch == {"epoch": epoch, "messages": [], "complete": False}
    assert ahead == {"epoch": epoch, "messages": [], "complete": False}
    assert nobody == {"epoch": epoch, "messages": [], "complete": True}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_readyz_is_503_until_the_history_queue_is_consumed(
    settings: NotificationsSettings, amqp_url: str, requester: HistoryRequester, auth: Auth
) -> None:
    """Someone declared the queue otherwise: the service cannot consume it, says so, and
    takes it as soon as it can (here: once that queue is gone)."""
    queue = history_queue(settings.realtime_exchange, STREAM)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True, arguments={"x-max-length": 1})
        async with running_app(settings) as client:
            await until_readyz_says(client, "history: not consuming its queue")
            await channel.queue_delete(queue)
            await until_ready(client, 200)
            await create(client, auth, "alice")
            answer = await requester.ask(epoch=await epoch_of(requester), after=0)
            assert [m["meta"]["seq"] for m in answer["messages"]] == [1]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_history_is_answered_again_after_rabbitmq_comes_back(
    settings: NotificationsSettings, amqp_url: str, requester: HistoryRequester, auth: Auth
) -> None:
    async with TcpProxy.for_url(amqp_url) as proxy:
        cut_off = settings.model_copy(update={"amqp_url": proxy.rewrite(amqp_url)})
        async with running_app(cut_off) as client:
            await until_ready(client, 200)
            await create(client, auth, "alice")
            proxy.cut()
            await until_ready(client, 503)
            await create(client, auth, "alice")  # committed while RabbitMQ is away
            proxy.restore()
            await until_ready(client, 200)
            answer = await requester.ask(epoch=await epoch_of(requester), after=0)
    assert [m["meta"]["seq"] for m in answer["messages"]] == [1, 2]
    assert answer["complete"] is True


async def until_readyz_says(client: httpx.AsyncClient, problem: str, within: float = 15) -> None:
    """Poll /readyz until its 503 names exactly `problem` (readiness has no event)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        response = await client.get("/readyz")
        if response.status_code == 503 and response.json()["error"]["message"] == problem:
            return
        assert asyncio.get_running_loop().time() < deadline, response.text
        await asyncio.sleep(0.05)


async def epoch_of(requester: HistoryRequester) -> str:
    """The owner's epoch: every answer carries it, whatever the request said."""
    epoch: str = (await requester.ask(epoch="unknown", after=0))["epoch"]
    return epoch
