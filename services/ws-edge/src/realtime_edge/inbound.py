"""Client messages on interactive streams, to the backends that consume them.

A `publish` frame that passed every check becomes one message on the inbound topic
exchange (`REALTIME_INBOUND_EXCHANGE`), routing key `<stream>.<user>`, published
`mandatory` with publisher confirms: the client hears `published` only once RabbitMQ
has it in a backend's queue, and `NO_HANDLER` when no backend's queue is bound for it
(RabbitMQ returns the message). The body names the user from the token and the
connection to answer (`meta.reply_to`, a routing key starting with `@`): a backend
publishes its reply to the realtime exchange with that key, and the one binding
`@<node>.*` of this process brings it back to that connection.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
from aiormq.abc import AbstractChannel
from aiormq.exceptions import AMQPError, PublishError
from pamqp import commands as spec

from realtime_edge.metrics import EdgeMetrics

CONFIRM_TIMEOUT = 5.0
"""Seconds to wait for RabbitMQ's confirm before telling the client it is unavailable."""

NO_HANDLER = "NO_HANDLER"
UNAVAILABLE = "UNAVAILABLE"
INVALID_FRAME = "INVALID_FRAME"


class InboundRefused(Exception):
    """RabbitMQ did not take a client message; `code` is the error frame's code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def reply_key(node_id: str, connection_id: str) -> str:
    """The routing key a backend answers one connection with."""
    return f"@{node_id}.{connection_id}"


def replies_binding(node_id: str) -> str:
    """The one binding that brings every reply for this process's connections."""
    return f"@{node_id}.*"


class Inbound:
    """Publishes client messages on the broker link's request channel (attached per session)."""

    def __init__(self, exchange: str, metrics: EdgeMetrics) -> None:
        self.exchange = exchange
        self._metrics = metrics
        self._channel: AbstractChannel | None = None

    def attach(self, channel: AbstractChannel) -> None:
        self._channel = channel

    def detach(self) -> None:
        self._channel = None

    async def publish(
        self,
        routing_key: str,
        stream: str,
        event: str,
        data: dict[str, Any],
        meta: dict[str, Any],
    ) -> str:
        """Publish and wait for the confirm; the message id, or InboundRefused."""
        channel = self._channel
        if channel is None:
            raise InboundRefused(UNAVAILABLE, "the edge is not connected to RabbitMQ")
        message_id = uuid.uuid4().hex
        meta = {
            **meta,
            "message_id": message_id,
            "sent_at": datetime.now(UTC).isoformat(),
        }
        try:
            body = orjson.dumps({"stream": stream, "event": event, "data": data, "meta": meta})
        except orjson.JSONEncodeError:
            # orjson reads deeper nesting (1024) than it writes (255): a frame that parsed
            # may still not be a message.
            raise InboundRefused(INVALID_FRAME, "'data' is nested too deeply") from None
        properties = spec.Basic.Properties(content_type="application/json", message_id=message_id)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(CONFIRM_TIMEOUT):
                confirmation = await channel.basic_publish(
                    body,
                    exchange=self.exchange,
                    routing_key=routing_key,
                    properties=properties,
                    mandatory=True,
                )
        except PublishError:
            raise InboundRefused(NO_HANDLER, f"no backend consumes {stream!r} messages") from None
        except (TimeoutError, AMQPError, ConnectionError, RuntimeError) as exc:
            raise InboundRefused(UNAVAILABLE, f"RabbitMQ did not take it: {exc!r}") from None
        if not isinstance(confirmation, spec.Basic.Ack):
            raise InboundRefused(UNAVAILABLE, "RabbitMQ refused the message")
        self._metrics.publish_confirm_seconds.observe(time.perf_counter() - started)
        return message_id
