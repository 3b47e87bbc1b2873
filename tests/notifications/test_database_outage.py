"""PostgreSQL unreachable (our own link cut by a proxy): 503 in the error body, then recovery."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from support.notifications import FakePublisher, make_settings, running_app, until_ready
from support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.integration

Auth = Callable[..., dict[str, str]]
BASE = "/api/notifications"


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_lost_database_is_503_and_the_service_recovers(
    database_url: str, auth: Auth
) -> None:
    publisher = FakePublisher()
    ops = auth("ops", manage=True)
    async with TcpProxy.for_url(database_url.replace("+asyncpg", "")) as proxy:
        settings = make_settings(proxy.rewrite(database_url))
        async with running_app(settings, publisher) as client:
            first = await client.post(BASE, json={"user_id": "alice", "type": "t"}, headers=ops)
            assert first.status_code == 201

            proxy.cut()
            down = await client.get(BASE, headers=auth("alice"))
            assert down.status_code == 503
            assert down.json()["error"]["code"] == "SERVICE_UNAVAILABLE"
            assert (await client.get("/readyz")).status_code == 503

            proxy.restore()
            await until_ready(client, 200)
            second = await client.post(BASE, json={"user_id": "alice", "type": "t"}, headers=ops)
            assert second.status_code == 201
            events = await publisher.wait_for(2)
            assert [e.data["notification_id"] for e in events] == [
                first.json()["id"],
                second.json()["id"],
            ]
