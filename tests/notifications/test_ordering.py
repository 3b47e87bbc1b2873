"""One user's writes commit one after another on PostgreSQL, so the events a client replays
add up to what the database holds, whatever the interleaving of two requests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from support.notifications import FakePublisher, make_settings, running_app

from realtime_shared.envelope import Envelope

pytestmark = pytest.mark.integration

Auth = Callable[..., dict[str, str]]
BASE = "/api/notifications"
HOLD = 0x686F6C64
"""The test's own advisory lock ("hold"): read-all's transaction waits on it after its insert."""

# After read-all has written its outbox row, and before it commits, it waits for HOLD:
# the test decides when it may commit, on the real server, with the service's own SQL.
HOLD_READ_ALL = f"""
CREATE FUNCTION hold_read_all() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF convert_from(NEW.body, 'UTF8') LIKE '%notification.read\\_all%' THEN
        PERFORM pg_advisory_xact_lock({HOLD});
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER hold_read_all AFTER INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION hold_read_all();
"""
WAITING = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND NOT granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


@pytest.fixture
async def app(
    database_url: str, publisher: FakePublisher
) -> AsyncIterator[tuple[httpx.AsyncClient, Any]]:
    """The service on PostgreSQL, and a session of the test's own that holds HOLD."""
    async with running_app(make_settings(database_url), publisher) as client:
        holder = await asyncpg.connect(database_url.replace("+asyncpg", "", 1))
        try:
            await holder.execute(HOLD_READ_ALL)
            await holder.execute(f"SELECT pg_advisory_lock({HOLD})")
            yield client, holder
        finally:
            await holder.close()  # releases HOLD, should a failed test still hold it


async def blocked_on_locks(holder: Any, count: int, task: asyncio.Future[Any]) -> None:
    """Wait until `count` sessions wait for an advisory lock, or `task` is done."""
    deadline = time.monotonic() + 10
    while not task.done() and await holder.fetchval(WAITING) < count:
        assert time.monotonic() < deadline, "no session ever waited for the lock"
        await asyncio.sleep(0.01)  # pg_locks has no event to wait for


def replay(events: list[Envelope]) -> dict[str, bool]:
    """What a client shows after applying `events` in order: is_read per notification."""
    shown: dict[str, bool] = {}
    for event in events:
        if event.event == "notification.read_all":
            shown = dict.fromkeys(shown, True)
        elif event.event == "notification.deleted":
            shown.pop(event.data["notification_id"], None)
        else:
            shown[event.data["notification_id"]] = event.data["notification"]["is_read"]
    return shown


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("racing", ["create", "mark unread"])
async def test_a_write_racing_read_all_commits_after_it_and_clients_agree_with_the_database(
    app: tuple[httpx.AsyncClient, Any], publisher: FakePublisher, auth: Auth, racing: str
) -> None:
    client, holder = app
    alice, ops = auth("alice"), auth("ops", manage=True)
    first = (await client.post(BASE, json={"user_id": "alice", "type": "t"}, headers=ops)).json()
    await client.post(f"{BASE}/{first['id']}/read", headers=alice)
    await publisher.wait_for(2)

    read_all = asyncio.ensure_future(client.post(f"{BASE}/read-all", headers=alice))
    await blocked_on_locks(holder, 1, read_all)  # its outbox row is written, not committed
    assert not read_all.done()
    if racing == "create":
        write = client.post(BASE, json={"user_id": "alice", "type": "t"}, headers=ops)
    else:
        write = client.post(f"{BASE}/{first['id']}/unread", headers=alice)
    other = asyncio.ensure_future(write)
    await blocked_on_locks(holder, 2, other)
    if other.done():
        # Nothing made it wait: it committed inside read-all's transaction. Let the relay
        # publish it before read-all commits, the interleaving that misled clients.
        await publisher.wait_for(3)
    await holder.execute(f"SELECT pg_advisory_unlock({HOLD})")
    assert (await read_all).status_code == 200
    assert (await other).status_code in (200, 201)

    events = await publisher.wait_for(4)
    stored = {n["id"]: n["is_read"] for n in (await client.get(BASE, headers=alice)).json()}
    assert replay(events) == stored
    # Published in outbox id order, which is commit order: the racing write waited.
    ids = [event.id for event in publisher.published]
    assert ids == sorted(ids)
    assert [e.event for e in events][2] == "notification.read_all"
