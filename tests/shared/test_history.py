"""The history responder's answers, without a broker (unit) and on FastStream's in-memory
broker (component): what a requester gets back for each request, and when it gets nothing."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from faststream.rabbit import RabbitBroker, TestRabbitBroker
from faststream.rabbit.annotations import RabbitMessage

from realtime_shared.history import (
    MAX_HISTORY_LIMIT,
    MAX_SEQ,
    HistoryRequest,
    MalformedRequest,
    Outcome,
    Page,
    history_queue,
    history_subscriber,
    parse_request,
    respond,
)
from realtime_shared.positions import new_epoch

EXCHANGE, STREAM, EPOCH = "realtime", "notifications", "e1"
QUEUE = history_queue(EXCHANGE, STREAM)


def envelope(seq: int) -> dict[str, Any]:
    return {"stream": STREAM, "event": "n", "meta": {"seq": seq, "epoch": EPOCH}}


class Log:
    """A `HistorySource` over an in-memory log of one user: seqs `first`..`last` kept."""

    def __init__(self, last: int, first: int = 1) -> None:
        self.first, self.last = first, last
        self.asked: list[tuple[str, int, int]] = []
        self.fault: Exception | None = None

    async def epoch(self) -> str:
        return EPOCH

    async def page(self, user_id: str, after: int, limit: int) -> Page:
        self.asked.append((user_id, after, limit))
        if self.fault is not None:
            raise self.fault
        start = max(after + 1, self.first)
        return Page([envelope(s) for s in range(start, self.last + 1)][:limit], self.last)


def request(after: int, limit: int = 100, epoch: str = EPOCH) -> HistoryRequest:
    return HistoryRequest(user_id="alice", epoch=epoch, after=after, limit=limit)


def seqs(messages: list[dict[str, Any]]) -> list[int]:
    return [m["meta"]["seq"] for m in messages]


@pytest.mark.unit
async def test_a_client_behind_gets_exactly_what_it_missed() -> None:
    reply = await respond(Log(last=5), request(after=2), MAX_HISTORY_LIMIT)
    assert (reply.epoch, seqs(reply.messages), reply.complete) == (EPOCH, [3, 4, 5], True)


@pytest.mark.unit
async def test_a_client_up_to_date_gets_nothing_and_complete() -> None:
    reply = await respond(Log(last=5), request(after=5), MAX_HISTORY_LIMIT)
    assert (reply.messages, reply.complete) == ([], True)


@pytest.mark.unit
async def test_another_epoch_gets_the_current_one_no_messages_and_incomplete() -> None:
    source = Log(last=5)
    reply = await respond(source, request(after=2, epoch="old"), MAX_HISTORY_LIMIT)
    assert (reply.epoch, reply.messages, reply.complete) == (EPOCH, [], False)
    assert source.asked == []  # nothing to read for another epoch


@pytest.mark.unit
async def test_history_trimmed_past_the_clients_position_is_incomplete() -> None:
    reply = await respond(Log(last=9, first=5), request(after=2), MAX_HISTORY_LIMIT)
    assert (seqs(reply.messages), reply.complete) == ([5, 6, 7, 8, 9], False)


@pytest.mark.unit
async def test_more_missed_than_the_limit_is_the_first_page_and_incomplete() -> None:
    reply = await respond(Log(last=10), request(after=0, limit=4), MAX_HISTORY_LIMIT)
    assert (seqs(reply.messages), reply.complete) == ([1, 2, 3, 4], False)


@pytest.mark.unit
async def test_a_limit_above_the_bound_is_served_as_the_bound() -> None:
    source = Log(last=MAX_HISTORY_LIMIT + 5)
    reply = await respond(source, request(after=0, limit=10 * MAX_HISTORY_LIMIT), MAX_HISTORY_LIMIT)
    assert source.asked == [("alice", 0, MAX_HISTORY_LIMIT)]
    assert len(reply.messages) == MAX_HISTORY_LIMIT and not reply.complete


@pytest.mark.unit
async def test_a_client_ahead_of_the_database_is_told_to_refetch() -> None:
    """It saw seq 7 where the database ends at 5 (restored from a backup, same epoch):
    "complete" would make the edge drop the next live events as already seen."""
    reply = await respond(Log(last=5), request(after=7), MAX_HISTORY_LIMIT)
    assert (reply.messages, reply.complete) == ([], False)


@pytest.mark.unit
def test_new_epochs_differ_and_fit_the_contract() -> None:
    epochs = {new_epoch() for _ in range(100)}
    assert len(epochs) == 100
    assert all(1 <= len(epoch) <= 64 for epoch in epochs)


@pytest.mark.unit
@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"epoch": "e1", "after": 0, "limit": 10}',
        b'{"user_id": "", "epoch": "e1", "after": 0, "limit": 10}',
        b'{"user_id": "alice", "epoch": "", "after": 0, "limit": 10}',
        b'{"user_id": "alice", "epoch": "' + b"e" * 65 + b'", "after": 0, "limit": 10}',
        b'{"user_id": "alice", "epoch": "e1", "after": "3", "limit": 10}',
        b'{"user_id": "alice", "epoch": "e1", "after": true, "limit": 10}',
        b'{"user_id": "alice", "epoch": "e1", "after": 2.5, "limit": 10}',
        b'{"user_id": "alice", "epoch": "e1", "after": -1, "limit": 10}',
        b'{"user_id": "alice", "epoch": "e1", "after": %d, "limit": 10}' % (MAX_SEQ + 1),
        b'{"user_id": "alice", "epoch": "e1", "after": 0, "limit": -1}',
        b'{"user_id": "' + b"a" * 300 + b'", "epoch": "e1", "after": 0, "limit": 10}',
    ],
)
def test_malformed_requests_are_refused_without_echoing_them(body: bytes) -> None:
    with pytest.raises(MalformedRequest) as refused:
        parse_request(body, "reply-queue", "c1", STREAM)
    assert "a" * 50 not in str(refused.value) and "not json" not in str(refused.value)


@pytest.mark.unit
@pytest.mark.parametrize(("reply_to", "correlation_id"), [(None, "c1"), ("q", None), ("", "c1")])
def test_a_request_without_somewhere_to_answer_is_malformed(
    reply_to: str | None, correlation_id: str | None
) -> None:
    body = orjson.dumps({"user_id": "alice", "epoch": "e1", "after": 0, "limit": 1})
    with pytest.raises(MalformedRequest):
        parse_request(body, reply_to, correlation_id, STREAM)


@pytest.mark.unit
def test_fields_a_newer_requester_adds_are_ignored() -> None:
    body = {"user_id": "alice", "epoch": "e1", "after": 3, "limit": 1, "trace": "x"}
    parsed = parse_request(orjson.dumps(body), "q", "c1", STREAM)
    assert (parsed.user_id, parsed.after) == ("alice", 3)


class Observed:
    def __init__(self) -> None:
        self.seen: list[tuple[Outcome, int]] = []

    def observe_history(self, outcome: Outcome, seconds: float, messages: int) -> None:
        assert seconds >= 0
        self.seen.append((outcome, messages))


class Responder:
    """`history_subscriber` on an in-memory broker, with a reply queue to read answers from."""

    def __init__(self, source: Log, reply_queue: str = "replies") -> None:
        self.broker = RabbitBroker()
        self.metrics = Observed()
        self.replies: list[tuple[dict[str, Any], str | None]] = []
        history_subscriber(
            self.broker, exchange=EXCHANGE, stream=STREAM, source=source, metrics=self.metrics
        )

        @self.broker.subscriber(reply_queue)
        async def collect(message: RabbitMessage) -> None:
            self.replies.append((orjson.loads(message.body), message.raw_message.correlation_id))

    async def ask(self, broker: RabbitBroker, body: object, **properties: Any) -> None:
        await broker.publish(orjson.dumps(body), QUEUE, **properties)


@pytest.mark.component
async def test_a_request_is_answered_to_its_reply_to_with_its_correlation_id() -> None:
    responder = Responder(Log(last=3))
    async with TestRabbitBroker(responder.broker) as broker:
        body = {"user_id": "alice", "epoch": EPOCH, "after": 1, "limit": 10}
        await responder.ask(broker, body, reply_to="replies", correlation_id="c-7")
    [(answer, correlation_id)] = responder.replies
    assert correlation_id == "c-7"
    assert answer == {"epoch": EPOCH, "messages": [envelope(2), envelope(3)], "complete": True}
    assert responder.metrics.seen == [(Outcome.COMPLETE, 2)]


@pytest.mark.component
async def test_a_request_is_answered_without_a_worker_thread(
    worker_thread_calls: list[object],
) -> None:
    """FastStream's `RabbitMessage` annotation is a `Context`, which FastDepends resolves in
    a worker thread: a thread hop per request. (`collect` takes its message that way: this
    answer goes to a queue read without it.)"""
    responder = Responder(Log(last=3))
    answers: list[dict[str, Any]] = []

    @responder.broker.subscriber("plain-replies")
    async def collect_body(answer: dict[str, Any]) -> None:
        answers.append(answer)

    async with TestRabbitBroker(responder.broker) as broker:
        body = {"user_id": "alice", "epoch": EPOCH, "after": 1, "limit": 10}
        await responder.ask(broker, body, reply_to="plain-replies", correlation_id="c-7")
    assert answers == [{"epoch": EPOCH, "messages": [envelope(2), envelope(3)], "complete": True}]
    assert worker_thread_calls == []


@pytest.mark.component
async def test_a_reply_to_with_a_bar_is_answered_to_that_queue_not_to_an_exchange() -> None:
    """FastStream's own replies read `queue|exchange` out of reply_to: a requester could have
    had the owner publish a user's history to any exchange, under any routing key."""
    responder = Responder(Log(last=1), reply_queue="notifications.bob|realtime")
    async with TestRabbitBroker(responder.broker) as broker:
        body = {"user_id": "alice", "epoch": EPOCH, "after": 0, "limit": 10}
        await responder.ask(
            broker, body, reply_to="notifications.bob|realtime", correlation_id="c-1"
        )
    assert [correlation_id for _, correlation_id in responder.replies] == ["c-1"]


@pytest.mark.component
async def test_a_malformed_request_gets_no_answer_one_log_line_and_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    responder = Responder(Log(last=3))
    async with TestRabbitBroker(responder.broker) as broker:
        body = {"user_id": "alice", "epoch": EPOCH, "after": "1", "limit": 10}
        await responder.ask(broker, body, reply_to="replies", correlation_id="c-1")
    assert responder.replies == []
    assert responder.metrics.seen == [(Outcome.MALFORMED, 0)]
    [line] = [r for r in caplog.records if r.name == "realtime_shared.history"]
    assert "not answered" in line.getMessage() and "after" in line.getMessage()
    assert line.exc_info is None


@pytest.mark.component
async def test_a_failing_source_is_answered_incomplete_at_once() -> None:
    source = Log(last=3)
    source.fault = ConnectionError("database down")
    responder = Responder(source)
    async with TestRabbitBroker(responder.broker) as broker:
        body = {"user_id": "alice", "epoch": EPOCH, "after": 1, "limit": 10}
        await responder.ask(broker, body, reply_to="replies", correlation_id="c-1")
    assert [answer for answer, _ in responder.replies] == [
        {"epoch": EPOCH, "messages": [], "complete": False}
    ]
    assert responder.metrics.seen == [(Outcome.FAILED, 0)]
