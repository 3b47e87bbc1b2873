"""Interactive streams, a backend's side: consume client messages, answer one connection.

The edge publishes each client message on an interactive stream (`chat`, `ssh`, `rdp`)
to the inbound topic exchange, routing key `<stream>.<user>`, body
`{"stream", "event", "data", "meta": {"user_id", "connection_id", "message_id",
"sent_at", "reply_to", "session_id"?}}`. A `Backend` consumes them on a FastStream
broker the application runs, and answers:

    broker = RabbitBroker(amqp_url)
    backend = Backend(broker, name="chat-example",
                      exchange="realtime", inbound_exchange="realtime.inbound")

    @backend.subscriber("chat")
    async def on_chat(message: InboundMessage) -> None:
        await backend.reply(message, "message.echo", {"text": message.data["text"]})
        await backend.publish_to_user("chat", "bob", "message.created", {...})

- Each subscribed stream has one durable queue, `<inbound_exchange>.<name>.<stream>`,
  bound to `<stream>.*`: every replica of a backend consumes it (competing consumers,
  each message handled by one of them), and messages wait there while none runs.
- The body is validated into an `InboundMessage`. A malformed one (not JSON, a field
  missing or of the wrong type, `reply_to` not an `@` key, another stream than the
  queue's, a user the routing key does not name) is logged in one line, counted and
  dropped: it would fail the same way on every replica, forever.
- `reply` publishes to the realtime exchange with routing key `message.reply_to`: the
  edge holding that connection delivers it to that connection only, while it holds the
  stream. `publish_to_user` reaches every connection of a user holding the stream.
  Both wait for RabbitMQ's confirm and raise when it does not take the message
  (`realtime_shared.publisher.PublishError`, nothing sent, for an event or a user id
  that cannot make a message).

A handler that raises: the message is requeued once (RabbitMQ hands it to this or
another replica at once), and dropped if it fails again; both are logged with the
traceback and counted. One retry covers a blip (a database failover, a reconnect);
more would keep retrying a message that fails every time, ahead of the others. The
client already had its `published` acknowledgement and is not told: a handler that
wants it told catches its own errors and replies (`message.rejected` in the chat
example). A message whose handler did not finish (the process was stopped or died)
goes back to the queue, redelivered (which counts as its second attempt): handlers may
see a message twice, so make them idempotent (the chat example keys its store by
`message_id`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from faststream import AckPolicy
from faststream.rabbit import ExchangeType, RabbitBroker, RabbitExchange, RabbitQueue
from faststream.rabbit.message import RabbitMessage
from faststream.rabbit.schemas import Channel
from faststream.rabbit.subscriber import RabbitSubscriber
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from realtime_shared.envelope import JsonObject
from realtime_shared.history import validation_summary
from realtime_shared.publisher import (
    CONTENT_TYPE,
    PUBLISH_TIMEOUT,
    checked_user_key,
    envelope_body,
)
from realtime_shared.routing import MAX_ROUTING_KEY_BYTES, fits_routing_key, user_key
from realtime_shared.settings import DEFAULT_EXCHANGE, DEFAULT_INBOUND_EXCHANGE
from realtime_shared.streams import is_interactive

log = logging.getLogger(__name__)

REPLY_PREFIX = "@"
"""Routing keys that name one connection start with it; no stream id can."""

MAX_EVENT_CHARS = 128
"""The edge refuses longer event names from clients."""

BACKEND_PREFETCH = 20
"""Messages one replica works on at once per stream: each is handled in a task of its own,
so a handler waiting on its database overlaps the next ones; a slow replica leaves the
rest of the queue to the others."""


class InboundMessage(BaseModel):
    """One client message, as the edge published it: who sent it and where to answer."""

    model_config = ConfigDict(frozen=True)

    stream: str
    event: str
    data: JsonObject
    user_id: str = Field(description="from the sender's token, never from its frame")
    connection_id: str
    message_id: str = Field(description="the AMQP message_id; the client's `published` has it")
    sent_at: datetime = Field(description="when the edge published it")
    reply_to: str = Field(description="the routing key of the sender's connection (`@...`)")
    session_id: str | None = Field(
        default=None, description="the client's session on the stream (a terminal), if any"
    )


class _Meta(BaseModel):
    # Strict: a number is not a user id. Unknown fields are ignored (a newer edge).
    model_config = ConfigDict(strict=True)

    user_id: str = Field(min_length=1)
    connection_id: str = Field(min_length=1)
    message_id: str = Field(min_length=1)
    sent_at: AwareDatetime
    reply_to: str = Field(
        min_length=2, max_length=MAX_ROUTING_KEY_BYTES, pattern=f"^{REPLY_PREFIX}"
    )
    session_id: str | None = None


class _Body(BaseModel):
    model_config = ConfigDict(strict=True)

    stream: str
    event: str = Field(min_length=1, max_length=MAX_EVENT_CHARS)
    data: JsonObject | None = None
    meta: _Meta


class MalformedMessage(ValueError):
    """A body no handler should see; the message says why, without its content."""


def parse_inbound(body: bytes, routing_key: str | None, stream: str) -> InboundMessage:
    """Validate what arrived on `stream`'s queue with `routing_key` (no I/O)."""
    try:
        parsed = _Body.model_validate_json(body)
    except ValidationError as exc:
        raise MalformedMessage(validation_summary(exc)) from None
    if parsed.stream != stream:
        raise MalformedMessage("stream is not the queue's stream")
    meta = parsed.meta
    if not fits_routing_key(stream, meta.user_id):
        raise MalformedMessage("meta.user_id fits no routing key")
    # The edge routes by the user of the token: a body naming someone else is not its.
    if routing_key is not None and routing_key != user_key(stream, meta.user_id):
        raise MalformedMessage("the routing key names another user than meta.user_id")
    return InboundMessage(
        stream=parsed.stream,
        event=parsed.event,
        data=parsed.data or {},
        user_id=meta.user_id,
        connection_id=meta.connection_id,
        message_id=meta.message_id,
        sent_at=meta.sent_at,
        reply_to=meta.reply_to,
        session_id=meta.session_id,
    )


class Outcome(StrEnum):
    HANDLED = "handled"
    """The handler returned; the message is acknowledged."""
    MALFORMED = "malformed"
    """Not a valid client message: dropped without calling the handler."""
    RETRIED = "retried"
    """The handler raised: requeued for one more attempt."""
    FAILED = "failed"
    """The handler raised on the second attempt too: dropped."""


class BackendMetrics(Protocol):
    def observe_inbound(self, stream: str, outcome: Outcome, seconds: float) -> None:
        """One message taken off `stream`'s queue: what became of it, how long it took."""


class _NoMetrics:
    def observe_inbound(self, stream: str, outcome: Outcome, seconds: float) -> None:
        pass


Handler = Callable[[InboundMessage], Awaitable[None]]


async def _the_message(message: RabbitMessage) -> RabbitMessage:
    """Hand the consumer FastStream's message itself as its argument, body undecoded
    (`parse_inbound` validates it, and logs one line).

    Not through the `faststream.rabbit.annotations.RabbitMessage` annotation: that is a
    `Context`, and FastDepends runs a `Context`'s synchronous `use` in a worker thread, a
    thread hop per message. (FastStream refuses the message class as a handler's
    annotation, hence `Any` there.)
    """
    return message


class Backend:
    """A backend's client messages and answers, on a FastStream broker it runs itself."""

    def __init__(
        self,
        broker: RabbitBroker,
        *,
        name: str,
        exchange: str = DEFAULT_EXCHANGE,
        inbound_exchange: str = DEFAULT_INBOUND_EXCHANGE,
        metrics: BackendMetrics | None = None,
        publish_timeout: float = PUBLISH_TIMEOUT,
    ) -> None:
        if not name or "." in name:
            raise ValueError("a backend name is a non-empty word without dots, e.g. 'chat'")
        self.broker = broker
        self.name = name
        # Declared exactly as the edge declares them (durable topic, no arguments): any
        # other property would make RabbitMQ refuse the second declaration.
        self.exchange = RabbitExchange(exchange, type=ExchangeType.TOPIC, durable=True)
        self.inbound_exchange = RabbitExchange(
            inbound_exchange, type=ExchangeType.TOPIC, durable=True
        )
        self.publish_timeout = publish_timeout
        self.subscribers: dict[str, RabbitSubscriber] = {}
        self._observe = (metrics or _NoMetrics()).observe_inbound

    def queue_name(self, stream: str) -> str:
        return f"{self.inbound_exchange.name}.{self.name}.{stream}"

    def subscriber(
        self, stream: str, *, prefetch: int = BACKEND_PREFETCH
    ) -> Callable[[Handler], Handler]:
        """Decorate the handler of `stream`'s client messages (one handler per stream)."""
        if not is_interactive(stream):
            raise ValueError(f"{stream!r} is not an interactive stream: clients cannot publish")
        if stream in self.subscribers:
            raise ValueError(f"{stream!r} already has a handler in this backend")

        def register(handler: Handler) -> Handler:
            self.subscribers[stream] = self._subscribe(stream, handler, prefetch)
            return handler

        return register

    def _subscribe(self, stream: str, handler: Handler, prefetch: int) -> RabbitSubscriber:
        queue = self.queue_name(stream)

        async def consume(raw: Any) -> None:  # the RabbitMessage, from `_the_message`
            started = time.perf_counter()
            outcome = await self._handle(stream, queue, handler, raw)
            self._observe(stream, outcome, time.perf_counter() - started)

        subscriber = self.broker.subscriber(
            RabbitQueue(queue, durable=True, routing_key=f"{stream}.*"),
            self.inbound_exchange,
            channel=Channel(prefetch_count=prefetch),
            ack_policy=AckPolicy.MANUAL,  # ours, below: the retry needs `redelivered`
            no_reply=True,
            decoder=_the_message,
            title=queue,
            description=f"Client messages on `{stream}`, for the `{self.name}` backend.",
        )
        subscriber(consume)
        return subscriber

    async def _handle(
        self, stream: str, queue: str, handler: Handler, raw: RabbitMessage
    ) -> Outcome:
        delivery = raw.raw_message
        try:
            message = parse_inbound(delivery.body, delivery.routing_key, stream)
        except MalformedMessage as exc:
            log.warning("client message on %s dropped: %s", queue, exc)
            await raw.ack()
            return Outcome.MALFORMED
        try:
            await handler(message)
        except Exception:
            if delivery.redelivered:
                log.exception(
                    "handling %s %r failed again; dropped",
                    queue,
                    message.event,
                    extra={"user_id": message.user_id, "stream": stream},
                )
                await raw.reject(requeue=False)
                return Outcome.FAILED
            log.exception(
                "handling %s %r failed; requeued once",
                queue,
                message.event,
                extra={"user_id": message.user_id, "stream": stream},
            )
            await raw.nack(requeue=True)
            return Outcome.RETRIED
        await raw.ack()
        return Outcome.HANDLED

    async def reply(
        self,
        message: InboundMessage,
        event: str,
        data: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
    ) -> str:
        """Answer the one connection `message` came from; returns the message id.

        `meta.session_id` is the message's, unless `meta` sets one. Nothing happens when
        the connection is gone or no longer holds the stream (the edge drops it).
        """
        full_meta = dict(meta or {})
        if message.session_id is not None:
            full_meta.setdefault("session_id", message.session_id)
        body = envelope_body(message.stream, event, data, full_meta)
        return await self._publish(message.reply_to, event, body)

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

    async def _publish(self, routing_key: str, event: str, body: bytes) -> str:
        # Declared once per connection (FastStream caches it), so the first reply does not
        # close the channel when no edge has declared the exchange yet.
        await self.broker.declare_exchange(self.exchange)
        message_id = uuid.uuid4().hex
        await self.broker.publish(
            body,
            exchange=self.exchange,
            routing_key=routing_key,
            message_id=message_id,
            message_type=event,
            content_type=CONTENT_TYPE,
            # Nobody connected, or the connection gone, is normal: not an error.
            mandatory=False,
            timeout=self.publish_timeout,
        )
        return message_id
