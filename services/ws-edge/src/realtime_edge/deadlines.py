"""Token deadlines of every connection: one timer per second that has any, not one each.

A timer handle per connection costs ~600 bytes while it waits (uvloop's handle, its
arguments and context); tokens carry `exp` in whole seconds, so connections whose tokens
expire in the same second share one timer and expire at the same moment they would have
with a timer each.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from realtime_edge.connection import Connection


class Deadlines:
    def __init__(self, on_expired: Callable[[Connection], None]) -> None:
        self._on_expired = on_expired
        self._due: dict[int, set[Connection]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}

    def __len__(self) -> int:
        return sum(len(conns) for conns in self._due.values())

    def schedule(self, conn: Connection, exp: int) -> None:
        """(Re)set `conn`'s deadline to the Unix time `exp`."""
        self.cancel(conn)
        due = self._due.get(exp)
        if due is None:
            due = self._due[exp] = set()
            loop = asyncio.get_running_loop()
            delay = max(0.0, exp - time.time())
            self._timers[exp] = loop.call_later(delay, self._expire, exp)
        due.add(conn)
        conn.expiry = exp

    def cancel(self, conn: Connection) -> None:
        exp = conn.expiry
        if exp is None:
            return
        conn.expiry = None
        due = self._due.get(exp)
        if due is None:
            return
        due.discard(conn)
        if not due:
            del self._due[exp]
            self._timers.pop(exp).cancel()

    def _expire(self, exp: int) -> None:
        self._timers.pop(exp, None)
        for conn in self._due.pop(exp, ()):
            conn.expiry = None
            self._on_expired(conn)
