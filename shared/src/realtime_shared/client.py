"""`RealtimeClient`: the Python client of the edge, for backend consumers and the project's tests.

    async with RealtimeClient("ws://localhost:8080/ws", token=get_token) as client:
        async for envelope in client:
            if envelope.stream == "system":
                if envelope.event == "resync":  # refetch what you keep of data["streams"]
                    await reload(envelope.data["streams"])
                continue  # `recovered`: nothing was missed
            handle(envelope)

It follows the browser client's policy: the token provider runs before every connect,
drops are retried with exponential backoff and full jitter (reset after a stable
connection), every stream held is subscribed again, the token is refreshed before
`exp`, and the edge's terminal close codes and a refused handshake end the iteration
with an exception instead of a retry loop.

Recovery: streams whose messages carry ``meta.epoch`` and ``meta.seq`` have a position
(the last pair seen). After a reconnect, a ``resync`` from the edge, or a live ``seq``
that skips a number, the client asks the edge for what it missed (``subscribe`` with
``recover``), holds that stream's frames until the edge's reply, and yields them in
``seq`` order without duplicates, then a ``system``/``recovered`` envelope
(``{"stream", "recovered", "replayed", "reason"}``). A ``system``/``resync`` envelope
(``{"reason", "streams"}``) is yielded only when the consumer must refetch: the streams
had no position, their recovery failed, or their epoch changed. `PositionTracker` is
that logic without I/O.

Interactive streams (chat, ssh, rdp): ``await client.publish(stream, event, data)``
returns the message id once RabbitMQ has the message for a backend, and raises
`PublishRefused` (nothing was published) or `PublishUnconfirmed` (it may have been).
``client.session(stream, session_id)`` takes the envelopes of one ``meta.session_id``
(one terminal of several) out of the client's own iteration into its own:

    async with client.session("ssh", "t1") as terminal:
        await terminal.publish("keys", {"text": "ls"})
        async for envelope in terminal:
            print(envelope.data["text"])
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlencode, urlsplit, urlunsplit

import jwt
import orjson
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    ConnectionClosedOK,
    InvalidStatus,
    InvalidURI,
    WebSocketException,
)
from websockets.typing import Origin

from realtime_shared.envelope import MAX_EPOCH_CHARS, Envelope, EnvelopeError
from realtime_shared.streams import DEFAULT_STREAM, SYSTEM_STREAM

log = logging.getLogger(__name__)

State = Literal["connecting", "open", "closed"]
TokenProvider = str | Callable[[], str] | Callable[[], Awaitable[str]]

RESYNC = "resync"
RECOVERED = "recovered"
TOKEN_EXPIRED_CODE = 4001

TERMINAL_CLOSE_CODES = frozenset({1000, 1008, 1009})
"""The edge's "do not retry" codes: a deliberate close, a policy refusal, a too-big frame."""

OPEN_TIMEOUT = 10.0
"""Seconds for the TCP/TLS/HTTP handshake and the edge's `connected` frame."""

REFRESH_MARGIN = 30.0
"""Refresh at most this long before `exp` (a quarter of the remaining life for short tokens)."""

QUEUE_SIZE = 1024
"""Envelopes buffered for a slow consumer; past that the socket is not read (backpressure)."""

RECOVERY_TIMEOUT = 10.0
"""Seconds to wait for the edge's answer to a recovery. It gives up on the history owner after
EDGE_RECOVERY_TIMEOUT (3 s); an edge that never answers must not hold a stream back for good."""

RECOVERY_BUFFER = 1000
"""Frames of one stream held while it recovers: the edge sends at most EDGE_RECOVERY_MAX (500)
missed ones plus what was on the way. Past this the recovery counts as failed (refetch)."""

PUBLISH_TIMEOUT = 10.0
"""Seconds a `publish` waits for the edge's answer. The edge gives up on RabbitMQ's confirm
after 5 s (UNAVAILABLE); a reply lost on the way must not leave the caller waiting for good."""

MAX_FRAME_BYTES = 65536
"""The edge's ``EDGE_MAX_FRAME_BYTES`` default. A bigger frame makes the edge close with 1009,
which ends the client: `publish` refuses it before sending instead (TOO_LARGE)."""

# `code` of the client's own publish failures (the edge's codes come in its error frame).
NOT_CONNECTED = "NOT_CONNECTED"
TOO_LARGE = "TOO_LARGE"
DISCONNECTED = "DISCONNECTED"
TIMEOUT = "TIMEOUT"


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


class PublishRefused(RequestFailed):
    """A `publish` that was not published: the edge's error frame (FORBIDDEN, RATE_LIMITED,
    NO_HANDLER, UNAVAILABLE, INVALID_FRAME) or the client's refusal before sending
    (NOT_CONNECTED, TOO_LARGE)."""


class PublishUnconfirmed(RealtimeError):
    """A `publish` that was sent but not answered: the connection dropped (DISCONNECTED) or
    the wait ran out (TIMEOUT). It may or may not have reached a backend."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


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


@dataclass(frozen=True, slots=True)
class Position:
    """Where the consumer's copy of a stream ends: the last message's epoch and seq."""

    epoch: str
    seq: int

    @classmethod
    def of(cls, envelope: Envelope) -> Position | None:
        """The position a stream message carries; None for broadcasts and unnumbered streams."""
        epoch, seq = envelope.meta.get("epoch"), envelope.meta.get("seq")
        if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_EPOCH_CHARS:
            return None
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            return None
        return cls(epoch, seq)

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "seq": self.seq}


@dataclass(slots=True)
class Step:
    """What to do after the tracker took something in: yield `deliver`, then send `recover`."""

    deliver: list[Envelope] = field(default_factory=list)
    recover: dict[str, Position] = field(default_factory=dict)

    def then(self, other: Step) -> Step:
        self.deliver += other.deliver
        self.recover.update(other.recover)
        return self


@dataclass(slots=True)
class _Recovery:
    reason: str
    held: list[Envelope] = field(default_factory=list)
    overflow: bool = False
    again: str | None = None  # asked to recover again meanwhile (a resync): do it after


def _resync(reason: str, streams: list[str]) -> Envelope:
    return Envelope(SYSTEM_STREAM, RESYNC, {"reason": reason, "streams": streams})


def _in_seq_order(held: list[Envelope]) -> list[Envelope]:
    """By seq within each epoch, epochs in the order they first came."""
    by_epoch: dict[str, list[Envelope]] = {}
    for envelope in held:
        by_epoch.setdefault(envelope.meta["epoch"], []).append(envelope)
    return [e for group in by_epoch.values() for e in sorted(group, key=lambda e: e.meta["seq"])]


class PositionTracker:
    """The consumer's position per stream and the recoveries in flight, without I/O.

    The client feeds it stream frames (`receive`), the reasons to recover (`start`) and the
    edge's answers (`answer`); each returns the `Step` to take. A stream with a recovery in
    flight is held until its answer; then its frames are released in seq order, and those at
    or below the position (already seen in that epoch) are dropped.
    """

    def __init__(self, buffer_limit: int = RECOVERY_BUFFER) -> None:
        self._at: dict[str, Position] = {}
        self._inflight: dict[str, _Recovery] = {}
        self._rebase: set[str] = set()  # recovery failed: the next message starts afresh
        self._limit = buffer_limit

    @property
    def positions(self) -> dict[str, Position]:
        return dict(self._at)

    @property
    def inflight(self) -> list[str]:
        return list(self._inflight)

    def forget(self, streams: Iterable[str]) -> None:
        for stream in streams:
            self._at.pop(stream, None)
            self._inflight.pop(stream, None)
            self._rebase.discard(stream)

    def clear(self) -> None:
        self.forget([*self._at, *self._inflight, *self._rebase])

    def abandon(self) -> None:
        """The connection is gone: no answer will come. Held frames are recovered again."""
        self._inflight.clear()

    def receive(self, envelope: Envelope) -> Step:
        step = Step()
        self._accept(envelope, step)
        return step

    def start(self, streams: Iterable[str], reason: str) -> Step:
        """Recover the positioned `streams`; the others can only be refetched (a resync)."""
        step = Step()
        unpositioned: list[str] = []
        for stream in streams:
            pending = self._inflight.get(stream)
            if pending is not None:
                pending.again = reason
            elif stream in self._at and stream not in self._rebase:
                self._inflight[stream] = _Recovery(reason)
                step.recover[stream] = self._at[stream]
            else:
                unpositioned.append(stream)
        if unpositioned:
            step.deliver.append(_resync(reason, unpositioned))
        return step

    def answer(self, recovered: dict[str, Any]) -> Step:
        """The edge's `data.recovered` (or False for recoveries that timed out)."""
        step = Step()
        failed: dict[str, list[str]] = {}
        again: dict[str, list[str]] = {}
        for stream, ok in recovered.items():
            pending = self._inflight.pop(stream, None)
            if pending is None:
                continue
            success = ok is True and not pending.overflow
            if not success:
                self._rebase.add(stream)
                failed.setdefault(pending.reason, []).append(stream)
            replayed = sum(self._accept(e, step) for e in _in_seq_order(pending.held))
            outcome = {
                "stream": stream,
                "recovered": success,
                "replayed": replayed,
                "reason": pending.reason,
            }
            step.deliver.append(Envelope(SYSTEM_STREAM, RECOVERED, outcome))
            if pending.again is not None:
                again.setdefault(pending.again, []).append(stream)
        for reason, streams in failed.items():
            step.deliver.append(_resync(reason, streams))
        for reason, streams in again.items():
            step.then(self.start(streams, reason))
        return step

    def _accept(self, envelope: Envelope, step: Step) -> bool:
        """Deliver, drop or hold one stream frame; True when it is delivered."""
        position = Position.of(envelope)
        stream = envelope.stream
        if position is None:
            step.deliver.append(envelope)
            return True
        pending = self._inflight.get(stream)
        if pending is not None:
            if len(pending.held) >= self._limit:
                pending.overflow = True
                pending.held.clear()
            elif not pending.overflow:
                pending.held.append(envelope)
            return False
        last = self._at.get(stream)
        if last is None or stream in self._rebase:
            self._rebase.discard(stream)
        elif position.epoch != last.epoch:  # numbering restarted: what came before is lost
            self._at[stream] = position
            step.deliver += [envelope, _resync("epoch", [stream])]
            return True
        elif position.seq <= last.seq:
            return False
        elif position.seq > last.seq + 1:
            self._inflight[stream] = _Recovery("gap", [envelope])
            step.recover[stream] = last
            return False
        self._at[stream] = position
        step.deliver.append(envelope)
        return True


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
        recovery_timeout: float = RECOVERY_TIMEOUT,
        recovery_buffer: int = RECOVERY_BUFFER,
        publish_timeout: float = PUBLISH_TIMEOUT,
        max_frame_bytes: int = MAX_FRAME_BYTES,
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
        self._positions = PositionTracker(recovery_buffer)
        self._recovery_timeout = recovery_timeout
        self._deadlines: dict[str, float] = {}  # stream -> when its recovery counts as failed
        self._publish_timeout = publish_timeout
        self._max_frame_bytes = max_frame_bytes
        self._publish_ids = itertools.count(1)
        self._publishes: dict[str, asyncio.Future[str]] = {}  # frame id -> its answer
        self._routes: dict[tuple[str, str], RemoteSession] = {}  # (stream, session id) ->
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

    @property
    def positions(self) -> dict[str, Position]:
        """The last (epoch, seq) yielded per recoverable stream."""
        return self._positions.positions

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
        return await self._next_from(self._queue)

    async def _next_from(
        self, queue: asyncio.Queue[Envelope], closed: asyncio.Event | None = None
    ) -> Envelope:
        """The next envelope of `queue`; the client's end (or `closed`) ends the iteration."""
        ends = [self._done] if closed is None else [self._done, closed]
        while True:
            if closed is not None and closed.is_set():
                raise StopAsyncIteration
            if not queue.empty():
                return queue.get_nowait()
            if self._done.is_set():
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            getter = asyncio.ensure_future(queue.get())
            enders = [asyncio.ensure_future(end.wait()) for end in ends]
            try:
                await asyncio.wait({getter, *enders}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for ender in enders:
                    ender.cancel()
                if not getter.done():
                    getter.cancel()
            if getter.done() and not getter.cancelled():
                return getter.result()

    async def publish(
        self,
        stream: str,
        event: str,
        data: dict[str, Any] | None = None,
        *,
        session_id: str | None = None,
        # A caller's own asyncio.timeout would work too, but would end in a bare TimeoutError
        # where the default deadline ends in PublishUnconfirmed(TIMEOUT): one error, one meaning.
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> str:
        """Send a message to the backend of an interactive stream the connection holds.

        Returns the message id once RabbitMQ has it in a backend's queue (the edge's
        `published`). Raises `PublishRefused` when nothing was published (the edge's error
        frame, or NOT_CONNECTED / TOO_LARGE before sending) and `PublishUnconfirmed` when
        the fate is unknown: the connection dropped before the answer (DISCONNECTED) or
        none came within `timeout` (TIMEOUT, default `publish_timeout`). Nothing is sent
        again after a reconnect: retry yourself, with an id of your own in `data` if the
        backend must not see it twice. `session_id` lands in the message's
        ``meta.session_id``.
        """
        ws = self._ws
        if ws is None or not self._opened.is_set():
            raise PublishRefused(NOT_CONNECTED, "not connected; publish once the client is open")
        frame_id = f"p{next(self._publish_ids):x}"
        frame: dict[str, Any] = {"action": "publish", "stream": stream, "event": event}
        if data is not None:
            frame["data"] = data
        if session_id is not None:
            frame["session_id"] = session_id
        frame["id"] = frame_id
        text = orjson.dumps(frame)
        if len(text) > self._max_frame_bytes:
            raise PublishRefused(TOO_LARGE, f"the message is over {self._max_frame_bytes} bytes")
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._publishes[frame_id] = future
        try:
            async with asyncio.timeout(self._publish_timeout if timeout is None else timeout):
                await ws.send(text.decode())
                return await future
        except ConnectionClosed:
            raise PublishUnconfirmed(DISCONNECTED, f"the connection dropped ({frame_id})") from None
        except TimeoutError:
            raise PublishUnconfirmed(TIMEOUT, f"no answer to {frame_id} in time") from None
        finally:
            del self._publishes[frame_id]
            if not future.done():
                future.cancel()
            elif not future.cancelled():
                future.exception()  # retrieved, even when the send failed first

    def session(self, stream: str, session_id: str) -> RemoteSession:
        """Route the envelopes of `stream` whose ``meta.session_id`` is `session_id` to the
        returned `RemoteSession` instead of this client's iteration, until it is closed."""
        key = (stream.strip().lower(), session_id)
        if key in self._routes:
            raise ValueError(f"session {session_id!r} of {key[0]!r} is already routed")
        route = RemoteSession(self, key[0], session_id, self._queue.maxsize)
        self._routes[key] = route
        return route

    def _unroute(self, route: RemoteSession) -> None:
        if self._routes.get((route.stream, route.session_id)) is route:
            del self._routes[(route.stream, route.session_id)]

    def _queue_for(self, envelope: Envelope) -> asyncio.Queue[Envelope]:
        session_id = envelope.meta.get("session_id")
        if isinstance(session_id, str):
            route = self._routes.get((envelope.stream, session_id))
            if route is not None:
                return route.queue
        return self._queue

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
                self._positions.forget(s for s in refused if isinstance(s, str))
                raise RequestFailed("REJECTED", f"streams refused: {sorted(refused)}", rejected)
            return self.streams

    async def unsubscribe(self, *streams: str) -> list[str]:
        """Stop holding streams; nothing of them is delivered after this returns."""
        dropped = _normalize(streams)
        self._wanted = [s for s in self._wanted if s not in dropped]
        self._positions.forget(dropped)
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
        if self.connects and first.data.get("user_id") != self.user_id:
            self._positions.clear()  # another user's token: never recover the last one's streams
        self.user_id = first.data.get("user_id")
        self.connects += 1
        self._policy.connected()
        self._set_state("open")
        self._opened.set()
        refresher = asyncio.create_task(self._refresh_loop(ws))
        try:
            if self.connects > 1:
                await self._take(ws, self._positions.start(self._held, "reconnect"))
            await self._reconcile(ws)
            while True:
                try:
                    async with asyncio.timeout(self._recovery_wait()):
                        raw = await ws.recv()  # cancelling recv() loses nothing
                except TimeoutError:
                    await self._expire_recoveries(ws)
                    continue
                except ConnectionClosedOK:
                    return
                await self._handle(ws, raw)
        finally:
            refresher.cancel()
            self._positions.abandon()
            self._deadlines.clear()
            self._ws = None
            self._opened.clear()
            for answer in self._publishes.values():
                if not answer.done():
                    answer.set_exception(
                        PublishUnconfirmed(DISCONNECTED, "the connection dropped before the answer")
                    )
            while self._pending:
                _, future = self._pending.popleft()
                if not future.done():
                    future.set_exception(_Disconnected())

    async def _reconcile(self, ws: ClientConnection) -> None:
        """Streams subscribed while the handshake was in flight are not in its URL: ask now."""
        missing = [s for s in self._wanted if s not in self._held]
        if missing:
            await ws.send(orjson.dumps({"action": "subscribe", "streams": missing}).decode())

    async def _handle(self, ws: ClientConnection, raw: str | bytes) -> None:
        try:
            envelope = Envelope.from_bytes(raw)
        except EnvelopeError as exc:
            log.warning("ignoring a frame from the edge: %s", exc)
            return
        if envelope.stream != SYSTEM_STREAM:
            await self._take(ws, self._positions.receive(envelope))
            return
        event, data = envelope.event, envelope.data
        if event in ("published", "error") and isinstance(data.get("id"), str):
            self._settle_publish(event, data)  # only `publish` frames carry an id
            return
        if event in ("subscribed", "unsubscribed"):
            self._held = list(data.get("streams", self._held))
            recovered = data.get("recovered")
            if isinstance(recovered, dict):  # the reply to our recovery, not to a subscribe()
                await self._take(ws, self._positions.answer(recovered))
                return
        elif event == "refreshed":
            if isinstance(data.get("exp"), int):
                self._exp = data["exp"]
            # Streams the new token no longer allows are gone; asking again would be refused.
            dropped = data.get("dropped") or []
            self._wanted = [s for s in self._wanted if s not in dropped]
            self._positions.forget(dropped)
            self._held = list(data.get("streams", self._held))
        elif event == "token.expired":
            self._need_fresh_token = True
        elif event == RESYNC:
            await self._take(ws, self._positions.start(self._held, "event"))
        self._resolve(event, envelope)

    async def _take(self, ws: ClientConnection, step: Step) -> None:
        """Yield what a step delivers, then ask the edge to recover what it names."""
        for stream in [s for s in self._deadlines if s not in self._positions.inflight]:
            del self._deadlines[stream]
        for envelope in step.deliver:
            await self._queue_for(envelope).put(envelope)
        if step.recover:
            deadline = time.monotonic() + self._recovery_timeout
            self._deadlines.update(dict.fromkeys(step.recover, deadline))
            recover = {stream: p.to_dict() for stream, p in step.recover.items()}
            frame = {"action": "subscribe", "streams": list(recover), "recover": recover}
            await ws.send(orjson.dumps(frame).decode())

    def _recovery_wait(self) -> float | None:
        """Seconds until the first recovery in flight counts as failed (None: none in flight)."""
        if not self._deadlines:
            return None
        return max(0.0, min(self._deadlines.values()) - time.monotonic())

    async def _expire_recoveries(self, ws: ClientConnection) -> None:
        now = time.monotonic()
        due = [stream for stream, deadline in self._deadlines.items() if deadline <= now]
        if not due:
            return
        for stream in due:
            del self._deadlines[stream]
        log.warning("the edge did not answer the recovery of %s; refetch needed", due)
        await self._take(ws, self._positions.answer(dict.fromkeys(due, False)))

    def _settle_publish(self, event: str, data: dict[str, Any]) -> None:
        """The edge's answer to one `publish` (answers may come in any order)."""
        future = self._publishes.get(data["id"])
        if future is None or future.done():
            log.debug("an answer to publish %s came after it was given up", data["id"])
        elif event == "published":
            future.set_result(str(data.get("message_id")))
        else:
            code, message = str(data.get("code", "ERROR")), str(data.get("message", ""))
            future.set_exception(PublishRefused(code, message))

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


class RemoteSession:
    """One remote session (``meta.session_id``, e.g. one terminal) on one stream.

    Made by `RealtimeClient.session`. While it is open the client yields that session's
    envelopes here and not from its own iterator; `publish` tags messages with its id.
    Closing it (or leaving ``async with``) hands later envelopes back to the client and
    drops the ones not read yet. The client's end (close, terminal error) ends it too.
    """

    def __init__(
        self, client: RealtimeClient, stream: str, session_id: str, queue_size: int
    ) -> None:
        self.stream = stream
        self.session_id = session_id
        self.queue: asyncio.Queue[Envelope] = asyncio.Queue(queue_size)
        self._client = client
        self._closed = asyncio.Event()

    async def publish(
        self,
        event: str,
        data: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 (as RealtimeClient.publish's)
    ) -> str:
        """`RealtimeClient.publish` on this session's stream, with its session id."""
        return await self._client.publish(
            self.stream, event, data, session_id=self.session_id, timeout=timeout
        )

    def close(self) -> None:
        self._client._unroute(self)
        self._closed.set()
        while not self.queue.empty():  # frees a reader blocked on a full queue
            self.queue.get_nowait()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Envelope:
        return await self._client._next_from(self.queue, self._closed)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
