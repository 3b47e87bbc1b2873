"""The realtime contract's vocabulary, shared by the edge, the services and every producer."""

from realtime_shared.envelope import Envelope, EnvelopeError
from realtime_shared.routing import parse_key, stream_key, user_key
from realtime_shared.streams import CATALOG, SYSTEM_STREAM, Stream, is_valid_stream_id

__all__ = [
    "CATALOG",
    "SYSTEM_STREAM",
    "Envelope",
    "EnvelopeError",
    "Stream",
    "is_valid_stream_id",
    "parse_key",
    "stream_key",
    "user_key",
]
