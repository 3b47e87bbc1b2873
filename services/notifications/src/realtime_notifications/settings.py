"""The notifications service's settings: the contract's variables plus its own limits."""

from __future__ import annotations

from pydantic import Field, field_validator

from realtime_shared.settings import CommaList, RealtimeSettings, split_commas

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./notifications.db"

OUTBOX_BATCH_PER_USER = 20
"""A user's events are published one confirm at a time, so a batch lasts about this many
confirms (a few ms): short enough that a user with a backlog holds a batch briefly, and
users behind it go out in the same batch; long enough that a backlog costs one claim per
20 events."""

HISTORY_MAX_EVENTS_PER_USER = 1_000
"""A client that was away recovers up to this many of its user's latest events (the edge
asks for at most EDGE_RECOVERY_MAX, 500, by default); a user's events past it are kept
only while younger than HISTORY_MIN_AGE_SECONDS."""

HISTORY_MIN_AGE_SECONDS = 7 * 86_400.0
"""A week: a laptop closed over a long weekend (or a holiday) still recovers every event it
missed, whatever the count; older events are kept only as a user's last
HISTORY_MAX_EVENTS_PER_USER."""

DEV_CORS_ORIGIN_REGEX = r"^https?://(localhost|127(\.\d{1,3}){3}|\[::1\])(:\d+)?$"
"""In --dev the demo page is served by the edge on another loopback port: allow any."""


class NotificationsSettings(RealtimeSettings):
    database_url: str = DEFAULT_DATABASE_URL
    notifications_cors_origins: CommaList = Field(
        default_factory=list,
        description="exact origins (scheme://host[:port]) whose browsers may call the API",
    )
    outbox_poll_interval: float = Field(
        default=1.0,
        gt=0,
        description="seconds between outbox scans; commits in this process wake the relay at "
        "once, so polling only picks up other replicas' rows and missed wake-ups",
    )
    outbox_batch_size: int = Field(default=100, ge=1, le=10_000)
    outbox_batch_per_user: int = Field(
        default=OUTBOX_BATCH_PER_USER,
        ge=1,
        le=10_000,
        description="events of one user per relay batch, so one user's backlog cannot fill "
        "a batch and hold other users' events back",
    )
    outbox_retention_seconds: float = Field(
        default=86_400.0,
        ge=0,
        description="idempotency keys are kept this long, and sent outbox rows at least this "
        "long (longer while they are in the history window)",
    )
    history_max_events_per_user: int = Field(
        default=HISTORY_MAX_EVENTS_PER_USER,
        ge=0,
        description="sent events kept for recovery: each user's last this many...",
    )
    history_min_age_seconds: float = Field(
        default=HISTORY_MIN_AGE_SECONDS,
        ge=0,
        description="...and every event younger than this, however many",
    )
    outbox_backoff_cap: float = Field(
        default=5.0, gt=0, description="longest wait between retries while RabbitMQ fails"
    )
    publish_timeout: float = Field(
        default=5.0, gt=0, description="seconds to wait for a publisher confirm"
    )
    database_pool_size: int = Field(
        default=10, ge=1, le=100, description="database connections kept open per process"
    )
    max_body_bytes: int = Field(
        default=65_536, ge=1024, description="larger request bodies are refused with 413"
    )

    @field_validator("notifications_cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        return split_commas(value)

    def cors_origin_regex(self) -> str | None:
        return DEV_CORS_ORIGIN_REGEX if self.dev else None
