"""Fixtures of the shared library's tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio.to_thread
import pytest


@pytest.fixture
def worker_thread_calls(monkeypatch: pytest.MonkeyPatch) -> list[Callable[..., Any]]:
    """What the test hands to anyio's worker threads (FastStream and FastDepends run
    synchronous code there), in order."""
    calls: list[Callable[..., Any]] = []
    run_sync = anyio.to_thread.run_sync

    async def recording(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(func)
        return await run_sync(func, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", recording)
    return calls
