"""The history responder on the real RabbitMQ, asked as the edge asks: through the default
exchange, answers on RabbitMQ's direct reply-to, matched by correlation id."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aio_pika
import pytest
from support.notifications import HistoryRequester, history_requester
from support.tcp_proxy import TcpProxy

from realtime_shared.history import (
    MAX_HISTORY_LIMIT,
    HistoryResponder,
    HistorySource,
    Page,
    history_queue,
)

pytestmark = pytest.mark.integration

STREAM, EPOCH = "notifications", "e1"


class Log:
    """One in-memory log per user: seqs `first`..`last` kept; records who was asked for."""

    def __init__(self, last: int, first: int = 1) -> None:
        self.first, self.last = first, last
        self.served: list[str] = []

    async def epoch(self) -> str:
        return EPOCH

    async def page(self, user_id: str, after: int, limit: int) -> Page:
        self.served.append(user_id)
        seqs = range(max(after + 1, self.first), self.last + 1)
        messages = [{"stream": STREAM, "event": "n", "meta": {"seq": s}} for s in seqs]
        return Page(messages[:limit], self.last)


@pytest.fixture
async def queue(amqp_url: str, exchange: str) -> AsyncIterator[str]:
    """The test exchange's history queue, deleted afterwards (it is durable)."""
    name = history_queue(exchange, STREAM)
    yield name
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        await (await connection.channel()).queue_delete(name)


@pytest.fixture
async def requester(amqp_url: str, queue: str) -> AsyncIterator[HistoryRequester]:
    async with history_requester(amqp_url, queue) as asker:
        yield asker


async def until(check: Callable[[], Awaitable[bool]], expected: bool = True) -> None:
    """Poll `check` until it says `expected` (readiness has no event to wait for)."""
    deadline = time.monotonic() + 15
    while await check() is not expected:
        assert time.monotonic() < deadline, f"never became {expected}"
        await asyncio.sleep(0.05)


@asynccontextmanager
async def responding(
    amqp_url: str, exchange: str, source: HistorySource, *, wait: bool = True
) -> AsyncIterator[HistoryResponder]:
    responder = HistoryResponder(amqp_url, exchange=exchange, stream=STREAM, source=source)
    responder.start()
    try:
        if wait:
            await until(responder.is_ready)
        yield responder
    finally:
        await responder.stop()


def seqs(answer: dict[str, Any]) -> list[int]:
    return [m["meta"]["seq"] for m in answer["messages"]]


async def test_a_client_gets_the_exact_page_it_missed(
    amqp_url: str, exchange: str, requester: HistoryRequester
) -> None:
    async with responding(amqp_url, exchange, Log(last=5)):
        answer = await requester.ask(epoch=EPOCH, after=2)
    assert answer["epoch"] == EPOCH
    assert (seqs(answer), answer["complete"]) == ([3, 4, 5], True)


async def test_another_epoch_is_answered_empty_and_incomplete(
    amqp_url: str, exchange: str, requester: HistoryRequester
) -> None:
    async with responding(amqp_url, exchange, Log(last=5)):
        answer = await requester.ask(after=2, epoch="before-the-restore")
    assert answer == {"epoch": EPOCH, "messages": [], "complete": False}


async def test_trimmed_history_is_incomplete(
    amqp_url: str, exchange: str, requester: HistoryRequester
) -> None:
    async with responding(amqp_url, exchange, Log(last=9, first=6)):
        answer = await requester.ask(epoch=EPOCH, after=2)
    assert (seqs(answer), answer["complete"]) == ([6, 7, 8, 9], False)


async def test_an_answer_carries_at_most_the_bound_whatever_the_limit_asked(
    amqp_url: str, exchange: str, requester: HistoryRequester
) -> None:
    async with responding(amqp_url, exchange, Log(last=MAX_HISTORY_LIMIT + 500)):
        answer = await requester.ask(epoch=EPOCH, after=0, limit=5 * MAX_HISTORY_LIMIT)
    assert seqs(answer) == list(range(1, MAX_HISTORY_LIMIT + 1))
    assert answer["complete"] is False


class Gated(Log):
    """Holds every page until `open` is set; counts who entered."""

    def __init__(self, entered: asyncio.Condition) -> None:
        super().__init__(last=3)
        self.entered = entered
        self.open = asyncio.Event()

    async def page(self, user_id: str, after: int, limit: int) -> Page:
        async with self.entered:
            self.served.append(user_id)
            self.entered.notify_all()
        await self.open.wait()
        return Page([], self.last)


async def test_two_replicas_share_the_requests_and_each_is_answered_once(
    amqp_url: str, exchange: str, requester: HistoryRequester
) -> None:
    entered = asyncio.Condition()
    first, second = Gated(entered), Gated(entered)
    async with (
        responding(amqp_url, exchange, first),
        responding(amqp_url, exchange, second),
    ):
        users = [f"user-{i}" for i in range(40)]
        asking = asyncio.gather(*(requester.ask(user, epoch=EPOCH, after=0) for user in users))
        # One replica takes at most its prefetch before answering: the other gets the rest.
        async with asyncio.timeout(10), entered:
            await entered.wait_for(lambda: bool(first.served and second.served))
        first.open.set()
        second.open.set()
        answers = await asyncio.wait_for(asking, 10)

    assert all(answer["complete"] is False for answer in answers)  # last 3, pages empty
    assert sorted(first.served + second.served) == sorted(users)
    assert not set(first.served) & set(second.served)
    assert len(requester.answers) == len(set(requester.answers)) == len(users)


async def test_a_slow_request_does_not_hold_back_the_next_on_the_same_replica(
    amqp_url: str, exchange: str, requester: HistoryRequester
) -> None:
    release = asyncio.Event()

    class SlowForBob(Log):
        async def page(self, user_id: str, after: int, limit: int) -> Page:
            if user_id == "bob":
                await release.wait()
            return await super().page(user_id, after, limit)

    async with responding(amqp_url, exchange, SlowForBob(last=2)):
        bob = asyncio.ensure_future(requester.ask("bob", epoch=EPOCH, after=0))
        alice = await requester.ask("alice", epoch=EPOCH, after=1)
        assert not bob.done()
        release.set()
        assert seqs(await bob) == [1, 2]
    assert seqs(alice) == [2]


async def test_a_responder_started_while_rabbitmq_is_unreachable_answers_once_it_is_back(
    amqp_url: str, exchange: str, requester: HistoryRequester
) -> None:
    async with TcpProxy.for_url(amqp_url) as proxy:
        proxy.cut()
        async with responding(proxy.rewrite(amqp_url), exchange, Log(last=2), wait=False) as r:
            assert not await r.is_ready()
            proxy.restore()
            await until(r.is_ready)
            answer = await requester.ask(epoch=EPOCH, after=0)
    assert seqs(answer) == [1, 2]


async def test_answers_resume_after_the_connection_to_rabbitmq_is_lost(
    amqp_url: str, exchange: str, requester: HistoryRequester
) -> None:
    async with TcpProxy.for_url(amqp_url) as proxy:
        url = proxy.rewrite(amqp_url)
        async with responding(url, exchange, Log(last=2)) as responder:
            assert seqs(await requester.ask(epoch=EPOCH, after=1)) == [2]
            proxy.cut()
            await until(responder.is_ready, False)
            proxy.restore()
            await until(responder.is_ready)
            answer = await requester.ask(epoch=EPOCH, after=0)
    assert seqs(answer) == [1, 2]
