"""The demo page in headless Chromium, against both services started as processes.

One user's story: the bell counts what REST creates; reading in the page and changing
state through REST both show up; a restart of the edge is survived, and a notification
created while it was down appears once the page is back (the refetch on resync).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, expect
from support.clients import ServiceProcess
from support.demo import RECONNECT_TIMEOUT, UI_TIMEOUT, expect_unread, item
from support.rest import NotificationsApi

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


async def test_notification_centre_lives_through_rest_events_and_an_edge_restart(
    browser: Browser,
    services: tuple[ServiceProcess, str],
    make_token: Any,
    tmp_path: Path,
) -> None:
    edge, api_url = services
    user = f"e2e-{uuid.uuid4().hex[:8]}"
    api = NotificationsApi(api_url, make_token, user)
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
