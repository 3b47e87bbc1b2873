"""History over RabbitMQ: the owner of a stream's history answers what a user missed.

A requester (the edge, for a client that recovers) publishes a `HistoryRequest`
`{"user_id", "epoch", "after", "limit"}` through the default exchange to the
durable queue `<exchange>.history.<stream>`, with `reply_to` and
`correlation_id` set. The owner answers through the default exchange to
`reply_to`, with that `correlation_id`, a `HistoryReply`
`{"epoch", "messages", "complete"}`. Every replica of the owner consumes the
one queue (competing consumers), so each request is answered by one of them.

A producer brings a `HistorySource` (its current epoch, and a page of the
envelopes it stored after a seq; `realtime_shared.positions` numbers them) and
runs a `HistoryResponder`, or adds `history_subscriber` to a FastStream broker
it already runs:

    responder = HistoryResponder(amqp_url, exchange="realtime", stream="chat",
                                 source=ChatHistory(engine))
    responder.start()                     # connects in the background, retrying
    ready = await responder.is_ready()    # for /readyz: consuming the queue now
    await responder.stop()

Where the contract is silent:

- `limit` above `MAX_HISTORY_LIMIT` is served as that many (the answer then says
  `complete: false` if more were missed).
- A malformed request (not a JSON object of those four fields, no `reply_to` or
  `correlation_id`, a user id no routing key can hold) is logged in one line,
  counted and not answered; its requester times out. An answer could only look
  like "history trimmed", and would hide the requester's bug behind that.
- A source that fails (its database is down) is answered at once with no
  messages and `complete: false`, so its requester need not wait for a timeout.
- `complete` is false when `after` is past the key's last seq: the requester saw
  messages this database does not hold (restored from a backup with its epoch).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Any, Protocol, cast

import orjson
from aio_pika import IncomingMessage
from faststream.rabbit import RabbitBroker, RabbitQueue
from faststream.rabbit.message import RabbitMessage
from faststream.rabbit.schemas import Channel
from faststream.rabbit.subscriber import RabbitSubscriber
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from realtime_shared.amqp import with_heartbeat
from realtime_shared.envelope import MAX_EPOCH_CHARS, JsonObject
from realtime_shared.routing import fits_routing_key

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/json"

MAX_HISTORY_LIMIT = 1_000
"""Most messages one answer carries, whatever `limit` asks: bounds an answer's size (about
0.5 MB of notifications) and its query's time. The edge asks for at most
EDGE_RECOVERY_MAX (500 by default); a client that missed more refetches anyway."""

MAX_SEQ = 2**63 - 1
"""Seqs are 64-bit (BIGINT): a larger `after` could not even be compared by PostgreSQL."""

HISTORY_PREFETCH = 10
"""Requests one replica works on at once: enough to overlap database round trips, few
enough that a slow replica leaves the rest of the queue to the others."""

REPLY_TIMEOUT = 5.0
"""Seconds to wait for RabbitMQ to confirm an answer; the requester gives up sooner."""

REPLY_RETRIES = (0.1, 0.2, 0.4)
"""Seconds before each new attempt at sending an answer. Right after a reconnect, aio-pika
reopens channels one after another: a request can arrive on the consumer's channel while
the one answers go out on is still reopening (a few ms); 0.7 s in all stays well inside
the requester's wait."""

STOP_TIMEOUT = 3.0
"""Seconds a stopping responder gives the requests in progress to be answered: about as
long as a requester waits (EDGE_RECOVERY_TIMEOUT), after which an answer is useless."""

RECONNECT_INTERVAL = 1.0
"""Seconds between aio-pika's reconnect attempts once the connection existed."""

FIRST_START_RETRY = 0.1
"""Seconds before trying to connect again at start, doubled per failure: a broker that is
itself starting (compose brings both up together) is taken as soon as it listens."""

START_RETRY_CAP = 5.0
"""Longest wait between attempts to connect while RabbitMQ is unreachable at start: a
broker coming back is used within 5 s, and a down one costs one log line per 5 s."""

READY_PING_TIMEOUT = 0.5
"""Seconds `is_ready` waits for a connection that is being re-established."""


def history_queue(exchange: str, stream: str) -> str:
    """The durable queue where `stream`'s history owner takes requests."""
    return f"{exchange}.history.{stream}"


class HistoryRequest(BaseModel):
    """What a requester asks: `user_id`'s messages after `after` in `epoch`, at most `limit`."""

    # Strict: "5" is not a seq, nor is true. Unknown fields are ignored (newer requesters).
    model_config = ConfigDict(strict=True, frozen=True)

    user_id: str = Field(min_length=1, description="the raw user id, not its routing-key form")
    epoch: str = Field(min_length=1, max_length=MAX_EPOCH_CHARS)
    after: int = Field(ge=0, le=MAX_SEQ, description="the last seq seen; 0: nothing seen")
    limit: int = Field(ge=0, description=f"served as at most {MAX_HISTORY_LIMIT}")


class HistoryReply(BaseModel):
    """The owner's answer. `messages`: the envelopes (each with `meta.seq` and `meta.epoch`)
    after `after`, in seq order, at most `limit`, none when the epochs differ."""

    epoch: str = Field(description="the owner's current epoch, whatever the request said")
    messages: list[JsonObject]
    complete: bool = Field(description="the epoch matches and no message after `after` is left out")

    def to_bytes(self) -> bytes:
        return orjson.dumps(
            {"epoch": self.epoch, "messages": self.messages, "complete": self.complete}
        )


@dataclass(frozen=True, slots=True)
class Page:
    """A source's answer for one key: `messages` are its stored envelopes with
    `after < seq <= last_seq`, in seq order, at most the `limit` asked for."""

    messages: list[JsonObject]
    last_seq: int
    """The last seq given out for the key when the page was read (0: none yet)."""


class HistorySource(Protocol):
    """What a producer provides: where its numbering stands and what it has stored."""

    async def epoch(self) -> str:
        """The current epoch (read once at start and cached, typically)."""

    async def page(self, user_id: str, after: int, limit: int) -> Page:
        """`user_id`'s stored envelopes after `after`, and the key's last seq (see `Page`)."""


class Outcome(StrEnum):
    COMPLETE = "complete"
    """Answered with every message the requester missed."""
    INCOMPLETE = "incomplete"
    """Answered `complete: false`: another epoch, history trimmed, or more than `limit`."""
    FAILED = "failed"
    """The source or the answer's publish failed (answered incomplete when possible)."""
    MALFORMED = "malformed"
    """Not a well-formed request: not answered."""


class HistoryMetrics(Protocol):
    def observe_history(self, outcome: Outcome, seconds: float, messages: int) -> None:
        """One request handled: how, how long it took, how many messages it returned."""


class _NoMetrics:
    def observe_history(self, outcome: Outcome, seconds: float, messages: int) -> None:
        pass


class MalformedRequest(ValueError):
    """A request the owner does not answer; the message says why, without its content."""


def parse_request(
    body: bytes, reply_to: str | None, correlation_id: str | None, stream: str
) -> HistoryRequest:
    if not reply_to:
        raise MalformedRequest("no reply_to")
    if not correlation_id:
        raise MalformedRequest("no correlation_id")
    try:
        request = HistoryRequest.model_validate_json(body)
    except ValidationError as exc:
        raise MalformedRequest(validation_summary(exc)) from None
    if not fits_routing_key(stream, request.user_id):
        raise MalformedRequest("user_id fits no routing key")
    return request


def validation_summary(exc: ValidationError) -> str:
    """Field names and reasons only: a request's values do not belong in a log line."""
    errors = exc.errors(include_url=False, include_input=False, include_context=False)
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors[:3])


async def respond(source: HistorySource, request: HistoryRequest, max_limit: int) -> HistoryReply:
    """The answer to a well-formed request (no I/O but the source's)."""
    epoch = await source.epoch()
    if request.epoch != epoch:
        return HistoryReply(epoch=epoch, messages=[], complete=False)
    page = await source.page(request.user_id, request.after, min(request.limit, max_limit))
    # The page holds seqs after `after` up to `last_seq`, each once: all of them are there
    # exactly when there are that many (negative when the requester is ahead of us).
    complete = page.last_seq - request.after == len(page.messages)
    return HistoryReply(epoch=epoch, messages=page.messages, complete=complete)


async def _delivery(message: RabbitMessage) -> IncomingMessage:
    """Hand the handler aio-pika's delivery as its argument, body undecoded
    (`parse_request` validates it, and logs one line).

    Not through the `faststream.rabbit.annotations.RabbitMessage` annotation: that is a
    `Context`, and FastDepends runs a `Context`'s synchronous `use` in a worker thread, a
    thread hop per request.
    """
    return message.raw_message


def history_subscriber(
    broker: RabbitBroker,
    *,
    exchange: str,
    stream: str,
    source: HistorySource,
    metrics: HistoryMetrics | None = None,
    max_limit: int = MAX_HISTORY_LIMIT,
    prefetch: int = HISTORY_PREFETCH,
) -> RabbitSubscriber:
    """Consume `stream`'s history queue on `broker` and answer each request from `source`."""
    queue = history_queue(exchange, stream)
    observe = (metrics or _NoMetrics()).observe_history

    async def answer(raw: IncomingMessage) -> None:
        started = time.perf_counter()
        try:
            request = parse_request(raw.body, raw.reply_to, raw.correlation_id, stream)
        except MalformedRequest as exc:
            log.warning("history request on %s not answered: %s", queue, exc)
            observe(Outcome.MALFORMED, time.perf_counter() - started, 0)
            return
        reply: HistoryReply | None
        try:
            reply = await respond(source, request, max_limit)
            outcome = Outcome.COMPLETE if reply.complete else Outcome.INCOMPLETE
        except Exception as exc:
            log.warning("history of %s failed, answered incomplete: %r", queue, exc)
            reply, outcome = await _incomplete(source), Outcome.FAILED
        if reply is not None and not await _send(broker, reply, raw.reply_to, raw.correlation_id):
            outcome = Outcome.FAILED
        returned = len(reply.messages) if reply is not None else 0
        observe(outcome, time.perf_counter() - started, returned)

    subscriber = broker.subscriber(
        RabbitQueue(queue, durable=True),
        channel=Channel(prefetch_count=prefetch),
        no_reply=True,  # answered above
        decoder=_delivery,
        title=queue,
        description=f"History requests for `{stream}`: {{user_id, epoch, after, limit}}.",
    )
    subscriber(answer)
    return subscriber


async def _send(
    broker: RabbitBroker, reply: HistoryReply, reply_to: str | None, correlation_id: str | None
) -> bool:
    """Publish `reply` to the requester; False (logged) when RabbitMQ did not take it."""
    # Explicitly to the default exchange: FastStream's own reply would read a `|` in
    # reply_to as "queue|exchange" and publish to that exchange instead.
    publish = partial(
        broker.publish,
        reply.to_bytes(),
        routing_key=reply_to or "",
        correlation_id=correlation_id,
        content_type=CONTENT_TYPE,
        mandatory=False,  # the requester may have gone: nothing to do then
        timeout=REPLY_TIMEOUT,
    )
    for delay in REPLY_RETRIES:
        with contextlib.suppress(Exception):
            await publish()
            return True
        await asyncio.sleep(delay)
    try:
        await publish()
    except Exception as exc:
        log.warning("history answer not sent: %r", exc)
        return False
    return True


async def _incomplete(source: HistorySource) -> HistoryReply | None:
    """`complete: false` and nothing else, if at least the epoch is known."""
    try:
        return HistoryReply(epoch=await source.epoch(), messages=[], complete=False)
    except Exception:
        return None


class HistoryResponder:
    """Answers a stream's history requests on a connection of its own.

    Its own connection: a publisher that resets its connection after a failed publish
    (as the notifications relay does) would otherwise stop the answers with it. Once
    connected, aio-pika re-establishes the connection and the consumer after a loss.
    """

    def __init__(
        self,
        amqp_url: str,
        *,
        exchange: str,
        stream: str,
        source: HistorySource,
        metrics: HistoryMetrics | None = None,
        max_limit: int = MAX_HISTORY_LIMIT,
        prefetch: int = HISTORY_PREFETCH,
    ) -> None:
        self.queue = history_queue(exchange, stream)
        self.broker = RabbitBroker(
            with_heartbeat(amqp_url),
            reconnect_interval=RECONNECT_INTERVAL,
            # Named, so operators (and `rabbitmqctl close_connection`) can find it.
            client_properties=cast(Any, {"connection_name": f"{stream}-history"}),
            graceful_timeout=STOP_TIMEOUT,
            logger=log,
            log_level=logging.DEBUG,  # one line per request is too many at INFO
        )
        self.subscriber = history_subscriber(
            self.broker,
            exchange=exchange,
            stream=stream,
            source=source,
            metrics=metrics,
            max_limit=max_limit,
            prefetch=prefetch,
        )
        self._task: asyncio.Task[None] | None = None
        self._consuming = False

    def start(self) -> None:
        """Consume the queue as soon as RabbitMQ lets us; retry until then."""
        self._task = asyncio.create_task(self._start(), name=f"history {self.queue}")

    async def _start(self) -> None:
        delay = FIRST_START_RETRY
        while True:
            try:
                await self.broker.start()
            except Exception as exc:
                log.warning(
                    "cannot consume %s yet (%r); retrying in %.1f s", self.queue, exc, delay
                )
                with contextlib.suppress(Exception):
                    await self.broker.stop()  # a fresh connection next time
                await asyncio.sleep(delay)
                delay = min(delay * 2, START_RETRY_CAP)
            else:
                self._consuming = True
                return

    async def is_ready(self) -> bool:
        """Whether the queue is consumed now: started, and the connection is up."""
        return self._consuming and await self.broker.ping(timeout=READY_PING_TIMEOUT)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._consuming = False
        with contextlib.suppress(Exception):  # a connection that is half gone may fail to close
            await self.broker.stop()
