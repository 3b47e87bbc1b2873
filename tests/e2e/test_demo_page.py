"""The demo page in headless Chromium, against both services started as processes.

One user's story: the bell counts what REST creates; reading in the page and changing
state through REST both show up; a restart of the edge is survived, and a notification
created while it was down appears once the page is back (the refetch on resync).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, expect
from support.clients import ServiceProcess, chromium

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

UI_TIMEOUT = 10_000  # ms
RECONNECT_TIMEOUT = 20_000  # ms: the page may be in a backoff wait of up to 8 s by then


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as instance:
        yield instance


@pytest.fixture
async def services(
    amqp_url: str, exchange: str, tmp_path: Path
) -> AsyncIterator[tuple[ServiceProcess, str]]:
    database = f"sqlite+aiosqlite:///{tmp_path / 'notifications.db'}"
    api = ServiceProcess(
        "notifications-service", amqp_url, exchange, tmp_path, DATABASE_URL=database
    )
    edge = ServiceProcess(
        "ws-edge",
        amqp_url,
        exchange,
        tmp_path,
        EDGE_DEMO="true",
        EDGE_NOTIFICATIONS_URL=api.base_url,
    )
    async with api, edge:
        yield edge, api.base_url


class Api:
    """The REST API as another service (or the user's other tab) would call it."""

    def __init__(self, base_url: str, make_token: Any, user: str) -> None:
        self.base = f"{base_url}/api/notifications"
        self.user = user
        admin_token = make_token("e2e-admin", permissions=["notification.manage"])
        self.admin = {"Authorization": f"Bearer {admin_token}"}
        self.owner = {"Authorization": f"Bearer {make_token(user)}"}

    async def create(self, title: str) -> str:
        body = {"user_id": self.user, "type": "e2e", "title": title, "severity": "warning"}
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(self.base, json=body, headers=self.admin)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    async def mark_unread(self, notification_id: str) -> None:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(
                f"{self.base}/{notification_id}/unread", headers=self.owner
            )
        assert response.status_code == 200, response.text


def item(page: Page, notification_id: str) -> Any:
    return page.locator(f"[data-testid=notification][data-id='{notification_id}']")


async def expect_unread(page: Page, count: int) -> None:
    await expect(page.get_by_test_id("unread-count")).to_have_attribute(
        "data-count", str(count), timeout=UI_TIMEOUT
    )


async def test_notification_centre_lives_through_rest_events_and_an_edge_restart(
    browser: Browser,
    services: tuple[ServiceProcess, str],
    make_token: Any,
    tmp_path: Path,
) -> None:
    edge, api_url = services
    user = f"e2e-{uuid.uuid4().hex[:8]}"
    api = Api(api_url, make_token, user)
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(  # the page works under its strict policy: nothing refused
        "console",
        lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None,
    )
    status = page.get_by_test_id("connection-status")
    try:
        response = await page.goto(f"{edge.base_url}/?user={user}")
        assert response is not None
        policy = await response.header_value("content-security-policy")
        assert policy is not None and "script-src 'self'" in policy, policy
        assert "'unsafe-inline'" not in policy
        await expect(status).to_have_attribute("data-state", "open", timeout=UI_TIMEOUT)
        await expect(page.get_by_test_id("user-name")).to_have_text(user)
        await expect_unread(page, 0)
        await page.get_by_test_id("bell").click()
        await expect(page.get_by_test_id("empty")).to_be_visible()

        # REST -> outbox -> RabbitMQ -> edge -> page
        first = await api.create("Build #41 failed")
        await expect(item(page, first)).to_contain_text("Build #41 failed", timeout=UI_TIMEOUT)
        await expect_unread(page, 1)
        await expect(page.get_by_test_id("unread-count")).to_be_visible()

        # Marking read in the page drops the count; a change made elsewhere comes back live.
        await item(page, first).get_by_test_id("mark-read").click()
        await expect_unread(page, 0)
        await expect(item(page, first)).to_have_attribute("data-read", "true")
        await api.mark_unread(first)
        await expect_unread(page, 1)
        await expect(item(page, first)).to_have_attribute("data-read", "false", timeout=UI_TIMEOUT)

        await item(page, first).get_by_test_id("delete").click()
        await expect(item(page, first)).to_have_count(0, timeout=UI_TIMEOUT)
        await expect_unread(page, 0)

        # The edge goes away (1001): the page says so, and an event created meanwhile is
        # delivered to nobody; the refetch on resync must bring it in.
        await edge.stop()
        await expect(status).not_to_have_attribute("data-state", "open", timeout=UI_TIMEOUT)
        missed = await api.create("Created while the edge was down")
        await edge.start()
        await expect(status).to_have_attribute("data-state", "open", timeout=RECONNECT_TIMEOUT)
        await expect(item(page, missed)).to_be_visible(timeout=UI_TIMEOUT)
        await expect_unread(page, 1)

        # The subscription was restored: live events flow again.
        after = await api.create("After the restart")
        await expect(item(page, after)).to_be_visible(timeout=UI_TIMEOUT)
        await expect_unread(page, 2)
        titles = await page.get_by_test_id("notification-title").all_inner_texts()
        assert titles == ["After the restart", "Created while the edge was down"]  # newest first

        await page.get_by_test_id("mark-all-read").click()
        await expect_unread(page, 0)
        await expect(page.get_by_test_id("unread-count")).to_be_hidden()
        assert errors == [], errors
    except BaseException:
        shot = tmp_path / "failure.png"
        await page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}\nlogs:\n{edge.logs()[-4000:]}")
        raise


async def test_a_token_handed_over_in_the_address_leaves_the_address_bar(
    browser: Browser, services: tuple[ServiceProcess, str], make_token: Any
) -> None:
    edge, _ = services
    token = make_token("fragment-user")
    page = await browser.new_page()
    status = page.get_by_test_id("connection-status")
    await page.goto(f"{edge.base_url}/#token={token}")
    await expect(status).to_have_attribute("data-state", "open", timeout=UI_TIMEOUT)
    await expect(page.get_by_test_id("user-name")).to_have_text("fragment-user")
    assert token not in page.url
    await page.reload()  # the tab keeps it (sessionStorage), not the address or history
    await expect(status).to_have_attribute("data-state", "open", timeout=UI_TIMEOUT)
    await expect(page.get_by_test_id("user-name")).to_have_text("fragment-user")
    assert token not in page.url
    await page.close()
