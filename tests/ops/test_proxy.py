"""deploy/nginx/nginx.conf under Debian's nginx: `nginx -t`, then real traffic through it.

Two small stand-in backends play the edge and the notifications service; each answers with
what it received (path, headers), so the tests see exactly what the proxy forwards, and
sets browser security headers of its own, as the services do, to see what comes back.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from support.ops import (
    ProxyFiles,
    access_log_lines,
    free_port,
    nginx_command,
    proxy_test_copy,
    require_tool,
    running_nginx,
)
from websockets.asyncio.client import connect
from websockets.typing import Origin

from realtime_shared.headers import NOTHING_POLICY

pytestmark = pytest.mark.integration

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2VjcmV0LXNpZ25hdHVyZQ"
# What a stand-in backend sets on its responses: a CSP unlike nginx's own, to tell them apart.
SERVICE_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'",
}
# What nginx must add to the responses it makes itself: the set the services send.
OWN_HEADERS = {
    "x-content-type-options": "nosniff",
    "content-security-policy": NOTHING_POLICY,
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
# Sent by a client that pretends to be someone else, or to have come over TLS elsewhere.
FORGED = {
    "X-Forwarded-For": "6.6.6.6",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Port": "443",
    "Forwarded": "for=6.6.6.6;proto=https;host=evil.example",
}


def backend(name: str) -> Starlette:
    def seen(scope_path: str, headers: dict[str, str], query: str) -> dict[str, object]:
        return {"backend": name, "path": scope_path, "headers": headers, "query": query}

    async def http(request: Request) -> JSONResponse:
        body = seen(request.url.path, dict(request.headers), request.url.query)
        return JSONResponse(body, headers=SERVICE_HEADERS)

    async def ws(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_json(
            seen(websocket.url.path, dict(websocket.headers), websocket.url.query)
        )
        async for text in websocket.iter_text():
            await websocket.send_text(f"echo:{text}")

    return Starlette(
        routes=[
            WebSocketRoute("/{path:path}", ws),
            Route("/{path:path}", http, methods=["GET", "POST"]),
        ]
    )


@dataclass
class Proxy:
    port: int
    files: ProxyFiles

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def logs(self) -> str:
        return "".join(
            path.read_text()
            for path in (self.files.access_log, self.files.error_log)
            if path.exists()
        )


async def serve(app: Starlette) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    port = free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_config=None, ws="websockets-sansio", lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    deadline = asyncio.get_running_loop().time() + 10
    while not server.started:
        assert asyncio.get_running_loop().time() < deadline, "backend did not start"
        assert not task.done(), "backend exited"
        await asyncio.sleep(0.01)
    return server, task, port


@pytest.fixture
def nginx() -> str:
    return require_tool("nginx")


def test_nginx_accepts_the_shipped_config(nginx: str, tmp_path: Path) -> None:
    # The compose service names stay: nginx resolves them per request through Docker's DNS,
    # so `-t` passes here where `edge` and `notifications` do not resolve.
    files = proxy_test_copy(tmp_path, listen=free_port())
    result = subprocess.run(
        nginx_command(nginx, files, "-t"), capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@asynccontextmanager
async def proxy_to_backends(
    nginx: str, tmp_path: Path, trusted_proxy: str | None = None
) -> AsyncIterator[Proxy]:
    edge_server, edge_task, edge_port = await serve(backend("edge"))
    api_server, api_task, api_port = await serve(backend("notifications"))
    port = free_port()
    files = proxy_test_copy(
        tmp_path,
        listen=port,
        edge=f"127.0.0.1:{edge_port}",
        api=f"127.0.0.1:{api_port}",
        trusted_proxy=trusted_proxy,
    )
    try:
        with running_nginx(nginx, files, port):
            yield Proxy(port, files)
    finally:
        for server, task in ((edge_server, edge_task), (api_server, api_task)):
            server.should_exit = True
            await task


@pytest.fixture
async def proxy(nginx: str, tmp_path: Path) -> AsyncIterator[Proxy]:
    """The shipped config: no load balancer in front, the peer is the client."""
    async with proxy_to_backends(nginx, tmp_path) as running:
        yield running


@pytest.fixture
async def behind_balancer(nginx: str, tmp_path: Path) -> AsyncIterator[Proxy]:
    """The config as docs/security.md has an operator name a load balancer: the tests' own
    address, so the test client plays the balancer."""
    async with proxy_to_backends(nginx, tmp_path, trusted_proxy="127.0.0.1") as running:
        yield running


@pytest.fixture
def dead_api(nginx: str, tmp_path: Path) -> Iterator[Proxy]:
    """The proxy with its backends on ports where nothing listens."""
    port = free_port()
    files = proxy_test_copy(
        tmp_path, listen=port, edge=f"127.0.0.1:{free_port()}", api=f"127.0.0.1:{free_port()}"
    )
    with running_nginx(nginx, files, port):
        yield Proxy(port, files)


@pytest.mark.parametrize("path", ["/ws", "/ws/notifications"])
async def test_websocket_upgrades_through_to_an_edge(proxy: Proxy, path: str) -> None:
    origin = Origin(f"http://127.0.0.1:{proxy.port}")
    async with connect(f"{proxy.ws}{path}?token={TOKEN}", origin=origin) as ws:
        seen = json.loads(await ws.recv())
        await ws.send("ping")
        echoed = await ws.recv()

    assert seen["backend"] == "edge"
    assert seen["path"] == path
    assert seen["query"] == f"token={TOKEN}"
    # The edge's same-origin rule compares the Origin's host with the request's Host.
    assert seen["headers"]["host"] == f"127.0.0.1:{proxy.port}"
    assert seen["headers"]["origin"] == origin
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert seen["headers"]["x-request-id"]
    assert echoed == "echo:ping"


async def test_api_goes_to_notifications_and_the_page_to_the_edge(proxy: Proxy) -> None:
    async with httpx.AsyncClient(base_url=proxy.http) as client:
        api = await client.get(
            "/api/notifications?limit=5", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        page = await client.get("/")
        script = await client.get("/static/realtime.js")
        demo = await client.get("/demo/config.json")
        health = await client.get("/healthz")

    assert api.json()["backend"] == "notifications"
    assert api.json()["path"] == "/api/notifications"
    assert api.json()["query"] == "limit=5"
    assert api.json()["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert api.json()["headers"]["host"] == f"127.0.0.1:{proxy.port}"
    assert api.json()["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert "upgrade" not in api.json()["headers"]
    assert (page.json()["backend"], page.json()["path"]) == ("edge", "/")
    assert (script.json()["backend"], script.json()["path"]) == ("edge", "/static/realtime.js")
    assert (demo.json()["backend"], demo.json()["path"]) == ("edge", "/demo/config.json")
    assert (health.status_code, health.text) == (200, "ok\n")


@pytest.mark.parametrize("path", ["/metrics", "/readyz", "/admin/connections", "/wsx", "/apix"])
async def test_internal_endpoints_are_not_published(proxy: Proxy, path: str) -> None:
    async with httpx.AsyncClient(base_url=proxy.http) as client:
        response = await client.get(path)

    assert response.status_code == 404
    assert response.json() == {
        "success": False,
        "error": {"code": "NOT_FOUND", "message": "no such route"},
    }


async def test_tokens_never_reach_the_proxy_logs(proxy: Proxy) -> None:
    async with connect(f"{proxy.ws}/ws?token={TOKEN}") as ws:
        await ws.recv()
    async with httpx.AsyncClient(base_url=proxy.http) as client:
        await client.get(f"/api/notifications?access_token={TOKEN}")

    logged = await asyncio.to_thread(access_log_lines, proxy.files, 2)
    lines = [json.loads(line) for line in logged]

    assert TOKEN not in proxy.logs()
    # nginx logs a WebSocket when it ends, which may come after the next request's line.
    assert sorted((line["path"], line["status"]) for line in lines) == [
        ("/api/notifications", 200),
        ("/ws", 101),
    ]


def test_a_dead_backend_is_a_json_503_and_leaks_no_token(dead_api: Proxy) -> None:
    response = httpx.get(f"{dead_api.http}/api/notifications?token={TOKEN}", timeout=10)

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "UNAVAILABLE"
    assert_own_headers(response)
    line = json.loads(access_log_lines(dead_api.files, 1)[-1])
    assert (line["path"], line["status"], line["upstream_status"]) == (
        "/api/notifications",
        503,
        "502",
    )
    assert TOKEN not in dead_api.logs()


def forwarded(seen: dict[str, Any]) -> dict[str, str | None]:
    headers: dict[str, str] = seen["headers"]
    names = ("host", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host")
    return {name: headers.get(name) for name in (*names, "x-forwarded-port", "forwarded")}


@pytest.mark.parametrize("path", ["/api/notifications", "/", "/static/realtime.js"])
async def test_a_client_cannot_tell_a_service_who_it_is(proxy: Proxy, path: str) -> None:
    """uvicorn believes X-Forwarded-For/-Proto from the proxy: nginx sends only what it saw."""
    async with httpx.AsyncClient(base_url=proxy.http) as client:
        response = await client.get(path, headers=FORGED)

    assert forwarded(response.json()) == {
        "host": f"127.0.0.1:{proxy.port}",
        "x-forwarded-for": "127.0.0.1",
        "x-forwarded-proto": "http",
        "x-forwarded-host": None,
        "x-forwarded-port": None,
        "forwarded": None,
    }


async def test_a_websocket_client_cannot_forge_its_address_either(proxy: Proxy) -> None:
    async with connect(f"{proxy.ws}/ws?token={TOKEN}", additional_headers=FORGED) as ws:
        seen = json.loads(await ws.recv())

    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert seen["headers"]["x-forwarded-proto"] == "http"


async def test_behind_a_named_load_balancer_the_client_and_scheme_are_its(
    behind_balancer: Proxy,
) -> None:
    """A TLS balancer on :8443 names the client and the scheme; the services get both."""
    async with httpx.AsyncClient(base_url=behind_balancer.http) as client:
        response = await client.get(
            "/api/notifications",
            headers={
                "Host": "app.example.com:8443",
                # The left-most entry is whatever the client wrote; the balancer appended
                # the address it saw, and that is the one that counts.
                "X-Forwarded-For": "6.6.6.6, 203.0.113.9",
                "X-Forwarded-Proto": "https",
            },
        )

    assert forwarded(response.json()) == {
        "host": "app.example.com:8443",
        "x-forwarded-for": "203.0.113.9",
        "x-forwarded-proto": "https",
        "x-forwarded-host": None,
        "x-forwarded-port": None,
        "forwarded": None,
    }


async def test_a_balancer_that_rewrites_host_passes_the_original_on(
    behind_balancer: Proxy,
) -> None:
    async with httpx.AsyncClient(base_url=behind_balancer.http) as client:
        response = await client.get(
            "/api/notifications",
            headers={
                "Host": "10.0.0.5:8000",
                "X-Forwarded-For": "203.0.113.9",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Host": "app.example.com",
            },
        )

    assert response.json()["headers"]["host"] == "app.example.com"


def assert_own_headers(response: httpx.Response) -> None:
    for header, value in OWN_HEADERS.items():
        assert response.headers.get_list(header) == [value], header
    # TLS does not end here: HSTS is the job of whatever terminates it.
    assert "strict-transport-security" not in response.headers


async def test_nginx_own_responses_carry_the_browser_security_headers(proxy: Proxy) -> None:
    async with httpx.AsyncClient(base_url=proxy.http) as client:
        health = await client.get("/healthz")
        missing = await client.get("/metrics")
        too_large = await client.post("/api/notifications", content=b"x" * (1024 * 1024 + 1))

    assert [r.status_code for r in (health, missing, too_large)] == [200, 404, 413]
    assert too_large.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"
    for response in (health, missing, too_large):
        assert_own_headers(response)


@pytest.mark.parametrize("path", ["/api/notifications", "/", "/static/realtime.js"])
async def test_proxied_responses_keep_the_services_headers_unchanged(
    proxy: Proxy, path: str
) -> None:
    async with httpx.AsyncClient(base_url=proxy.http) as client:
        response = await client.get(path)

    assert response.status_code == 200
    for header, value in SERVICE_HEADERS.items():
        assert response.headers.get_list(header) == [value], header
    # Nothing of nginx's own set is added to what a service answers.
    assert "x-frame-options" not in response.headers
    assert "referrer-policy" not in response.headers
    assert "strict-transport-security" not in response.headers
