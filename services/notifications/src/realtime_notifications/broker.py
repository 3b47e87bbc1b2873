"""RabbitMQ through FastStream: the topic exchange, publishing with confirms, the AsyncAPI doc.

The relay talks to the `EventPublisher` port; tests swap in a fake.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol, cast

from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange
from faststream.specification import AsyncAPI

from realtime_notifications import __version__
from realtime_notifications.domain import STREAM, EventName
from realtime_notifications.outbox import PendingEvent
from realtime_notifications.schemas import EVENT_SCHEMAS
from realtime_shared.amqp import with_heartbeat

log = logging.getLogger(__name__)

CONNECTION_NAME = "notifications-service"

RECONNECT_INTERVAL = 1.0
"""Seconds between aio-pika's own reconnect attempts once a connection has existed."""


class BrokerUnavailable(Exception):
    """RabbitMQ could not take an event now; the relay retries later."""


class EventPublisher(Protocol):
    async def connect(self) -> None:
        """Raise `BrokerUnavailable` when the broker cannot be reached."""

    async def publish(self, event: PendingEvent) -> None:
        """Return only once the broker confirmed the event; else raise `BrokerUnavailable`."""

    async def is_connected(self) -> bool: ...

    async def close(self) -> None: ...


class RabbitEventPublisher:
    def __init__(self, amqp_url: str, exchange: str, *, publish_timeout: float) -> None:
        self.broker = RabbitBroker(
            with_heartbeat(amqp_url),
            reconnect_interval=RECONNECT_INTERVAL,
            # Named, so operators (and `rabbitmqctl close_connection`) can find it.
            client_properties=cast(Any, {"connection_name": CONNECTION_NAME}),
            description="The realtime topic exchange; the edge forwards these to WebSockets.",
            logger=log,
        )
        self.exchange = RabbitExchange(exchange, type=ExchangeType.TOPIC, durable=True)
        self._timeout = publish_timeout
        self._connected = False
        for name in EventName:
            self.broker.publisher(
                f"{STREAM}.{{user}}",
                self.exchange,
                title=f"{name}",
                description=f"`{name}` for one user; `{{user}}` is the percent-encoded user id.",
                schema=EVENT_SCHEMAS[name],
                persistent=True,
            )

    async def connect(self) -> None:
        if self._connected:
            return
        try:
            await self.broker.connect()
            await self.broker.declare_exchange(self.exchange)
        except Exception as exc:
            await self._reset()
            raise BrokerUnavailable(f"cannot reach RabbitMQ: {exc!r}") from exc
        self._connected = True

    async def publish(self, event: PendingEvent) -> None:
        await self.connect()
        try:
            await self.broker.publish(
                event.body,
                exchange=self.exchange,
                routing_key=event.routing_key,
                message_id=event.event_id,
                content_type="application/json",
                persist=True,
                # No queue for a user is normal (nobody is connected); it is not an error.
                mandatory=False,
                timeout=self._timeout,
            )
        except Exception as exc:
            raise BrokerUnavailable(f"publish failed: {exc!r}") from exc

    async def is_connected(self) -> bool:
        return self._connected and await self.broker.ping(timeout=0.5)

    async def close(self) -> None:
        await self._reset()

    async def _reset(self) -> None:
        self._connected = False
        try:
            await self.broker.stop()
        except Exception:  # closing a half-open connection may fail too; nothing to keep
            log.debug("closing the broker connection failed", exc_info=True)


def asyncapi_document(publisher: RabbitEventPublisher) -> dict[str, Any]:
    spec = AsyncAPI(
        publisher.broker,
        title="realtime notifications events",
        version=__version__,
        description="Events the notifications service publishes, through its outbox.",
    )
    document = spec.to_specification().to_jsonable()
    assert isinstance(document, dict)
    return document
