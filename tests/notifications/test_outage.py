"""RabbitMQ unreachable (our own link cut by a proxy): REST keeps working, nothing is lost."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from support.notifications import (
    FakePublisher,
    make_settings,
    running_app,
    until_metric,
    until_ready,
    user_events,
)
from support.tcp_proxy import TcpProxy

from realtime_notifications.db import open_database
from realtime_notifications.outbox import USER_LOCK_NAMESPACE

pytestmark = pytest.mark.integration

Auth = Callable[..., dict[str, str]]
BASE = "/api/notifications"


async def test_events_wait_out_a_broker_outage_and_arrive_once_in_order(
    database_url: str, amqp_url: str, exchange: str, auth: Auth
) -> None:
    ops = auth("ops", manage=True)
    async with (
        TcpProxy.for_url(amqp_url) as proxy,
        user_events(amqp_url, exchange, "alice") as events,
    ):
        settings = make_settings(
            database_url, amqp_url=proxy.rewrite(amqp_url), realtime_exchange=exchange
        )
        async with running_app(settings) as client:
            await until_ready(client, 200)
            before = await client.post(BASE, json={"user_id": "alice", "type": "t"}, headers=ops)
            assert (await events.take(1))[0].data["notification_id"] == before.json()["id"]

            proxy.cut()
            await until_ready(client, 503)
            ids = []
            for i in range(10):
                body = {"user_id": "alice", "type": "t", "title": f"during {i}"}
                response = await client.post(BASE, json=body, headers=ops)
                assert response.status_code == 201
                ids.append(response.json()["id"])
            read = await client.post(f"{BASE}/{ids[0]}/read", headers=auth("alice"))
            assert read.status_code == 200
            listed = await client.get(BASE, headers=auth("alice"))
            assert len(listed.json()) == 11
            await until_metric(client, "notifications_outbox_backlog", 11)
            failures = "notifications_outbox_publish_failures_total"
            await until_metric(client, failures, 1, at_least=True)
            assert await events.is_empty()

            proxy.restore()
            got = await events.take(11, within=20)
            await until_metric(client, "notifications_outbox_backlog", 0, within=10)

            assert [e.data["notification_id"] for e in got] == [*ids, ids[0]]
            assert [e.event for e in got] == ["notification.created"] * 10 + ["notification.read"]
            assert await events.is_empty()  # exactly once: nothing was published twice
            await until_ready(client, 200)


async def test_the_service_starts_and_serves_while_the_broker_is_unreachable(
    database_url: str, amqp_url: str, exchange: str, auth: Auth
) -> None:
    async with (
        TcpProxy.for_url(amqp_url) as proxy,
        user_events(amqp_url, exchange, "alice") as events,
    ):
        proxy.cut()
        settings = make_settings(
            database_url, amqp_url=proxy.rewrite(amqp_url), realtime_exchange=exchange
        )
        async with running_app(settings) as client:
            body = {"user_id": "alice", "type": "t"}
            created = await client.post(BASE, json=body, headers=auth("ops", manage=True))
            assert created.status_code == 201
            assert (await client.get("/readyz")).status_code == 503

            proxy.restore()
            [event] = await events.take(1, within=20)
            assert event.data["notification_id"] == created.json()["id"]
            await until_ready(client, 200)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_failed_publish_leaves_no_user_locked_for_other_replicas(
    database_url: str, auth: Auth
) -> None:
    """A relay that fails mid-batch gives its per-user locks back (or drops the session):
    a replica that kept them would hold those users' events up for every other one."""
    publisher = FakePublisher()
    publisher.refusing = True  # so each round claims, locks alice, then fails
    async with running_app(make_settings(database_url), publisher) as client:
        response = await client.post(
            BASE, json={"user_id": "alice", "type": "t"}, headers=auth("ops", manage=True)
        )
        assert response.status_code == 201
        await until_metric(client, "notifications_outbox_publish_failures_total", 2, at_least=True)
        # Between two of the relay's rounds another session (a replica) can lock alice;
        # a leaked lock would sit in an idle pooled session and refuse it for ever.
        database = open_database(database_url)
        try:
            deadline = time.monotonic() + 5
            while not await database.read(_lock_and_unlock_alice):
                assert time.monotonic() < deadline, "alice stayed locked after failed rounds"
                await asyncio.sleep(0.01)  # the relay's rounds and pauses have no event
        finally:
            await database.dispose()

        publisher.refusing = False
        assert [e.data["notification_id"] for e in await publisher.wait_for(1)] == [
            response.json()["id"]
        ]


def _lock_and_unlock_alice(conn: Connection) -> bool:
    key = {"namespace": USER_LOCK_NAMESPACE, "user": "alice"}
    locked = conn.execute(
        sa.text("SELECT pg_try_advisory_lock(:namespace, hashtext(:user))"), key
    ).scalar_one()
    if locked:
        conn.execute(sa.text("SELECT pg_advisory_unlock(:namespace, hashtext(:user))"), key)
    return bool(locked)
