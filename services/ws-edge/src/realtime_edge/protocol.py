"""The per-connection protocol core, without I/O: control frames in, reply frames out.

`Session` holds what one connection is subscribed to and decides every reply; the
connection layer only moves text between it, the socket and the broker bindings.
Replies are JSON text frames on the reserved ``system`` stream.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

from realtime_edge.handshake import normalise_streams
from realtime_shared.auth import AuthError, Claims
from realtime_shared.streams import SYSTEM_STREAM, is_subscribable

# Event names the edge sends on the system stream.
CONNECTED = "connected"
SUBSCRIBED = "subscribed"
UNSUBSCRIBED = "unsubscribed"
PONG = "pong"
REFRESHED = "refreshed"
TOKEN_EXPIRED = "token.expired"
RESYNC = "resync"
ERROR = "error"

# Error codes in `error` frames and `rejected` entries.
INVALID_JSON = "INVALID_JSON"
INVALID_FRAME = "INVALID_FRAME"
UNKNOWN_ACTION = "UNKNOWN_ACTION"
UNSUPPORTED_FRAME = "UNSUPPORTED_FRAME"
UNAUTHORIZED = "UNAUTHORIZED"
NOT_FOUND = "NOT_FOUND"
FORBIDDEN = "FORBIDDEN"
TOO_MANY_STREAMS = "TOO_MANY_STREAMS"


def system_frame(event: str, data: dict[str, Any] | None = None) -> str:
    body: dict[str, Any] = {"stream": SYSTEM_STREAM, "event": event}
    if data:
        body["data"] = data
    return orjson.dumps(body).decode()


def error_frame(code: str, message: str) -> str:
    return system_frame(ERROR, {"code": code, "message": message})


PONG_FRAME = system_frame(PONG)
TOKEN_EXPIRED_FRAME = system_frame(TOKEN_EXPIRED)
BINARY_ERROR_FRAME = error_frame(UNSUPPORTED_FRAME, "binary frames are not supported; send JSON")


class ProtocolError(Exception):
    """A client frame the edge cannot act on; answered with an error frame, never a close."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def frame(self) -> str:
        return error_frame(self.code, self.message)


Position = tuple[str, int]
"""(epoch, seq): where a client's copy of a stream ends."""

MAX_EPOCH_CHARS = 64


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
class Refresh:
    token: str


Command = Subscribe | Unsubscribe | Ping | Refresh


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


class Session:
    """One connection's identity, token deadline and held streams (in subscription order)."""

    __slots__ = ("_held", "claims", "max_streams")

    def __init__(self, claims: Claims, max_streams: int) -> None:
        self.claims = claims
        self.max_streams = max_streams
        self._held: dict[str, None] = {}

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
