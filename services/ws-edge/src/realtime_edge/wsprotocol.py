"""uvicorn's sans-I/O WebSocket protocol, made lighter per open connection.

Idle connections dominate an edge's memory. uvicorn gives each one an `asyncio.Queue`
and an `asyncio.Event` (five empty deques, ~760 bytes each) and keeps the upgrade
request and response for the socket's lifetime, though only the handshake reads them.
The behaviour is uvicorn's own; only these containers change.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

ACCEPTED_LOG_MESSAGE = '%s - "WebSocket %s" [accepted]'


class Inbox:
    """The ASGI receive queue: one producer (the protocol), one consumer (the app)."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.pop(0)


class Flag:
    """`asyncio.Event`'s set/clear/wait, with no waiter deque until someone waits."""

    __slots__ = ("_value", "_waiters")

    def __init__(self, value: bool = False) -> None:
        self._value = value
        self._waiters: list[asyncio.Future[None]] = []

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await fut
            return True
        finally:
            if fut in self._waiters:
                self._waiters.remove(fut)


class QuietAccepts(logging.Filter):
    """uvicorn's "[accepted]" line, one per connection, becomes a DEBUG line.

    In a connection storm each line is formatted, redacted and written: measurable CPU
    per connection. Refusals (401/403/404) and errors keep their level.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg != ACCEPTED_LOG_MESSAGE:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


class EdgeWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Flag(True)  # type: ignore[assignment]

    def start_keepalive(self) -> None:
        # uvicorn calls this once, right after writing the 101 response: the handshake
        # objects are done with, and the app has read the headers it needed. websockets'
        # parser keeps the request alive too, so its headers are emptied, not just dropped.
        self.request.headers.clear()
        del self.request
        del self.response
        super().start_keepalive()
