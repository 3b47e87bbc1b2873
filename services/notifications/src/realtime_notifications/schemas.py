"""Wire shapes (pydantic): request and response bodies, errors, and the events' envelopes.

They exist for validation and for the OpenAPI/AsyncAPI documents; the domain
does not depend on them.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    HttpUrl,
    TypeAdapter,
    ValidationError,
    create_model,
)

from realtime_notifications.domain import STREAM, EventName, Severity
from realtime_shared.routing import fits_routing_key

MAX_TYPE_CHARS = 255
MAX_TITLE_CHARS = 500
MAX_MESSAGE_CHARS = 10_000
MAX_URL_CHARS = 2_048
MAX_IDEMPOTENCY_KEY_CHARS = 255
MAX_METADATA_DEPTH = 32
"""orjson refuses to encode past 255 levels; nobody needs more than a few."""


def _storable(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and lone surrogates are not UTF-8: refuse both here.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode (no lone surrogates)") from None
    return value


def _storable_json(value: Any, depth: int = 0) -> Any:
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(f"must not nest deeper than {MAX_METADATA_DEPTH} levels")
    if isinstance(value, str):
        _storable(value)
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int) and not -(2**63) <= value < 2**63:
        raise ValueError("integers must fit 64 bits")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, dict):
        for key, item in value.items():
            _storable(key)
            _storable_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _storable_json(item, depth + 1)
    return value


def _storable_metadata(value: dict[str, Any]) -> dict[str, Any]:
    _storable_json(value, 0)
    return value


def _routable(user_id: str) -> str:
    if not fits_routing_key(STREAM, user_id):
        raise ValueError("is too long: its routing key must fit 255 bytes")
    return user_id


_HTTP_URL: TypeAdapter[HttpUrl] = TypeAdapter(HttpUrl)


def _link(value: str) -> str:
    """An `http`/`https` URL with a host, or a path on the page's own origin.

    Clients put it in an `href`, so it must never run code (`javascript:`, `data:`) or
    leave the origin while looking like a path. Browsers strip spaces and controls around a
    URL and tabs and newlines inside it (` JavaScript:` is `javascript:`, `/` tab `/x` is
    `//x`), so those are refused rather than judged; pydantic's URL type parses the rest
    as browsers do (WHATWG).
    """
    if any(c.isspace() or c < " " or c == "\x7f" for c in value):
        raise ValueError("must not contain spaces or control characters: percent-encode them")
    if value.startswith("/"):
        if value[1:2] in ("/", "\\"):  # a browser reads //host and /\host as another host
            raise ValueError("must be a path on this origin: it must not start with // or /\\")
        return value
    try:
        _HTTP_URL.validate_python(value)
    except ValidationError:
        raise ValueError(
            "must be an http or https URL with a host, or a path starting with /"
        ) from None
    return value


Text = Annotated[str, AfterValidator(_storable)]
UserId = Annotated[str, Field(min_length=1), AfterValidator(_storable), AfterValidator(_routable)]


class CreateNotification(BaseModel):
    model_config = ConfigDict(extra="forbid")

    user_id: UserId = Field(description="recipient; any non-empty id whose routing key fits")
    type: Annotated[Text, Field(min_length=1, max_length=MAX_TYPE_CHARS)] = Field(
        description="application-defined kind, e.g. `build.failed`"
    )
    title: Annotated[Text, Field(max_length=MAX_TITLE_CHARS)] | None = None
    message: Annotated[Text, Field(max_length=MAX_MESSAGE_CHARS)] | None = None
    severity: Severity = Severity.INFO
    action_url: (
        Annotated[
            Text,
            Field(
                max_length=MAX_URL_CHARS,
                description="an http or https URL, or a path starting with / (not //)",
            ),
            AfterValidator(_link),
        ]
        | None
    ) = None
    metadata: Annotated[dict[str, Any], AfterValidator(_storable_metadata)] | None = None


class NotificationOut(BaseModel):
    id: str = Field(description="UUID")
    user_id: str
    type: str
    title: str | None
    message: str | None
    severity: Severity
    action_url: str | None
    metadata: dict[str, Any]
    is_read: bool
    read_at: datetime | None
    created_at: datetime
    updated_at: datetime


class UnreadCount(BaseModel):
    count: int


class Deleted(BaseModel):
    deleted: Literal[True] = True


class Updated(BaseModel):
    updated: int


class ErrorDetail(BaseModel):
    code: str = Field(description="UNAUTHORIZED, FORBIDDEN, NOT_FOUND, VALIDATION_ERROR, ...")
    message: str


class ErrorBody(BaseModel):
    success: Literal[False] = False
    error: ErrorDetail


class EventMeta(BaseModel):
    event_id: str = Field(description="unique per event: deduplicate on it")
    occurred_at: datetime
    seq: int = Field(ge=1, description="1, 2, 3... per user, no gaps: recover after the last seen")
    epoch: str = Field(
        min_length=1, max_length=64, description="changes only when the numbering restarts"
    )


class NotificationData(BaseModel):
    notification: NotificationOut
    notification_id: str


class DeletedData(BaseModel):
    notification_id: str


class ReadAllData(BaseModel):
    count: int = Field(description="notifications that were unread and are now read")


def _envelope(name: EventName, data: type[BaseModel]) -> type[BaseModel]:
    fields: dict[str, Any] = {
        "stream": (Literal["notifications"], STREAM),
        "event": (Literal[name.value], name.value),
        "data": (data, ...),
        "meta": (EventMeta, ...),
    }
    title = "".join(part.title() for part in name.value.replace(".", "_").split("_"))
    return create_model(title, **fields)


EVENT_SCHEMAS: dict[EventName, type[BaseModel]] = {
    EventName.CREATED: _envelope(EventName.CREATED, NotificationData),
    EventName.READ: _envelope(EventName.READ, NotificationData),
    EventName.UPDATED: _envelope(EventName.UPDATED, NotificationData),
    EventName.DELETED: _envelope(EventName.DELETED, DeletedData),
    EventName.READ_ALL: _envelope(EventName.READ_ALL, ReadAllData),
}
