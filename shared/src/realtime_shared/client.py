"""`RealtimeClient`: the Python client of the edge, for backend consumers and the project's tests.

    async with RealtimeClient("ws://localhost:8080/ws", token=get_token) as client:
        async for envelope in client:
            if envelope.stream == "system":  # a `resync`: refetch what you show
                continue
            handle(envelope)

It follows the browser client's policy: the token provider runs before every connect,
drops are retried with exponential backoff and full jitter (reset after a stable
connection), every stream held is subscribed again, the token is refreshed before
`exp`, and after every reconnect the iterator yields a ``system``/``resync`` envelope so
the consumer refetches what it may have missed. The edge's terminal close codes and a
refused handshake end the iteration with an exception instead of a retry loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlencode, urlsplit, urlunsplit

import jwt
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException
from websockets.typing import Origin

from realtime_shared.envelope import Envelope, EnvelopeError
from realtime_shared.streams import DEFAULT_STREAM, SYSTEM_STREAM

log = logging.getLogger(__name__)

State = Literal["connecting", "open", "closed"]
TokenProvider = str | Callable[[], str] | Callable[[], Awaitable[str]]

RESYNC = "resync"
TOKEN_EXPIRED_CODE = 4001

TERMINAL_CLOSE_CODES = frozenset({1000, 1008, 1009})
"""The edge's "do not retry" codes: a deliberate close, a policy refusal, a too-big frame."""

OPEN_TIMEOUT = 10.0
"""Seconds for the TCP/TLS/HTTP handshake and the edge's `connected` frame."""

REFRESH_MARGIN = 30.0
"""Refresh at most this long before `exp` (a quarter of the remaining life for short tokens)."""

QUEUE_SIZE = 1024
"""Envelopes buffered for a slow consumer; past that the socket is not read (backpressure)."""


class RealtimeError(Exception):
    """Base of what the client raises."""


class ConnectionRejected(RealtimeError):
    """The edge refused the handshake (401, 403, 404...): retrying the same request cannot help."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class ConnectionEnded(RealtimeError):
    """The edge closed with a terminal code (1000, 1008, 1009)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"closed by the edge: {code} {reason}".rstrip())
        self.code = code
        self.reason = reason


class RequestFailed(RealtimeError):
    """The edge answered a control frame with an `error` frame or rejected streams."""

    def __init__(self, code: str, message: str, rejected: list[dict[str, Any]] | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.rejected = rejected or []


class _Disconnected(Exception):
    """The connection dropped while a request waited; it is retried on the next one."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with full jitter (AWS architecture blog, "Exponential Backoff And
    Jitter"): spreading retries uniformly keeps a restarted edge from a thundering herd."""

    base: float = 0.5
    cap: float = 30.0
    stable_after: float = 10.0

    def delay(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        ceiling: float = min(self.cap, self.base * 2.0 ** max(0, attempt))
        return rand() * ceiling


class ReconnectPolicy:
    """When to retry and how long to wait; no I/O, so it is unit-tested with a fake clock."""

    def __init__(
        self,
        backoff: Backoff | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.backoff = backoff or Backoff()
        self._clock = clock
        self._rand = rand
        self.attempt = 0
        self._connected_at: float | None = None

    def connected(self) -> None:
        self._connected_at = self._clock()

    def next_delay(self) -> float:
        """Seconds before the next attempt; a connection that was stable resets the count."""
        if (
            self._connected_at is not None
            and self._clock() - self._connected_at >= self.backoff.stable_after
        ):
            self.attempt = 0
        self._connected_at = None
        delay = self.backoff.delay(self.attempt, self._rand)
        self.attempt += 1
        return delay

    @staticmethod
    def retries_after(close_code: int) -> bool:
        return close_code not in TERMINAL_CLOSE_CODES


def token_expiry(token: str) -> int | None:
    """The `exp` claim, read without verification: the client only schedules its refresh."""
    try:
        exp = jwt.decode(token, options={"verify_signature": False}).get("exp")
    except jwt.PyJWTError:
        return None
    return int(exp) if isinstance(exp, int | float) else None


def _normalize(streams: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(s.strip().lower() for s in streams if s.strip()))


def _rejection(exc: InvalidStatus) -> ConnectionRejected:
    status = exc.response.status_code
    try:
        error = orjson.loads(exc.response.body or b"{}")["error"]
        return ConnectionRejected(status, str(error["code"]), str(error["message"]))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ConnectionRejected(status, "HTTP_ERROR", exc.response.reason_phrase)


class RealtimeClient:
    def __init__(
        self,
        url: str,
        token: TokenProvider,
        streams: Iterable[str] = (DEFAULT_STREAM,),
        *,
        backoff: Backoff | None = None,
        connect_timeout: float | None = 30.0,
        open_timeout: float = OPEN_TIMEOUT,
        refresh_margin: float = REFRESH_MARGIN,
        queue_size: int = QUEUE_SIZE,
        origin: str | None = None,
    ) -> None:
        """`connect_timeout`: how long entering the context keeps retrying (None: forever)."""
        self.url = url
        self._token = token
        self._wanted = _normalize(streams)
        self._policy = ReconnectPolicy(backoff)
        self._connect_timeout = connect_timeout
        self._open_timeout = open_timeout
        self._refresh_margin = refresh_margin
        self._origin = origin
        self._queue: asyncio.Queue[Envelope] = asyncio.Queue(queue_size)
        self._state: State = "closed"
        self._held: list[str] = []
        self._ws: ClientConnection | None = None
        self._pending: deque[tuple[str, asyncio.Future[Envelope]]] = deque()
        self._opened = asyncio.Event()
        self._done = asyncio.Event()
        self._error: BaseException | None = None
        self._task: asyncio.Task[None] | None = None
        self._need_fresh_token = False
        self._exp: int | None = None
        self.connection_id: str | None = None
        self.user_id: str | None = None
        self.connects = 0

    @property
    def state(self) -> State:
        return self._state

    @property
    def streams(self) -> list[str]:
        """Streams the edge confirmed for the current connection."""
        return list(self._held)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def connect(self) -> None:
        """Start, and return once the edge sent `connected` (raises if it refused us)."""
        if self._task is None:
            self._done.clear()
            self._task = asyncio.create_task(self._run(), name=f"realtime-client {self.url}")
        try:
            async with asyncio.timeout(self._connect_timeout):
                await self._wait_open()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Close for good; envelopes already received can still be iterated."""
        task, self._task = self._task, None
        self._done.set()
        ws = self._ws
        if ws is not None:  # a clean 1000 tells the edge this was on purpose
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._open_timeout):
                    await ws.close()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._state = "closed"

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Envelope:
        while True:
            if not self._queue.empty():
                return self._queue.get_nowait()
            if self._done.is_set():
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            getter = asyncio.ensure_future(self._queue.get())
            ender = asyncio.ensure_future(self._done.wait())
            try:
                await asyncio.wait({getter, ender}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ender.cancel()
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                return getter.result()

    async def subscribe(self, *streams: str) -> list[str]:
        """Hold more streams; returns all held once the edge's bindings are in place.

        Raises `RequestFailed` (with `.rejected`) for streams the edge refused; the others
        are subscribed.
        """
        wanted = _normalize(streams)
        self._wanted = _normalize([*self._wanted, *wanted])
        while True:
            await self._wait_open()
            if all(s in self._held for s in wanted):
                return self.streams
            try:
                reply = await self._request(
                    {"action": "subscribe", "streams": wanted}, "subscribed"
                )
            except _Disconnected:
                continue
            rejected = reply.data.get("rejected") or []
            if rejected:
                refused = {r.get("stream") for r in rejected}
                self._wanted = [s for s in self._wanted if s not in refused]
                raise RequestFailed("REJECTED", f"streams refused: {sorted(refused)}", rejected)
            return self.streams

    async def unsubscribe(self, *streams: str) -> list[str]:
        """Stop holding streams; nothing of them is delivered after this returns."""
        dropped = _normalize(streams)
        self._wanted = [s for s in self._wanted if s not in dropped]
        while True:
            await self._wait_open()
            if not any(s in self._held for s in dropped):
                return self.streams
            try:
                await self._request({"action": "unsubscribe", "streams": dropped}, "unsubscribed")
            except _Disconnected:
                continue
            return self.streams

    async def _wait_open(self) -> None:
        while not self._opened.is_set():
            if self._done.is_set():
                raise self._error or RealtimeError("the realtime client is closed")
            opened = asyncio.ensure_future(self._opened.wait())
            ended = asyncio.ensure_future(self._done.wait())
            try:
                await asyncio.wait({opened, ended}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                opened.cancel()
                ended.cancel()

    async def _request(self, frame: dict[str, Any], reply: str) -> Envelope:
        ws = self._ws
        if ws is None:
            raise _Disconnected
        future: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._pending.append((reply, future))
        try:
            await ws.send(orjson.dumps(frame).decode())
        except ConnectionClosed:
            raise _Disconnected from None
        return await future

    async def _provide_token(self) -> str:
        provider = self._token
        if isinstance(provider, str):
            return provider
        token = provider()
        return token if isinstance(token, str) else await token

    def _set_state(self, state: State) -> None:
        if state != self._state:
            log.debug("realtime client %s -> %s", self._state, state)
        self._state = state

    async def _run(self) -> None:
        try:
            while True:
                close_code = await self._connect_once()
                if self._done.is_set():
                    return  # close() was called
                if close_code is not None and not self._policy.retries_after(close_code):
                    raise ConnectionEnded(close_code, "")
                delay = self._policy.next_delay()
                self._set_state("connecting")
                log.info("realtime connection lost (%s); retrying in %.2f s", close_code, delay)
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # terminal: hand it to the iterator and to waiters
            self._error = exc
        finally:
            self._set_state("closed")
            self._done.set()

    async def _connect_once(self) -> int | None:
        """One connection from handshake to drop; returns its close code (None: no socket)."""
        self._set_state("connecting")
        try:
            token = await self._provide_token()
        except Exception:
            log.warning("the realtime token provider failed; retrying", exc_info=True)
            return None
        self._need_fresh_token = False
        self._exp = token_expiry(token)
        try:
            async with connect(
                self._url_with_streams(),
                additional_headers={"Authorization": f"Bearer {token}"},
                origin=None if self._origin is None else Origin(self._origin),
                open_timeout=self._open_timeout,
                max_queue=16,
            ) as ws:
                await self._serve(ws)
                # Iteration ends quietly on 1000/1001; other codes raise ConnectionClosed.
                received = ws.protocol.close_rcvd
                return received.code if received is not None else 1006
        except InvalidStatus as exc:
            if 400 <= exc.response.status_code < 500:
                raise _rejection(exc) from None
            log.warning("realtime handshake refused: %s", exc.response.status_code)
            return None
        except InvalidURI:
            raise
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else 1006
            if code == TOKEN_EXPIRED_CODE:
                self._need_fresh_token = True
            return code
        except (OSError, TimeoutError, WebSocketException, EnvelopeError) as exc:
            log.warning("realtime connection failed: %r", exc)
            return None

    def _url_with_streams(self) -> str:
        parts = urlsplit(self.url)
        streams = urlencode({"streams": ",".join(self._wanted)})
        query = f"{parts.query}&{streams}" if parts.query else streams
        return urlunsplit(parts._replace(query=query))

    async def _serve(self, ws: ClientConnection) -> None:
        async with asyncio.timeout(self._open_timeout):
            first = Envelope.from_bytes(await ws.recv())
        if (first.stream, first.event) != (SYSTEM_STREAM, "connected"):
            raise EnvelopeError(f"expected the `connected` frame, got {first.event!r}")
        self._ws = ws
        self._held = list(first.data.get("streams", []))
        self.connection_id = first.data.get("connection_id")
        self.user_id = first.data.get("user_id")
        self.connects += 1
        self._policy.connected()
        self._set_state("open")
        self._opened.set()
        refresher = asyncio.create_task(self._refresh_loop(ws))
        try:
            if self.connects > 1:
                await self._queue.put(Envelope(SYSTEM_STREAM, RESYNC, {"reason": "reconnect"}))
            await self._reconcile(ws)
            async for raw in ws:
                await self._handle(raw)
        finally:
            refresher.cancel()
            self._ws = None
            self._opened.clear()
            while self._pending:
                _, future = self._pending.popleft()
                if not future.done():
                    future.set_exception(_Disconnected())

    async def _reconcile(self, ws: ClientConnection) -> None:
        """Streams subscribed while the handshake was in flight are not in its URL: ask now."""
        missing = [s for s in self._wanted if s not in self._held]
        if missing:
            await ws.send(orjson.dumps({"action": "subscribe", "streams": missing}).decode())

    async def _handle(self, raw: str | bytes) -> None:
        try:
            envelope = Envelope.from_bytes(raw)
        except EnvelopeError as exc:
            log.warning("ignoring a frame from the edge: %s", exc)
            return
        if envelope.stream != SYSTEM_STREAM:
            await self._queue.put(envelope)
            return
        event, data = envelope.event, envelope.data
        if event in ("subscribed", "unsubscribed"):
            self._held = list(data.get("streams", self._held))
        elif event == "refreshed":
            if isinstance(data.get("exp"), int):
                self._exp = data["exp"]
            # Streams the new token no longer allows are gone; asking again would be refused.
            dropped = data.get("dropped") or []
            self._wanted = [s for s in self._wanted if s not in dropped]
            self._held = list(data.get("streams", self._held))
        elif event == "token.expired":
            self._need_fresh_token = True
        elif event == RESYNC:
            await self._queue.put(Envelope(SYSTEM_STREAM, RESYNC, {"reason": "event", **data}))
        self._resolve(event, envelope)

    def _resolve(self, event: str, envelope: Envelope) -> None:
        for index, (expected, future) in enumerate(self._pending):
            if event == "error" or event == expected:
                del self._pending[index]
                if future.done():
                    return
                if event == "error":
                    code = str(envelope.data.get("code", "ERROR"))
                    future.set_exception(RequestFailed(code, str(envelope.data.get("message"))))
                else:
                    future.set_result(envelope)
                return
        if event == "error":
            log.warning("the edge reported an error: %s", envelope.data)

    async def _refresh_loop(self, ws: ClientConnection) -> None:
        if isinstance(self._token, str):
            return  # nothing fresher to offer; at `exp` the edge closes 4001 and we stop
        while self._exp is not None:
            left = self._exp - time.time()
            await asyncio.sleep(max(0.0, left - min(self._refresh_margin, left / 4)))
            try:
                token = await self._provide_token()
                exp = token_expiry(token)
                if exp is None or exp <= self._exp:
                    log.warning("the token provider gave no fresher token; the edge will close")
                    return
                await self._request({"action": "refresh", "token": token}, "refreshed")
            except (RequestFailed, _Disconnected, ConnectionClosed) as exc:
                log.warning("token refresh failed: %s", exc)
                return
            except Exception:
                log.warning("the realtime token provider failed", exc_info=True)
                return
