"""A cheap WebSocket client connection: websockets' sans-I/O protocol on a plain asyncio Protocol.

Clients share two cores with the server under test, so each connection costs one
Protocol object and no task: bytes in, frames out, pongs written back at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import cast

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import State
from websockets.uri import parse_uri

TextHandler = Callable[["Connection", bytes, float], None]
"""Called with each text frame's payload and the monotonic time its bytes arrived."""


class Connection(asyncio.Protocol):
    def __init__(self, url: str, on_text: TextHandler, token: str = "", user: str = "") -> None:
        self.token = token
        self.user = user
        self.protocol = ClientProtocol(parse_uri(url), max_size=None)
        self.on_text = on_text
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        """Set by the dialect once the server says this connection is fully subscribed."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.protocol.send_request(self.protocol.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Response):
                self._handshake_done()
            elif isinstance(event, Frame) and event.opcode is Opcode.TEXT:
                self.on_text(self, bytes(event.data), now)
        self._flush()

    def _handshake_done(self) -> None:
        if self.opened.done():
            return
        if self.protocol.state is State.OPEN:
            self.opened.set_result(None)
        else:
            exc = self.protocol.handshake_exc or ConnectionError("handshake failed")
            self.opened.set_exception(exc)
            self.fail(exc)

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        error = exc or ConnectionError("connection closed")
        self.fail(error)
        if not self.closed.done():
            self.closed.set_result(None)

    def fail(self, exc: BaseException) -> None:
        for future in (self.opened, self.ready):
            if not future.done():
                future.set_exception(exc)
                future.exception()  # mark retrieved: a failed connect is counted, not raised

    def send_text(self, text: str) -> None:
        self.protocol.send_text(text.encode())
        self._flush()

    def close(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(1000)
            self._flush()
        self.transport.close()

    def _flush(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        for chunk in self.protocol.data_to_send():
            if chunk:
                transport.write(chunk)
            elif transport.can_write_eof():
                transport.write_eof()
        if self.protocol.close_expected():
            transport.close()
