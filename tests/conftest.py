"""Fixtures for every test tier: a real RabbitMQ, a fresh exchange, databases, tokens.

RabbitMQ and PostgreSQL come from the environment when set (``AMQP_URL``,
``POSTGRES_URL``); otherwise from testcontainers when a Docker engine
answers; otherwise the test is skipped with a reason, except under
``CI=true``, where a missing service is a failure, never a skip.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from support.db import scratch_database
from support.missing import missing

from realtime_shared.auth import issue_token
from realtime_shared.settings import DEV_JWT_SECRET

TEST_SECRET = DEV_JWT_SECRET


def _missing(what: str) -> None:
    missing(f"{what} is not available: set its URL or start a Docker engine")


def _pings(sock: socket.socket) -> bool:
    sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
    return b" 200 " in sock.recv(1024)


def _docker_answers() -> bool:
    """Ask the engine's `/_ping` over a plain socket (docker-py leaks one when none runs)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX)
            with sock:
                sock.settimeout(2)
                sock.connect(host.removeprefix("unix://"))
                return _pings(sock)
        if host.startswith("tcp://"):
            address, _, port = host.removeprefix("tcp://").rpartition(":")
            with socket.create_connection((address, int(port)), timeout=2) as sock:
                return _pings(sock)
        return False
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    url = os.environ.get("AMQP_URL")
    if url:
        yield url
        return
    if not _docker_answers():
        _missing("RabbitMQ (AMQP_URL)")
    from testcontainers.rabbitmq import RabbitMqContainer

    with RabbitMqContainer("rabbitmq:4-management") as container:
        host = container.get_container_host_ip()
        port = container.get_exposed_port(5672)
        yield f"amqp://guest:guest@{host}:{port}/"


@pytest.fixture
async def exchange(amqp_url: str) -> AsyncIterator[str]:
    """A fresh topic exchange name per test, deleted afterwards (with what the services
    declared beside it, `support.broker`), so tests never share traffic."""
    import aio_pika
    from support.broker import forget_exchange

    name = f"test-{uuid.uuid4().hex[:12]}"
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
        yield name
        # A channel of its own: the test may have closed the first one.
        await forget_exchange(await connection.channel(), name)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A server URL (``postgresql://…``) where the tests may create databases."""
    url = os.environ.get("POSTGRES_URL")
    if url:
        yield url
        return
    if not _docker_answers():
        _missing("PostgreSQL (POSTGRES_URL)")
    from testcontainers.postgres import PostgresContainer

    with PostgresContainer("postgres:16-alpine", driver=None) as container:
        yield container.get_connection_url()


@pytest.fixture(params=["sqlite", "postgresql"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database as an SQLAlchemy async URL: SQLite (temp file), then PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'notifications.db'}"
        return
    server_url: str = request.getfixturevalue("postgres_url")
    async with scratch_database(server_url) as url:
        yield url


@pytest.fixture
def make_token() -> object:
    """``make_token("alice", permissions=[...], ttl=60)``: a token the dev-mode services accept."""

    def make(sub: str, **kwargs: object) -> str:
        return issue_token(sub, TEST_SECRET, **kwargs)  # type: ignore[arg-type]

    return make
