"""The broker's users as compose creates them: from deploy/make-secrets.sh's files, through
deploy/rabbitmq/definitions.py, imported at boot by a real RabbitMQ node with
deploy/rabbitmq/rabbitmq.conf. The node is the test's own (the shared broker's users must
not change), and the real services run against it with nothing but their own user.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiormq
import httpx
import pytest
from aiormq.abc import AbstractChannel
from support.ops import (
    BIN,
    RABBITMQ_DEFINITIONS,
    PrivateRabbitMQ,
    clean_env,
    free_port,
    make_secrets,
    service,
    wait_ready,
    write_secret,
)
from websockets.asyncio.client import connect

from realtime_shared.auth import issue_token

pytestmark = pytest.mark.integration

EXCHANGE, INBOUND, HISTORY = "realtime", "realtime.inbound", "realtime.history.notifications"


@dataclass
class Stack:
    broker: PrivateRabbitMQ
    secrets: Path
    tmp: Path

    def url(self, secret: str) -> str:
        """A service's AMQP URL file, pointed at this node instead of compose's `rabbitmq`."""
        parts = urlsplit((self.secrets / secret).read_text())
        return self.broker.url(parts.username or "", parts.password or "")

    def admin_url(self) -> str:
        return self.broker.url("admin", (self.secrets / "rabbitmq_admin_password").read_text())

    def write_definitions(self) -> None:
        """What compose's `rabbitmq-users` runs, with the same variables."""
        result = subprocess.run(
            [sys.executable, str(RABBITMQ_DEFINITIONS), str(self.tmp / "definitions.json")],
            env=clean_env(
                EDGE_AMQP_URL_FILE=str(self.secrets / "edge_amqp_url"),
                NOTIFICATIONS_AMQP_URL_FILE=str(self.secrets / "notifications_amqp_url"),
                RABBITMQ_ADMIN_PASSWORD_FILE=str(self.secrets / "rabbitmq_admin_password"),
            ),
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("rabbitmq")
    make_secrets(tmp / "secrets")
    running = Stack(PrivateRabbitMQ(tmp / "node", tmp / "definitions.json"), tmp / "secrets", tmp)
    running.write_definitions()
    running.broker.start()
    try:
        asyncio.run(declare_topology(running.admin_url()))
        yield running
    finally:
        running.broker.stop()


async def declare_topology(admin_url: str) -> None:
    """What the services declare when they start, so each case below can run alone."""
    connection = await aiormq.connect(admin_url)
    try:
        channel = await connection.channel()
        for exchange in (EXCHANGE, INBOUND):
            await channel.exchange_declare(exchange, exchange_type="topic", durable=True)
        await channel.queue_declare(HISTORY, durable=True)
    finally:
        await connection.close()


async def can_log_in(url: str) -> bool:
    try:
        connection = await aiormq.connect(url)
    except aiormq.exceptions.ProbableAuthenticationError:
        return False
    await connection.close()
    return True


Action = Callable[[AbstractChannel], Awaitable[object]]


async def consume_own_queue(channel: AbstractChannel) -> None:
    queue = f"ws-edge.{uuid.uuid4().hex}"
    await channel.queue_declare(queue, exclusive=True, auto_delete=True)
    await channel.queue_bind(queue, EXCHANGE, "notifications.alice")
    await channel.basic_consume(queue, lambda _message: None, no_ack=True)  # type: ignore[arg-type,return-value]


async def bind_history_queue_to_every_event(channel: AbstractChannel) -> None:
    await channel.queue_bind(HISTORY, EXCHANGE, "#")


async def consume_history(channel: AbstractChannel) -> None:
    await channel.queue_declare(HISTORY, durable=True)
    await channel.basic_consume(HISTORY, lambda _message: None)  # type: ignore[arg-type,return-value]


def declare_exchange(name: str) -> Action:
    return lambda channel: channel.exchange_declare(name, exchange_type="topic", durable=True)


def publish(exchange: str, routing_key: str) -> Action:
    # Publisher confirms are on: a refused publish closes the channel before the confirm.
    return lambda channel: channel.basic_publish(b"{}", exchange=exchange, routing_key=routing_key)


def declare_queue(name: str) -> Action:
    return lambda channel: channel.queue_declare(name, exclusive=True, auto_delete=True)


# (secret file of the user, what it tries, allowed?). The edge consumes the keys of its
# users, publishes client messages and asks for history through the default exchange;
# notifications declares and publishes events, owns its history queue and replies through
# the default exchange. The edge cannot publish to `realtime`, notifications cannot bind a
# queue to read anyone's stream.
CASES: list[tuple[str, str, Action, bool]] = [
    ("edge_amqp_url", "declares the exchange", declare_exchange(EXCHANGE), True),
    ("edge_amqp_url", "declares the inbound exchange", declare_exchange(INBOUND), True),
    ("edge_amqp_url", "consumes its own bound queue", consume_own_queue, True),
    ("edge_amqp_url", "publishes a client message", publish(INBOUND, "chat.alice"), True),
    ("edge_amqp_url", "publishes an event", publish(EXCHANGE, "notifications.bob"), False),
    ("edge_amqp_url", "asks for history", publish("", HISTORY), True),
    ("edge_amqp_url", "reads the history queue", consume_history, False),
    ("edge_amqp_url", "declares another queue", declare_queue("notifications.tap"), False),
    ("notifications_amqp_url", "declares the exchange", declare_exchange(EXCHANGE), True),
    ("notifications_amqp_url", "publishes an event", publish(EXCHANGE, "notifications.bob"), True),
    ("notifications_amqp_url", "consumes its history queue", consume_history, True),
    ("notifications_amqp_url", "replies via the default exchange", publish("", "reply"), True),
    ("notifications_amqp_url", "declares an edge queue", declare_queue("ws-edge.x"), False),
    ("notifications_amqp_url", "taps every event", bind_history_queue_to_every_event, False),
    ("notifications_amqp_url", "publishes a client message", publish(INBOUND, "chat.a"), False),
    ("notifications_amqp_url", "declares the inbound exchange", declare_exchange(INBOUND), False),
]


async def allowed(url: str, action: Action) -> bool:
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        try:
            await action(channel)
        except aiormq.exceptions.ChannelAccessRefused:
            return False
        return True
    finally:
        await connection.close()


@pytest.mark.parametrize(
    ("secret", "action", "expected"),
    [(secret, action, expected) for secret, _, action, expected in CASES],
    ids=[f"{secret.split('_')[0]} {what}" for secret, what, _, _ in CASES],
)
async def test_each_service_user_may_do_its_job_and_nothing_else(
    stack: Stack, secret: str, action: Action, expected: bool
) -> None:
    assert await allowed(stack.url(secret), action) is expected


async def test_only_the_services_and_the_operator_log_in(stack: Stack) -> None:
    edge = urlsplit(stack.url("edge_amqp_url"))
    api = urlsplit(stack.url("notifications_amqp_url"))

    assert await can_log_in(stack.url("edge_amqp_url"))
    assert await can_log_in(stack.url("notifications_amqp_url"))
    assert await can_log_in(stack.admin_url())
    # A node that imports definitions never creates RabbitMQ's default user.
    assert not await can_log_in(stack.broker.url("guest", "guest"))
    assert not await can_log_in(stack.broker.url(edge.username or "", api.password or ""))
    # Only the operator's user may use the management UI.
    document = json.loads((stack.tmp / "definitions.json").read_text())
    tags = {user["name"]: user["tags"] for user in document["users"]}
    assert tags == {"admin": ["administrator"], edge.username: [], api.username: []}


async def test_the_real_services_deliver_and_recover_with_only_their_own_users(
    stack: Stack,
) -> None:
    secret = (stack.secrets / "jwt_secret").read_text()
    common = {"JWT_SECRET": secret, "LOG_FORMAT": "json", "FORWARDED_ALLOW_IPS": "*"}
    edge_port, api_port = free_port(), free_port()
    with ExitStack() as running:
        for name, port, env in (
            ("ws-edge", edge_port, {"AMQP_URL": stack.url("edge_amqp_url")}),
            (
                "notifications-service",
                api_port,
                {
                    "AMQP_URL": stack.url("notifications_amqp_url"),
                    "DATABASE_URL": f"sqlite+aiosqlite:///{stack.tmp / 'notifications.db'}",
                },
            ),
        ):
            argv = [str(BIN / name), "--host", "127.0.0.1", "--port", str(port)]
            log = stack.tmp / f"{name}.log"
            running.enter_context(service(argv, clean_env(**common, **env), stack.tmp, log))
        await asyncio.to_thread(wait_ready, edge_port, stack.tmp / "ws-edge.log")
        await asyncio.to_thread(wait_ready, api_port, stack.tmp / "notifications-service.log")

        alice = issue_token("alice", secret, ttl=300)
        ops = issue_token("ops", secret, ttl=300, permissions=["notification.manage"])
        ws_url = f"ws://127.0.0.1:{edge_port}/ws?token={alice}"
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{api_port}",
            headers={"Authorization": f"Bearer {ops}"},
            timeout=10,
        ) as client:
            async with connect(ws_url) as ws, asyncio.timeout(10):
                assert json.loads(await ws.recv())["event"] == "connected"
                for title in ("one", "two"):
                    created = await client.post("/api/notifications", json=notification(title))
                    assert created.status_code == 201, created.text
                live = [json.loads(await ws.recv()) for _ in range(2)]
            # Back after seeing only "one": the edge asks the history owner through the
            # default exchange, notifications answers through it to the edge's reply-to.
            seen = live[0]["meta"]
            async with connect(ws_url) as ws, asyncio.timeout(10):
                assert json.loads(await ws.recv())["event"] == "connected"
                await ws.send(json.dumps(recover(seen["epoch"], seen["seq"])))
                replayed = []
                while (frame := json.loads(await ws.recv()))["event"] != "subscribed":
                    replayed.append(frame)

    assert [frame["event"] for frame in live] == ["notification.created"] * 2
    assert [frame["data"]["notification"]["title"] for frame in live] == ["one", "two"]
    assert frame["data"]["recovered"] == {"notifications": True}
    assert [(f["data"]["notification"]["title"], f["meta"]["seq"]) for f in replayed] == [
        ("two", seen["seq"] + 1)
    ]


def notification(title: str) -> dict[str, str]:
    return {"user_id": "alice", "type": "users-test", "title": title}


def recover(epoch: str, seq: int) -> dict[str, object]:
    return {
        "action": "subscribe",
        "streams": ["notifications"],
        "recover": {"notifications": {"epoch": epoch, "seq": seq}},
    }


async def test_a_changed_password_applies_at_the_next_broker_restart(stack: Stack) -> None:
    """The rotation of docs/operations.md. Restarts the node: keep this test last."""
    old = stack.url("edge_amqp_url")
    user = urlsplit(old).username
    write_secret(stack.secrets, "edge_amqp_url", f"amqp://{user}:{uuid.uuid4().hex}@rabbitmq:5672/")

    stack.write_definitions()
    await asyncio.to_thread(stack.broker.restart)

    assert await can_log_in(stack.url("edge_amqp_url"))
    assert not await can_log_in(old)
