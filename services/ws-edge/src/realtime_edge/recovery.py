"""Recovery: a client that was away gets exactly what it missed, from the stream's owner.

The edge keeps no history. A producer that owns a stream's history answers requests on
the durable queue `<exchange>.history.<stream>`; the edge asks it over RabbitMQ's direct
reply-to (no queue to declare per request) and matches answers by `correlation_id`.

Per connection, a `Gate` holds back the live messages of the streams being recovered
(from the moment the `subscribe` frame is read) and, once the history is sent, lets
through only those whose `seq` it has not sent already: no gap, no duplicate, in order.
It stays on as a filter until live messages pass the last replayed `seq` (an event the
owner had committed but not yet published shows up live after its replay), and is
removed then, so a connection that is not recovering costs the hot path one attribute
check per delivery.

Many connections recovering at once share the work: identical requests in flight (the
same user's tabs coming back together) are sent once, and each request is one task's
await, not a task per message.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiormq.abc import AbstractChannel, DeliveredMessage
from aiormq.exceptions import AMQPError, PublishError
from pamqp import commands as spec

from realtime_edge.metrics import EdgeMetrics
from realtime_shared.envelope import Position

log = logging.getLogger(__name__)

REPLY_TO = "amq.rabbitmq.reply-to"
"""RabbitMQ's direct reply-to: replies come straight back on the requesting channel."""


class RecoveryFailed(Exception):
    """A stream cannot be recovered; `reason` is the metric label and the log's word."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def history_queue(exchange: str, stream: str) -> str:
    return f"{exchange}.history.{stream}"


@dataclass(frozen=True, slots=True)
class Replay:
    """The missed messages of one stream, as frames, and the position they end at."""

    frames: list[str]
    last: Position


class HistoryClient:
    """Asks history owners over the broker link's own channel (attached per session)."""

    def __init__(self, exchange: str, *, limit: int, wait: float) -> None:
        self._exchange = exchange
        self.limit = limit
        """At most this many messages are asked for (EDGE_RECOVERY_MAX)."""
        self.wait = wait
        """Seconds an owner has to answer (EDGE_RECOVERY_TIMEOUT)."""
        self._channel: AbstractChannel | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._shared: dict[tuple[str, str, str, int], asyncio.Future[dict[str, Any]]] = {}

    async def attach(self, channel: AbstractChannel) -> None:
        """Use `channel` (with publisher confirms) for requests and their replies."""
        await channel.basic_consume(REPLY_TO, self._on_reply, no_ack=True)
        self._channel = channel

    def detach(self) -> None:
        """The link is gone: every request in flight fails now rather than at its timeout."""
        self._channel = None
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(RecoveryFailed("unavailable", "the broker link dropped"))
        self._waiting.clear()

    async def fetch(self, stream: str, user_id: str, epoch: str, after: int) -> dict[str, Any]:
        """The owner's answer for one key; RecoveryFailed on no owner, timeout or no link."""
        key = (stream, user_id, epoch, after)
        shared = self._shared.get(key)
        if shared is None:
            shared = asyncio.ensure_future(self._ask(stream, user_id, epoch, after))
            self._shared[key] = shared
            shared.add_done_callback(lambda _: self._shared.pop(key, None))
        return await asyncio.shield(shared)

    async def _ask(self, stream: str, user_id: str, epoch: str, after: int) -> dict[str, Any]:
        channel, timeout = self._channel, self.wait
        if channel is None:
            raise RecoveryFailed("unavailable", "not connected to RabbitMQ")
        correlation_id = uuid.uuid4().hex
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[correlation_id] = reply
        body = orjson.dumps(
            {"user_id": user_id, "epoch": epoch, "after": after, "limit": self.limit}
        )
        properties = spec.Basic.Properties(
            content_type="application/json",
            correlation_id=correlation_id,
            message_id=correlation_id,
            reply_to=REPLY_TO,
            # A request nobody takes in time is void: it must not wait in the queue.
            expiration=str(max(1, int(timeout * 1000))),
        )
        try:
            async with asyncio.timeout(timeout):
                try:
                    await channel.basic_publish(
                        body,
                        exchange="",
                        routing_key=history_queue(self._exchange, stream),
                        properties=properties,
                        mandatory=True,  # returned when no queue: nobody owns this history
                    )
                except PublishError:
                    raise RecoveryFailed("no_owner", f"no history queue for {stream!r}") from None
                except (AMQPError, ConnectionError, RuntimeError) as exc:
                    raise RecoveryFailed("unavailable", repr(exc)) from None
                return await reply
        except TimeoutError:
            raise RecoveryFailed("timeout", f"no answer within {timeout:g} s") from None
        finally:
            self._waiting.pop(correlation_id, None)

    async def _on_reply(self, message: DeliveredMessage) -> None:
        correlation_id = message.header.properties.correlation_id
        future = self._waiting.get(correlation_id or "")
        if future is None or future.done():
            return  # a late answer to a request that timed out
        try:
            answer = orjson.loads(message.body)
        except orjson.JSONDecodeError:
            answer = None
        if not isinstance(answer, dict):
            future.set_exception(RecoveryFailed("invalid_reply", "not a JSON object"))
            return
        future.set_result(answer)


def replay(answer: Mapping[str, Any], stream: str, position: Position, limit: int) -> Replay:
    """The frames to send from an owner's answer, or RecoveryFailed saying why not."""
    epoch, after = position
    if answer.get("epoch") != epoch:
        raise RecoveryFailed("epoch", "the owner's numbering restarted")
    messages = answer.get("messages")
    if not isinstance(messages, list):
        raise RecoveryFailed("invalid_reply", "'messages' is not a list")
    if answer.get("complete") is not True:
        too_many = len(messages) >= limit
        raise RecoveryFailed("too_many" if too_many else "trimmed")
    frames: list[str] = []
    last = after
    for message in messages:
        seq = _seq_of(message)
        if seq is None or seq != last + 1:
            raise RecoveryFailed("invalid_reply", "messages out of sequence")
        last = seq
        message = {k: v for k, v in message.items() if k != "stream"}
        frames.append(orjson.dumps({"stream": stream, **message}).decode())
    return Replay(frames, (epoch, last))


def _seq_of(message: object) -> int | None:
    if not isinstance(message, dict) or not isinstance(message.get("event"), str):
        return None
    meta = message.get("meta")
    seq = meta.get("seq") if isinstance(meta, dict) else None
    return seq if isinstance(seq, int) and not isinstance(seq, bool) else None


class Gate:
    """One connection's held-back live messages (per stream being recovered) and floors.

    The hub asks `take` before delivering to a connection that has a gate: True means
    the gate kept the frame (held back, or already sent by a replay).
    """

    __slots__ = ("_floors", "_held", "_limit", "overflowed")

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held: dict[str, list[tuple[Position | None, str]]] = {}
        self._floors: dict[str, Position] = {}
        self.overflowed: set[str] = set()

    @property
    def idle(self) -> bool:
        return not self._held and not self._floors

    def hold(self, stream: str) -> None:
        self._held.setdefault(stream, [])
        self._floors.pop(stream, None)

    def take(self, stream: str, position: Position | None, frame: str) -> bool:
        held = self._held.get(stream)
        if held is not None:
            if len(held) < self._limit:
                held.append((position, frame))
            else:
                self.overflowed.add(stream)  # dropped: the recovery will say false
            return True
        floor = self._floors.get(stream)
        if floor is None or position is None:
            return False
        if position[0] == floor[0] and position[1] <= floor[1]:
            return True  # the replay sent it already
        del self._floors[stream]  # live messages are past the replay: stop filtering
        return False

    def release(self, stream: str, sent: Position | None) -> list[str]:
        """Stop holding `stream`; the held-back frames a replay ending at `sent` did not
        cover, in arrival order (all of them when nothing was replayed)."""
        held = self._held.pop(stream, [])
        self.overflowed.discard(stream)
        if sent is None:
            return [frame for _, frame in held]
        epoch, last = sent

        def new(position: Position | None) -> bool:
            return position is None or position[0] != epoch or position[1] > last

        if not any(p is not None and p[0] == epoch and p[1] > last for p, _ in held):
            self._floors[stream] = sent  # live messages are not past the replay yet
        return [frame for position, frame in held if new(position)]


async def gather_replays(
    history: HistoryClient,
    user_id: str,
    wanted: Mapping[str, Position],
    *,
    metrics: EdgeMetrics,
    connection_id: str,
) -> tuple[dict[str, Replay], dict[str, str]]:
    """Fetch every stream's history at once; per stream its replay, or the failure reason."""

    async def one(stream: str, position: Position) -> Replay:
        epoch, after = position
        answer = await history.fetch(stream, user_id, epoch, after)
        return replay(answer, stream, position, history.limit)

    started = time.monotonic()
    results = await asyncio.gather(
        *(one(stream, position) for stream, position in wanted.items()), return_exceptions=True
    )
    replays: dict[str, Replay] = {}
    failures: dict[str, str] = {}
    for (stream, _), result in zip(wanted.items(), results, strict=True):
        metrics.recoveries.inc()
        if isinstance(result, Replay):
            replays[stream] = result
            continue
        if not isinstance(result, RecoveryFailed):
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancelled: the connection is going away
            log.exception("recovering %r failed unexpectedly", stream, exc_info=result)
            result = RecoveryFailed("error", str(result))
        failures[stream] = result.reason
        metrics.recovery_failures.labels(result.reason).inc()
        log.info(
            "recovery of %s failed (%s); the client refetches",
            stream,
            result,
            extra={"connection_id": connection_id, "user_id": user_id},
        )
    metrics.recovery_seconds.observe(time.monotonic() - started)
    return replays, failures
