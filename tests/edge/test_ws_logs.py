"""An operator can follow each connection in the edge's log: who, from where, how it ended."""

from collections.abc import Callable

import pytest
import websockets
from support.edge import recv_frame, running_edge

pytestmark = pytest.mark.integration

MakeToken = Callable[..., str]


async def test_each_connection_logs_one_line_when_opened_and_one_when_closed(
    amqp_url: str, exchange: str, make_token: MakeToken
) -> None:
    async with running_edge(amqp_url, exchange) as edge:
        async with websockets.connect(edge.ws_url(token=make_token("alice"))) as ws:
            connected = await recv_frame(ws)
        await edge.stop()  # every line of the closed connection is written by then
        log = edge.log_text().splitlines()

    connection_id = connected["data"]["connection_id"]  # type: ignore[index]
    lines = [line for line in log if f"connection_id={connection_id}" in line]
    assert len(lines) == 2, lines
    opened, closed = lines
    assert "connection opened from 127.0.0.1 for notifications" in opened
    assert "user_id=alice" in opened
    assert "connection closed after" in closed
    assert "close_code=1000" in closed


async def test_the_connection_trail_can_be_turned_off(
    amqp_url: str, exchange: str, make_token: MakeToken
) -> None:
    async with running_edge(amqp_url, exchange, EDGE_LOG_CONNECTIONS="false") as edge:
        async with websockets.connect(edge.ws_url(token=make_token("alice"))) as ws:
            assert (await recv_frame(ws))["event"] == "connected"
        await edge.stop()
        log = edge.log_text()
    assert "connection opened" not in log
    assert "connection closed" not in log
