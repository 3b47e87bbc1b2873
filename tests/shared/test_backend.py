"""The backend helper without a broker (unit) and on FastStream's in-memory broker
(component): what a handler is given, where its answers go, what never reaches it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from faststream.rabbit import (
    ExchangeType,
    RabbitBroker,
    RabbitExchange,
    RabbitQueue,
    TestRabbitBroker,
)
from faststream.rabbit.annotations import RabbitMessage

from realtime_shared.backend import (
    Backend,
    InboundMessage,
    MalformedMessage,
    Outcome,
    parse_inbound,
)
from realtime_shared.publisher import PublishError
from realtime_shared.routing import user_key

EXCHANGE, INBOUND = "realtime", "realtime.inbound"
SENT_AT = "2030-01-02T03:04:05.123456+00:00"


def wire(**changes: Any) -> dict[str, Any]:
    """A body as the edge publishes it; `meta_<field>` changes a meta field (None: drop it)."""
    meta: dict[str, Any] = {
        "user_id": "alice",
        "connection_id": "c1",
        "message_id": "m1",
        "sent_at": SENT_AT,
        "reply_to": "@node-a.c1",
        "session_id": "room-7",
    }
    body: dict[str, Any] = {
        "stream": "chat",
        "event": "message.send",
        "data": {"to": "bob", "text": "hi"},
        "meta": meta,
    }
    for name, value in changes.items():
        target, key = (
            (meta, name.removeprefix("meta_")) if name.startswith("meta_") else (body, name)
        )
        if value is None:
            target.pop(key, None)
        else:
            target[key] = value
    return body


def parse(body: object, routing_key: str | None = "chat.alice") -> InboundMessage:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return parse_inbound(raw, routing_key, "chat")


@pytest.mark.unit
def test_a_client_message_becomes_a_typed_message() -> None:
    message = parse(wire())
    assert message == InboundMessage(
        stream="chat",
        event="message.send",
        data={"to": "bob", "text": "hi"},
        user_id="alice",
        connection_id="c1",
        message_id="m1",
        sent_at=datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
        reply_to="@node-a.c1",
        session_id="room-7",
    )
    with pytest.raises(ValueError, match="frozen"):
        message.user_id = "mallory"  # type: ignore[misc]


@pytest.mark.unit
def test_no_data_and_no_session_are_an_empty_object_and_none() -> None:
    message = parse(wire(data=None, meta_session_id=None))
    assert (message.data, message.session_id) == ({}, None)


@pytest.mark.unit
def test_fields_a_newer_edge_adds_are_ignored() -> None:
    assert parse(wire(meta_trace="t", extra=1)).user_id == "alice"


@pytest.mark.unit
def test_a_user_id_with_dots_is_routed_by_its_encoded_key() -> None:
    message = parse(wire(meta_user_id="a.b"), routing_key=user_key("chat", "a.b"))
    assert message.user_id == "a.b"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("body", "routing_key"),
    [
        (b"not json", "chat.alice"),
        (b"[]", "chat.alice"),
        (wire(meta=None), "chat.alice"),
        (wire(meta_user_id=None), "chat.alice"),
        (wire(meta_user_id=""), "chat."),
        (wire(meta_user_id=7), "chat.7"),
        (wire(meta_user_id="a" * 300), "chat.alice"),
        (wire(meta_connection_id=None), "chat.alice"),
        (wire(meta_message_id=None), "chat.alice"),
        (wire(meta_reply_to=None), "chat.alice"),
        (wire(meta_reply_to="chat.alice"), "chat.alice"),  # a user's key: every tab
        (wire(meta_reply_to="@"), "chat.alice"),
        (wire(meta_sent_at="yesterday"), "chat.alice"),
        (wire(meta_sent_at="2030-01-02T03:04:05"), "chat.alice"),  # no time zone
        (wire(meta_session_id=7), "chat.alice"),
        (wire(event=None), "chat.alice"),
        (wire(event=""), "chat.alice"),
        (wire(event="e" * 129), "chat.alice"),
        (wire(data=[1]), "chat.alice"),
        (wire(stream="ssh"), "chat.alice"),  # not the queue's stream
        (wire(), "chat.bob"),  # the edge routed it as bob's: the body lies
    ],
)
def test_a_malformed_message_is_refused_without_echoing_it(
    body: dict[str, Any] | bytes, routing_key: str
) -> None:
    with pytest.raises(MalformedMessage) as refused:
        parse(body, routing_key)
    reason = str(refused.value)
    assert reason
    assert "aaaaaaaaaa" not in reason and "not json" not in reason and "yesterday" not in reason


@pytest.mark.unit
@pytest.mark.parametrize("stream", ["notifications", "system", "nope"])
def test_only_interactive_streams_can_be_consumed(stream: str) -> None:
    backend = Backend(RabbitBroker(), name="chat-example")
    with pytest.raises(ValueError, match="interactive"):
        backend.subscriber(stream)


@pytest.mark.unit
def test_a_backend_name_is_one_word() -> None:
    for name in ("", "chat.example"):
        with pytest.raises(ValueError, match="name"):
            Backend(RabbitBroker(), name=name)


class Observed:
    def __init__(self) -> None:
        self.seen: list[tuple[str, Outcome]] = []

    def observe_inbound(self, stream: str, outcome: Outcome, seconds: float) -> None:
        assert seconds >= 0
        self.seen.append((stream, outcome))


class Harness:
    """A backend on an in-memory broker; a queue on the realtime exchange catches answers."""

    def __init__(self, handler: Any = None) -> None:
        self.broker = RabbitBroker()
        self.metrics = Observed()
        self.backend = Backend(
            self.broker,
            name="chat-example",
            exchange=EXCHANGE,
            inbound_exchange=INBOUND,
            metrics=self.metrics,
        )
        self.handled: list[InboundMessage] = []
        self.sent: list[tuple[str, str | None, dict[str, Any]]] = []

        @self.backend.subscriber("chat")
        async def on_chat(message: InboundMessage) -> None:
            self.handled.append(message)
            if handler is not None:
                await handler(self.backend, message)

        @self.broker.subscriber(
            RabbitQueue("answers", routing_key="#"),
            RabbitExchange(EXCHANGE, type=ExchangeType.TOPIC, durable=True),
        )
        async def collect(message: RabbitMessage) -> None:
            raw = message.raw_message
            assert raw.content_type == "application/json"
            self.sent.append((raw.routing_key or "", raw.message_id, orjson.loads(raw.body)))

    async def client_sends(
        self, broker: RabbitBroker, body: object, key: str = "chat.alice"
    ) -> None:
        raw = body if isinstance(body, bytes) else orjson.dumps(body)
        await broker.publish(raw, exchange=self.backend.inbound_exchange, routing_key=key)


@pytest.mark.component
def test_each_stream_has_a_durable_queue_of_the_backend_bound_to_its_users() -> None:
    harness = Harness()
    subscriber = harness.backend.subscribers["chat"]
    assert subscriber.queue.name == "realtime.inbound.chat-example.chat"
    assert subscriber.queue.durable
    assert subscriber.queue.routing() == "chat.*"
    assert subscriber.exchange.name == INBOUND and subscriber.exchange.durable


@pytest.mark.component
async def test_a_reply_reaches_the_senders_connection_key_with_its_session() -> None:
    ids: list[str] = []

    async def echo(backend: Backend, message: InboundMessage) -> None:
        ids.append(await backend.reply(message, "message.echo", {"text": message.data["text"]}))

    harness = Harness(echo)
    async with TestRabbitBroker(harness.broker) as broker:
        await harness.client_sends(broker, wire())
    [(key, message_id, body)] = harness.sent
    assert key == "@node-a.c1"
    assert message_id == ids[0]
    assert body["stream"] == "chat" and body["event"] == "message.echo"
    assert body["data"] == {"text": "hi"}
    assert body["meta"]["session_id"] == "room-7"
    assert harness.metrics.seen == [("chat", Outcome.HANDLED)]


@pytest.mark.component
async def test_a_message_reaches_its_handler_without_a_worker_thread(
    worker_thread_calls: list[object],
) -> None:
    """FastStream's `RabbitMessage` annotation is a `Context`, which FastDepends resolves in
    a worker thread: a thread hop per client message."""
    harness = Harness()
    async with TestRabbitBroker(harness.broker) as broker:
        await harness.client_sends(broker, wire())
    assert harness.metrics.seen == [("chat", Outcome.HANDLED)]
    assert worker_thread_calls == []


@pytest.mark.component
async def test_a_reply_to_a_message_without_session_has_none() -> None:
    async def echo(backend: Backend, message: InboundMessage) -> None:
        await backend.reply(message, "message.echo", meta={"n": 1})

    harness = Harness(echo)
    async with TestRabbitBroker(harness.broker) as broker:
        await harness.client_sends(broker, wire(meta_session_id=None))
    [(_, _, body)] = harness.sent
    assert "session_id" not in body["meta"] and body["meta"]["n"] == 1
    assert "data" not in body


@pytest.mark.component
async def test_publish_to_user_uses_the_encoded_key_of_that_user() -> None:
    ids: list[str] = []

    async def tell(backend: Backend, message: InboundMessage) -> None:
        ids.append(
            await backend.publish_to_user(
                "chat",
                "bob.smith",
                "message.created",
                {"text": "hi"},
                meta={"seq": 3, "epoch": "e"},
            )
        )

    harness = Harness(tell)
    async with TestRabbitBroker(harness.broker) as broker:
        await harness.client_sends(broker, wire())
    [(key, message_id, body)] = harness.sent
    assert key == "chat.bob%2Esmith"
    assert message_id == ids[0]
    assert body["stream"] == "chat" and body["data"] == {"text": "hi"}
    assert body["meta"]["seq"] == 3 and body["meta"]["epoch"] == "e"
    assert "session_id" not in body["meta"]


@pytest.mark.component
@pytest.mark.parametrize(
    ("stream", "user_id"), [("nope", "bob"), ("chat", ""), ("chat", "b" * 300)]
)
async def test_publish_to_a_user_no_key_can_name_is_refused_and_nothing_is_sent(
    stream: str, user_id: str
) -> None:
    refused: list[Exception] = []

    async def tell(backend: Backend, message: InboundMessage) -> None:
        try:
            await backend.publish_to_user(stream, user_id, "message.created")
        except PublishError as exc:
            refused.append(exc)

    harness = Harness(tell)
    async with TestRabbitBroker(harness.broker) as broker:
        await harness.client_sends(broker, wire())
    assert len(refused) == 1 and harness.sent == []


@pytest.mark.component
async def test_a_malformed_message_is_dropped_with_one_line_and_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    harness = Harness()
    async with TestRabbitBroker(harness.broker) as broker:
        await harness.client_sends(broker, wire(meta_reply_to="chat.alice"))
        await harness.client_sends(broker, b"\xff not json")
        await harness.client_sends(broker, wire())  # the consumer lives on
    assert [m.message_id for m in harness.handled] == ["m1"]
    assert harness.metrics.seen == [
        ("chat", Outcome.MALFORMED),
        ("chat", Outcome.MALFORMED),
        ("chat", Outcome.HANDLED),
    ]
    lines = [r for r in caplog.records if r.name == "realtime_shared.backend"]
    assert len(lines) == 2
    assert all("dropped" in r.getMessage() and r.exc_info is None for r in lines)
    assert "reply_to" in lines[0].getMessage()


@pytest.mark.component
async def test_a_handler_that_raises_is_logged_and_its_message_requeued(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def fail(backend: Backend, message: InboundMessage) -> None:
        raise RuntimeError("database down")

    harness = Harness(fail)
    async with TestRabbitBroker(harness.broker) as broker:
        await harness.client_sends(broker, wire())
    assert harness.metrics.seen == [("chat", Outcome.RETRIED)]
    [line] = [r for r in caplog.records if r.name == "realtime_shared.backend"]
    assert "requeued" in line.getMessage() and line.exc_info is not None
