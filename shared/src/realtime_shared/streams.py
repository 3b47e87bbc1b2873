"""The stream catalog: which logical streams a connection may hold."""

from __future__ import annotations

import re
from dataclasses import dataclass

STREAM_ID_PATTERN = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")

SYSTEM_STREAM = "system"
"""Reserved for the edge's own replies; never subscribable, never routed."""

DEFAULT_STREAM = "notifications"


@dataclass(frozen=True, slots=True)
class Stream:
    name: str
    interactive: bool
    """Clients may publish on it too (to a backend, through the inbound exchange)."""
    description: str


CATALOG: dict[str, Stream] = {
    s.name: s
    for s in (
        Stream("notifications", False, "per-user notification events (server to client)"),
        Stream("chat", True, "messages between users; clients send, a chat backend answers"),
        Stream("ssh", True, "terminal sessions: keystrokes in, output back to one connection"),
        Stream("rdp", True, "remote desktop sessions: input in, screen updates back"),
    )
}


def is_valid_stream_id(stream: str) -> bool:
    """True when `stream` has the contract's shape (it may still be outside the catalog)."""
    return STREAM_ID_PATTERN.fullmatch(stream) is not None


def is_subscribable(stream: str) -> bool:
    """True for catalog streams; `system` and unknown ids are not."""
    return stream in CATALOG


def is_interactive(stream: str) -> bool:
    """True for catalog streams clients may publish on."""
    entry = CATALOG.get(stream)
    return entry is not None and entry.interactive
