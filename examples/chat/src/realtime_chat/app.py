"""The chat backend: direct messages taken from `chat`, stored, numbered, published.

    chat = ChatBackend(settings)
    await chat.start()     # the database, then consuming `chat` and its history requests
    ...
    await chat.stop()      # the message in progress is finished first

One FastStream broker (one RabbitMQ connection) carries both consumers: client messages
through `realtime_shared.backend`, history requests through `realtime_shared.history`.

Messages are handled one at a time per replica (prefetch 1), so each user's messages
are published in seq order, as recovery wants. Replicas consume the one queue side by
side; two of them may publish one user's messages out of order for an instant, which a
client sees as a skipped seq and recovers from, exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, cast

from faststream.rabbit import RabbitBroker

from realtime_chat.domain import REJECTED, SEND, STREAM, Rejected, parse_send
from realtime_chat.settings import ChatSettings
from realtime_chat.store import ChatStore
from realtime_shared.amqp import with_heartbeat
from realtime_shared.backend import Backend, InboundMessage
from realtime_shared.history import history_queue, history_subscriber

log = logging.getLogger(__name__)

NAME = "chat-example"
"""The backend's name: its queue is `<REALTIME_INBOUND_EXCHANGE>.chat-example.chat`."""

RECONNECT_INTERVAL = 1.0
"""Seconds between reconnect attempts once connected (aio-pika reconnects by itself)."""

FIRST_START_RETRY = 0.1
START_RETRY_CAP = 5.0
"""Seconds between attempts to connect at start, doubling from 0.1 up to 5: a broker
starting beside us is used at once, a down one costs a log line per 5 s."""

STOP_TIMEOUT = 5.0
"""Seconds a stopping backend gives the message in progress; unfinished, it is redelivered."""


class ChatBackend:
    def __init__(self, settings: ChatSettings) -> None:
        self.settings = settings
        self.store = ChatStore(settings.chat_database_url)
        self.broker = RabbitBroker(
            with_heartbeat(settings.amqp_url),
            reconnect_interval=RECONNECT_INTERVAL,
            # Named, so operators (and `rabbitmqctl close_connection`) can find it.
            client_properties=cast(Any, {"connection_name": NAME}),
            graceful_timeout=STOP_TIMEOUT,
            logger=log,
            log_level=logging.DEBUG,  # FastStream's line per message is too many at INFO
        )
        self.backend = Backend(
            self.broker,
            name=NAME,
            exchange=settings.realtime_exchange,
            inbound_exchange=settings.realtime_inbound_exchange,
        )
        self.backend.subscriber(STREAM, prefetch=1)(self.on_message)
        history_subscriber(
            self.broker, exchange=settings.realtime_exchange, stream=STREAM, source=self.store
        )

    async def on_message(self, message: InboundMessage) -> None:
        if message.event != SEND:
            await self.reject(message, f"unknown event {message.event!r}: send {SEND!r}")
            return
        try:
            direct = parse_send(message.user_id, message.data)
        except Rejected as exc:
            await self.reject(message, str(exc))
            return
        # Stored and numbered first; then published as stored, in seq order per user.
        for delivery in await self.store.send(message.message_id, direct, message.sent_at):
            envelope = delivery.envelope
            await self.backend.publish_to_user(
                STREAM, delivery.user_id, envelope.event, envelope.data, envelope.meta
            )

    async def reject(self, message: InboundMessage, reason: str) -> None:
        """Tell the sending connection only; `message_id` matches its `published` reply."""
        data = {"reason": reason, "message_id": message.message_id}
        await self.backend.reply(message, REJECTED, data)

    async def start(self) -> None:
        await self.store.open()
        await self.consume()

    async def consume(self) -> None:
        """Connect and consume, retrying until RabbitMQ lets us."""
        delay = FIRST_START_RETRY
        while True:
            try:
                await self.broker.start()
            except Exception as exc:
                log.warning("cannot reach RabbitMQ yet (%r); retrying in %.1f s", exc, delay)
                with contextlib.suppress(Exception):
                    await self.broker.stop()  # a fresh connection next time
                await asyncio.sleep(delay)
                delay = min(delay * 2, START_RETRY_CAP)
            else:
                break
        log.info(
            "consuming chat: messages from %s, history requests from %s",
            self.backend.queue_name(STREAM),
            history_queue(self.settings.realtime_exchange, STREAM),
        )

    async def stop(self) -> None:
        with contextlib.suppress(Exception):  # a connection half gone may fail to close
            await self.broker.stop()
        await self.store.dispose()
