"""Every route of the REST API, in-process, on SQLite and PostgreSQL, with a fake broker."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import httpx
import pytest
from support.notifications import FakePublisher, metric, until_metric

from realtime_shared.envelope import Envelope

pytestmark = pytest.mark.component

Auth = Callable[..., dict[str, str]]
BASE = "/api/notifications"


async def create(
    client: httpx.AsyncClient, auth: Auth, user: str = "alice", **fields: object
) -> dict[str, object]:
    body = {"user_id": user, "type": "build.failed", **fields}
    response = await client.post(BASE, json=body, headers=auth("ops", manage=True))
    assert response.status_code == 201, response.text
    created: dict[str, object] = response.json()
    return created


async def test_create_returns_the_notification_and_publishes_created(
    client: httpx.AsyncClient, auth: Auth, publisher: FakePublisher
) -> None:
    body = {
        "user_id": "alice.b",
        "type": "build.failed",
        "title": "Build #42 failed",
        "message": "see the log",
        "severity": "error",
        "action_url": "https://ci.example/42",
        "metadata": {"build": 42, "tags": ["x"]},
    }
    response = await client.post(BASE, json=body, headers=auth("ops", manage=True))

    assert response.status_code == 201
    n = response.json()
    assert uuid.UUID(n["id"])
    assert {k: n[k] for k in body} == body
    assert n["is_read"] is False and n["read_at"] is None
    assert n["created_at"] == n["updated_at"] and n["created_at"].endswith("+00:00")
    [event] = await publisher.wait_for(1)
    assert publisher.published[0].routing_key == "notifications.alice%2Eb"
    assert publisher.published[0].event_id == event.meta["event_id"]
    assert event.stream == "notifications" and event.event == "notification.created"
    assert event.data == {"notification": n, "notification_id": n["id"]}
    assert set(event.meta) == {"event_id", "occurred_at", "seq", "epoch"}
    assert event.meta["seq"] == 1  # alice.b's first event


async def test_defaults_of_a_minimal_notification(client: httpx.AsyncClient, auth: Auth) -> None:
    n = await create(client, auth)
    assert n["severity"] == "info"
    assert n["title"] is None and n["message"] is None and n["action_url"] is None
    assert n["metadata"] == {}


async def test_list_is_newest_first_paginated_and_filters_unread(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    ids = [(await create(client, auth, title=f"n{i}"))["id"] for i in range(5)]
    await create(client, auth, user="bob")
    me = auth("alice")

    everything = (await client.get(BASE, headers=me)).json()
    assert [n["id"] for n in everything] == ids[::-1]
    page = (await client.get(BASE, params={"limit": 2, "offset": 1}, headers=me)).json()
    assert [n["id"] for n in page] == [ids[3], ids[2]]

    await client.post(f"{BASE}/{ids[4]}/read", headers=me)
    unread = (await client.get(BASE, params={"unread": "true"}, headers=me)).json()
    assert [n["id"] for n in unread] == ids[3::-1]
    assert (await client.get(f"{BASE}/unread-count", headers=me)).json() == {"count": 4}


async def test_default_limit_is_25(client: httpx.AsyncClient, auth: Auth) -> None:
    for _ in range(26):
        await create(client, auth)
    assert len((await client.get(BASE, headers=auth("alice"))).json()) == 25


async def test_limit_outside_1_to_100_is_a_validation_error(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    for limit in (0, 101, -1, "many"):
        response = await client.get(BASE, params={"limit": limit}, headers=auth("alice"))
        assert response.status_code == 422
        assert response.json()["success"] is False
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"
        assert "limit" in response.json()["error"]["message"]


async def test_get_one(client: httpx.AsyncClient, auth: Auth) -> None:
    n = await create(client, auth)
    response = await client.get(f"{BASE}/{n['id']}", headers=auth("alice"))
    assert response.status_code == 200
    assert response.json() == n


async def test_read_then_unread_change_state_and_publish_read_then_updated(
    client: httpx.AsyncClient, auth: Auth, publisher: FakePublisher
) -> None:
    n = await create(client, auth)
    me = auth("alice")

    read = (await client.post(f"{BASE}/{n['id']}/read", headers=me)).json()
    assert read["is_read"] is True and read["read_at"] is not None
    assert read["updated_at"] == read["read_at"] != n["updated_at"]
    assert (await client.get(f"{BASE}/unread-count", headers=me)).json() == {"count": 0}

    unread = (await client.post(f"{BASE}/{n['id']}/unread", headers=me)).json()
    assert unread["is_read"] is False and unread["read_at"] is None

    events = await publisher.wait_for(3)
    assert [e.event for e in events] == [
        "notification.created",
        "notification.read",
        "notification.updated",
    ]
    assert events[1].data == {"notification": read, "notification_id": n["id"]}
    assert events[2].data == {"notification": unread, "notification_id": n["id"]}


async def test_delete_removes_it_and_publishes_deleted(
    client: httpx.AsyncClient, auth: Auth, publisher: FakePublisher
) -> None:
    n = await create(client, auth)
    me = auth("alice")

    response = await client.delete(f"{BASE}/{n['id']}", headers=me)

    assert response.status_code == 200 and response.json() == {"deleted": True}
    assert (await client.get(f"{BASE}/{n['id']}", headers=me)).status_code == 404
    assert (await client.delete(f"{BASE}/{n['id']}", headers=me)).status_code == 404
    events = await publisher.wait_for(2)
    assert events[1].event == "notification.deleted"
    assert events[1].data == {"notification_id": n["id"]}
    assert len(publisher.published) == 2  # the failed second delete published nothing


async def test_read_all_marks_only_the_callers_unread_ones(
    client: httpx.AsyncClient, auth: Auth, publisher: FakePublisher
) -> None:
    first = await create(client, auth)
    for _ in range(2):
        await create(client, auth)
    bobs = await create(client, auth, user="bob")
    await client.post(f"{BASE}/{first['id']}/read", headers=auth("alice"))

    response = await client.post(f"{BASE}/read-all", headers=auth("alice"))

    assert response.status_code == 200 and response.json() == {"updated": 2}
    assert (await client.get(f"{BASE}/unread-count", headers=auth("alice"))).json()["count"] == 0
    assert (await client.get(f"{BASE}/{bobs['id']}", headers=auth("bob"))).json()[
        "is_read"
    ] is False
    await publisher.wait_for(6)
    # Order holds per user only: bob's event may come anywhere among alice's.
    alices = [e for e in publisher.published if e.routing_key == "notifications.alice"]
    last = Envelope.from_bytes(alices[-1].body)
    assert last.event == "notification.read_all" and last.data == {"count": 2}


async def test_an_idempotency_key_replays_the_first_result_and_publishes_once(
    client: httpx.AsyncClient, auth: Auth, publisher: FakePublisher
) -> None:
    ops = {**auth("ops", manage=True), "Idempotency-Key": "k-1"}
    first = await client.post(BASE, json={"user_id": "alice", "type": "a"}, headers=ops)
    again = await client.post(BASE, json={"user_id": "alice", "type": "a"}, headers=ops)
    other_body = await client.post(BASE, json={"user_id": "alice", "type": "b"}, headers=ops)

    assert first.status_code == again.status_code == other_body.status_code == 201
    assert first.json() == again.json() == other_body.json()
    assert len((await client.get(BASE, headers=auth("alice"))).json()) == 1

    # Keys are scoped to the caller: another service's "k-1" is a new request.
    other = {**auth("other-service", manage=True), "Idempotency-Key": "k-1"}
    theirs = await client.post(BASE, json={"user_id": "alice", "type": "a"}, headers=other)
    assert theirs.status_code == 201 and theirs.json()["id"] != first.json()["id"]
    await publisher.wait_for(2)
    assert len(publisher.published) == 2


async def test_unknown_or_malformed_ids_are_not_found(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    me = auth("alice")
    for path in (f"{BASE}/{uuid.uuid4()}", f"{BASE}/not-a-uuid", f"{BASE}/%00"):
        response = await client.get(path, headers=me)
        assert response.status_code == 404
        assert response.json() == {
            "success": False,
            "error": {"code": "NOT_FOUND", "message": "no such notification"},
        }
    response = await client.post(f"{BASE}/{uuid.uuid4()}/read", headers=me)
    assert response.status_code == 404


def deep(levels: int) -> object:
    value: object = "bottom"
    for _ in range(levels):
        value = {"d": value}
    return value


BAD_BODIES = [
    ({"type": "x"}, "user_id"),
    ({"user_id": "alice"}, "type"),
    ({"user_id": "", "type": "x"}, "user_id"),
    ({"user_id": "alice", "type": ""}, "type"),
    ({"user_id": "alice", "type": "x", "severity": "fatal"}, "severity"),
    ({"user_id": "alice", "type": "x", "metadata": [1]}, "metadata"),
    ({"user_id": "alice", "type": "x", "colour": "red"}, "colour"),
    ({"user_id": "a" * 250, "type": "x"}, "user_id"),
    ({"user_id": "alice", "type": "x", "title": "nul\x00"}, "title"),
    ({"user_id": "alice", "type": "x", "metadata": {"k": "nul\x00"}}, "metadata"),
    ({"user_id": "alice", "type": "x", "metadata": {"n": 2**64}}, "metadata"),
    ({"user_id": "alice", "type": "x", "metadata": {"deep": deep(40)}}, "metadata"),
]


async def test_bad_fields_are_422_with_the_field_named(
    client: httpx.AsyncClient, auth: Auth, publisher: FakePublisher
) -> None:
    for body, field in BAD_BODIES:
        response = await client.post(BASE, json=body, headers=auth("ops", manage=True))
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "VALIDATION_ERROR" and field in error["message"]
    assert (await client.get(BASE, headers=auth("alice"))).json() == []
    assert publisher.published == []


SAFE_LINKS = [
    "https://ci.example/42?tab=log#L7",
    "http://localhost:8080/x",
    "HTTPS://CI.example/42",
    "/builds/42",
    "/",
    "/search?q=a%20b",
]
UNSAFE_LINKS = [
    "javascript:alert(document.domain)",
    " JavaScript:alert(1)",
    "JAVASCRIPT:alert(1)",
    "java\tscript:alert(1)",
    "\x01javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "vbscript:msgbox(1)",
    "ftp://files.example/x",
    "//evil.example/x",
    "/\\evil.example/x",
    "/\t/evil.example/x",
    " /x",
    "builds/42",
    "https://",
    "https:///",
    "http://[::1",
    "mailto:ops@example.com",
]


async def test_action_url_is_an_http_url_or_a_path_on_the_same_origin(
    client: httpx.AsyncClient, auth: Auth, publisher: FakePublisher
) -> None:
    ops = auth("ops", manage=True)
    for link in UNSAFE_LINKS:
        response = await client.post(
            BASE, json={"user_id": "alice", "type": "x", "action_url": link}, headers=ops
        )
        assert response.status_code == 422, f"{link!r}: {response.text}"
        error = response.json()["error"]
        assert error["code"] == "VALIDATION_ERROR" and "action_url" in error["message"]
    assert (await client.get(BASE, headers=auth("alice"))).json() == []

    for link in SAFE_LINKS:
        n = await create(client, auth, action_url=link)
        assert n["action_url"] == link  # stored and returned as given
    events = await publisher.wait_for(len(SAFE_LINKS))
    assert [e.data["notification"]["action_url"] for e in events] == SAFE_LINKS


async def test_bad_json_is_422(client: httpx.AsyncClient, auth: Auth) -> None:
    headers = {**auth("ops", manage=True), "Content-Type": "application/json"}
    response = await client.post(BASE, content=b'{"user_id": "alice",', headers=headers)
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_a_body_over_the_limit_is_413(client: httpx.AsyncClient, auth: Auth) -> None:
    big = {"user_id": "alice", "type": "x", "metadata": {"blob": "x" * 70_000}}
    response = await client.post(BASE, json=big, headers=auth("ops", manage=True))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"

    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(20):
            yield b"x" * 4096

    chunked = await client.post(BASE, content=chunks(), headers=auth("ops", manage=True))
    assert chunked.status_code == 413


async def test_unknown_routes_and_methods_use_the_error_body(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    missing = await client.get("/api/nothing-here", headers=auth("alice"))
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "NOT_FOUND"
    wrong = await client.put(BASE, headers=auth("alice"))
    assert wrong.status_code == 405 and wrong.json()["success"] is False


async def test_health_readiness_and_metrics(
    client: httpx.AsyncClient, auth: Auth, publisher: FakePublisher
) -> None:
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).status_code == 200
    await create(client, auth)
    await publisher.wait_for(1)

    await until_metric(client, "notifications_outbox_backlog", 0)
    posted = (
        'notifications_http_requests_total{method="POST",route="/api/notifications",status="201"}'
    )
    assert await metric(client, posted) == 1
    assert await metric(client, "notifications_outbox_published_total") == 1

    publisher.down = True
    ready = await client.get("/readyz")
    assert ready.status_code == 503 and "broker" in ready.json()["error"]["message"]


async def test_broker_down_api_keeps_serving_backlog_grows_then_drains_in_order(
    client: httpx.AsyncClient, auth: Auth, publisher: FakePublisher
) -> None:
    publisher.down = True
    ids = [(await create(client, auth, title=f"n{i}"))["id"] for i in range(5)]
    await client.post(f"{BASE}/{ids[0]}/read", headers=auth("alice"))
    assert len((await client.get(BASE, headers=auth("alice"))).json()) == 5
    assert await metric(client, "notifications_outbox_backlog") == 6
    assert (await metric(client, "notifications_outbox_oldest_pending_age_seconds") or 0) > 0
    await until_metric(client, "notifications_outbox_publish_failures_total", 1, at_least=True)

    publisher.down = False
    events = await publisher.wait_for(6)

    assert [e.data["notification_id"] for e in events] == [*ids, ids[0]]
    assert [e.event for e in events][-1] == "notification.read"
    assert len({e.meta["event_id"] for e in events}) == 6
    await until_metric(client, "notifications_outbox_backlog", 0)
    assert len(publisher.published) == 6


async def test_openapi_documents_every_route(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert set(paths) == {
        BASE,
        f"{BASE}/unread-count",
        f"{BASE}/read-all",
        f"{BASE}/{{notification_id}}",
        f"{BASE}/{{notification_id}}/read",
        f"{BASE}/{{notification_id}}/unread",
    }


async def test_asyncapi_describes_every_event(client: httpx.AsyncClient) -> None:
    document = (await client.get("/asyncapi")).text
    for event in ("created", "read", "updated", "deleted", "read_all"):
        assert f"notification.{event}" in document


async def test_concurrent_retries_with_one_key_create_one_notification(
    client: httpx.AsyncClient, auth: Auth, publisher: FakePublisher
) -> None:
    headers = {**auth("ops", manage=True), "Idempotency-Key": "same"}
    body = {"user_id": "alice", "type": "t"}
    responses = await asyncio.gather(
        *(client.post(BASE, json=body, headers=headers) for _ in range(5))
    )

    assert {r.status_code for r in responses} == {201}
    assert len({r.json()["id"] for r in responses}) == 1
    assert len((await client.get(BASE, headers=auth("alice"))).json()) == 1
    await until_metric(client, "notifications_outbox_backlog", 0)
    assert len(publisher.published) == 1


async def test_a_burst_of_concurrent_writes_all_commit_and_each_publishes_once(
    client: httpx.AsyncClient, auth: Auth, publisher: FakePublisher
) -> None:
    # On SQLite the writes queue for its one writer thread: none may fail as "locked".
    created = await asyncio.gather(*(create(client, auth, title=str(i)) for i in range(60)))
    ids = [str(n["id"]) for n in created]
    changed = await asyncio.gather(
        *(client.post(f"{BASE}/{i}/read", headers=auth("alice")) for i in ids[:30])
    )

    assert {r.status_code for r in changed} == {200}
    unread = await client.get(f"{BASE}/unread-count", headers=auth("alice"))
    assert unread.json() == {"count": 30}
    events = await publisher.wait_for(90)
    assert sorted(e.data["notification_id"] for e in events) == sorted(ids + ids[:30])
    read_events = [e for e in events if e.event == "notification.read"]
    assert {e.data["notification_id"] for e in read_events} == set(ids[:30])


async def test_responses_carry_browser_security_headers(
    client: httpx.AsyncClient, auth: Auth
) -> None:
    for response in (
        await client.get(BASE, headers=auth("alice")),
        await client.get(BASE),  # an error body too
        await client.get("/healthz"),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["referrer-policy"] == "no-referrer"
        assert response.headers["content-security-policy"].startswith("default-src 'none'")


async def test_a_trailing_slash_is_not_redirected(client: httpx.AsyncClient, auth: Auth) -> None:
    # A redirect is built from Host and scheme: behind proxies it pointed at http://.
    response = await client.get(f"{BASE}/", headers=auth("alice"))
    assert response.status_code == 404
    assert "location" not in response.headers
