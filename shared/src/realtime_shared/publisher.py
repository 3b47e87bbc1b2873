"""Publish events to WebSocket clients from any backend: one call per user, users or stream.

    async with Publisher(amqp_url) as publisher:
        await publisher.publish_to_user("notifications", "alice", "invoice.paid", {"id": 7})

Keys come from `realtime_shared.routing`, so they match what the edge binds. Each publish
waits for RabbitMQ's confirm; it raises when the broker is unreachable. A producer that
must never lose an event while RabbitMQ is down writes it to an outbox first (as the
notifications service does) and publishes from there.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import aio_pika
from aio_pika.abc import AbstractExchange, AbstractRobustConnection

from realtime_shared.envelope import Envelope
from realtime_shared.routing import RoutingKeyError, stream_key, user_key
from realtime_shared.settings import DEFAULT_AMQP_URL, DEFAULT_EXCHANGE, RealtimeSettings
from realtime_shared.streams import CATALOG

CONTENT_TYPE = "application/json"

PUBLISH_TIMEOUT = 10.0
"""Seconds to wait for the broker's confirm before a publish fails."""


class PublishError(ValueError):
    """An event this helper refuses to publish (nothing was sent)."""


class Publisher:
    """A confirmed publisher on the realtime topic exchange (declared durable if missing)."""

    def __init__(
        self,
        amqp_url: str = DEFAULT_AMQP_URL,
        exchange: str = DEFAULT_EXCHANGE,
        *,
        connection_name: str = "realtime-publisher",
        timeout: float = PUBLISH_TIMEOUT,
    ) -> None:
        self.amqp_url = amqp_url
        self.exchange_name = exchange
        self.connection_name = connection_name
        self.timeout = timeout
        self._connection: AbstractRobustConnection | None = None
        self._exchange: AbstractExchange | None = None

    @classmethod
    def from_settings(cls, settings: RealtimeSettings, **kwargs: Any) -> Publisher:
        return cls(settings.amqp_url, settings.realtime_exchange, **kwargs)

    async def connect(self) -> None:
        if self._connection is not None:
            return
        connection = await aio_pika.connect_robust(
            self.amqp_url, client_properties={"connection_name": self.connection_name}
        )
        try:
            channel = await connection.channel(publisher_confirms=True)
            self._exchange = await channel.declare_exchange(
                self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
            )
        except BaseException:
            await connection.close()
            raise
        self._connection = connection

    async def close(self) -> None:
        connection, self._connection, self._exchange = self._connection, None, None
        if connection is not None:
            await connection.close()

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def publish_to_user(
        self,
        stream: str,
        user_id: str,
        event: str,
        data: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> str:
        """Deliver to every connection of `user_id` holding `stream`; returns the message id."""
        key = checked_user_key(stream, user_id)
        body = envelope_body(stream, event, data, meta)
        return await self._publish(key, event, body)

    async def publish_to_users(
        self,
        stream: str,
        user_ids: Iterable[str],
        event: str,
        data: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> list[str]:
        """One publish per user (the contract's fan-out); all keys are checked before any is sent.

        The users share one `meta.event_id`: it is one event, delivered to each of them.
        """
        keys = list(dict.fromkeys(checked_user_key(stream, user_id) for user_id in user_ids))
        body = envelope_body(stream, event, data, meta)
        return [await self._publish(key, event, body) for key in keys]

    async def publish_to_stream(
        self,
        stream: str,
        event: str,
        data: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> str:
        """Deliver to every connection holding `stream`, whoever its user."""
        _check_stream(stream)
        body = envelope_body(stream, event, data, meta)
        return await self._publish(stream_key(stream), event, body)

    async def _publish(self, routing_key: str, event: str, body: bytes) -> str:
        await self.connect()
        assert self._exchange is not None
        message_id = uuid.uuid4().hex
        message = aio_pika.Message(
            body,
            content_type=CONTENT_TYPE,
            message_id=message_id,
            type=event,
            timestamp=datetime.now(UTC),
        )
        await self._exchange.publish(message, routing_key=routing_key, timeout=self.timeout)
        return message_id


def _check_stream(stream: str) -> None:
    if stream not in CATALOG:
        raise PublishError(
            f"stream {stream!r} is not in the catalog ({', '.join(sorted(CATALOG))}); "
            "the edge would deliver it to nobody"
        )


def checked_user_key(stream: str, user_id: str) -> str:
    """The routing key of `user_id` on `stream`, or PublishError saying why there is none."""
    _check_stream(stream)
    if not isinstance(user_id, str):
        raise PublishError(f"user id must be a string, not {type(user_id).__name__}")
    try:
        return user_key(stream, user_id)
    except (RoutingKeyError, UnicodeEncodeError) as exc:
        raise PublishError(f"cannot route to user {user_id[:40]!r}: {exc}") from None


def envelope_body(
    stream: str, event: str, data: Mapping[str, Any] | None, meta: Mapping[str, Any] | None
) -> bytes:
    """The envelope's bytes, `meta.event_id` and `meta.occurred_at` added; PublishError when
    `event`, `data` or `meta` could not make one."""
    if not isinstance(event, str) or not event:
        raise PublishError("event must be a non-empty string, e.g. 'invoice.paid'")
    if data is not None and not isinstance(data, Mapping):
        raise PublishError(f"data must be a JSON object (a mapping), not {type(data).__name__}")
    if meta is not None and not isinstance(meta, Mapping):
        raise PublishError(f"meta must be a JSON object (a mapping), not {type(meta).__name__}")
    # Consumers deduplicate and order by these, as for the notifications service's events.
    full_meta = {
        "event_id": uuid.uuid4().hex,
        "occurred_at": datetime.now(UTC).isoformat(),
        **(meta or {}),
    }
    try:
        return Envelope(stream, event, dict(data or {}), full_meta).to_bytes()
    except TypeError as exc:
        raise PublishError(f"data or meta is not JSON-serializable: {exc}") from None
