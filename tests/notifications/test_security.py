"""Every route refuses missing, expired or forged tokens; owners only; create needs a permission."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import jwt
import pytest
from support.notifications import FakePublisher, make_settings, running_app

from realtime_notifications.app import create_app
from realtime_shared.auth import KeyConfigError
from realtime_shared.settings import DEV_JWT_SECRET

pytestmark = pytest.mark.component

Auth = Callable[..., dict[str, str]]
BASE = "/api/notifications"
ID = "{id}"

ROUTES = [
    ("GET", BASE, None),
    ("GET", f"{BASE}/unread-count", None),
    ("GET", f"{BASE}/{ID}", None),
    ("POST", BASE, {"user_id": "alice", "type": "x"}),
    ("POST", f"{BASE}/{ID}/read", None),
    ("POST", f"{BASE}/{ID}/unread", None),
    ("DELETE", f"{BASE}/{ID}", None),
    ("POST", f"{BASE}/read-all", None),
]
ROUTE_IDS = [f"{method} {path}" for method, path, _ in ROUTES]
PER_ID = [r for r in ROUTES if ID in r[1]]


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def expired() -> str:
    now = int(time.time())
    claims = {"sub": "alice", "exp": now - 10, "permissions": ["notification.manage"]}
    return jwt.encode(claims, DEV_JWT_SECRET, algorithm="HS256")


def forged() -> str:
    claims = {"sub": "alice", "exp": int(time.time()) + 60, "permissions": ["notification.manage"]}
    return jwt.encode(claims, "another-secret-that-is-long-enough-32b", algorithm="HS256")


def valid() -> str:
    return jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, DEV_JWT_SECRET)


def unsigned() -> str:
    claims = {"sub": "alice", "exp": int(time.time()) + 60}
    return jwt.encode(claims, None, algorithm="none")


@pytest.fixture
async def alices(client: httpx.AsyncClient, auth: Auth) -> str:
    response = await client.post(
        BASE, json={"user_id": "alice", "type": "secret"}, headers=auth("ops", manage=True)
    )
    notification_id: str = response.json()["id"]
    return notification_id


BAD_CREDENTIALS = {
    "none": {},
    "empty": {"Authorization": "Bearer"},
    "basic": {"Authorization": "Basic YWxpY2U6cHc="},
    "garbage": bearer("not-a-jwt"),
    "expired": bearer(expired()),
    "forged": bearer(forged()),
    "alg-none": bearer(unsigned()),
}


@pytest.mark.parametrize(("method", "path", "body"), ROUTES, ids=ROUTE_IDS)
async def test_every_route_refuses_without_a_valid_token(
    client: httpx.AsyncClient,
    alices: str,
    publisher: FakePublisher,
    method: str,
    path: str,
    body: object,
) -> None:
    for name, headers in BAD_CREDENTIALS.items():
        response = await client.request(
            method, path.replace(ID, alices), json=body, headers=headers
        )
        assert response.status_code == 401, name
        assert response.json()["success"] is False
        assert response.json()["error"]["code"] == "UNAUTHORIZED"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    await publisher.wait_for(1)
    assert len(publisher.published) == 1  # only the fixture's "created"
    assert (await client.get(f"{BASE}/unread-count", headers=bearer(valid()))).json()["count"] == 1


async def test_an_expired_token_says_so(client: httpx.AsyncClient) -> None:
    response = await client.get(BASE, headers=bearer(expired()))
    assert "expired" in response.json()["error"]["message"]


WRITES = [r for r in ROUTES if r[0] != "GET"]
UNPARSEABLE = {
    "not JSON": b"{not json",
    "not UTF-8": b'{"user_id": "\xc3\x28"}',
    "wrong shape": b'{"user_id": 1}',
}


@pytest.mark.parametrize(
    ("method", "path", "_body"), WRITES, ids=[f"{m} {p}" for m, p, _ in WRITES]
)
async def test_without_a_valid_token_a_bad_body_is_401_not_422(
    client: httpx.AsyncClient, alices: str, method: str, path: str, _body: object
) -> None:
    """Authentication comes first: a caller without a token learns nothing about bodies."""
    for credentials in ("none", "garbage", "expired"):
        for name, content in UNPARSEABLE.items():
            headers = {**BAD_CREDENTIALS[credentials], "Content-Type": "application/json"}
            response = await client.request(
                method, path.replace(ID, alices), content=content, headers=headers
            )
            assert response.status_code == 401, f"{credentials} token, {name}: {response.text}"
            assert response.json()["error"]["code"] == "UNAUTHORIZED"


@pytest.mark.parametrize(("method", "path", "body"), PER_ID, ids=[r[1] for r in PER_ID])
async def test_another_users_notification_is_not_found(
    client: httpx.AsyncClient, auth: Auth, alices: str, method: str, path: str, body: object
) -> None:
    # Even a manager cannot read or change someone else's notification through the owner API.
    for intruder in (auth("mallory"), auth("ops", manage=True)):
        response = await client.request(method, path.replace(ID, alices), headers=intruder)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "NOT_FOUND"
    mine = (await client.get(f"{BASE}/{alices}", headers=auth("alice"))).json()
    assert mine["is_read"] is False


async def test_collection_routes_only_see_the_callers_own(
    client: httpx.AsyncClient, auth: Auth, alices: str
) -> None:
    mallory = auth("mallory")
    assert (await client.get(BASE, headers=mallory)).json() == []
    assert (await client.get(f"{BASE}/unread-count", headers=mallory)).json() == {"count": 0}
    assert (await client.post(f"{BASE}/read-all", headers=mallory)).json() == {"updated": 0}
    assert (await client.get(f"{BASE}/unread-count", headers=auth("alice"))).json() == {"count": 1}


@pytest.mark.parametrize("recipient", ["alice", "bob"])
async def test_creating_needs_notification_manage_even_for_oneself(
    client: httpx.AsyncClient, auth: Auth, publisher: FakePublisher, recipient: str
) -> None:
    response = await client.post(
        BASE, json={"user_id": recipient, "type": "x"}, headers=auth("alice")
    )
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "FORBIDDEN"
    assert (await client.get(BASE, headers=auth(recipient))).json() == []
    assert publisher.published == []


async def test_cors_allows_configured_and_dev_loopback_origins_only(
    client: httpx.AsyncClient,
) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    ok = await client.options(BASE, headers={**preflight, "Origin": "http://localhost:51234"})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "http://localhost:51234"
    evil = await client.options(BASE, headers={**preflight, "Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in evil.headers


async def test_outside_dev_mode_only_configured_origins_pass_cors(database_url: str) -> None:
    settings = make_settings(
        database_url,
        dev=False,
        jwt_secret="a-production-secret-of-at-least-32-bytes",
        notifications_cors_origins="https://app.example, https://admin.example:8443",
    )
    preflight = {
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    async with running_app(settings, FakePublisher()) as client:
        for origin in ("https://app.example", "https://admin.example:8443"):
            ok = await client.options(BASE, headers={**preflight, "Origin": origin})
            assert ok.headers["access-control-allow-origin"] == origin
        for origin in ("http://localhost:5173", "https://app.example:444"):
            no = await client.options(BASE, headers={**preflight, "Origin": origin})
            assert "access-control-allow-origin" not in no.headers


def test_without_a_key_or_dev_mode_the_service_refuses_to_start(tmp_path: Path) -> None:
    settings = make_settings(f"sqlite+aiosqlite:///{tmp_path}/n.db", dev=False, jwt_secret=None)
    with pytest.raises(KeyConfigError, match="JWT_SECRET"):
        create_app(settings)


async def test_during_a_key_rotation_tokens_of_the_previous_secret_still_work(
    tmp_path: Path,
) -> None:
    new, old = secrets.token_hex(32), secrets.token_hex(32)
    settings = make_settings(
        f"sqlite+aiosqlite:///{tmp_path}/n.db",
        dev=False,
        jwt_secret=new,
        jwt_previous_secrets=old,
    )
    now = int(time.time())

    def token(key: str) -> str:
        return jwt.encode({"sub": "alice", "exp": now + 60}, key, algorithm="HS256")

    async with running_app(settings, FakePublisher()) as client:
        for key in (new, old):
            assert (await client.get(BASE, headers=bearer(token(key)))).status_code == 200
        refused = await client.get(BASE, headers=bearer(token(secrets.token_hex(32))))
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "UNAUTHORIZED"
