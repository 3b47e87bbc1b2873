"""The browser and the demo page's services, shared by the page's tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser
from support.clients import ServiceProcess, chromium
from support.demo import demo_services


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as instance:
        yield instance


@pytest.fixture
def edge_env() -> dict[str, str]:
    """Extra environment for the demo's edge; a test overrides it with `parametrize`."""
    return {}


@pytest.fixture
async def services(
    amqp_url: str, exchange: str, tmp_path: Path, edge_env: dict[str, str]
) -> AsyncIterator[tuple[ServiceProcess, str]]:
    """The edge serving the demo page, and the notifications service's base URL."""
    async with demo_services(amqp_url, exchange, tmp_path, **edge_env) as started:
        yield started
