"""Scenario 3, the database restarted mid-write: PostgreSQL drops the service's connections.

A real notifications service on PostgreSQL, a real edge, a few users connected with the
Python `RealtimeClient`. Creates run through REST at a steady rate while the test kills
every connection the service holds (`pg_terminate_backend`, as a restart or a failover
does) several times. Each request either got 201, and its event reached its user once
and in order (the invariant checker, against a tap queue on the exchange), or a clear
503 with the error body, and then nothing of it exists: no row, no event. Afterwards the
service resumes by itself: the outbox backlog drains to 0 and /readyz answers 200.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import httpx
import pytest
from support.edge import running_edge
from support.invariants import Checker
from support.notifications import (
    EventQueue,
    notifications_process,
    until_metric,
    until_ready,
    user_events,
)
from support.rest import NotificationsApi

from realtime_shared.client import Backoff, RealtimeClient
from realtime_shared.envelope import Envelope

pytestmark = [pytest.mark.integration, pytest.mark.resilience, pytest.mark.timeout(90)]

MakeToken = Callable[..., str]
STREAM = "notifications"
USERS = 4
WRITING = 6.0
"""Seconds of creates; the kills happen inside this window."""
PERIOD = 0.03
"""Each user's writer starts a create this often (or as soon as the last one answered)."""
KILLS = 4
KILL_EVERY = 1.0
FAST = Backoff(base=0.05, cap=0.5)
RESUME_WITHIN = 5.0
"""Seconds after a kill by which a new create must succeed again (no restart, no operator)."""


@dataclass
class Writes:
    created: dict[str, list[str]] = field(default_factory=dict)
    """user -> notification ids, in the order their 201s came back."""
    refused: list[str] = field(default_factory=list)
    """Titles of the requests that got 503."""
    kills: list[float] = field(default_factory=list)
    """When each kill happened (monotonic)."""
    killed: int = 0
    """Backend connections terminated in all."""
    answered: list[tuple[float, float]] = field(default_factory=list)
    """(started, answered) of each 201, monotonic."""

    def resumed_after(self, kill: float) -> float:
        """Seconds from `kill` until a create started after it got its 201."""
        return min(done for started, done in self.answered if started > kill) - kill


async def write(api: NotificationsApi, user: str, writes: Writes, until: float) -> None:
    """Creates at a steady rate until `until`; a 201 or a 503 with its error body, nothing else."""
    ids = writes.created.setdefault(user, [])
    async with httpx.AsyncClient(timeout=15, headers=api.admin) as client:
        while (started := time.monotonic()) < until:
            title = f"{user} {uuid.uuid4().hex}"
            body = {"user_id": user, "type": "campaign", "title": title}
            response = await client.post(api.base, json=body)
            if response.status_code == 201:
                ids.append(str(response.json()["id"]))
                writes.answered.append((started, time.monotonic()))
            else:
                assert response.status_code == 503, response.text
                error = response.json()["error"]
                assert error["code"] == "SERVICE_UNAVAILABLE", error
                assert "database" in error["message"], error
                assert response.headers["Retry-After"] == "1"
                writes.refused.append(title)
            await asyncio.sleep(max(0.0, PERIOD - (time.monotonic() - started)))


async def kill_connections(server_url: str, database: str, writes: Writes) -> None:
    """Terminate every backend on the service's database, KILLS times."""
    conn = await asyncpg.connect(server_url)
    try:
        for _ in range(KILLS):
            await asyncio.sleep(KILL_EVERY)
            rows = await conn.fetch(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                database,
            )
            writes.kills.append(time.monotonic())
            writes.killed += sum(1 for row in rows if row[0])
    finally:
        await conn.close()


async def rows_titled(server_url: str, database: str, titles: list[str]) -> tuple[int, int]:
    """How many notifications rows and outbox events mention any of `titles`."""
    url = server_url.rsplit("/", 1)[0] + f"/{database}"
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetchval(
            "SELECT count(*) FROM notifications WHERE title = ANY($1::text[])", titles
        )
        events = await conn.fetchval(
            "SELECT count(*) FROM outbox WHERE"
            " convert_from(body, 'UTF8')::jsonb #>> '{data,notification,title}' = ANY($1::text[])",
            titles,
        )
        return int(rows), int(events)
    finally:
        await conn.close()


async def receive_all(client: RealtimeClient, name: str, count: int, checker: Checker) -> None:
    got = 0
    while got < count:
        envelope = await anext(client)
        checker.receive(name, envelope)
        got += envelope.stream == STREAM


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_creates_through_killed_database_connections_commit_with_their_event_or_503(
    amqp_url: str,
    exchange: str,
    database_url: str,
    postgres_url: str,
    make_token: MakeToken,
    tmp_path: Path,
) -> None:
    database = database_url.rsplit("/", 1)[1]
    users = [f"dbkill-{n}-{uuid.uuid4().hex[:6]}" for n in range(USERS)]
    checker = Checker()
    writes = Writes()
    async with AsyncExitStack() as stack:
        base_url = await stack.enter_async_context(
            notifications_process(amqp_url, exchange, database_url, log_dir=tmp_path)
        )
        edge = await stack.enter_async_context(running_edge(amqp_url, exchange))
        taps: dict[str, EventQueue] = {}
        clients: dict[str, RealtimeClient] = {}
        for user in users:
            taps[user] = await stack.enter_async_context(user_events(amqp_url, exchange, user))
            client = RealtimeClient(edge.ws_url(), make_token(user), backoff=FAST)
            clients[user] = await stack.enter_async_context(client)
            checker.follow(user, user)

        until = time.monotonic() + WRITING
        await asyncio.gather(
            kill_connections(postgres_url, database, writes),
            *(write(NotificationsApi(base_url, make_token, u), u, writes, until) for u in users),
        )
        stopped_writing = time.monotonic()
        async with httpx.AsyncClient(base_url=base_url, timeout=5) as service:
            await until_metric(service, "notifications_outbox_backlog", 0, within=20)
            await until_ready(service, 200, within=20)
        drained = time.monotonic() - stopped_writing

        for user in users:
            for envelope in await taps[user].take(len(writes.created[user]), within=20):
                checker.publish(user, envelope, ref=str(envelope.data["notification_id"]))
            while (extra := await taps[user].queue.get(no_ack=True, fail=False)) is not None:
                envelope = Envelope.from_bytes(extra.body)  # beyond the 201s: half-written
                checker.publish(user, envelope, ref=str(envelope.data["notification_id"]))
            for notification_id in writes.created[user]:
                checker.commit(user, STREAM, notification_id)
        async with asyncio.timeout(20):
            await asyncio.gather(
                *(receive_all(clients[u], u, len(writes.created[u]), checker) for u in users)
            )

    report = checker.report()
    assert report.ok, report.summary()
    assert report.gaps == []
    created = sum(map(len, writes.created.values()))
    assert writes.killed >= KILLS  # each round found the service's connections
    assert created > 0
    assert await rows_titled(postgres_url, database, writes.refused) == (0, 0)
    resumed = max(writes.resumed_after(kill) for kill in writes.kills)
    assert resumed < RESUME_WITHIN
    print(  # the figures for docs/reliability.md (pytest -s shows them)
        f"\ndatabase restart: {created + len(writes.refused)} requests, {created} created,"
        f" {len(writes.refused)} 503, {writes.killed} connections killed in {KILLS} rounds;"
        f" creates succeed again {resumed:.3f} s after a kill at worst; backlog 0 and ready"
        f" {drained:.2f} s after the writes stopped\n{report.summary()}"
    )
