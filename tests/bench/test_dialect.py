"""What each target's frames mean to the clients: subscribed, control, or a timed message;
a recovery's replay checked for exactness; a client message's acknowledgement and echo."""

from __future__ import annotations

import orjson
import pytest

from realtime_bench.clients import Recorder
from realtime_bench.connection import Connection
from realtime_bench.dialect import (
    ChatDialect,
    EdgeDialect,
    FloorDialect,
    RecoveringDialect,
    RecoveryMismatch,
    SocketIODialect,
    recovery_verdict,
)

pytestmark = pytest.mark.unit


def connection(sent: list[str], user: str = "") -> Connection:
    conn = Connection("ws://127.0.0.1:1/ws", lambda *_: None, token="tok", user=user)
    conn.send_text = sent.append  # type: ignore[method-assign]
    return conn


async def test_socketio_handshake_answers_pings_and_reads_events() -> None:
    sent: list[str] = []
    conn, dialect = connection(sent), SocketIODialect()
    assert dialect.on_text(conn, b'0{"sid":"s","pingInterval":25000}') is None
    assert sent == ['40{"token":"tok"}']  # the JWT rides in the namespace connect
    assert not conn.ready.done()
    dialect.on_text(conn, b'40{"sid":"n"}')
    assert conn.ready.done()
    dialect.on_text(conn, b"2")
    assert sent[-1] == "3"
    payload = dialect.on_text(conn, b'42["bench",{"seq":7,"ts":1.5}]')
    assert payload == {"seq": 7, "ts": 1.5}


async def test_socketio_refused_namespace_fails_the_connection() -> None:
    conn = connection([])
    SocketIODialect().on_text(conn, b'44{"message":"no"}')
    with pytest.raises(ConnectionRefusedError):
        conn.ready.result()


async def test_edge_is_subscribed_at_connected_and_reads_envelopes_and_notifications() -> None:
    conn, dialect = connection([]), EdgeDialect()
    connected = {"stream": "system", "event": "connected", "data": {"streams": ["n"]}}
    assert dialect.on_text(conn, orjson.dumps(connected)) is None
    assert conn.ready.done()
    bench = {"stream": "notifications", "event": "bench", "data": {"seq": 1, "ts": 2.0}}
    assert dialect.on_text(conn, orjson.dumps(bench)) == {"seq": 1, "ts": 2.0}
    created = {
        "stream": "notifications",
        "event": "notification.created",
        "data": {"notification": {"metadata": {"seq": 3, "ts": 4.0}}},
    }
    assert dialect.on_text(conn, orjson.dumps(created)) == {"seq": 3, "ts": 4.0}
    pong = {"stream": "system", "event": "pong"}
    assert dialect.on_text(conn, orjson.dumps(pong)) is None


async def test_floor_is_subscribed_once_open() -> None:
    conn = connection([])
    FloorDialect().on_open(conn, "tok")
    assert conn.ready.done()


def test_recorder_keeps_the_slowest_arrival_of_each_broadcast() -> None:
    recorder = Recorder()
    recorder.record({"seq": 0, "ts": 10.0, "kind": "b"}, now=10.002)
    recorder.record({"seq": 0, "ts": 10.0, "kind": "b"}, now=10.009)
    recorder.record({"seq": 1, "ts": 11.0}, now=11.001)
    assert recorder.broadcast_count == {0: 2}
    assert recorder.broadcast_last[0] == pytest.approx(0.009)
    assert len(recorder.latencies) == 3


def frame(stream: str, event: str, data: object = None, **meta: object) -> bytes:
    body: dict[str, object] = {"stream": stream, "event": event}
    if data is not None:
        body["data"] = data
    if meta:
        body["meta"] = meta
    return orjson.dumps(body)


def numbered(seq: int, epoch: str = "e1") -> bytes:
    data = {"notification": {"metadata": {"seq": seq, "ts": 1.0}}}
    return frame("notifications", "notification.created", data, epoch=epoch, seq=seq)


def subscribed(recovered: bool) -> bytes:
    data = {"streams": ["notifications"], "recovered": {"notifications": recovered}}
    return frame("system", "subscribed", data)


@pytest.mark.parametrize(
    ("seqs", "recovered", "verdict"),
    [
        ([4, 5, 6], True, "exact"),
        ([4, 5, 6], False, "not_recovered"),
        ([4, 5, 5, 6], True, "duplicate"),
        ([4, 6], True, "missing"),
        ([4, 6, 5], True, "out_of_order"),
        ([4, 5, 6, 7], True, "unexpected"),
        ([], True, "missing"),
    ],
)
def test_a_recovery_is_exact_only_with_every_missed_seq_once_in_order(
    seqs: list[int], recovered: bool, verdict: str
) -> None:
    assert recovery_verdict(seqs, after=3, missed=3, recovered=recovered) == verdict


async def test_recovering_client_asks_from_its_position_and_checks_the_replay() -> None:
    sent: list[str] = []
    conn = connection(sent, user="alice")
    dialect = RecoveringDialect(positions={"alice": ["e1", 3]}, expect={"alice": 2})
    dialect.on_text(conn, frame("system", "connected", {"streams": ["notifications"]}))
    assert [orjson.loads(s) for s in sent] == [
        {
            "action": "subscribe",
            "streams": ["notifications"],
            "recover": {"notifications": {"epoch": "e1", "seq": 3}},
        }
    ]
    assert not conn.ready.done()  # connected is not enough: the replay must come first
    assert dialect.on_text(conn, numbered(4)) == {"seq": 4, "ts": 1.0}
    dialect.on_text(conn, numbered(5))
    dialect.on_text(conn, subscribed(True))
    assert conn.ready.result() is None
    assert dialect.verdicts == {"exact": 1}
    assert dialect.replayed == 2
    assert dialect.positions["alice"] == ("e1", 5)
    dialect.on_text(conn, numbered(5))  # a live copy of what the replay sent
    assert dialect.late_duplicates == 1


async def test_recovering_client_fails_a_replay_with_a_gap_or_no_recovery() -> None:
    gap, refused = connection([], user="bob"), connection([], user="carol")
    dialect = RecoveringDialect(
        positions={"bob": ["e1", 0], "carol": ["e1", 0]}, expect={"bob": 3, "carol": 3}
    )
    for conn in (gap, refused):
        dialect.on_text(conn, frame("system", "connected", {}))
    dialect.on_text(gap, numbered(1))
    dialect.on_text(gap, numbered(3))
    dialect.on_text(gap, subscribed(True))
    dialect.on_text(refused, subscribed(False))
    with pytest.raises(RecoveryMismatch, match="missing"):
        gap.ready.result()
    with pytest.raises(RecoveryMismatch, match="not_recovered"):
        refused.ready.result()
    assert dialect.verdicts == {"missing": 1, "not_recovered": 1}


async def test_recovering_client_without_a_position_is_subscribed_at_connected() -> None:
    sent: list[str] = []
    conn, dialect = connection(sent, user="dave"), RecoveringDialect()
    dialect.on_text(conn, frame("system", "connected", {}))
    assert conn.ready.done()
    assert sent == []
    dialect.on_text(conn, numbered(1, epoch="e9"))
    assert dialect.positions == {"dave": ("e9", 1)}


async def test_chat_client_times_the_acknowledgement_and_the_echo_once() -> None:
    sent: list[str] = []
    conn, dialect = connection(sent), ChatDialect()
    assert dialect.url("ws://h:1", "tok") == "ws://h:1/ws?token=tok&stream=chat"
    dialect.on_text(conn, frame("system", "connected", {}))
    assert conn.ready.done()
    dialect.publish(conn)
    published = orjson.loads(sent[0])
    assert published["action"] == "publish"
    assert published["stream"] == "chat"
    assert published["id"] == published["data"]["id"]
    dialect.on_text(conn, frame("system", "published", {"id": published["id"]}))
    assert len(dialect.acks) == 1 and dialect.acks[0] >= 0
    echo = frame("chat", "message.echo", published["data"])
    assert dialect.on_text(conn, echo) == published["data"]
    assert dialect.on_text(conn, echo) is None  # a second echo is no round trip
    assert dialect.unexpected == 1
    dialect.publish(conn)
    refused = {"code": "RATE_LIMITED", "id": orjson.loads(sent[1])["id"]}
    dialect.on_text(conn, frame("system", "error", refused))
    assert dialect.refused == {"RATE_LIMITED": 1}
