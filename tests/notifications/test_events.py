"""Each REST action publishes exactly the contract's event to a real RabbitMQ, in commit order."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aio_pika
import httpx
import pytest
from support.notifications import EventQueue, make_settings, running_app, user_events

from realtime_shared.envelope import Envelope

pytestmark = pytest.mark.integration

Auth = Callable[..., dict[str, str]]
BASE = "/api/notifications"
USER = "alice.b"  # a dot: the routing key must percent-encode it


@pytest.fixture
async def live(
    database_url: str, amqp_url: str, exchange: str
) -> AsyncIterator[tuple[httpx.AsyncClient, EventQueue]]:
    settings = make_settings(database_url, amqp_url=amqp_url, realtime_exchange=exchange)
    async with (
        user_events(amqp_url, exchange, USER) as events,
        running_app(settings) as client,
    ):
        yield client, events


async def test_every_action_publishes_its_event_with_envelope_key_and_meta(
    live: tuple[httpx.AsyncClient, EventQueue], auth: Auth
) -> None:
    client, events = live
    me = auth(USER)
    created = await client.post(
        BASE, json={"user_id": USER, "type": "t", "title": "hi"}, headers=auth("ops", manage=True)
    )
    n = created.json()
    read = (await client.post(f"{BASE}/{n['id']}/read", headers=me)).json()
    unread = (await client.post(f"{BASE}/{n['id']}/unread", headers=me)).json()
    assert (await client.post(f"{BASE}/read-all", headers=me)).json() == {"updated": 1}
    assert (await client.delete(f"{BASE}/{n['id']}", headers=me)).status_code == 200

    messages = [await events.next() for _ in range(5)]

    got = [Envelope.from_bytes(m.body) for m in messages]
    assert [(e.stream, e.event, e.data) for e in got] == [
        ("notifications", "notification.created", {"notification": n, "notification_id": n["id"]}),
        ("notifications", "notification.read", {"notification": read, "notification_id": n["id"]}),
        (
            "notifications",
            "notification.updated",
            {"notification": unread, "notification_id": n["id"]},
        ),
        ("notifications", "notification.read_all", {"count": 1}),
        ("notifications", "notification.deleted", {"notification_id": n["id"]}),
    ]
    for message, envelope in zip(messages, got, strict=True):
        assert message.routing_key == "notifications.alice%2Eb"
        assert message.content_type == "application/json"
        assert message.message_id == envelope.meta["event_id"]
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert set(envelope.meta) == {"event_id", "occurred_at", "seq", "epoch"}
    assert len({e.meta["event_id"] for e in got}) == 5
    assert [e.meta["seq"] for e in got] == [1, 2, 3, 4, 5]
    [epoch] = {e.meta["epoch"] for e in got}
    assert isinstance(epoch, str) and 1 <= len(epoch) <= 64
    assert await events.is_empty()


async def test_a_users_events_arrive_in_commit_order_and_nobody_elses(
    live: tuple[httpx.AsyncClient, EventQueue], auth: Auth
) -> None:
    client, events = live
    ops = auth("ops", manage=True)
    ids = []
    for i in range(30):
        await client.post(BASE, json={"user_id": "someone-else", "type": "t"}, headers=ops)
        response = await client.post(
            BASE, json={"user_id": USER, "type": "t", "title": str(i)}, headers=ops
        )
        ids.append(response.json()["id"])

    got = await events.take(30)

    assert [e.data["notification_id"] for e in got] == ids
    assert await events.is_empty()
