"""What the real notifications service believes about a client behind the shipped nginx.

The services run uvicorn with `FORWARDED_ALLOW_IPS="*"` (compose.yaml): they take the
client's address and scheme from X-Forwarded-For/-Proto. So whatever nginx forwards is
what a service logs and uses to build redirects; here a real `notifications-service`
process sits behind a real nginx running deploy/nginx/nginx.conf, and the test reads the
service's own log.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from support.broker import delete_exchange
from support.ops import (
    BIN,
    clean_env,
    free_port,
    proxy_test_copy,
    require_tool,
    running_nginx,
    service,
    wait_ready,
)

from realtime_shared.headers import NOTHING_POLICY

pytestmark = pytest.mark.integration


@dataclass
class Front:
    """nginx in front of the one service process; `port` is nginx's."""

    port: int
    service_log: Path

    def get(self, path: str, headers: dict[str, str]) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{self.port}{path}", headers=headers, timeout=10)

    def access_line(self, probe: str, deadline_s: float = 5.0) -> str:
        """The service's access log line for the request whose query carried `probe`."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            for line in self.service_log.read_text().splitlines():
                if probe in line:
                    message: str = json.loads(line)["message"]
                    return message
            time.sleep(0.02)
        raise AssertionError(f"no access line for {probe}:\n{self.service_log.read_text()}")


@pytest.fixture(scope="module")
def fronts(amqp_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Front]]:
    """One notifications process; nginx as shipped and nginx told of a balancer (127.0.0.1)."""
    nginx = require_tool("nginx")
    tmp = tmp_path_factory.mktemp("forwarding")
    exchange = f"test-fwd-{uuid.uuid4().hex[:12]}"
    env = clean_env(
        AMQP_URL=amqp_url,
        REALTIME_EXCHANGE=exchange,
        JWT_SECRET=secrets.token_hex(32),
        DATABASE_URL=f"sqlite+aiosqlite:///{tmp / 'notifications.db'}",
        LOG_FORMAT="json",
        LOG_LEVEL="INFO",
        FORWARDED_ALLOW_IPS="*",  # as compose.yaml gives the services
    )
    port, log = free_port(), tmp / "notifications.log"
    argv = [str(BIN / "notifications-service"), "--host", "127.0.0.1", "--port", str(port)]
    try:
        with ExitStack() as stack:
            stack.enter_context(service(argv, env, tmp, log))
            wait_ready(port, log)
            fronts = {}
            for name, trusted in (("shipped", None), ("behind_balancer", "127.0.0.1")):
                listen = free_port()
                files = proxy_test_copy(
                    tmp / name, listen=listen, api=f"127.0.0.1:{port}", trusted_proxy=trusted
                )
                stack.enter_context(running_nginx(nginx, files, listen))
                fronts[name] = Front(listen, log)
            yield fronts
    finally:
        asyncio.run(delete_exchange(amqp_url, exchange))


def test_a_forged_address_never_reaches_the_service(fronts: dict[str, Front]) -> None:
    front, probe = fronts["shipped"], uuid.uuid4().hex
    response = front.get(f"/api/notifications?probe={probe}", {"X-Forwarded-For": "6.6.6.6"})

    assert response.status_code == 401
    line = front.access_line(probe)
    assert line.startswith("127.0.0.1:"), line
    assert "6.6.6.6" not in line


def test_a_client_cannot_claim_https_to_the_service(fronts: dict[str, Front]) -> None:
    """Any redirect the API makes is built from what nginx forwarded (the API stopped
    redirecting a trailing slash, which is how this was found; it must not come back
    pointing elsewhere)."""
    front = fronts["shipped"]
    response = front.get("/api/notifications/", {"X-Forwarded-Proto": "https"})

    location = response.headers.get("location")
    assert location is None or location.startswith(f"http://127.0.0.1:{front.port}/"), location


def test_behind_a_named_balancer_the_service_sees_the_client(fronts: dict[str, Front]) -> None:
    front, probe = fronts["behind_balancer"], uuid.uuid4().hex
    front.get(f"/api/notifications?probe={probe}", {"X-Forwarded-For": "6.6.6.6, 203.0.113.9"})

    line = front.access_line(probe)
    assert line.startswith("203.0.113.9:"), line
    assert "6.6.6.6" not in line


def test_behind_a_tls_balancer_no_redirect_drops_https_or_the_port(
    fronts: dict[str, Front],
) -> None:
    """The issue's case: `GET /api/notifications/` was sent to http://app.example.com/..."""
    response = fronts["behind_balancer"].get(
        "/api/notifications/",
        {
            "Host": "app.example.com:8443",
            "X-Forwarded-For": "203.0.113.9",
            "X-Forwarded-Proto": "https",
        },
    )

    location = response.headers.get("location")
    assert location in (None, "https://app.example.com:8443/api/notifications"), location


def test_the_services_own_security_headers_arrive_once_and_unchanged(
    fronts: dict[str, Front],
) -> None:
    response = fronts["shipped"].get("/api/notifications", {})

    assert response.status_code == 401
    assert response.headers.get_list("content-security-policy") == [NOTHING_POLICY]
    for header, value in {
        "x-content-type-options": "nosniff",
        "x-frame-options": "DENY",
        "referrer-policy": "no-referrer",
    }.items():
        assert response.headers.get_list(header) == [value], header
