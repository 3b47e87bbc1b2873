"""What /metrics shows about clients: no label value is chosen by a client."""

import time
from collections.abc import Callable

import httpx
import pytest
from support.edge import connected, running_edge

pytestmark = pytest.mark.integration


async def test_close_codes_a_client_makes_up_are_counted_as_other(
    amqp_url: str, exchange: str, make_token: Callable[..., str]
) -> None:
    async with running_edge(amqp_url, exchange) as edge:
        for code in (1000, 3001, 3999, 4321, 4998):
            ws = await connected(edge.ws_url(token=make_token("alice")))
            await ws.close(code)
        closed: list[str] = []
        async with httpx.AsyncClient() as http:
            deadline = time.monotonic() + 10
            while sum(float(line.rsplit(" ", 1)[1]) for line in closed) < 5:
                assert time.monotonic() < deadline, closed
                text = (await http.get(f"{edge.base_url}/metrics")).text
                closed = [
                    line
                    for line in text.splitlines()
                    if line.startswith("edge_connections_closed_total")
                ]
    assert 'edge_connections_closed_total{code="other"} 4.0' in closed
    assert 'edge_connections_closed_total{code="1000"} 1.0' in closed
    assert len(closed) == 2, closed
