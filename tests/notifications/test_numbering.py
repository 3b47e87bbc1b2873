"""Each user's events are numbered 1, 2, 3... without gap or duplicate, in the order they
are published, however many writers (replicas) write for that user at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from support.notifications import make_settings, running_app, until_ready, user_events

from realtime_notifications.db import open_database
from realtime_notifications.models import positions
from realtime_notifications.services import NewNotification, NotificationService
from realtime_notifications.settings import NotificationsSettings
from realtime_notifications.unit_of_work import Transactions
from realtime_shared.auth import PERMISSION_MANAGE_NOTIFICATIONS, Claims

pytestmark = pytest.mark.integration

Auth = Callable[..., dict[str, str]]
BASE = "/api/notifications"


@pytest.fixture
def settings(database_url: str, amqp_url: str, exchange: str) -> NotificationsSettings:
    return make_settings(database_url, amqp_url=amqp_url, realtime_exchange=exchange)


Write = Callable[[str], Awaitable[object]]


def through(client: httpx.AsyncClient, token: dict[str, str]) -> Write:
    async def write(user: str) -> object:
        response = await client.post(BASE, json={"user_id": user, "type": "t"}, headers=token)
        assert response.status_code == 201, response.text
        return response

    return write


@asynccontextmanager
async def second_writer(
    settings: NotificationsSettings, database_url: str, token: dict[str, str]
) -> AsyncIterator[Write]:
    """Another writer on the same database: a second app (replica) on PostgreSQL; on SQLite,
    which is for one process, a second `Database` whose events the first app's relay sends."""
    if not database_url.startswith("sqlite"):
        async with running_app(settings) as client:
            await until_ready(client, 200)
            yield through(client, token)
        return
    database = open_database(database_url)
    try:
        epoch = await database.write(positions.create_epoch)
        service = NotificationService(Transactions(database, lambda: None, epoch=epoch))
        ops = Claims(sub="ops", exp=2**31, permissions=frozenset({PERMISSION_MANAGE_NOTIFICATIONS}))

        async def write(user: str) -> object:
            return await service.create(ops, NewNotification(user_id=user, type="t"))

        yield write
    finally:
        await database.dispose()


USERS = ["alice", "bob", "carol"]
PER_WRITER = 20


async def test_two_writers_at_once_number_each_users_events_without_gap_in_publish_order(
    settings: NotificationsSettings, database_url: str, amqp_url: str, auth: Auth
) -> None:
    token = auth("ops", manage=True)
    async with (
        user_events(amqp_url, settings.realtime_exchange, *USERS) as events,
        running_app(settings) as first,
        second_writer(settings, database_url, token) as second,
    ):
        await until_ready(first, 200)
        writers = (through(first, token), second)
        await asyncio.gather(
            *(write(user) for _ in range(PER_WRITER) for user in USERS for write in writers)
        )
        per_user = PER_WRITER * len(writers)
        got = await events.take(per_user * len(USERS), within=60)
        assert await events.is_empty()

    for user in USERS:
        mine = [e for e in got if e.data["notification"]["user_id"] == user]
        # In the order RabbitMQ delivered them, which is the order they were published in.
        assert [e.meta["seq"] for e in mine] == list(range(1, per_user + 1))
    assert len({e.meta["epoch"] for e in got}) == 1
