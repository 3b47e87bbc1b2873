"""Frames the WebSocket layer refuses before the app sees them, through a real edge.

Both found by the hostile-input fuzzer (tests/resilience/test_edge_hostile_input.py):
- uvicorn logged each text frame that is not UTF-8 as an ERROR with a traceback, so any
  client could fill the log with tracebacks. It is the client's fault: one INFO line, 1007.
- a `publish` whose `data` is nested deeper than orjson writes (255 levels; it reads
  1024) died in the publish task with a traceback, and the client never got an answer.
"""

from collections.abc import AsyncIterator, Callable

import pytest
import websockets
from support.edge import EdgeProcess, connected, recv_frame, running_edge

pytestmark = pytest.mark.integration

MakeToken = Callable[..., str]


@pytest.fixture
async def edge(amqp_url: str, exchange: str) -> AsyncIterator[EdgeProcess]:
    async with running_edge(
        amqp_url, exchange, REALTIME_INBOUND_EXCHANGE=f"{exchange}.inbound"
    ) as edge:
        yield edge


async def test_a_text_frame_that_is_not_utf8_is_closed_1007_without_a_traceback(
    edge: EdgeProcess, make_token: MakeToken
) -> None:
    for _ in range(3):
        ws = await connected(edge.ws_url("/ws/notifications", token=make_token("alice")))
        await ws.send(b"\xff\xfe not utf-8", text=True)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv_frame(ws)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007
    log = edge.log_text()
    assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
    assert log.count("text frame is not UTF-8 (1007)") == 3
    ws = await connected(edge.ws_url("/ws/notifications", token=make_token("alice")))
    await ws.send('{"action":"ping"}')
    assert (await recv_frame(ws))["event"] == "pong"  # the edge serves on
    await ws.close()


async def test_a_publish_nested_too_deeply_is_refused_with_its_id(
    edge: EdgeProcess, make_token: MakeToken
) -> None:
    ws = await connected(edge.ws_url("/ws/chat", token=make_token("alice")))
    data = "[" * 300 + "]" * 300
    await ws.send(
        f'{{"action":"publish","stream":"chat","event":"e","id":"deep","data":{{"x":{data}}}}}'
    )
    reply = await recv_frame(ws)
    assert reply == {
        "stream": "system",
        "event": "error",
        "data": {"code": "INVALID_FRAME", "message": "'data' is nested too deeply", "id": "deep"},
    }
    await ws.close()
    assert "Traceback" not in edge.log_text()
