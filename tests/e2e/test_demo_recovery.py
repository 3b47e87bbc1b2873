"""The demo page catches up without reloading its list: a user's view of recovery.

Real processes (the edge, the notifications service, RabbitMQ) and Chromium. After the
edge is killed and restarted, or after a reload, the page replays exactly what it missed
(`sync-status` says "recovered", `data-loads` does not grow); only when recovery cannot
work (more missed than EDGE_RECOVERY_MAX) does it refetch through REST.

Every event is awaited, never slept for: what RabbitMQ carried is read from a queue of
our own (`user_events`), what the page shows from its DOM.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, Route, expect
from support.clients import ServiceProcess
from support.demo import RECONNECT_TIMEOUT, UI_TIMEOUT, expect_unread, item, shown_ids
from support.notifications import user_events
from support.rest import NotificationsApi

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

MISSED = 5
SMALL_RECOVERY_MAX = 3


@asynccontextmanager
async def demo_page(
    browser: Browser, edge: ServiceProcess, user: str, tmp_path: Path
) -> AsyncIterator[Page]:
    """The page, open and loaded once (a first visit has nothing to recover from: it
    fetches the list), its panel showing; no script error by the end."""
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        await page.goto(f"{edge.base_url}/?user={user}")
        await expect(page.get_by_test_id("connection-status")).to_have_attribute(
            "data-state", "open", timeout=UI_TIMEOUT
        )
        await expect_sync(page, "refetched", loads=1)
        await page.get_by_test_id("bell").click()
        yield page
        assert errors == [], errors
    except BaseException:
        shot = tmp_path / "failure.png"
        await page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}\nlogs:\n{edge.logs()[-4000:]}")
        raise
    finally:
        await page.close()


async def expect_sync(page: Page, how: str, *, loads: int, within: float = UI_TIMEOUT) -> None:
    sync = page.get_by_test_id("sync-status")
    await expect(sync).to_have_attribute("data-sync", how, timeout=within)
    await expect(sync).to_have_attribute("data-loads", str(loads))


async def created_in_log(page: Page) -> Counter[str]:
    """How often the page's event log shows each notification's `created` event (by title):
    the list is keyed by id, so only the log shows an event handled twice."""
    lines = await page.get_by_test_id("event-log").locator("li").all_inner_texts()
    marker = "notification.created — "
    return Counter(line.partition(marker)[2].strip() for line in lines if marker in line)


async def test_after_the_edge_is_killed_the_page_replays_what_it_missed_without_a_refetch(
    browser: Browser,
    services: tuple[ServiceProcess, str],
    make_token: Any,
    amqp_url: str,
    exchange: str,
    tmp_path: Path,
) -> None:
    edge, api_url = services
    user = f"e2e-{uuid.uuid4().hex[:8]}"
    api = NotificationsApi(api_url, make_token, user)
    async with (
        user_events(amqp_url, exchange, user) as published,
        demo_page(browser, edge, user, tmp_path) as page,
    ):
        before = await api.create_many(["Before 0", "Before 1"])
        await expect(item(page, before[-1])).to_be_visible(timeout=UI_TIMEOUT)
        await published.take(2)

        await edge.kill()  # SIGKILL: its queue dies with it, nothing reaches the page
        await expect(page.get_by_test_id("connection-status")).not_to_have_attribute(
            "data-state", "open", timeout=UI_TIMEOUT
        )
        titles = [f"Missed {n}" for n in range(MISSED)]
        missed = await api.create_many(titles)
        await published.take(MISSED)  # RabbitMQ carried them while no edge listened
        await edge.start()

        await expect_sync(page, "recovered", loads=1, within=RECONNECT_TIMEOUT)
        await expect(page.get_by_test_id("sync-status")).to_have_attribute(
            "data-replayed", str(MISSED)
        )
        assert await shown_ids(page) == [*reversed(before + missed)]  # newest first, once each
        await expect_unread(page, 2 + MISSED)
        log = await created_in_log(page)
        assert [log[title] for title in titles] == [1] * MISSED, log

        after = await api.create("After the restart")  # live again, still no refetch
        await expect(item(page, after)).to_be_visible(timeout=UI_TIMEOUT)
        assert await shown_ids(page) == [after, *reversed(before + missed)]
        await expect_unread(page, 3 + MISSED)
        await expect_sync(page, "recovered", loads=1)


async def test_a_reload_while_notifications_are_created_recovers_them_without_a_refetch(
    browser: Browser,
    services: tuple[ServiceProcess, str],
    make_token: Any,
    amqp_url: str,
    exchange: str,
    tmp_path: Path,
) -> None:
    edge, api_url = services
    user = f"e2e-{uuid.uuid4().hex[:8]}"
    api = NotificationsApi(api_url, make_token, user)
    async with (
        user_events(amqp_url, exchange, user) as published,
        demo_page(browser, edge, user, tmp_path) as page,
    ):
        before = await api.create_many(["Before 0", "Before 1"])
        await expect(item(page, before[-1])).to_be_visible(timeout=UI_TIMEOUT)
        await published.take(2)

        during: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()

        async def create_while_the_page_loads(route: Route) -> None:
            # The old page is gone and the new one not connected yet: nobody gets these.
            try:
                ids = await api.create_many([f"During {n}" for n in range(MISSED)])
                await published.take(MISSED)
            except Exception as exc:
                during.set_exception(exc)
                raise
            await route.continue_()
            during.set_result(ids)

        await page.route("**/demo/config.json", create_while_the_page_loads, times=1)
        await page.reload()
        await asyncio.wait_for(during, UI_TIMEOUT / 1000)
        # ...and more while the new page connects and recovers, to arrive live or replayed.
        after = await api.create_many([f"After {n}" for n in range(MISSED)])

        everything = before + during.result() + after
        await expect(page.get_by_test_id("notification")).to_have_count(
            len(everything), timeout=UI_TIMEOUT
        )
        await expect_sync(page, "recovered", loads=0)  # a new page, and it never refetched
        replayed = await page.get_by_test_id("sync-status").get_attribute("data-replayed")
        assert int(replayed or 0) >= MISSED
        assert await shown_ids(page) == [*reversed(everything)]
        await expect_unread(page, len(everything))
        log = await created_in_log(page)  # the new page's log: nothing handled twice
        assert set(log.values()) == {1}, log
        assert {f"During {n}" for n in range(MISSED)} <= set(log), log


@pytest.mark.parametrize(
    "edge_env", [{"EDGE_RECOVERY_MAX": str(SMALL_RECOVERY_MAX)}], ids=["recovery-max-3"]
)
async def test_when_too_much_was_missed_the_page_refetches_and_the_list_is_still_right(
    browser: Browser,
    services: tuple[ServiceProcess, str],
    make_token: Any,
    amqp_url: str,
    exchange: str,
    tmp_path: Path,
) -> None:
    edge, api_url = services
    user = f"e2e-{uuid.uuid4().hex[:8]}"
    api = NotificationsApi(api_url, make_token, user)
    async with (
        user_events(amqp_url, exchange, user) as published,
        demo_page(browser, edge, user, tmp_path) as page,
    ):
        before = await api.create("Before")
        await expect(item(page, before)).to_be_visible(timeout=UI_TIMEOUT)
        await published.take(1)

        await edge.kill()
        await expect(page.get_by_test_id("connection-status")).not_to_have_attribute(
            "data-state", "open", timeout=UI_TIMEOUT
        )
        missed = await api.create_many([f"Missed {n}" for n in range(SMALL_RECOVERY_MAX + 1)])
        await published.take(len(missed))
        await edge.start()

        await expect_sync(page, "refetched", loads=2, within=RECONNECT_TIMEOUT)
        await expect(page.get_by_test_id("notification")).to_have_count(1 + len(missed))
        assert await shown_ids(page) == [*reversed([before, *missed])]
        await expect_unread(page, 1 + len(missed))
