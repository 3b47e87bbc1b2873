"""Two tabs of the demo page chat through the edge and the example chat backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
from playwright.async_api import Browser, Locator, Page, expect
from support.clients import ServiceProcess
from support.demo import UI_TIMEOUT

from realtime_chat.app import ChatBackend
from realtime_chat.settings import ChatSettings

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


@pytest.fixture
def edge_env(exchange: str) -> dict[str, str]:
    return {"REALTIME_INBOUND_EXCHANGE": f"{exchange}.inbound"}


@pytest.fixture
async def chat(amqp_url: str, exchange: str, tmp_path: Path) -> AsyncIterator[ChatBackend]:
    inbound = f"{exchange}.inbound"
    backend = ChatBackend(
        ChatSettings(
            amqp_url=amqp_url,
            realtime_exchange=exchange,
            realtime_inbound_exchange=inbound,
            chat_database_url=f"sqlite+aiosqlite:///{tmp_path / 'chat.db'}",
        )
    )
    await backend.start()
    yield backend
    await backend.stop()
    connection = await aio_pika.connect(amqp_url)
    async with connection:  # durable: the shared broker must not keep one per test
        await (await connection.channel()).queue_delete(f"{inbound}.chat-example.chat")


async def open_tab(browser: Browser, edge: ServiceProcess, user: str) -> Page:
    page = await browser.new_page()
    await page.goto(f"{edge.base_url}/?user={user}")
    await expect(page.get_by_test_id("connection-status")).to_have_attribute(
        "data-state", "open", timeout=UI_TIMEOUT
    )
    await expect(page.get_by_test_id("chat")).to_be_visible()
    return page


async def send(page: Page, to: str, text: str) -> None:
    await page.get_by_test_id("chat-to").fill(to)
    await page.get_by_test_id("chat-text").fill(text)
    await page.get_by_test_id("chat-send").click()
    await expect(page.get_by_test_id("chat-text")).to_have_value("", timeout=UI_TIMEOUT)


def said(page: Page, text: str) -> Locator:
    return page.get_by_test_id("chat-message").filter(has_text=text)


async def test_alice_and_bob_chat_in_two_tabs(
    browser: Browser, services: tuple[ServiceProcess, str], chat: ChatBackend
) -> None:
    edge, _ = services
    alice, bob = await open_tab(browser, edge, "alice"), await open_tab(browser, edge, "bob")
    carol = await open_tab(browser, edge, "carol")

    await send(alice, "bob", "Lunch at noon?")
    await expect(said(bob, "Lunch at noon?")).to_have_count(1, timeout=UI_TIMEOUT)
    await expect(said(alice, "Lunch at noon?")).to_have_class("mine", timeout=UI_TIMEOUT)

    await send(bob, "alice", "Sure, see you there")
    await expect(said(alice, "Sure, see you there")).to_have_count(1, timeout=UI_TIMEOUT)
    texts = await alice.get_by_test_id("chat-message").all_inner_texts()
    assert [t.splitlines()[-1] for t in texts] == ["Lunch at noon?", "Sure, see you there"]

    # A third user saw none of it; a refused message says why on the sender's tab only.
    assert await carol.get_by_test_id("chat-message").count() == 0
    await alice.get_by_test_id("chat-to").fill("bob")
    await alice.get_by_test_id("chat-text").fill("   ")
    await alice.get_by_test_id("chat-send").click()
    await expect(alice.get_by_test_id("chat-status")).to_contain_text(
        "Not sent", timeout=UI_TIMEOUT
    )
    await expect(bob.get_by_test_id("chat-status")).to_have_text("")


async def test_without_a_chat_backend_the_tab_says_so(
    browser: Browser, services: tuple[ServiceProcess, str]
) -> None:
    edge, _ = services
    alice = await open_tab(browser, edge, "alice")
    await alice.get_by_test_id("chat-text").fill("anyone?")
    await alice.get_by_test_id("chat-send").click()
    await expect(alice.get_by_test_id("chat-status")).to_contain_text(
        "No chat backend is running", timeout=UI_TIMEOUT
    )
    assert await alice.get_by_test_id("chat-message").count() == 0
