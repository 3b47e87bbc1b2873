"""Fixtures of the notifications tests: the app in-process on each database, tokens."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from support.notifications import FakePublisher, make_settings, running_app

from realtime_shared.auth import PERMISSION_MANAGE_NOTIFICATIONS

TokenFactory = Callable[..., str]


@pytest.fixture
def publisher() -> FakePublisher:
    return FakePublisher()


@pytest.fixture
async def client(database_url: str, publisher: FakePublisher) -> AsyncIterator[httpx.AsyncClient]:
    """The app on the parametrized database (SQLite, then PostgreSQL) with a fake broker."""
    async with running_app(make_settings(database_url), publisher) as c:
        yield c


@pytest.fixture
def auth(make_token: TokenFactory) -> Callable[..., dict[str, str]]:
    """``auth("alice")`` or ``auth("svc", manage=True)``: an Authorization header."""

    def header(user: str, *, manage: bool = False, ttl: int = 300) -> dict[str, str]:
        perms = [PERMISSION_MANAGE_NOTIFICATIONS] if manage else []
        return {"Authorization": f"Bearer {make_token(user, permissions=perms, ttl=ttl)}"}

    return header
