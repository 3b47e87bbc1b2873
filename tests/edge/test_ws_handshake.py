"""What a client sees before the upgrade, and the HTTP endpoints beside /ws."""

import secrets
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import websockets
from support.edge import EdgeProcess, recv_frame, running_edge

from realtime_shared.auth import issue_token

pytestmark = pytest.mark.integration

MakeToken = Callable[..., str]


@pytest.fixture
async def edge(amqp_url: str, exchange: str) -> AsyncIterator[EdgeProcess]:
    async with running_edge(
        amqp_url, exchange, EDGE_ALLOWED_ORIGINS="https://app.example.com"
    ) as process:
        yield process


async def refused(url: str, **kwargs: object) -> tuple[int, dict[str, object]]:
    with pytest.raises(websockets.InvalidStatus) as info:
        async with websockets.connect(url, **kwargs):  # type: ignore[arg-type]
            pass
    response = info.value.response
    import orjson

    return response.status_code, orjson.loads(response.body or b"{}")


async def test_refusals_carry_the_contract_status_and_error_body(
    edge: EdgeProcess, make_token: MakeToken
) -> None:
    good = make_token("alice")
    cases = [
        (edge.ws_url(), {}, 401, "UNAUTHORIZED"),
        (edge.ws_url(token="not-a-jwt"), {}, 401, "UNAUTHORIZED"),
        (edge.ws_url(token=make_token("alice", ttl=-5)), {}, 401, "UNAUTHORIZED"),
        (edge.ws_url("/ws/nope", token=good), {}, 404, "NOT_FOUND"),
        (edge.ws_url("/ws/system", token=good), {}, 404, "NOT_FOUND"),
        (edge.ws_url(token=make_token("a", streams=["chat"])), {}, 403, "FORBIDDEN"),
        (edge.ws_url(token=good), {"origin": "https://evil.example"}, 403, "FORBIDDEN"),
        # origin comes first: even without a token the answer is 403
        (edge.ws_url(), {"origin": "https://evil.example"}, 403, "FORBIDDEN"),
    ]
    for url, kwargs, status, code in cases:
        got_status, body = await refused(url, **kwargs)
        assert (got_status, body["success"], body["error"]["code"]) == (status, False, code), url  # type: ignore[index]
        assert body["error"]["message"]  # type: ignore[index]
    assert await edge.metric("edge_auth_failures_total", 'reason="missing"') >= 1
    assert await edge.metric("edge_auth_failures_total", 'reason="expired"') == 1


async def test_tokens_from_every_source_and_allowed_origins_connect(
    edge: EdgeProcess, make_token: MakeToken
) -> None:
    token = make_token("alice", streams=["chat", "notifications"])
    attempts = [
        (edge.ws_url("/ws/chat", token=token), {}),
        (edge.ws_url("/ws", access_token=token, stream="chat"), {}),
        (
            edge.ws_url(streams="chat,notifications"),
            {"additional_headers": {"Authorization": f"Bearer {token}"}},
        ),
        (edge.ws_url(token=token), {"origin": "https://app.example.com"}),
        (edge.ws_url(token=token), {"origin": "http://localhost:3000"}),
    ]
    for url, kwargs in attempts:
        async with websockets.connect(url, **kwargs) as ws:  # type: ignore[arg-type]
            frame = await recv_frame(ws)
            assert frame["event"] == "connected"
            assert frame["data"]["user_id"] == "alice"  # type: ignore[index]


async def test_health_ready_metrics_and_admin(edge: EdgeProcess, make_token: MakeToken) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/readyz")).json() == {"status": "ready"}
        assert "edge_connections " in (await http.get("/metrics")).text

        assert (await http.get("/admin/connections")).status_code == 401
        plain = {"Authorization": f"Bearer {make_token('alice')}"}
        denied = await http.get("/admin/connections", headers=plain)
        assert denied.status_code == 403
        assert denied.json()["error"]["code"] == "FORBIDDEN"

        async with (
            websockets.connect(
                edge.ws_url(token=make_token("alice"), streams="notifications,chat")
            ) as a,
            websockets.connect(edge.ws_url(token=make_token("alice"))) as b,
            websockets.connect(edge.ws_url(token=make_token("bob"))) as c,
        ):
            for ws in (a, b, c):
                assert (await recv_frame(ws))["event"] == "connected"
            admin = {
                "Authorization": f"Bearer {make_token('root', permissions=['realtime.admin'])}"
            }
            summary = (await http.get("/admin/connections", headers=admin)).json()
        assert summary == {
            "connections": 3,
            "users": 2,
            "streams": {
                "notifications": {"connections": 3, "users": 2},
                "chat": {"connections": 1, "users": 1},
            },
        }


async def test_dev_token_and_demo_config_exist_in_dev_mode(edge: EdgeProcess) -> None:
    async with httpx.AsyncClient(base_url=edge.base_url) as http:
        issued = (
            await http.get("/dev/token", params={"user": "carol", "permissions": "a,b"})
        ).json()
        assert set(issued) == {"token", "exp"}
        config = (await http.get("/demo/config.json")).json()
        assert config == {"notifications_url": "http://localhost:8081"}
        assert (await http.get("/")).status_code == 200
        client_js = await http.get("/static/realtime.js")
        assert "javascript" in client_js.headers["content-type"]
        types = await http.get("/static/realtime.d.ts")
        assert types.headers["content-type"].startswith("application/typescript")
    async with websockets.connect(edge.ws_url(token=issued["token"])) as ws:
        assert (await recv_frame(ws))["data"]["user_id"] == "carol"  # type: ignore[index]


async def test_during_a_key_rotation_the_previous_secret_still_connects(
    amqp_url: str, exchange: str
) -> None:
    new, old = secrets.token_hex(32), secrets.token_hex(32)
    async with running_edge(
        amqp_url, exchange, dev=False, JWT_SECRET=new, JWT_PREVIOUS_SECRETS=old
    ) as edge:
        for token in (issue_token("alice", old), issue_token("bob", new)):
            async with websockets.connect(edge.ws_url(token=token)) as ws:
                assert (await recv_frame(ws))["event"] == "connected"
        status, body = await refused(edge.ws_url(token=issue_token("eve", "r" * 32)))
        assert (status, body["error"]["code"]) == (401, "UNAUTHORIZED")  # type: ignore[index]
