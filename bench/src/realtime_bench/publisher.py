"""The publisher worker process: messages into RabbitMQ (or the REST API) at a fixed rate.

Each message carries ``{"seq", "ts", "kind"}``; ``ts`` is ``time.monotonic()`` at
the moment of sending. Two ways in, matching the targets' adapters: an AMQP
topic publish of an envelope (floor, ws-edge), or python-socketio's write-only
`AsyncAioPikaManager` (an emit to one room, or to everyone).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiormq
import httpx
import orjson
import socketio  # type: ignore[import-untyped]
from pamqp.commands import Basic

from realtime_bench.dialect import BENCH_EVENT
from realtime_bench.rpc import Reply, serve
from realtime_bench.runtime import pace, run
from realtime_shared.routing import stream_key, user_key

STREAM = "notifications"
REST_IN_FLIGHT = 64
"""Requests in flight at most: enough for 200/s at tens of ms each, bounded if the API stalls."""

Send = Callable[[str | None, dict[str, Any]], Awaitable[None]]
"""Send one payload to one user, or to everyone when the user is None."""


class PublisherWorker:
    def __init__(self) -> None:
        self.send: Send | None = None
        self._close: list[Callable[[], Awaitable[Any]]] = []

    async def open(self, mode: str, amqp_url: str, exchange: str) -> Reply:
        if mode == "amqp":
            # aiormq (under aio-pika) directly: the publisher shares the cores with the server,
            # so each publish should cost as little as the protocol allows.
            connection = await aiormq.connect(amqp_url)
            self._close.append(connection.close)
            channel = await connection.channel(publisher_confirms=False)
            await channel.exchange_declare(exchange, exchange_type="topic", passive=True)

            async def send_amqp(user: str | None, payload: dict[str, Any]) -> None:
                body = orjson.dumps({"stream": STREAM, "event": BENCH_EVENT, "data": payload})
                key = stream_key(STREAM) if user is None else user_key(STREAM, user)
                properties = Basic.Properties(
                    content_type="application/json", message_id=uuid.uuid4().hex
                )
                await channel.basic_publish(
                    body, exchange=exchange, routing_key=key, properties=properties
                )

            self.send = send_amqp
        elif mode == "socketio":
            manager = socketio.AsyncAioPikaManager(amqp_url, channel=exchange, write_only=True)

            async def send_sio(user: str | None, payload: dict[str, Any]) -> None:
                await manager.emit(BENCH_EVENT, payload, room=user, namespace="/")

            async def close_sio() -> None:
                if manager.publisher_connection is not None:
                    await manager.publisher_connection.close()

            self._close.append(close_sio)
            self.send = send_sio
        else:
            raise ValueError(f"unknown publish mode {mode!r}")
        return {}

    async def fanout(self, users: list[str], count: int, rate: float) -> Reply:
        """`count` messages, round robin over `users`, one user each."""
        send = self.send
        assert send is not None

        async def one(i: int) -> None:
            await send(users[i % len(users)], {"seq": i, "ts": time.monotonic()})

        started = await pace(count, rate, one)
        return {"sent": count, "started": started, "finished": time.monotonic()}

    async def broadcast(self, count: int, rate: float) -> Reply:
        """`count` messages, each to everyone."""
        send = self.send
        assert send is not None

        async def one(i: int) -> None:
            await send(None, {"seq": i, "ts": time.monotonic(), "kind": "b"})

        started = await pace(count, rate, one)
        return {"sent": count, "started": started, "finished": time.monotonic()}

    async def rest(
        self, base_url: str, token: str, users: list[str], count: int, rate: float
    ) -> Reply:
        """Create `count` notifications through the REST API; the payload rides in `metadata`."""
        latencies: list[float] = []
        failures: list[str] = []
        failed_users: dict[str, int] = {}
        gate = asyncio.Semaphore(REST_IN_FLIGHT)
        tasks: set[asyncio.Task[None]] = set()
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=10) as http:

            async def post(i: int) -> None:
                user = users[i % len(users)]
                async with gate:
                    ts = time.monotonic()
                    body = {
                        "user_id": user,
                        "type": "bench",
                        "title": f"bench {i}",
                        "metadata": {"seq": i, "ts": ts},
                    }
                    try:
                        response = await http.post("/api/notifications", json=body)
                    except httpx.HTTPError as exc:
                        failures.append(repr(exc))
                        failed_users[user] = failed_users.get(user, 0) + 1
                        return
                    latencies.append(time.monotonic() - ts)
                    if response.status_code != 201:
                        failures.append(f"{response.status_code} {response.text[:200]}")
                        failed_users[user] = failed_users.get(user, 0) + 1

            async def one(i: int) -> None:
                await gate.acquire()  # keep the pace honest: wait here when the API stalls
                gate.release()
                task = asyncio.get_running_loop().create_task(post(i))
                tasks.add(task)
                task.add_done_callback(tasks.discard)

            # The client's own cold start (lazy imports, the first connection) cost ~80 ms
            # once and queued the next dozen requests behind it: p99 measured httpx, not us.
            (await http.get("/healthz")).raise_for_status()
            started = await pace(count, rate, one)
            if tasks:
                await asyncio.gather(*tasks)
        return {
            "sent": count - len(failures),
            "started": started,
            "finished": time.monotonic(),
            "rest_latencies": latencies,
            "failures": failures[:5],
            "failed": len(failures),
            "failed_users": failed_users,
        }

    async def close(self) -> Reply:
        for close in self._close:
            await close()
        self._close.clear()
        return {}


async def _main() -> None:
    worker = PublisherWorker()
    try:
        await serve(
            {
                "open": worker.open,
                "fanout": worker.fanout,
                "broadcast": worker.broadcast,
                "rest": worker.rest,
                "close": worker.close,
            }
        )
    finally:
        await worker.close()


if __name__ == "__main__":
    run(_main())
