"""Which browser origins may open a WebSocket (cross-site WebSocket hijacking defence).

Browsers send ``Origin`` on every WebSocket handshake and do not apply CORS to it, so the
server must check it: otherwise any page could use a visitor's cookies or stored token.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from urllib.parse import urlsplit


def _host_of_header(host_header: str) -> str:
    """Host without port: ``example.com:8080`` -> ``example.com``, ``[::1]:80`` -> ``::1``."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _normalise(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


class OriginPolicy:
    """The contract's rules: no Origin, same host (any port), loopback, or listed exactly."""

    def __init__(self, allowed: Iterable[str] = ()) -> None:
        self._allowed = frozenset(_normalise(o) for o in allowed if o.strip())

    def allows(self, origin: str | None, host_header: str | None) -> bool:
        if origin is None:
            return True  # not a browser: nothing to hijack
        if _normalise(origin) in self._allowed:
            return True
        try:
            parts = urlsplit(origin.strip())
            origin_host = (parts.hostname or "").lower()
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or not origin_host:
            return False  # e.g. the opaque "null" origin of sandboxed frames
        if _is_loopback(origin_host):
            return True
        return host_header is not None and origin_host == _host_of_header(host_header)
