"""The compose topology without Docker: the same processes, settings and proxy config, here.

compose.yaml runs a one-shot `migrate`, two notifications replicas on PostgreSQL, two edges
and nginx in front. This starts exactly that from the console scripts (the images'
entrypoints) with the environment compose gives them: secrets as `<VAR>_FILE` files from
deploy/make-secrets.sh, `migrate` as the schema owner and the replicas on the rows-only
role that deploy/postgres/10-roles.sh makes. It puts deploy/nginx/nginx.conf in front with
its two service names pointed at upstream groups of the two replicas each, and uses the
stack the way the operations guide does. (RabbitMQ's per-service users need a broker of
their own: tests/ops/test_rabbitmq_users.py.)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from support.broker import delete_exchange
from support.db import create_database, drop_database
from support.ops import (
    BIN,
    ProxyFiles,
    apply_postgres_roles,
    clean_env,
    drop_roles,
    free_port,
    make_secrets,
    on_test_server,
    proxy_test_copy,
    replace_once,
    require_tool,
    running_nginx,
    service,
    wait_ready,
    write_secret,
)
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from realtime_shared.auth import issue_token

pytestmark = pytest.mark.e2e


@dataclass
class Stack:
    proxy_port: int
    secrets: Path
    logs: list[Path]
    proxy_files: ProxyFiles
    edges: list[int]
    replicas: list[int]
    processes: dict[int, subprocess.Popen[bytes]]

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def ws(self, path: str, token: str) -> str:
        return f"ws://127.0.0.1:{self.proxy_port}{path}?token={token}"

    def token(self, user: str, *permissions: str) -> str:
        secret = (self.secrets / "jwt_secret").read_text()
        return issue_token(user, secret, ttl=300, permissions=list(permissions))

    def token_cli(self, *argv: str) -> str:
        """`realtime-token` as docs/operations.md runs it in the edge container (same env)."""
        result = subprocess.run(
            [str(BIN / "realtime-token"), *argv],
            env=clean_env(JWT_SECRET_FILE=str(self.secrets / "jwt_secret"), JWT_ALGORITHMS="HS256"),
            cwd=self.proxy_files.prefix,
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        return result.stdout.strip()


@pytest.fixture(scope="module")
def secrets_dir(
    postgres_url: str, amqp_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """deploy/make-secrets.sh's files, pointed at the test servers, with the database roles
    made by 10-roles.sh in a fresh database (the stack starts once: ~10 s)."""
    directory = tmp_path_factory.mktemp("secrets")
    written = make_secrets(directory)
    name, _ = asyncio.run(create_database(postgres_url, prefix="ops"))
    suffix = uuid.uuid4().hex[:10]
    roles = {
        "migrate_database_url": f"owner_{suffix}",
        "notifications_database_url": f"app_{suffix}",
    }
    try:
        for secret, role in roles.items():
            write_secret(
                directory, secret, on_test_server(written[secret], role, postgres_url, name)
            )
        # The shared broker's users are not ours to make: both services use its URL here.
        for secret in ("edge_amqp_url", "notifications_amqp_url"):
            write_secret(directory, secret, amqp_url)
        applied = apply_postgres_roles(postgres_url, name, directory)
        assert applied.returncode == 0, applied.stderr
        yield directory
    finally:
        asyncio.run(drop_database(postgres_url, name))
        asyncio.run(drop_roles(postgres_url, *roles.values()))


@pytest.fixture(scope="module")
def exchange(amqp_url: str) -> Iterator[str]:
    """Like conftest's `exchange`, for the whole module; the services declare it themselves."""
    name = f"test-ops-{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        asyncio.run(delete_exchange(amqp_url, name))


@pytest.fixture(scope="module")
def stack(
    exchange: str, secrets_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    nginx = require_tool("nginx")
    tmp_path = tmp_path_factory.mktemp("stack")

    def file(secret: str) -> str:
        return str(secrets_dir / secret)

    # What compose.yaml's x-service-env and the services' own entries give the containers.
    logging = {"LOG_FORMAT": "json", "LOG_LEVEL": "INFO"}
    env = clean_env(
        REALTIME_EXCHANGE=exchange,
        JWT_SECRET_FILE=file("jwt_secret"),
        JWT_PREVIOUS_SECRETS_FILE=file("jwt_previous_secrets"),
        JWT_ALGORITHMS="HS256",
        FORWARDED_ALLOW_IPS="*",
        **logging,
    )
    api_env = {
        **env,
        "AMQP_URL_FILE": file("notifications_amqp_url"),
        "DATABASE_URL_FILE": file("notifications_database_url"),
    }
    # As an operator who turns the demo page on (EDGE_DEMO=true in .env).
    edge_env = {
        **env,
        "AMQP_URL_FILE": file("edge_amqp_url"),
        "EDGE_DEMO": "true",
        "EDGE_NOTIFICATIONS_URL": "",
    }
    migrate_log = tmp_path / "migrate.log"
    migrated = subprocess.run(
        [str(BIN / "notifications-service"), "migrate"],
        env=clean_env(DATABASE_URL_FILE=file("migrate_database_url"), **logging),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    migrate_log.write_text(migrated.stdout + migrated.stderr)
    assert migrated.returncode == 0, migrated.stderr

    edges, replicas = [free_port(), free_port()], [free_port(), free_port()]
    logs = [migrate_log]
    processes: dict[int, subprocess.Popen[bytes]] = {}
    with ExitStack() as stack:
        for name, ports, script, script_env in (
            ("edge", edges, "ws-edge", edge_env),
            ("notifications", replicas, "notifications-service", api_env),
        ):
            for i, port in enumerate(ports):
                log = tmp_path / f"{name}-{i + 1}.log"
                logs.append(log)
                argv = [str(BIN / script), "--host", "127.0.0.1", "--port", str(port)]
                processes[port] = stack.enter_context(service(argv, script_env, tmp_path, log))
        for port, log in zip([*edges, *replicas], logs[1:], strict=True):
            wait_ready(port, log)

        proxy_port = free_port()
        files = proxy_test_copy(tmp_path / "proxy", listen=proxy_port)
        groups = "".join(
            f"    upstream {group} {{\n"
            + "".join(f"        server 127.0.0.1:{port};\n" for port in ports)
            + "    }\n"
            for group, ports in (("edges", edges), ("replicas", replicas))
        )
        text = files.conf.read_text()
        # A variable naming an upstream group selects the group: both replicas, no DNS.
        text = replace_once(text, "set $edge_upstream edge:8080;", "set $edge_upstream edges;")
        text = replace_once(
            text, "set $api_upstream notifications:8081;", "set $api_upstream replicas;"
        )
        text = replace_once(text, "http {\n", "http {\n" + groups)
        files.conf.write_text(text)
        stack.enter_context(running_nginx(nginx, files, proxy_port))
        yield Stack(proxy_port, secrets_dir, logs, files, edges, replicas, processes)


async def frames(ws: ClientConnection, count: int) -> list[dict[str, object]]:
    async with asyncio.timeout(10):
        return [json.loads(await ws.recv()) for _ in range(count)]


async def sample(client: httpx.AsyncClient, port: int, prefix: str) -> float:
    """One replica's own /metrics (not through the proxy, which does not publish them)."""
    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def published_total(client: httpx.AsyncClient, port: int) -> float:
    return await sample(client, port, "notifications_outbox_published_total ")


async def test_a_notification_reaches_every_socket_of_its_user_once(stack: Stack) -> None:
    alice = stack.token_cli("alice")
    ops = stack.token_cli("ops", "--permissions", "notification.manage")
    origin = Origin(stack.http)
    async with (
        connect(stack.ws("/ws", alice), origin=origin) as first,
        connect(stack.ws("/ws/notifications", alice), origin=origin) as second,
        connect(stack.ws("/ws", stack.token("bob")), origin=origin) as bob,
        httpx.AsyncClient(base_url=stack.http, timeout=10) as client,
    ):
        for ws in (first, second, bob):
            assert (await frames(ws, 1))[0]["event"] == "connected"
        titles = ["one", "two", "three", "four"]
        before = sum([await published_total(client, port) for port in stack.replicas])
        for title in titles:
            created = await client.post(
                "/api/notifications",
                headers={"Authorization": f"Bearer {ops}"},
                json={"user_id": "alice", "type": "ops-test", "title": title},
            )
            assert created.status_code == 201, created.text

        for ws in (first, second):
            got = await frames(ws, len(titles))
            assert [f["event"] for f in got] == ["notification.created"] * len(titles)
            assert [f["data"]["notification"]["title"] for f in got] == titles  # type: ignore[index]
        # Requests went round-robin over both replicas and their two relays, and each
        # event was published once: the outbox's promise with two replicas on one database.
        deadline = time.monotonic() + 10
        while True:
            totals = [await published_total(client, port) for port in stack.replicas]
            if sum(totals) - before >= len(titles) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert sum(totals) - before == len(titles), totals
        created_by = [
            await sample(client, port, 'notifications_http_requests_total{method="POST"')
            for port in stack.replicas
        ]
        assert all(count > 0 for count in created_by), created_by  # the proxy used both
        await bob.send(json.dumps({"action": "ping"}))
        assert (await frames(bob, 1))[0]["event"] == "pong"  # nothing of alice's came first
        listed = await client.get(
            "/api/notifications", headers={"Authorization": f"Bearer {alice}"}
        )
        assert [n["title"] for n in listed.json()] == titles[::-1]


async def test_the_edges_origin_check_works_through_the_proxy(stack: Stack) -> None:
    token = stack.token("carol")
    async with connect(stack.ws("/ws", token), origin=Origin(stack.http)) as ws:
        assert (await frames(ws, 1))[0]["event"] == "connected"

    with pytest.raises(InvalidStatus) as refused:
        async with connect(stack.ws("/ws", token), origin=Origin("https://evil.example")):
            pass
    assert refused.value.response.status_code == 403


async def test_the_page_is_served_and_logs_are_json_without_tokens(stack: Stack) -> None:
    token = stack.token("dave")
    async with httpx.AsyncClient(base_url=stack.http, timeout=10) as client:
        page = await client.get("/")
        demo = await client.get("/demo/config.json")
        health = await client.get("/healthz")
        refused = await client.get(f"/api/notifications?access_token={token}")
        async with connect(stack.ws("/ws", token), origin=Origin(stack.http)) as ws:
            connection_id = (await frames(ws, 1))[0]["data"]["connection_id"]  # type: ignore[index]
            await ws.send(json.dumps({"action": "no-such-action"}))
            assert (await frames(ws, 1))[0]["event"] == "error"

    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    # The page calls the API on its own origin, through the same proxy.
    assert demo.json()["notifications_url"] == ""
    assert health.status_code == 200
    assert refused.status_code == 401  # the API takes the header only
    service_lines = [
        line for log in stack.logs[1:] for line in log.read_text().splitlines() if line.strip()
    ]
    assert service_lines
    for line in service_lines:
        assert isinstance(json.loads(line), dict), line
        assert token not in line
    # A line about one connection names it as the client knows it, as a key of its own.
    about_it = [json.loads(line) for line in service_lines if connection_id in line]
    assert any(entry.get("connection_id") == connection_id for entry in about_it), about_it
    proxy_log = stack.proxy_files.access_log.read_text()
    assert token not in proxy_log


async def test_stopping_an_edge_moves_its_clients_to_the_other(stack: Stack) -> None:
    """The rolling restart of docs/operations.md. Stops an edge: keep this test last."""
    token = stack.token("erin")
    admin = stack.token("ops", "realtime.admin")
    origin = Origin(stack.http)
    async with httpx.AsyncClient(timeout=10) as client:

        async def holder() -> int:
            for port in (p for p in stack.edges if stack.processes[p].poll() is None):
                summary = await client.get(
                    f"http://127.0.0.1:{port}/admin/connections",
                    headers={"Authorization": f"Bearer {admin}"},
                )
                if summary.json()["users"]:
                    return port
            raise AssertionError("no edge holds the connection")

        async with connect(stack.ws("/ws", token), origin=origin) as ws:
            await frames(ws, 1)
            first = await holder()
            stack.processes[first].terminate()  # what `docker stop` sends
            async with asyncio.timeout(10):
                await ws.wait_closed()
            assert ws.close_code == 1001  # "going away", through the proxy unchanged
        await asyncio.to_thread(stack.processes[first].wait, 15)

        # The proxy skips the stopped edge: the client's reconnect lands on the other one.
        async with connect(stack.ws("/ws", token), origin=origin) as ws:
            assert (await frames(ws, 1))[0]["event"] == "connected"
            assert await holder() != first
