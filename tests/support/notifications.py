"""Test support for the notifications service: a fake publisher, the app in-process, the process.

- `FakePublisher`: the relay's `EventPublisher` port in memory (can be switched "down").
- `running_app(settings, publisher=None)`: the app with its lifespan, and an httpx client
  (with a fake publisher, its history owner is a stand-in too: no RabbitMQ at all).
- `notifications_process(amqp_url, exchange, database_url, **env)`: the real console script,
  started as a user would (dev mode, so the `make_token` fixture's tokens verify), yielding
  its base URL once `/readyz` answers 200.
- `history_requester(amqp_url, queue)`: asks a history queue as the edge does.

Both delete the test exchange's history queue when the service stops: it is durable.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aio_pika
import aio_pika.abc
import httpx
import orjson

from realtime_notifications.app import create_app
from realtime_notifications.broker import BrokerUnavailable, EventPublisher
from realtime_notifications.domain import STREAM
from realtime_notifications.history import HistoryFactory, HistoryOwner
from realtime_notifications.outbox import PendingEvent
from realtime_notifications.settings import NotificationsSettings
from realtime_shared.envelope import Envelope
from realtime_shared.history import history_queue
from realtime_shared.routing import user_key
from support.edge import SCRUBBED_ENV

SCRIPT = Path(sys.executable).with_name("notifications-service")


def make_settings(database_url: str, **overrides: Any) -> NotificationsSettings:
    """Settings from arguments only: neither the environment nor a `.env` leaks into a test."""
    values: dict[str, Any] = {
        "dev": True,
        "database_url": database_url,
        "amqp_url": "amqp://guest:guest@127.0.0.1:1/",  # unused unless a test says otherwise
        "outbox_poll_interval": 0.2,
        "outbox_backoff_cap": 0.5,
        "publish_timeout": 2.0,
    }
    values.update(overrides)
    return NotificationsSettings(_env_file=None, **values)


class FakePublisher:
    """In-memory `EventPublisher`; `down = True` makes every call fail like a lost broker,
    `refusing = True` only the publishes (connected, but no confirm comes back), and
    every publish raises `fault` while it is set (an error no retry is meant for)."""

    def __init__(self) -> None:
        self.published: list[PendingEvent] = []
        self.down = False
        self.refusing = False
        self.fault: type[BaseException] | None = None
        self.attempts_while_down = 0
        self._changed = asyncio.Condition()

    async def connect(self) -> None:
        self._check()

    async def publish(self, event: PendingEvent) -> None:
        self._check()
        if self.fault is not None:
            raise self.fault("fake publisher fault")
        if self.refusing:
            raise BrokerUnavailable("fake broker refused the publish")
        async with self._changed:
            self.published.append(event)
            self._changed.notify_all()

    async def is_connected(self) -> bool:
        return not self.down

    async def close(self) -> None:
        pass

    def _check(self) -> None:
        if self.down:
            self.attempts_while_down += 1
            raise BrokerUnavailable("fake broker is down")

    def envelopes(self) -> list[Envelope]:
        return [Envelope.from_bytes(e.body) for e in self.published]

    async def wait_for(self, count: int, within: float = 5.0) -> list[Envelope]:
        """The first `count` published envelopes, once they are there (fails after `within` s)."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: len(self.published) >= count)
        return self.envelopes()[:count]


class NoHistory:
    """A stand-in history owner that is always ready and answers nothing: for tests whose
    broker is a `FakePublisher` (no RabbitMQ to consume from)."""

    def start(self) -> None:
        pass

    async def is_ready(self) -> bool:
        return True

    async def stop(self) -> None:
        pass


def no_history(_source: object) -> HistoryOwner:
    return NoHistory()


@asynccontextmanager
async def running_app(
    settings: NotificationsSettings,
    publisher: EventPublisher | None = None,
    history: HistoryFactory | None = None,
) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process. With a fake `publisher` and no `history`, the history owner is
    faked too: the app then needs no RabbitMQ at all."""
    real_history = publisher is None and history is None
    if publisher is not None and history is None:
        history = no_history
    app = create_app(settings, publisher=publisher, history=history)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://notifications") as c:
                yield c
    finally:
        if real_history:
            await delete_history_queue(settings.amqp_url, settings.realtime_exchange)


async def delete_history_queue(amqp_url: str, exchange: str) -> None:
    """The history queue is durable and outlives the service: the shared broker must not
    collect one per test."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(history_queue(exchange, STREAM))


async def metric(client: httpx.AsyncClient, line_prefix: str) -> float | None:
    """The value of the first /metrics sample line starting with `line_prefix`."""
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    return None


async def until_metric(
    client: httpx.AsyncClient,
    line_prefix: str,
    value: float,
    within: float = 5.0,
    *,
    at_least: bool = False,
) -> None:
    """Poll /metrics until a sample has `value` (or more, `at_least`): the relay works
    in the background, so what it did shows up there a little later."""

    def reached(seen: float | None) -> bool:
        return seen is not None and (seen >= value if at_least else seen == value)

    deadline = time.monotonic() + within
    while not reached(seen := await metric(client, line_prefix)):
        if time.monotonic() > deadline:
            raise AssertionError(f"{line_prefix} is {seen}, expected {value}")
        await asyncio.sleep(0.02)


async def until_ready(client: httpx.AsyncClient, status: int, within: float = 15.0) -> None:
    """Poll /readyz until it answers `status` (readiness has no event to wait for)."""
    deadline = time.monotonic() + within
    while (await client.get("/readyz")).status_code != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"/readyz never answered {status} within {within} s")
        await asyncio.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def start_process(
    amqp_url: str,
    exchange: str,
    database_url: str,
    log_path: Path,
    *,
    log_level: str = "warning",
    **env: str,
) -> tuple[subprocess.Popen[bytes], str]:
    """`log_level` is passed as `--log-level`, which wins over a `LOG_LEVEL` in `env`."""
    port = free_port()
    environ = {
        **os.environ,
        "AMQP_URL": amqp_url,
        "REALTIME_EXCHANGE": exchange,
        "DATABASE_URL": database_url,
        "OUTBOX_POLL_INTERVAL": "0.2",
        "OUTBOX_BACKOFF_CAP": "0.5",
        **env,
    }
    for name in SCRUBBED_ENV:  # dev mode's key is what make_token signs with
        environ.pop(name, None)
    with log_path.open("wb") as log:  # the child keeps its own descriptor
        process = subprocess.Popen(
            [
                str(SCRIPT),
                "--dev",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                log_level,
            ],
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return process, f"http://127.0.0.1:{port}"


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_ready_sync(process: subprocess.Popen[bytes], base_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"notifications-service exited early:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{base_url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)  # polling a process that exposes no readiness event
    raise TimeoutError(f"notifications-service not ready in 30 s:\n{log_path.read_text()}")


@asynccontextmanager
async def notifications_process(
    amqp_url: str, exchange: str, database_url: str, *, log_dir: Path, **env: str
) -> AsyncIterator[str]:
    """A real `notifications-service --dev` process; yields its base URL once ready."""
    log_path = log_dir / f"notifications-{free_port()}.log"
    process, base_url = start_process(amqp_url, exchange, database_url, log_path, **env)
    try:
        deadline = time.monotonic() + 30
        async with httpx.AsyncClient(timeout=1) as client:
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"notifications-service exited:\n{log_path.read_text()}")
                try:
                    if (await client.get(f"{base_url}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not ready in 30 s:\n{log_path.read_text()}")
                await asyncio.sleep(0.1)
        yield base_url
    finally:
        await asyncio.to_thread(stop_process, process)
        await delete_history_queue(amqp_url, exchange)


DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"


class HistoryRequester:
    """Asks for history as the edge does: a request to the history queue through the default
    exchange, the answer on RabbitMQ's direct reply-to, matched by correlation id."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel, queue: str) -> None:
        self.channel = channel
        self.queue = queue
        self.waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self.answers: list[str] = []
        """Correlation ids of every answer received, in order (duplicates included)."""

    async def listen(self) -> None:
        replies = await self.channel.declare_queue(DIRECT_REPLY_TO, passive=True)
        await replies.consume(self._on_reply, no_ack=True)

    async def _on_reply(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.answers.append(message.correlation_id or "")
        future = self.waiting.get(message.correlation_id or "")
        if future is not None and not future.done():
            future.set_result(orjson.loads(message.body))

    async def ask(
        self, user_id: str = "alice", *, epoch: str, after: int, limit: int = 100
    ) -> dict[str, Any]:
        """The answer to one request (fails after 10 s without one)."""
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiting[correlation_id] = future
        body = {"user_id": user_id, "epoch": epoch, "after": after, "limit": limit}
        await self.channel.default_exchange.publish(
            aio_pika.Message(
                orjson.dumps(body),
                content_type="application/json",
                reply_to=DIRECT_REPLY_TO,
                correlation_id=correlation_id,
            ),
            routing_key=self.queue,
        )
        async with asyncio.timeout(10):
            return await future


@asynccontextmanager
async def history_requester(amqp_url: str, queue: str) -> AsyncIterator[HistoryRequester]:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        requester = HistoryRequester(await connection.channel(), queue)
        await requester.listen()
        yield requester


class EventQueue:
    """An exclusive queue bound to one user's key on the test's exchange (a real broker)."""

    def __init__(self, queue: aio_pika.abc.AbstractQueue) -> None:
        self.queue = queue

    async def next(self, within: float = 10.0) -> aio_pika.abc.AbstractIncomingMessage:
        deadline = time.monotonic() + within
        while (message := await self.queue.get(no_ack=True, fail=False)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no message on {self.queue.name} within {within} s")
            await asyncio.sleep(0.01)  # basic.get has no wait; poll with a deadline
        return message

    async def take(self, count: int, within: float = 10.0) -> list[Envelope]:
        async with asyncio.timeout(within):
            return [Envelope.from_bytes((await self.next()).body) for _ in range(count)]

    async def is_empty(self) -> bool:
        return await self.queue.get(no_ack=True, fail=False) is None


@asynccontextmanager
async def user_events(amqp_url: str, exchange: str, *user_ids: str) -> AsyncIterator[EventQueue]:
    """Events for `user_ids` as a consumer bound with the shared routing helper sees them."""
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        ex = await channel.get_exchange(exchange)
        queue = await channel.declare_queue(exclusive=True)
        for user_id in user_ids:
            await queue.bind(ex, user_key("notifications", user_id))
        yield EventQueue(queue)
