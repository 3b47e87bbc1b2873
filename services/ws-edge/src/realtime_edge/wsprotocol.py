"""uvicorn's sans-I/O WebSocket protocol, made lighter per connection and bounded.

Idle connections dominate an edge's memory. uvicorn gives each one an `asyncio.Queue`
and an `asyncio.Event` (five empty deques, ~760 bytes each) and keeps the upgrade
request and response for the socket's lifetime, though only the handshake reads them.
Those containers are replaced with lighter ones.

A peer's own traffic is bounded too. uvicorn answers every PING with a PONG written
straight to the transport, even while writing is paused, and never stops reading for
control frames; so a peer that sends pings and never reads made the edge buffer every
pong. Here reading stops while writing is paused (TCP pushes back on the peer), pongs
are not written while the write buffer is over its high-water mark (RFC 6455 §5.5.3
allows answering only the latest ping), and a keepalive timeout aborts the socket and
tells the app, where uvicorn's `close()` would wait forever for the buffer to drain.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

ACCEPTED_LOG_MESSAGE = '%s - "WebSocket %s" [accepted]'

ABORT_EXTENSION = "realtime.abort"
"""Scope extension holding a callable that drops the TCP connection at once.

ASGI has no "abort"; the app captures this at accept time, so a middleware that wraps
`send` cannot hide the socket from it."""

_PONG = b"\x8a"
"""First byte of an unfragmented, unmasked PONG frame (FIN + opcode 0xA) as servers send it."""


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


BAD_UTF8_LOG_MESSAGE = "Invalid UTF-8 sequence received from client."


class QuietBadText(logging.Filter):
    """A text frame that is not UTF-8 is the client's fault: one INFO line, no traceback.

    uvicorn logs it with `logger.exception` (ERROR and a traceback) before closing with
    1007, so any client could fill the edge's log with tracebacks, one per connection,
    and hide real errors among them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg == BAD_UTF8_LOG_MESSAGE:
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg = "closing a connection whose text frame is not UTF-8 (1007)"
            record.exc_info, record.exc_text = None, None
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True


class EdgeWebSocketProtocol(WebSocketsSansIOProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = Inbox()  # type: ignore[assignment]
        self.writable = Flag(True)  # type: ignore[assignment]

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # only an upgrade has one
        if scope is not None:
            scope["extensions"][ABORT_EXTENSION] = self.abort

    def abort(self) -> None:
        """Drop the connection now, unsent data and all; the app gets its disconnect."""
        if self.transport is not None:
            self.transport.abort()

    # -- the peer's own traffic stays bounded --------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        super().resume_writing()
        # Frames the app has not read yet keep reading paused; `receive` resumes it then.
        if self.read_paused and self.queue.empty() and not self.disconnected:
            self.read_paused = False
            self.transport.resume_reading()

    async def receive(self) -> Any:
        message = await self.queue.get()
        if self.read_paused and self.queue.empty() and self.writable.is_set():
            self.read_paused = False
            self.transport.resume_reading()
        return message

    def handle_ping(self) -> None:
        output = self.conn.data_to_send()
        if not self.writable.is_set():
            # The peer is not reading: its pings get no pong (nor buffer memory) until it does.
            output = [frame for frame in output if frame[:1] != _PONG]
        if output:
            self.transport.write(b"".join(output))

    def keepalive_timeout(self) -> None:
        self.pong_timer = None
        self.pending_ping_payload = None
        if self.close_sent or self.transport.is_closing():
            return
        self.conn.fail(1011, "keepalive ping timeout")
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        # The app sees why (1011, as the edge's close codes say), not a bare 1005.
        self.queue.put_nowait(
            {"type": "websocket.disconnect", "code": 1011, "reason": "keepalive ping timeout"}
        )
        # Not `close()`: that waits for the write buffer to drain, forever if the peer
        # never reads. `abort()` ends the socket now, and `connection_lost` tells the app.
        self.transport.abort()

    def start_keepalive(self) -> None:
        # uvicorn calls this once, right after writing the 101 response: the handshake
        # objects are done with, and the app has read the headers it needed. websockets'
        # parser keeps the request alive too, so its headers are emptied, not just dropped.
        self.request.headers.clear()
        del self.request
        del self.response
        super().start_keepalive()
