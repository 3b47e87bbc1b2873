"""realtime.js in Chromium against the real edge: the wire protocol as a browser speaks it.

The Node tests cover the client's logic on a fake clock; this checks that what it sends
(the token in the URL, `refresh`, `subscribe`, `unsubscribe`) is what the edge accepts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page
from support.clients import ServiceProcess

from realtime_shared.client import token_expiry
from realtime_shared.publisher import Publisher

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

START = """async () => {
    const { RealtimeClient } = await import("/static/realtime.js");
    window.received = [];
    const rt = new RealtimeClient({ path: "/ws", token: () => window.mintToken() });
    rt.on("*", "*", (message) => window.received.push(message));
    window.rt = rt;
    await new Promise((resolve) => {
        rt.onState((state) => state === "open" && resolve());
        rt.connect();
    });
}"""


@pytest.fixture
async def edge(amqp_url: str, exchange: str, tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    async with ServiceProcess("ws-edge", amqp_url, exchange, tmp_path) as process:
        yield process


async def events(page: Page) -> list[str]:
    found: list[str] = await page.evaluate(
        "() => window.received.map((m) => `${m.stream}:${m.event}`)"
    )
    return found


async def test_realtime_js_refreshes_subscribes_and_dispatches_against_the_edge(
    browser: Browser, edge: ServiceProcess, amqp_url: str, exchange: str, make_token: Any
) -> None:
    tokens: list[str] = []

    def mint() -> str:
        tokens.append(make_token("gus", ttl=2 if not tokens else 3600))
        return tokens[-1]

    # Any page of the edge's origin, for a same-origin import; each sends a CSP that
    # (rightly) forbids scripts, which this test page must run.
    page = await browser.new_page(bypass_csp=True)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{edge.base_url}/healthz")
    await page.expose_function("mintToken", mint)
    await page.evaluate(START)

    # The first token lives 2 s: the client must refresh it in place before the edge's 4001.
    first_exp = token_expiry(tokens[0])
    await page.wait_for_function(
        "() => window.received.some((m) => m.event === 'refreshed')", timeout=5_000
    )
    await page.wait_for_function(f"() => Date.now() / 1000 > {first_exp} + 1", timeout=5_000)

    held = await page.evaluate("() => window.rt.subscribe('chat')")
    assert held == ["notifications", "chat"]
    refused = await page.evaluate(
        "() => window.rt.subscribe('nope').then(() => null, (e) => e.rejected)"
    )
    assert refused == [{"stream": "nope", "code": "NOT_FOUND"}]

    async with Publisher(amqp_url, exchange) as publisher:
        await publisher.publish_to_stream("chat", "hello", {"n": 1})
        await publisher.publish_to_user("notifications", "gus", "for.gus", {"n": 2})
        await page.wait_for_function(
            "() => window.received.some((m) => m.event === 'for.gus')", timeout=5_000
        )
        assert await page.evaluate("() => window.rt.unsubscribe('chat')") == ["notifications"]
        await publisher.publish_to_stream("chat", "after.unsubscribe", {})
        await publisher.publish_to_user("notifications", "gus", "last", {})
        await page.wait_for_function(
            "() => window.received.some((m) => m.event === 'last')", timeout=5_000
        )

    seen = await events(page)
    assert seen.count("system:connected") == 1  # one connection outlived the first token
    assert seen.index("chat:hello") < seen.index("notifications:for.gus")
    assert "chat:after.unsubscribe" not in seen
    assert await page.evaluate("() => window.rt.state") == "open"
    await page.evaluate("() => window.rt.close()")
    assert await page.evaluate("() => window.rt.state") == "closed"
    assert errors == []
