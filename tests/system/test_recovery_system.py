"""Recovery end to end in Python: `RealtimeClient`, real edges, the real notifications service.

tests/edge/test_ws_recovery.py checks the edge's side with a history owner the test
scripts; here nothing is scripted: notifications numbers its events in its database and
answers history from it, the edge merges, and the client's `PositionTracker` decides. What
the client yields is compared with what RabbitMQ carried (a queue of our own bound to the
user's key), so "exactly what was missed, in order, once" is checked against the truth.

The client reaches its edge through a TCP proxy: `cut()` drops the client's connection
alone (the edge lives on), `retarget()` is the load balancer moving to another node.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.edge import EdgeProcess, running_edge
from support.notifications import EventQueue, notifications_process, user_events
from support.rest import NotificationsApi
from support.tcp_proxy import TcpProxy

from realtime_shared.client import Backoff, RealtimeClient
from realtime_shared.envelope import Envelope

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

RECOVERY_MAX = 100
"""The edge's EDGE_RECOVERY_MAX here: missing exactly this many still recovers."""
FAST = Backoff(base=0.05, cap=0.5)


def proxy_for(edge: EdgeProcess) -> TcpProxy:
    return TcpProxy.for_url(edge.base_url)


def ws_url(proxy: TcpProxy) -> str:
    return f"ws://127.0.0.1:{proxy.port}/ws"


def retarget(proxy: TcpProxy, edge: EdgeProcess) -> None:
    other = TcpProxy.for_url(edge.base_url)
    proxy.retarget(other.target_host, other.target_port)


async def receive(client: RealtimeClient, within: float = 15.0) -> Envelope:
    async with asyncio.timeout(within):
        return await anext(client)


async def until_recovered(client: RealtimeClient) -> tuple[list[Envelope], Envelope]:
    """What the client yields up to its `recovered` envelope, and that envelope."""
    before: list[Envelope] = []
    while (envelope := await receive(client)).event != "recovered":
        before.append(envelope)
    return before, envelope


def seqs(envelopes: list[Envelope]) -> list[int]:
    return [e.meta["seq"] for e in envelopes]


def same(got: list[Envelope], sent: list[Envelope]) -> bool:
    """The client yielded exactly the envelopes RabbitMQ carried: same events, same order."""
    return [(e.event, e.data, e.meta) for e in got] == [(e.event, e.data, e.meta) for e in sent]


@pytest.fixture
async def owner(amqp_url: str, exchange: str, database_url: str, tmp_path: Path) -> Any:
    """The notifications service: numbers the events, keeps and answers their history."""
    async with notifications_process(
        amqp_url, exchange, database_url, log_dir=tmp_path
    ) as base_url:
        yield base_url


@pytest.fixture
def user() -> str:
    return f"sys-{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def published(amqp_url: str, exchange: str, user: str) -> AsyncIterator[EventQueue]:
    async with user_events(amqp_url, exchange, user) as queue:
        yield queue


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_client_away_three_times_gets_what_it_missed_or_a_resync_past_the_limit(
    owner: str,
    amqp_url: str,
    exchange: str,
    user: str,
    published: EventQueue,
    make_token: Any,
) -> None:
    api = NotificationsApi(owner, make_token, user)
    async with (
        running_edge(amqp_url, exchange, EDGE_RECOVERY_MAX=str(RECOVERY_MAX)) as edge,
        proxy_for(edge) as proxy,
        RealtimeClient(ws_url(proxy), make_token(user), backoff=FAST) as client,
    ):
        await api.create("first")
        assert seqs([await receive(client)]) == [1]
        await published.take(1)
        last = 1

        for missed in (1, RECOVERY_MAX):
            proxy.cut()  # the client's connection only: the edge and the owner live on
            await api.create_many([f"missed {n}" for n in range(missed)])
            sent = await published.take(missed)  # to nobody: the client is not connected
            proxy.restore()
            replayed, outcome = await until_recovered(client)
            assert outcome.data == {
                "stream": "notifications",
                "recovered": True,
                "replayed": missed,
                "reason": "reconnect",
            }
            assert seqs(replayed) == list(range(last + 1, last + 1 + missed))
            assert same(replayed, sent)
            last += missed

        proxy.cut()
        await api.create_many([f"too many {n}" for n in range(RECOVERY_MAX + 1)])
        await published.take(RECOVERY_MAX + 1)
        proxy.restore()
        replayed, outcome = await until_recovered(client)
        assert (replayed, outcome.data["recovered"], outcome.data["replayed"]) == ([], False, 0)
        resync = await receive(client)
        assert (resync.event, resync.data) == (
            "resync",
            {"reason": "reconnect", "streams": ["notifications"]},
        )
        await api.create("after the resync")  # the next message starts afresh, no recovery
        after = await receive(client)
        assert (after.event, seqs([after])) == ("notification.created", [last + RECOVERY_MAX + 2])
        assert await edge.metric("edge_recovery_replayed_messages_total") == 1 + RECOVERY_MAX
        failed = await edge.metric("edge_recovery_failures_total", 'reason="too_many"')
        assert failed == 1


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_when_its_edge_is_killed_a_client_recovers_on_another_every_event_once_in_order(
    owner: str,
    amqp_url: str,
    exchange: str,
    user: str,
    published: EventQueue,
    make_token: Any,
) -> None:
    api = NotificationsApi(owner, make_token, user)
    async with (
        running_edge(amqp_url, exchange) as a,
        running_edge(amqp_url, exchange) as b,
        proxy_for(a) as balancer,
        RealtimeClient(ws_url(balancer), make_token(user), backoff=FAST) as client,
    ):
        total = 60
        creating = asyncio.create_task(api.create_many([f"n{n}" for n in range(total)]))
        sent = await published.take(10)  # these went to A and on to the client
        a.proc.kill()  # SIGKILL while events keep being created
        # The balancer notices A is gone only after a few more events: nobody gets those.
        sent += await published.take(5)
        retarget(balancer, b)
        await creating
        sent += await published.take(total - len(sent))

        got, outcome = await until_recovered(client)
        assert outcome.data["recovered"] is True, outcome.data
        assert outcome.data["replayed"] >= 5  # at least the five that nobody received
        while len(got) < total:
            envelope = await receive(client)
            assert envelope.stream != "system", envelope  # no resync: nothing to refetch
            got.append(envelope)
        assert seqs(got) == list(range(1, total + 1))  # every event once, in order
        assert same(got, sent)
        assert await b.metric("edge_recovery_replayed_messages_total") >= 5

        await api.create("on B")
        assert seqs([await receive(client)]) == [total + 1]
