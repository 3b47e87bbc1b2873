"""What a browser gets from the edge's HTTP side: security headers, and no demo when off."""

from collections.abc import AsyncIterator

import httpx
import pytest

from realtime_edge.app import create_app
from realtime_edge.settings import EdgeSettings

pytestmark = pytest.mark.component


def app(demo: bool) -> httpx.AsyncClient:
    settings = EdgeSettings(
        _env_file=None,  # type: ignore[call-arg]
        dev=True,
        edge_demo=demo,
        edge_notifications_url="https://api.example.com/",
    )
    # No lifespan: these routes need no broker.
    transport = httpx.ASGITransport(app=create_app(settings))
    return httpx.AsyncClient(transport=transport, base_url="http://edge.test")


@pytest.fixture
async def demo_on() -> AsyncIterator[httpx.AsyncClient]:
    async with app(demo=True) as client:
        yield client


@pytest.fixture
async def demo_off() -> AsyncIterator[httpx.AsyncClient]:
    async with app(demo=False) as client:
        yield client


async def test_the_demo_page_has_a_strict_policy_naming_its_api(
    demo_on: httpx.AsyncClient,
) -> None:
    page = await demo_on.get("/")
    assert page.status_code == 200
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "connect-src 'self' https://api.example.com" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe" not in policy
    assert page.headers["x-content-type-options"] == "nosniff"
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["referrer-policy"] == "no-referrer"


@pytest.mark.parametrize("path", ["/static/realtime.js", "/healthz", "/metrics", "/nope"])
async def test_every_other_response_allows_nothing_and_is_not_sniffed(
    demo_on: httpx.AsyncClient, path: str
) -> None:
    response = await demo_on.get(path)
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize(
    "path", ["/", "/static/index.html", "/static/demo.js", "/static/demo.css", "/demo/config.json"]
)
async def test_with_the_demo_off_nothing_of_it_is_served(
    demo_off: httpx.AsyncClient, path: str
) -> None:
    assert (await demo_off.get(path)).status_code == 404


@pytest.mark.parametrize("path", ["/static/realtime.js", "/static/realtime.d.ts"])
async def test_the_browser_client_is_served_with_the_demo_off(
    demo_off: httpx.AsyncClient, path: str
) -> None:
    assert (await demo_off.get(path)).status_code == 200
