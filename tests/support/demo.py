"""The demo page and the two services behind it, for the browser tests.

    async with demo_services(amqp_url, exchange, tmp_path, EDGE_RECOVERY_MAX="3") as services:
        edge, api_url = services
        await page.goto(f"{edge.base_url}/?user=alice")
        await expect(item(page, notification_id)).to_be_visible()

Keyword arguments are the edge's environment. The notifications service uses SQLite in
`log_dir`; its history queue (durable) is deleted afterwards, like every test's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Locator, Page, expect

from support.clients import ServiceProcess
from support.notifications import delete_history_queue

UI_TIMEOUT = 10_000  # ms
RECONNECT_TIMEOUT = 20_000  # ms: the page may be in a backoff wait of up to 8 s by then


@asynccontextmanager
async def demo_services(
    amqp_url: str, exchange: str, log_dir: Path, **edge_env: str
) -> AsyncIterator[tuple[ServiceProcess, str]]:
    """The edge serving the demo page, and the notifications service's base URL."""
    database = f"sqlite+aiosqlite:///{log_dir / 'notifications.db'}"
    api = ServiceProcess(
        "notifications-service", amqp_url, exchange, log_dir, DATABASE_URL=database
    )
    edge = ServiceProcess(
        "ws-edge",
        amqp_url,
        exchange,
        log_dir,
        EDGE_DEMO="true",
        EDGE_NOTIFICATIONS_URL=api.base_url,
        **edge_env,
    )
    try:
        # Neither needs the other to start: side by side, the slower one sets the pace.
        started = await asyncio.gather(api.start(), edge.start(), return_exceptions=True)
        for outcome in started:
            if isinstance(outcome, BaseException):
                raise outcome
        yield edge, api.base_url
    finally:
        await asyncio.gather(edge.stop(), api.stop())
        await delete_history_queue(amqp_url, exchange)


def item(page: Page, notification_id: str) -> Locator:
    return page.locator(f"[data-testid=notification][data-id='{notification_id}']")


async def expect_unread(page: Page, count: int) -> None:
    await expect(page.get_by_test_id("unread-count")).to_have_attribute(
        "data-count", str(count), timeout=UI_TIMEOUT
    )


async def shown_ids(page: Page) -> list[str]:
    """The ids of the notifications the list shows, top (newest) first."""
    ids: list[str] = await page.get_by_test_id("notification").evaluate_all(
        "(items) => items.map((li) => li.dataset.id)"
    )
    return ids
