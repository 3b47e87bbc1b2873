"""Token deadlines: each connection expires at its own `exp`, once, unless moved or cancelled."""

import asyncio
import time
from typing import Any

import pytest

from realtime_edge.connection import Connection
from realtime_edge.deadlines import Deadlines
from realtime_edge.protocol import Session
from realtime_shared.auth import Claims

pytestmark = pytest.mark.unit


async def _ignore(message: Any) -> None:
    return None


def conn(name: str) -> Connection:
    return Connection(
        name, Session(Claims(sub=name, exp=2**31), max_streams=4), _ignore, 4, abort=lambda: None
    )


class Expired:
    """The callback: records who expired, and wakes the test."""

    def __init__(self) -> None:
        self.ids: list[str] = []
        self.event = asyncio.Event()

    def __call__(self, c: Connection) -> None:
        self.ids.append(c.id)
        self.event.set()

    async def wait(self) -> list[str]:
        await asyncio.wait_for(self.event.wait(), 3)
        return sorted(self.ids)


async def test_connections_expire_at_their_deadline_and_not_after_cancel_or_move() -> None:
    expired = Expired()
    deadlines = Deadlines(expired)
    now = int(time.time())
    a, b, gone, moved = conn("a"), conn("b"), conn("gone"), conn("moved")
    for c in (a, b, gone, moved):
        deadlines.schedule(c, now + 1)  # same second: one shared timer
    deadlines.cancel(gone)
    deadlines.schedule(moved, now + 3600)  # a refresh moves the deadline
    assert len(deadlines) == 3

    assert await expired.wait() == ["a", "b"]  # together, from the one timer
    assert a.expiry is None and moved.expiry == now + 3600
    assert len(deadlines) == 1
    deadlines.cancel(moved)
    assert len(deadlines) == 0


async def test_a_deadline_already_past_expires_at_once() -> None:
    expired = Expired()
    deadlines = Deadlines(expired)
    deadlines.schedule(conn("late"), int(time.time()) - 5)
    assert await expired.wait() == ["late"]
