"""The checks before a WebSocket upgrade, in the contract's order: origin, token, streams.

Pure functions over the request's parts, so every rule is unit-tested without a server.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from realtime_edge.errors import (
    OriginForbidden,
    StreamForbidden,
    StreamNotFound,
    TooManyStreams,
)
from realtime_edge.origin import OriginPolicy
from realtime_shared.auth import Claims, TokenVerifier
from realtime_shared.streams import DEFAULT_STREAM, is_subscribable


def extract_token(query: Iterable[tuple[str, str]], headers: Mapping[str, str]) -> str | None:
    """``token``, else ``access_token`` query parameter, else ``Authorization: Bearer``."""
    params: dict[str, str] = {}
    for key, value in query:
        if key in ("token", "access_token") and value and key not in params:
            params[key] = value
    if "token" in params:
        return params["token"]
    if "access_token" in params:
        return params["access_token"]
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return None


def normalise_streams(names: Iterable[str]) -> list[str]:
    """Trimmed, lower-cased, de-duplicated, first occurrence wins; empty names dropped."""
    seen: dict[str, None] = {}
    for name in names:
        clean = name.strip().lower()
        if clean:
            seen.setdefault(clean, None)
    return list(seen)


def requested_streams(path_stream: str | None, query: Iterable[tuple[str, str]]) -> list[str]:
    """Path stream, repeated ``stream`` and comma-separated ``streams``; none means the default."""
    names = [path_stream] if path_stream else []
    for key, value in query:
        if key == "stream":
            names.append(value)
        elif key == "streams":
            names.extend(value.split(","))
    return normalise_streams(names) or [DEFAULT_STREAM]


def check_streams(streams: list[str], claims: Claims, limit: int) -> None:
    """Unknown streams (404) are reported before forbidden ones (403)."""
    for stream in streams:
        if not is_subscribable(stream):
            raise StreamNotFound(f"unknown stream {stream!r}")
    for stream in streams:
        if not claims.may_hold(stream):
            raise StreamForbidden(f"the token does not allow stream {stream!r}")
    if len(streams) > limit:
        raise TooManyStreams(f"at most {limit} streams per connection")


@dataclass(frozen=True, slots=True)
class Admission:
    claims: Claims
    streams: list[str]


@dataclass(frozen=True, slots=True)
class Handshake:
    """Everything the checks need; built once per app from the settings."""

    origins: OriginPolicy
    verifier: TokenVerifier
    max_streams: int

    def admit(
        self,
        *,
        path_stream: str | None,
        query: list[tuple[str, str]],
        headers: Mapping[str, str],
    ) -> Admission:
        """Raise OriginForbidden, an AuthError, StreamNotFound/Forbidden; else who and what."""
        if not self.origins.allows(headers.get("origin"), headers.get("host")):
            raise OriginForbidden("this origin may not open a WebSocket here")
        claims = self.verifier.verify(extract_token(query, headers))
        streams = requested_streams(path_stream, query)
        check_streams(streams, claims, self.max_streams)
        return Admission(claims, streams)
