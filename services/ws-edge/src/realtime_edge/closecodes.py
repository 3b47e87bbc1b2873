"""WebSocket close codes the edge uses, and whether a client should reconnect after each.

RFC 6455 §7.4.1 defines 1000-1015; 4000-4999 are private to this application.
"""

from __future__ import annotations

from enum import IntEnum


class CloseCode(IntEnum):
    NORMAL = 1000
    """The client closed, or the edge ended the session on purpose."""

    GOING_AWAY = 1001
    """The edge is shutting down (SIGTERM): reconnect, another node will answer."""

    POLICY_VIOLATION = 1008
    """The client broke a limit (e.g. too many connections for one user): do not retry blindly."""

    MESSAGE_TOO_BIG = 1009
    """A client frame was over ``EDGE_MAX_FRAME_BYTES``: a client bug, retrying repeats it."""

    INTERNAL_ERROR = 1011
    """Unexpected failure on the edge, or no pong in time: reconnect with backoff."""

    TRY_AGAIN_LATER = 1013
    """Slow consumer: the client let its send queue fill. Reconnect, then resync state."""

    TOKEN_EXPIRED = 4001
    """The token reached ``exp`` without a refresh: get a new token, then reconnect."""

    @property
    def retry(self) -> bool:
        """True when reconnecting (with backoff) is the right reaction."""
        return self in _RETRY

    @property
    def reason(self) -> str:
        return _REASONS[self]


def metric_label(code: int) -> str:
    """The `code` label for a close: the edge's own codes and the two a peer cannot send
    (1005 no status, 1006 abnormal); anything else a client chose is `other`, so clients
    cannot create a time series per code they make up."""
    return str(code) if code in _LABELLED else "other"


_RETRY = frozenset(
    {
        CloseCode.GOING_AWAY,
        CloseCode.INTERNAL_ERROR,
        CloseCode.TRY_AGAIN_LATER,
        CloseCode.TOKEN_EXPIRED,
    }
)

_REASONS = {
    CloseCode.NORMAL: "",
    CloseCode.GOING_AWAY: "server shutting down",
    CloseCode.POLICY_VIOLATION: "policy violation",
    CloseCode.MESSAGE_TOO_BIG: "frame too big",
    CloseCode.INTERNAL_ERROR: "internal error",
    CloseCode.TRY_AGAIN_LATER: "slow consumer",
    CloseCode.TOKEN_EXPIRED: "token expired",
}

_LABELLED = frozenset({*CloseCode, 1005, 1006})
