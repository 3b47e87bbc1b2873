"""The per-connection protocol core, without I/O: control frames in, reply frames out.

`Session` holds what one connection is subscribed to and decides every reply; the
connection layer only moves text between it, the socket and the broker bindings.
Replies are JSON text frames on the reserved ``system`` stream.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from realtime_edge.handshake import normalise_streams
from realtime_shared.auth import AuthError, Claims
from realtime_shared.envelope import MAX_EPOCH_CHARS, Position
from realtime_shared.streams import SYSTEM_STREAM, is_interactive, is_subscribable

# Event names the edge sends on the system stream.
CONNECTED = "connected"
SUBSCRIBED = "subscribed"
UNSUBSCRIBED = "unsubscribed"
PONG = "pong"
REFRESHED = "refreshed"
TOKEN_EXPIRED = "token.expired"
RESYNC = "resync"
ERROR = "error"

PUBLISHED = "published"

# Error codes in `error` frames and `rejected` entries.
INVALID_JSON = "INVALID_JSON"
INVALID_FRAME = "INVALID_FRAME"
UNKNOWN_ACTION = "UNKNOWN_ACTION"
UNSUPPORTED_FRAME = "UNSUPPORTED_FRAME"
UNAUTHORIZED = "UNAUTHORIZED"
NOT_FOUND = "NOT_FOUND"
FORBIDDEN = "FORBIDDEN"
TOO_MANY_STREAMS = "TOO_MANY_STREAMS"
RATE_LIMITED = "RATE_LIMITED"

MAX_EVENT_CHARS = 128
MAX_ID_CHARS = 64
MAX_SESSION_ID_CHARS = 128
"""A publish frame's `session_id` names a remote session (a terminal): an id, not data."""


def system_frame(event: str, data: dict[str, Any] | None = None) -> str:
    body: dict[str, Any] = {"stream": SYSTEM_STREAM, "event": event}
    if data:
        body["data"] = data
    return orjson.dumps(body).decode()


def error_frame(code: str, message: str, frame_id: str | None = None) -> str:
    data = {"code": code, "message": message}
    if frame_id is not None:
        data["id"] = frame_id
    return system_frame(ERROR, data)


PONG_FRAME = system_frame(PONG)
TOKEN_EXPIRED_FRAME = system_frame(TOKEN_EXPIRED)
BINARY_FRAME_MESSAGE = "binary frames are not supported; send JSON"


class ProtocolError(Exception):
    """A client frame the edge cannot act on; answered with an error frame, never a close."""

    def __init__(self, code: str, message: str, frame_id: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.frame_id = frame_id
        """The client's `id` of a `publish` frame, echoed so it can match the error."""

    @property
    def frame(self) -> str:
        return error_frame(self.code, self.message, self.frame_id)


class PublishRefused(ProtocolError):
    """A `publish` frame refused before anything was sent (counted by code)."""


class ControlRefused(ProtocolError):
    """A frame refused because the connection's control bucket is empty."""


@dataclass(frozen=True, slots=True)
class Subscribe:
    streams: list[str]
    recover: dict[str, Position] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    streams: list[str]


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class Publish:
    """A client message for the backend of an interactive stream."""

    stream: str
    event: str
    data: dict[str, Any]
    id: str | None = None
    session_id: str | None = None


@dataclass(frozen=True, slots=True)
class Refresh:
    token: str


Command = Subscribe | Unsubscribe | Ping | Refresh | Publish


def _stream_list(obj: dict[str, Any]) -> list[str]:
    streams = obj.get("streams")
    if not isinstance(streams, list) or not all(isinstance(s, str) for s in streams):
        raise ProtocolError(INVALID_FRAME, "'streams' must be a list of strings")
    return normalise_streams(streams)


def _positions(value: object) -> dict[str, Position]:
    """`recover`: {"<stream>": {"epoch": "<1-64 chars>", "seq": <int >= 0>}, ...}."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ProtocolError(INVALID_FRAME, "'recover' must be an object of stream positions")
    positions: dict[str, Position] = {}
    for name, position in value.items():
        epoch = position.get("epoch") if isinstance(position, dict) else None
        seq = position.get("seq") if isinstance(position, dict) else None
        if not isinstance(epoch, str) or not 0 < len(epoch) <= MAX_EPOCH_CHARS:
            raise ProtocolError(INVALID_FRAME, "'recover' epochs must be 1-64 characters")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ProtocolError(INVALID_FRAME, "'recover' seqs must be integers >= 0")
        stream = name.strip().lower()
        if stream:
            positions[stream] = (epoch, seq)
    return positions


def _publish(obj: dict[str, Any]) -> Publish:
    raw_id = obj.get("id")
    frame_id = raw_id if isinstance(raw_id, str) and len(raw_id) <= MAX_ID_CHARS else None

    def invalid(message: str) -> ProtocolError:
        return PublishRefused(INVALID_FRAME, message, frame_id)

    if raw_id is not None and frame_id is None:
        raise invalid(f"'id' must be a string of at most {MAX_ID_CHARS} characters")
    stream, event = obj.get("stream"), obj.get("event")
    data = {} if obj.get("data") is None else obj["data"]
    session_id = obj.get("session_id")
    if not isinstance(stream, str) or not stream.strip():
        raise invalid("'stream' must be a stream name")
    if not isinstance(event, str) or not 0 < len(event) <= MAX_EVENT_CHARS:
        raise invalid(f"'event' must be a string of 1-{MAX_EVENT_CHARS} characters")
    if not isinstance(data, dict):
        raise invalid("'data' must be an object")
    if session_id is not None and (
        not isinstance(session_id, str) or not 0 < len(session_id) <= MAX_SESSION_ID_CHARS
    ):
        raise invalid(f"'session_id' must be a string of 1-{MAX_SESSION_ID_CHARS} characters")
    return Publish(stream.strip().lower(), event, data, frame_id, session_id)


def parse_command(text: str) -> Command:
    """One client text frame to a command, or ProtocolError saying what is wrong with it."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError(INVALID_JSON, "frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError(INVALID_FRAME, "frame must be a JSON object")
    action = obj.get("action")
    if not isinstance(action, str):
        raise ProtocolError(INVALID_FRAME, "'action' must be a string")
    if action == "subscribe":
        recover = _positions(obj.get("recover"))
        # A stream to recover is subscribed to as if listed in `streams`.
        return Subscribe(normalise_streams([*_stream_list(obj), *recover]), recover)
    if action == "unsubscribe":
        return Unsubscribe(_stream_list(obj))
    if action == "ping":
        return Ping()
    if action == "publish":
        return _publish(obj)
    if action == "refresh":
        token = obj.get("token")
        if not isinstance(token, str) or not token:
            raise ProtocolError(INVALID_FRAME, "'token' must be a non-empty string")
        return Refresh(token)
    raise ProtocolError(UNKNOWN_ACTION, f"unknown action {action[:64]!r}")


@dataclass(slots=True)
class SubscribePlan:
    """What a subscribe will add; applied with `Session.commit` once the bindings are in place."""

    add: list[str]
    rejected: list[dict[str, str]] = field(default_factory=list)


class TokenBucket:
    """`burst` tokens, full at first, refilled at `rate` per second; one per message."""

    __slots__ = ("_burst", "_clock", "_rate", "_stamp", "_tokens")

    def __init__(self, rate: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._stamp = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


@dataclass(frozen=True, slots=True)
class RateLimits:
    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic


DEFAULT_PUBLISH_LIMITS = RateLimits(rate=20.0, burst=40)
DEFAULT_CONTROL_LIMITS = RateLimits(rate=10.0, burst=50)

FLOOD_FACTOR = 10
"""A connection refused this many bursts' worth of control frames in a row, without one
admitted in between, is not a client that slows down when told: it is closed (1008)."""


class Session:
    """One connection's identity, token deadline and held streams (in subscription order)."""

    __slots__ = (
        "_bucket",
        "_control",
        "_held",
        "claims",
        "control_limits",
        "limits",
        "max_streams",
        "refused_in_row",
    )

    def __init__(
        self,
        claims: Claims,
        max_streams: int,
        limits: RateLimits | None = None,
        control_limits: RateLimits | None = None,
    ) -> None:
        self.claims = claims
        self.max_streams = max_streams
        self.limits = limits or DEFAULT_PUBLISH_LIMITS
        self.control_limits = control_limits or DEFAULT_CONTROL_LIMITS
        self._held: dict[str, None] = {}
        self._bucket: TokenBucket | None = None  # made at the first publish: most never do
        self._control: TokenBucket | None = None  # made at the first control frame
        self.refused_in_row = 0
        """Control frames refused since the last one admitted (see `flooding`)."""

    @property
    def user_id(self) -> str:
        return self.claims.sub

    @property
    def exp(self) -> int:
        return self.claims.exp

    @property
    def streams(self) -> list[str]:
        return list(self._held)

    def holds(self, stream: str) -> bool:
        return stream in self._held

    def plan(self, streams: Iterable[str]) -> SubscribePlan:
        plan = SubscribePlan(add=[])
        room = self.max_streams - len(self._held)
        for stream in streams:
            if stream in self._held:
                continue
            if not is_subscribable(stream):
                plan.rejected.append({"stream": stream, "code": NOT_FOUND})
            elif not self.claims.may_hold(stream):
                plan.rejected.append({"stream": stream, "code": FORBIDDEN})
            elif len(plan.add) >= room:
                plan.rejected.append({"stream": stream, "code": TOO_MANY_STREAMS})
            else:
                plan.add.append(stream)
        return plan

    def commit(self, plan: SubscribePlan) -> None:
        """Hold the planned streams (their bindings are in place)."""
        for stream in plan.add:
            self._held[stream] = None

    def subscribed_frame(
        self, plan: SubscribePlan, recovered: dict[str, bool] | None = None
    ) -> str:
        """The reply to a subscribe: all streams now held, what was refused, what recovered."""
        data: dict[str, Any] = {"streams": self.streams}
        if plan.rejected:
            data["rejected"] = plan.rejected
        if recovered:
            data["recovered"] = recovered
        return system_frame(SUBSCRIBED, data)

    def drop(self, streams: Iterable[str]) -> list[str]:
        """Stop holding `streams`; returns the ones actually dropped."""
        dropped = [s for s in streams if s in self._held]
        for stream in dropped:
            del self._held[stream]
        return dropped

    def admit_control(self, frame_id: str | None = None) -> None:
        """Take a token from the control bucket, or ControlRefused (RATE_LIMITED).

        Every frame but an admitted `publish` takes one: subscribe, unsubscribe, ping,
        refresh, binary and malformed frames, and refused publishes, so no kind of frame
        is a way around the limit."""
        if self._control is None:
            limits = self.control_limits
            self._control = TokenBucket(limits.rate, limits.burst, limits.clock)
        if self._control.take():
            self.refused_in_row = 0
            return
        self.refused_in_row += 1
        raise ControlRefused(RATE_LIMITED, "too many frames; slow down", frame_id)

    @property
    def flooding(self) -> bool:
        """True once FLOOD_FACTOR bursts of control frames were refused in a row."""
        return self.refused_in_row >= FLOOD_FACTOR * self.control_limits.burst

    def admit_publish(self, command: Publish) -> None:
        """Every check of a client message, in order; ProtocolError (with its `id`) if refused.

        A refused frame takes no token from the publish bucket, but one from the control
        bucket (ControlRefused when that is empty)."""
        stream, frame_id = command.stream, command.id

        def forbidden(message: str) -> PublishRefused:
            self.admit_control(frame_id)
            return PublishRefused(FORBIDDEN, message, frame_id)

        if not is_interactive(stream):
            raise forbidden(f"{stream[:64]!r} is not an interactive stream")
        if stream not in self._held:
            raise forbidden(f"subscribe to {stream!r} before publishing")
        if not self.claims.may_publish(stream):
            raise forbidden(f"the token does not allow publishing on {stream!r}")
        if self._bucket is None:
            limits = self.limits
            self._bucket = TokenBucket(limits.rate, limits.burst, limits.clock)
        if not self._bucket.take():
            raise PublishRefused(RATE_LIMITED, "too many messages; slow down", frame_id)

    def published_frame(self, frame_id: str | None, message_id: str) -> str:
        data: dict[str, Any] = {"message_id": message_id}
        if frame_id is not None:
            data["id"] = frame_id
        return system_frame(PUBLISHED, data)

    def unsubscribed_frame(self) -> str:
        return system_frame(UNSUBSCRIBED, {"streams": self.streams})

    def connected_frame(self, connection_id: str) -> str:
        return system_frame(
            CONNECTED,
            {"connection_id": connection_id, "user_id": self.user_id, "streams": self.streams},
        )

    def resync_frame(self) -> str:
        return system_frame(RESYNC, {"streams": self.streams})

    def refresh(self, token: str, verify: Callable[[str], Claims]) -> tuple[str, list[str]]:
        """Accept a valid token for the same user (moves `exp`); anything else changes nothing.

        Returns the `refreshed` reply and the streams the new token no longer allows,
        which are no longer held: the caller stops their delivery before replying.
        """
        try:
            claims = verify(token)
        except AuthError as exc:
            raise ProtocolError(UNAUTHORIZED, f"refresh refused: {exc}") from None
        if claims.sub != self.claims.sub:
            raise ProtocolError(UNAUTHORIZED, "refresh refused: the token is for another user")
        self.claims = dataclasses.replace(claims, raw={})
        dropped = self.drop([s for s in self._held if not claims.may_hold(s)])
        data: dict[str, Any] = {"exp": claims.exp, "streams": self.streams}
        if dropped:
            data["dropped"] = dropped
        return system_frame(REFRESHED, data), dropped
