"""A history owner the tests script: a numbered log per user, answered over real RabbitMQ.

    async with ScriptedOwner(amqp_url, exchange) as owner:
        await owner.publish("alice", "n.created", {"n": 1})   # seq 1, in the log and live
        owner.trim_before = 5        # history older than seq 5 is gone
        owner.pause()                # requests wait until owner.resume()
        await owner.requested.wait() # a request has arrived

It answers as the contract says: the envelopes after `after` in seq order, at most
`limit`, `complete` only when the epoch matches and nothing after `after` is left out.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import Any

import aio_pika
import orjson


class ScriptedOwner:
    def __init__(
        self, amqp_url: str, exchange: str, stream: str = "notifications", epoch: str = "e1"
    ) -> None:
        self.amqp_url = amqp_url
        self.exchange_name = exchange
        self.stream = stream
        self.epoch = epoch
        self.log: dict[str, list[dict[str, Any]]] = {}
        self.trim_before = 1
        self.frozen: dict[str, list[dict[str, Any]]] | None = None
        self.requests: list[dict[str, Any]] = []
        self.requested = asyncio.Event()
        self._open = asyncio.Event()
        self._open.set()
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._channel: aio_pika.abc.AbstractChannel | None = None
        self._exchange: aio_pika.abc.AbstractExchange | None = None
        self._queue: aio_pika.abc.AbstractQueue | None = None
        self._tag: str | None = None

    @property
    def queue_name(self) -> str:
        return f"{self.exchange_name}.history.{self.stream}"

    async def __aenter__(self) -> ScriptedOwner:
        self._connection = await aio_pika.connect_robust(self.amqp_url)
        self._channel = await self._connection.channel(publisher_confirms=True)
        self._exchange = await self._channel.get_exchange(self.exchange_name)
        self._queue = await self._channel.declare_queue(self.queue_name, durable=True)
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open.set()
        assert self._channel is not None and self._connection is not None
        await self._channel.queue_delete(self.queue_name)
        await self._connection.close()

    async def start(self) -> None:
        """Consume the history queue (again)."""
        assert self._queue is not None
        self._tag = await self._queue.consume(self._answer)

    async def stop(self) -> None:
        """The owner goes away; its queue stays (requests wait there, then expire)."""
        assert self._queue is not None and self._tag is not None
        await self._queue.cancel(self._tag)
        self._tag = None

    def freeze(self) -> None:
        """Answer from the log as it is now, whatever is published later."""
        self.frozen = {user: list(entries) for user, entries in self.log.items()}

    def pause(self) -> None:
        self._open.clear()

    def resume(self) -> None:
        self._open.set()

    def last_seq(self, user: str) -> int:
        return len(self.log.get(user, []))

    async def publish(
        self,
        user: str,
        event: str,
        data: dict[str, Any] | None = None,
        *,
        live: bool = True,
        event_id: str | None = None,
    ) -> dict[str, Any]:
        """Append the next numbered envelope to `user`'s log and, if `live`, publish it
        (`event_id`: into its meta, for the invariant checker's dedupe)."""
        from realtime_shared.routing import user_key

        entries = self.log.setdefault(user, [])
        meta: dict[str, Any] = {"seq": len(entries) + 1, "epoch": self.epoch}
        if event_id is not None:
            meta["event_id"] = event_id
        envelope = {"stream": self.stream, "event": event, "data": data or {}, "meta": meta}
        entries.append(envelope)
        if live:
            assert self._exchange is not None
            await self._exchange.publish(
                aio_pika.Message(orjson.dumps(envelope), content_type="application/json"),
                routing_key=user_key(self.stream, user),
            )
        return envelope

    async def _answer(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            request = orjson.loads(message.body)
            self.requests.append(request)
            self.requested.set()
            await self._open.wait()
            log = self.log if self.frozen is None else self.frozen
            entries = log.get(request["user_id"], [])
            after, limit = request["after"], request["limit"]
            if request["epoch"] != self.epoch:
                messages: list[dict[str, Any]] = []
                complete = False
            else:
                kept = [e for e in entries if e["meta"]["seq"] >= self.trim_before]
                missed = [e for e in kept if e["meta"]["seq"] > after]
                messages = missed[:limit]
                reaches_back = after + 1 >= self.trim_before or after >= len(entries)
                # A position past the last seq was never in this history (a restore).
                known = after <= len(entries)
                complete = known and reaches_back and len(messages) == len(missed)
            body = {"epoch": self.epoch, "messages": messages, "complete": complete}
            assert self._channel is not None and message.reply_to is not None
            await self._channel.default_exchange.publish(
                aio_pika.Message(
                    orjson.dumps(body),
                    correlation_id=message.correlation_id,
                    content_type="application/json",
                ),
                routing_key=message.reply_to,
            )
