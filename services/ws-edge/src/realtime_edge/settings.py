"""The edge's settings: the contract's EDGE_* variables with documented defaults."""

from __future__ import annotations

from pydantic import Field, field_validator, model_validator

from realtime_shared.settings import (
    DEFAULT_INBOUND_EXCHANGE,
    CommaList,
    RealtimeSettings,
    split_commas,
)

DEFAULT_PING_INTERVAL = 54.0
"""Under the 60 s idle timeout of common proxies (nginx, ALBs), so they keep the socket."""

DEFAULT_PONG_TIMEOUT = 60.0
"""A peer silent for a whole ping interval plus a few seconds is gone."""

DEFAULT_SEND_QUEUE = 64
"""Messages buffered per connection: absorbs bursts; beyond it a client is too slow."""

DEFAULT_MAX_FRAME_BYTES = 65536
"""Client frames are small control messages; a bigger one is abuse or a bug (close 1009)."""

DEFAULT_MAX_MESSAGE_BYTES = 1 << 20
"""Producer messages: every recipient buffers its own copy, so one huge message sent to
many slow connections multiplies; 1 MiB is far above any notification or chat line."""

DEFAULT_QUEUE_MAX_BYTES = 128 << 20
"""The edge's RabbitMQ queue sheds its oldest messages past this: a healthy edge keeps it
near empty, and a lagging one must not push the broker into its memory alarm, which
blocks every publisher on every node. 0 turns the limit off."""

DEFAULT_RECOVERY_MAX = 500
"""Missed messages a recovery replays at most; a client further behind refetches state,
which is cheaper than replaying that much through one socket."""

DEFAULT_RECOVERY_TIMEOUT = 3.0
"""Seconds a history owner has to answer; a client waiting longer would rather refetch."""

DEFAULT_PUBLISH_RATE = 20.0
"""Client messages per second per connection, sustained: faster than anyone types, and
enough for a terminal's keystrokes; a script flooding a backend is held back."""

DEFAULT_PUBLISH_BURST = 40
"""Client messages a connection may send at once (a paste into a terminal, a reconnect
flushing queued chat lines) before the rate applies."""

DEFAULT_CONTROL_RATE = 10.0
"""Control frames (subscribe, unsubscribe, refresh, ping, anything not a publish) per
second per connection, sustained. An honest client sends a handful per minute: one
subscribe per page, a refresh per token lifetime, a ping per heartbeat; each subscribe
costs the edge broker bindings, so a script looping on them is held back."""

DEFAULT_CONTROL_BURST = 50
"""Control frames a connection may send at once: a reconnect resubscribing every catalog
stream one frame each, plus a refresh and pings, stays far below it."""

DEFAULT_UNBIND_DELAY = 5.0
"""A reload or a reconnect within this window keeps the broker binding instead of churning it."""

DEFAULT_MAX_CONNECTIONS_PER_USER = 32
"""Enough for many tabs and devices; stops one account from exhausting a node."""

DEFAULT_MAX_STREAMS_PER_CONNECTION = 16
"""More than the catalog holds, so only a misbehaving client meets it."""

DEFAULT_CLOSE_TIMEOUT = 10.0
"""How long a client being closed may take to read up to the close frame before the socket
is dropped (a stalled slow consumer never does)."""

DEFAULT_NOTIFICATIONS_URL = "http://localhost:8081"


class EdgeSettings(RealtimeSettings):
    """Everything `ws-edge` reads from the environment (and `.env`) when it starts."""

    edge_ping_interval: float = Field(default=DEFAULT_PING_INTERVAL, gt=0)
    edge_pong_timeout: float = Field(default=DEFAULT_PONG_TIMEOUT, gt=0)
    edge_send_queue: int = Field(default=DEFAULT_SEND_QUEUE, ge=1)
    edge_allowed_origins: CommaList = Field(default_factory=list)
    edge_max_frame_bytes: int = Field(default=DEFAULT_MAX_FRAME_BYTES, ge=128)
    edge_max_message_bytes: int = Field(default=DEFAULT_MAX_MESSAGE_BYTES, ge=1024)
    edge_queue_max_bytes: int = Field(default=DEFAULT_QUEUE_MAX_BYTES, ge=0)
    edge_recovery_max: int = Field(default=DEFAULT_RECOVERY_MAX, ge=1, le=100_000)
    edge_recovery_timeout: float = Field(default=DEFAULT_RECOVERY_TIMEOUT, gt=0)
    realtime_inbound_exchange: str = DEFAULT_INBOUND_EXCHANGE
    edge_publish_rate: float = Field(default=DEFAULT_PUBLISH_RATE, gt=0)
    edge_publish_burst: int = Field(default=DEFAULT_PUBLISH_BURST, ge=1)
    edge_control_rate: float = Field(default=DEFAULT_CONTROL_RATE, gt=0)
    edge_control_burst: int = Field(default=DEFAULT_CONTROL_BURST, ge=1)
    edge_unbind_delay: float = Field(default=DEFAULT_UNBIND_DELAY, ge=0)
    edge_max_connections_per_user: int = Field(default=DEFAULT_MAX_CONNECTIONS_PER_USER, ge=1)
    edge_max_streams_per_connection: int = Field(default=DEFAULT_MAX_STREAMS_PER_CONNECTION, ge=1)
    edge_close_timeout: float = Field(default=DEFAULT_CLOSE_TIMEOUT, gt=0)
    edge_demo: bool | None = Field(default=None, description="serve the demo page (default: --dev)")
    edge_notifications_url: str = DEFAULT_NOTIFICATIONS_URL
    edge_per_message_deflate: bool = False
    edge_log_connections: bool = Field(
        default=True, description="an INFO line per connection opened and per one closed"
    )

    @field_validator("edge_allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        return split_commas(value)

    @model_validator(mode="after")
    def _pong_after_ping(self) -> EdgeSettings:
        if self.edge_pong_timeout <= self.edge_ping_interval:
            raise ValueError(
                "EDGE_PONG_TIMEOUT must be longer than EDGE_PING_INTERVAL "
                "(a pong can only come after a ping)"
            )
        return self

    @property
    def demo_enabled(self) -> bool:
        return self.dev if self.edge_demo is None else self.edge_demo

    @property
    def pong_wait(self) -> float:
        """How long after a ping its pong may take: the pong deadline counts from the last pong."""
        return self.edge_pong_timeout - self.edge_ping_interval
