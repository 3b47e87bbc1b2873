"""One client connection's outbound side: a bounded send queue drained by one writer task.

The fan-out path calls `deliver` and never waits: when the queue is full the client is
too slow, and it is closed (1013) instead of slowing anyone else down or growing memory.
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import Send

from realtime_edge.closecodes import CloseCode
from realtime_edge.protocol import Session

DEFAULT_CLOSE_TIMEOUT = 10.0
"""How long a closing client has to read up to the close frame (uvicorn's own close wait)."""


def _abort_transport(send: Send) -> None:
    """Abort the TCP connection behind an ASGI `send` (uvicorn's protocol object).

    ASGI has no "abort"; closing a transport with unsent data waits for the peer to read
    it, forever if the peer never does, so a stalled client would keep its socket.
    """
    protocol = getattr(send, "__self__", None)
    transport = getattr(protocol, "transport", None)
    abort = getattr(transport, "abort", None)
    if callable(abort):
        abort()


class Connection:
    __slots__ = (
        "_abort",
        "_close_timeout",
        "_limit",
        "_loop",
        "_queue",
        "_send",
        "_waiter",
        "close_code",
        "expiry",
        "id",
        "session",
        "started",
        "user_id",
    )

    def __init__(
        self,
        connection_id: str,
        session: Session,
        send: Send,
        limit: int,
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        self.id = connection_id
        self.session = session
        self.user_id = session.user_id
        self._send = send
        self._limit = limit
        # A list, not a deque: an empty deque costs ~600 bytes per idle connection, and
        # pop(0) on at most `limit` (64) items is cheap.
        self._queue: list[str] = []
        self._waiter: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()
        self.close_code: CloseCode | None = None
        self.expiry: asyncio.TimerHandle | None = None
        self._close_timeout = close_timeout
        self._abort: asyncio.TimerHandle | None = None
        self.started = False  # True once `connected` is queued: only then may other frames go

    def deliver(self, frame: str) -> bool:
        """Queue a frame; False when the connection is closing or its queue is full."""
        if self.close_code is not None:
            return False
        queue = self._queue
        if len(queue) >= self._limit:
            return False
        queue.append(frame)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return True

    @property
    def full(self) -> bool:
        return len(self._queue) >= self._limit

    def close(self, code: CloseCode, *, flush: bool = True) -> None:
        """Ask the writer to close after the queued frames (or right away when not `flush`)."""
        if self.close_code is not None:
            return
        self.close_code = code
        # A client that never reads never takes the close frame either: drop the socket then.
        self._abort = self._loop.call_later(self._close_timeout, _abort_transport, self._send)
        if not flush:
            self._queue.clear()
        if self.expiry is not None:
            self.expiry.cancel()
            self.expiry = None
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def dispose(self) -> None:
        """The socket is gone: no abort pending, no expiry pending."""
        for handle in (self._abort, self.expiry):
            if handle is not None:
                handle.cancel()
        self._abort = self.expiry = None

    async def write(self) -> None:
        """The writer task: send queued frames in order, then the close frame if one is asked."""
        send = self._send
        queue = self._queue
        while True:
            if queue:
                message: dict[str, Any] = {"type": "websocket.send", "text": queue.pop(0)}
                await send(message)
            elif self.close_code is not None:
                break
            else:
                self._waiter = self._loop.create_future()
                await self._waiter
        code = self.close_code
        await send({"type": "websocket.close", "code": int(code), "reason": code.reason})
