"""One client connection's outbound side: write-through, else a bounded queue and a writer.

The fan-out path calls `deliver` and never waits. While the socket takes data, a frame
is written at once: uvicorn's `send` completes without suspending when its transport is
writable, so `deliver` steps the coroutine once and is done, with no task or future per
frame. Only when a send has to wait (the client is not reading) does a writer task take
over; later frames queue behind it, up to `limit`. A client that fills the queue is too
slow, and it is closed (1013) instead of slowing anyone else down or growing memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from starlette.types import Send

from realtime_edge.closecodes import CloseCode
from realtime_edge.protocol import Session
from realtime_edge.recovery import Gate

DEFAULT_CLOSE_TIMEOUT = 10.0
"""How long a closing client has to read up to the close frame (uvicorn's own close wait)."""


async def _awaiting(awaitable: Awaitable[None]) -> None:
    await awaitable


async def _resume(coro: Coroutine[Any, Any, None], pending: object) -> None:
    """Drive a coroutine that was stepped by hand and yielded `pending` to completion."""
    try:
        while True:
            if isinstance(pending, asyncio.Future):
                await asyncio.wait([pending])
            else:
                await asyncio.sleep(0)  # a bare yield: give the loop one turn
            try:
                pending = coro.send(None)
            except StopIteration:
                return
    except BaseException:
        coro.close()
        raise


class Connection:
    __slots__ = (
        "_abort_timer",
        "_close_timeout",
        "_drop",
        "_failed",
        "_limit",
        "_loop",
        "_queue",
        "_send",
        "_writer",
        "close_code",
        "expiry",
        "gate",
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
        abort: Callable[[], None],
        close_timeout: float = DEFAULT_CLOSE_TIMEOUT,
    ) -> None:
        """`abort` drops the socket at once: closing a transport with unsent data waits for
        the peer to read it, forever if it never does, so a stalled client keeps its socket."""
        self.id = connection_id
        self.session = session
        self.user_id = session.user_id
        self._send = send
        self._limit = limit
        # A list, not a deque: an empty deque costs ~600 bytes per idle connection, and
        # pop(0) on at most `limit` (64) items is cheap.
        self._queue: list[str] = []
        self._writer: asyncio.Task[None] | None = None
        self._failed = False
        self._loop = asyncio.get_running_loop()
        self._close_timeout = close_timeout
        self._drop = abort
        self._abort_timer: asyncio.TimerHandle | None = None
        self.close_code: CloseCode | None = None
        self.expiry: int | None = None  # the token deadline it is scheduled for (Deadlines)
        self.started = False  # True once `connected` is queued: only then may other frames go
        self.gate: Gate | None = None  # while recovering: held-back messages (recovery.py)

    @property
    def closing(self) -> bool:
        """Closed or closing: frames for it are dropped, and that is not slowness."""
        return self.close_code is not None or self._failed

    def deliver(self, frame: str) -> bool:
        """Send or queue a frame; False when the connection is closing or its queue is full."""
        if self.close_code is not None or self._failed:
            return False
        if self._writer is None:
            self._write_through({"type": "websocket.send", "text": frame})
            return True
        queue = self._queue
        if len(queue) >= self._limit:
            return False
        queue.append(frame)
        return True

    def replay(self, frames: list[str]) -> bool:
        """Send or queue frames a recovery owes the client, beyond the queue's usual limit
        (a replay is bounded by EDGE_RECOVERY_MAX); False when the connection is closing."""
        if self.closing:
            return False
        for frame in frames:
            if self._writer is None:
                self._write_through({"type": "websocket.send", "text": frame})
                if self._failed:
                    return False
            else:
                self._queue.append(frame)
        return True

    def close(self, code: CloseCode, *, flush: bool = True) -> None:
        """Send the close frame after the queued frames (or right away when not `flush`)."""
        if self.close_code is not None:
            return
        self.close_code = code
        # A client that never reads never takes the close frame either: drop the socket then.
        self._abort_timer = self._loop.call_later(self._close_timeout, self._drop)
        if not flush:
            self._queue.clear()
        if self._writer is None and not self._failed:
            self._write_through(_close_message(code))

    def _write_through(self, message: dict[str, Any]) -> None:
        sending = self._send(message)
        coro = sending if isinstance(sending, Coroutine) else _awaiting(sending)
        try:
            pending = coro.send(None)
        except StopIteration:
            return
        except Exception:
            self._failed = True  # the client is gone; the reader sees the disconnect
            return
        self._writer = self._loop.create_task(self._finish(coro, pending))

    async def _finish(self, coro: Coroutine[Any, Any, None], pending: object) -> None:
        """The writer: complete the send that had to wait, drain the queue, then step aside."""
        try:
            await _resume(coro, pending)
            while self._queue:
                await self._send({"type": "websocket.send", "text": self._queue.pop(0)})
            if self.close_code is not None:
                await self._send(_close_message(self.close_code))
        except Exception:
            self._failed = True
        finally:
            self._writer = None

    async def dispose(self) -> None:
        """The socket is gone: no more sends, nothing pending."""
        self._failed = True
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
        writer = self._writer
        if writer is not None:
            writer.cancel()
            await asyncio.wait([writer])


def _close_message(code: CloseCode) -> dict[str, Any]:
    return {"type": "websocket.close", "code": int(code), "reason": code.reason}
