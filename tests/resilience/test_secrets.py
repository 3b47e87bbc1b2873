"""Scenario 8, secrets: one recognisable token, used every way a client can, appears nowhere.

A real edge and a real notifications service on one test exchange, both at DEBUG so every
logger speaks. One user's token and three recognisable variants of it (expired, signature
tampered, signed with another key) go through WebSocket handshakes (`?token=`,
`?access_token=`, `Authorization: Bearer`), `refresh` frames, REST calls (200, 401, 404,
422), a REST body field, a URL path and query, and a `publish` frame's data on `chat` with
no backend. Then neither any token, nor 16 characters of its signature or its payload, may
appear in either service's log, any HTTP error body or WebSocket frame the services sent,
or /metrics. (What a backend would receive of a client's own publish is not searched.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from support.edge import EdgeProcess, connected, recv_event, running_edge
from support.notifications import start_process, stop_process, wait_ready_sync

from realtime_shared.auth import issue_token

pytestmark = [pytest.mark.integration, pytest.mark.resilience, pytest.mark.timeout(60)]

MakeToken = Callable[..., str]
USER = "alice"
OTHER_KEY = "another-key-nobody-configured-" * 2
FRAGMENT = 16
"""Characters of a token's payload or signature that count as a leak: 96 bits, never chance."""


@dataclass
class Seen:
    """Everything the services said back, to be searched for the secrets."""

    bodies: list[str] = field(default_factory=list)
    """HTTP error bodies (REST and refused handshakes)."""
    frames: list[str] = field(default_factory=list)
    """Every WebSocket frame received."""


def variants(make_token: MakeToken) -> dict[str, str]:
    valid = make_token(USER, ttl=300)
    head, payload, signature = valid.split(".")
    return {
        "valid": valid,
        "expired": make_token(USER, ttl=-60),
        "tampered": f"{head}.{payload}.{signature[::-1]}",
        "other key": issue_token(USER, OTHER_KEY, ttl=300),
    }


def needles(tokens: dict[str, str]) -> Iterator[tuple[str, list[str]]]:
    """(what, texts) for each token, its payload and its signature. A part leaks if any
    FRAGMENT characters of it appear: a log that shortens long values (keeping their ends)
    must not keep half a signature either. The header is the same in every token: not searched."""
    for name, token in tokens.items():
        yield f"{name} token", [token]
        _, payload, signature = token.split(".")
        for part, text in (("payload", payload), ("signature", signature)):
            pieces = [text[i : i + FRAGMENT] for i in range(len(text) - FRAGMENT + 1)]
            yield f"{name} {part}", pieces


@contextlib.asynccontextmanager
async def notifications(
    amqp_url: str, exchange: str, tmp_path: Path
) -> AsyncIterator[tuple[str, Path]]:
    """The real service on SQLite, every logger at DEBUG; its base URL and its log file."""
    log_path = tmp_path / "notifications.log"
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'notifications.db'}"
    process, base_url = start_process(
        amqp_url, exchange, database_url, log_path, log_level="debug", LOG_LEVEL="DEBUG"
    )
    try:
        await asyncio.to_thread(wait_ready_sync, process, base_url, log_path)
        yield base_url, log_path
    finally:
        await asyncio.to_thread(stop_process, process)


async def handshakes(edge: EdgeProcess, tokens: dict[str, str], seen: Seen) -> int:
    """Each token by query `token`, query `access_token` and Bearer header; the number refused."""
    refused = 0
    for name, token in tokens.items():
        ways: list[tuple[str, dict[str, str]]] = [
            (edge.ws_url("/ws", token=token), {}),
            (edge.ws_url("/ws", access_token=token), {}),
            (edge.ws_url("/ws"), {"Authorization": f"Bearer {token}"}),
        ]
        for url, headers in ways:
            if name == "valid":
                ws = await connected(url, additional_headers=headers)
                await ws.close()
                continue
            with pytest.raises(websockets.InvalidStatus) as caught:
                await websockets.connect(url, additional_headers=headers)
            assert caught.value.response.status_code == 401, name
            seen.bodies.append(caught.value.response.body.decode(errors="replace"))
            refused += 1
    return refused


async def frames(edge: EdgeProcess, tokens: dict[str, str], seen: Seen) -> None:
    """`refresh` with each token, then a `publish` carrying the token on `chat` (no backend)."""
    async with await connected(edge.ws_url("/ws", token=tokens["valid"], streams="chat")) as ws:
        for name, token in tokens.items():
            await ws.send(orjson.dumps({"action": "refresh", "token": token}).decode())
            raw = await asyncio.wait_for(ws.recv(), 5)
            seen.frames.append(str(raw))
            frame = orjson.loads(raw)
            expected = "refreshed" if name == "valid" else "error"
            assert frame["event"] == expected, (name, frame)
        publish = {
            "action": "publish",
            "stream": "chat",
            "event": "message.send",
            "data": {"text": tokens["valid"], "token": tokens["valid"]},
            "id": "c-1",
        }
        await ws.send(orjson.dumps(publish).decode())
        error = await recv_event(ws, "error")
        seen.frames.append(orjson.dumps(error).decode())
        data = error["data"]
        assert isinstance(data, dict), error
        assert (data["code"], data["id"]) == ("NO_HANDLER", "c-1"), error


async def rest(base_url: str, tokens: dict[str, str], admin: str, seen: Seen) -> None:
    """Accepted, 401, 404 for another user's id, 422 bodies, a token in a field, path and query."""
    api = f"{base_url}/api/notifications"
    bearer = {name: {"Authorization": f"Bearer {t}"} for name, t in tokens.items()}
    async with httpx.AsyncClient(timeout=10) as client:

        async def call(status: int, method: str, url: str, **kwargs: Any) -> None:
            response = await client.request(method, url, **kwargs)
            assert response.status_code == status, (method, url, response.text)
            if status >= 400:
                seen.bodies.append(response.text)
                seen.bodies.append(str(response.headers))

        created = await client.post(
            api,
            json={"user_id": "bob", "type": "secret-test", "title": "for bob"},
            headers={"Authorization": f"Bearer {admin}"},
        )
        assert created.status_code == 201, created.text
        bobs = created.json()["id"]

        await call(200, "GET", api, headers=bearer["valid"])
        await call(200, "GET", f"{api}/unread-count", headers=bearer["valid"])
        for name in ("expired", "tampered", "other key"):
            await call(401, "GET", api, headers=bearer[name])
            await call(401, "POST", f"{api}/read-all", headers=bearer[name])
        await call(404, "GET", f"{api}/{bobs}", headers=bearer["valid"])
        await call(404, "POST", f"{api}/{bobs}/read", headers=bearer["valid"])
        await call(422, "GET", f"{api}?limit=0", headers=bearer["valid"])
        token = tokens["valid"]
        # The token where no token belongs: each of these is refused.
        await call(404, "GET", f"{api}/{token}", headers=bearer["valid"])
        await call(404, "DELETE", f"{api}/{token}", headers=bearer["valid"])
        await call(422, "GET", f"{api}?limit={token}", headers=bearer["valid"])
        await call(422, "GET", f"{api}?unread={token}", headers=bearer["valid"])
        admin_header = {"Authorization": f"Bearer {admin}"}
        for body in (
            {"user_id": USER, "type": token, "title": "x", "severity": token},
            {"user_id": USER, "type": "x", "title": {"token": token}},
            {"user_id": [token], "type": "x", "title": "x"},
        ):
            await call(422, "POST", api, json=body, headers=admin_header)
        await call(422, "POST", api, content=f'{{"title": "{token}"', headers=admin_header)
        # A token in the body and a bad one in the header: the 401 wins, saying nothing of either.
        await call(401, "POST", api, json={"title": token}, headers=bearer["tampered"])


async def test_no_token_appears_in_logs_error_bodies_frames_or_metrics(
    amqp_url: str, exchange: str, make_token: MakeToken, tmp_path: Path
) -> None:
    tokens = variants(make_token)
    admin = make_token("secret-admin", permissions=["notification.manage"], ttl=300)
    seen = Seen()
    async with (
        notifications(amqp_url, exchange, tmp_path) as (base_url, log_path),
        running_edge(
            amqp_url, exchange, LOG_LEVEL="DEBUG", REALTIME_INBOUND_EXCHANGE=f"{exchange}.inbound"
        ) as edge,
    ):
        refused = await handshakes(edge, tokens, seen)
        await frames(edge, tokens, seen)
        await rest(base_url, tokens, admin, seen)
        async with httpx.AsyncClient(timeout=10) as client:
            metrics = {
                "edge /metrics": (await client.get(f"{edge.base_url}/metrics")).text,
                "notifications /metrics": (await client.get(f"{base_url}/metrics")).text,
            }
        edge_log = edge.log_text()
    service_log = log_path.read_text(errors="replace")

    # The logs really are at DEBUG and saw the traffic: an empty log would prove nothing.
    assert "DEBUG" in edge_log, edge_log[-2000:]
    assert "DEBUG" in service_log, service_log[-2000:]
    assert refused == 9
    outputs = {
        "edge log": edge_log,
        "notifications log": service_log,
        **{f"HTTP error body {i}": body for i, body in enumerate(seen.bodies)},
        **{f"WebSocket frame {i}": frame for i, frame in enumerate(seen.frames)},
        **metrics,
    }
    secrets = [*needles(tokens), *needles({"admin": admin})]
    leaks = [
        f"{what} in {where}: {line[:300]!r}"
        for where, text in outputs.items()
        for line in text.splitlines()
        for what, pieces in secrets
        if any(piece in line for piece in pieces)
    ]
    lines = len(edge_log.splitlines()) + len(service_log.splitlines())
    print(
        f"log lines scanned: {lines}; error bodies: {len(seen.bodies)}; frames: {len(seen.frames)}"
    )
    assert not leaks, "\n".join(leaks)
