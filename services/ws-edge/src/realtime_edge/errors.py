"""Domain errors of the edge; they become HTTP statuses or error frames only in `app`/`protocol`."""

from __future__ import annotations


class EdgeError(Exception):
    """Base of every refusal the edge explains to a client."""

    status = 400
    code = "BAD_REQUEST"


class OriginForbidden(EdgeError):
    status = 403
    code = "FORBIDDEN"


class StreamNotFound(EdgeError):
    status = 404
    code = "NOT_FOUND"


class StreamForbidden(EdgeError):
    status = 403
    code = "FORBIDDEN"


class TooManyStreams(EdgeError):
    status = 400
    code = "TOO_MANY_STREAMS"


class TooManyConnections(EdgeError):
    status = 429
    code = "TOO_MANY_CONNECTIONS"


class BrokerUnavailable(EdgeError):
    status = 503
    code = "UNAVAILABLE"
