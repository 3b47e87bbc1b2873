"""The one frame format: ``{"stream", "event", "data"?, "meta"?}`` as UTF-8 JSON."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

JsonObject = dict[str, Any]

MAX_EPOCH_CHARS = 64
"""`meta.epoch` is 1 to this many characters: producers, the edge and clients check it."""

Position = tuple[str, int]
"""(epoch, seq) of a message, or of the last one a client has seen."""


def position_of(obj: Mapping[str, Any]) -> Position | None:
    """`(meta.epoch, meta.seq)` of a parsed envelope, when it has both."""
    meta = obj.get("meta")
    if not isinstance(meta, dict):
        return None
    epoch, seq = meta.get("epoch"), meta.get("seq")
    if isinstance(epoch, str) and isinstance(seq, int) and not isinstance(seq, bool):
        return epoch, seq
    return None


class EnvelopeError(ValueError):
    """Bytes that are not a valid envelope."""


@dataclass(frozen=True, slots=True)
class Envelope:
    stream: str
    event: str
    data: JsonObject = field(default_factory=dict)
    meta: JsonObject = field(default_factory=dict)

    def to_dict(self) -> JsonObject:
        out: JsonObject = {"stream": self.stream, "event": self.event}
        if self.data:
            out["data"] = self.data
        if self.meta:
            out["meta"] = self.meta
        return out

    def to_bytes(self) -> bytes:
        return orjson.dumps(self.to_dict())

    def to_text(self) -> str:
        return self.to_bytes().decode()

    @classmethod
    def from_dict(cls, obj: object) -> Envelope:
        if not isinstance(obj, dict):
            raise EnvelopeError("envelope must be a JSON object")
        stream, event = obj.get("stream"), obj.get("event")
        data = {} if obj.get("data") is None else obj["data"]
        meta = {} if obj.get("meta") is None else obj["meta"]
        if not isinstance(stream, str) or not stream:
            raise EnvelopeError("envelope 'stream' must be a non-empty string")
        if not isinstance(event, str) or not event:
            raise EnvelopeError("envelope 'event' must be a non-empty string")
        if not isinstance(data, dict):
            raise EnvelopeError("envelope 'data' must be an object")
        if not isinstance(meta, dict):
            raise EnvelopeError("envelope 'meta' must be an object")
        return cls(stream, event, data, meta)

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> Envelope:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise EnvelopeError(f"envelope is not valid JSON: {exc}") from None
        return cls.from_dict(obj)
