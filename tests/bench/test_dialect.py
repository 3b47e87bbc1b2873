"""What each target's frames mean to the clients: subscribed, control, or a timed message."""

from __future__ import annotations

import orjson
import pytest

from realtime_bench.clients import Recorder
from realtime_bench.connection import Connection
from realtime_bench.dialect import EdgeDialect, FloorDialect, SocketIODialect

pytestmark = pytest.mark.unit


def connection(sent: list[str]) -> Connection:
    conn = Connection("ws://127.0.0.1:1/ws", lambda *_: None, token="tok")
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
