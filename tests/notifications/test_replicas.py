"""Two service processes on one PostgreSQL database: every event published once, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from support.notifications import notifications_process, user_events

pytestmark = pytest.mark.e2e

Auth = Callable[..., dict[str, str]]
USERS = [f"user-{i}" for i in range(10)]
PER_USER = 50


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_two_replicas_publish_500_events_once_each_in_per_user_order(
    database_url: str, amqp_url: str, exchange: str, auth: Auth, tmp_path: Path
) -> None:
    ops = auth("ops", manage=True)
    async with (
        user_events(amqp_url, exchange, *USERS) as events,
        notifications_process(amqp_url, exchange, database_url, log_dir=tmp_path) as first,
        notifications_process(amqp_url, exchange, database_url, log_dir=tmp_path) as second,
        httpx.AsyncClient(timeout=10) as http,
    ):

        async def create_all(user: str) -> list[str]:
            # One user's requests are sequential, alternating replicas: so their commit
            # order is known, and each replica's relay sees rows the other one wrote.
            ids = []
            for i in range(PER_USER):
                base = first if i % 2 == 0 else second
                response = await http.post(
                    f"{base}/api/notifications",
                    json={"user_id": user, "type": "load", "title": str(i)},
                    headers=ops,
                )
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])
            return ids

        created = dict(zip(USERS, await asyncio.gather(*map(create_all, USERS)), strict=True))
        got = await events.take(len(USERS) * PER_USER, within=60)
        assert await events.is_empty()

        published = 0.0
        for base in (first, second):
            for line in (await http.get(f"{base}/metrics")).text.splitlines():
                if line.startswith("notifications_outbox_published_total"):
                    published += float(line.split()[-1])

    assert len({e.meta["event_id"] for e in got}) == 500
    assert published == 500
    for user in USERS:
        mine = [e.data["notification_id"] for e in got if e.data["notification"]["user_id"] == user]
        assert mine == created[user]
