"""The client worker process: holds many connections, timestamps every benchmark message.

Run by the orchestrator as ``python -m realtime_bench.clients``; commands arrive
through `rpc`. Latencies are receive time minus the publisher's send time, both
``time.monotonic()``, which is one clock for every process on a Linux host.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import jwt

from realtime_bench.connection import Connection
from realtime_bench.dialect import DIALECTS, ChatDialect, Dialect, Payload, RecoveringDialect
from realtime_bench.rpc import Reply, serve
from realtime_bench.runtime import pace, raise_fd_limit, run

TOKEN_TTL_SECONDS = 3600


class Recorder:
    """What one phase delivered: every latency, and per broadcast the slowest arrival."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.latencies: list[float] = []
        self.broadcast_last: dict[int, float] = {}
        self.broadcast_count: dict[int, int] = {}
        self.first = 0.0
        self.last = 0.0

    def record(self, payload: Payload, now: float) -> None:
        latency = now - float(payload["ts"])
        self.latencies.append(latency)
        if not self.first:
            self.first = now
        self.last = now
        if payload.get("kind") == "b":
            seq = int(payload["seq"])
            self.broadcast_count[seq] = self.broadcast_count.get(seq, 0) + 1
            if latency > self.broadcast_last.get(seq, 0.0):
                self.broadcast_last[seq] = latency


class ClientWorker:
    def __init__(self) -> None:
        self.connections: list[Connection] = []
        self.recorder = Recorder()
        self.dialect: Dialect | None = None

    def _on_text(self, conn: Connection, text: bytes, now: float) -> None:
        assert self.dialect is not None
        payload = self.dialect.on_text(conn, text)
        if payload is not None:
            self.recorder.record(payload, now)

    async def _open(
        self,
        host: str,
        port: int,
        user: str,
        token: str,
        gate: asyncio.Semaphore,
        limit: float,
    ) -> float:
        """Connect one user; the monotonic time its connection was subscribed."""
        dialect = self.dialect
        assert dialect is not None
        url = dialect.url(f"ws://{host}:{port}", token)
        loop = asyncio.get_running_loop()
        async with gate:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Connection(url, self._on_text, token, user), host, port
                ),
                limit,
            )
            self.connections.append(conn)
            await asyncio.wait_for(conn.opened, limit)
            dialect.on_open(conn, token)
            await asyncio.wait_for(conn.ready, limit)
        return time.monotonic()

    async def connect(
        self,
        dialect: str,
        host: str,
        port: int,
        users: list[str],
        secret: str,
        concurrency: int = 1000,
        limit_seconds: float = 30,
        options: dict[str, Any] | None = None,
    ) -> Reply:
        """Open one connection per user at once (at most `concurrency` handshakes in flight).

        `options` go to the dialect (a recovering client's positions, for one).
        """
        self.dialect = DIALECTS[dialect](**(options or {}))
        tokens = [jwt.encode(_claims(user), secret, algorithm="HS256") for user in users]
        gate = asyncio.Semaphore(concurrency)
        started = time.monotonic()
        results = await asyncio.gather(
            *(
                self._open(host, port, user, token, gate, limit_seconds)
                for user, token in zip(users, tokens, strict=True)
            ),
            return_exceptions=True,
        )
        finished = time.monotonic()
        errors = [repr(r) for r in results if isinstance(r, BaseException)]
        return {
            "subscribed": len(results) - len(errors),
            "failed": len(errors),
            "errors": sorted(set(errors))[:5],
            "started": started,
            "finished": finished,
            "ready": [r for r in results if isinstance(r, float)],
        }

    async def positions(self) -> Reply:
        """Each user's last (epoch, seq) seen, and what the recoveries came to."""
        dialect = self.dialect
        if not isinstance(dialect, RecoveringDialect):
            return {"positions": {}, "verdicts": {}, "replayed": 0, "late_duplicates": 0}
        return {
            "positions": dialect.positions,
            "verdicts": dict(dialect.verdicts),
            "replayed": dialect.replayed,
            "late_duplicates": dialect.late_duplicates,
        }

    async def publish(self, count: int, rate: float) -> Reply:
        """`count` client messages on `chat`, `rate` per second, round robin over connections."""
        dialect = self.dialect
        assert isinstance(dialect, ChatDialect)
        conns = [c for c in self.connections if c.ready.done() and not c.closed.done()]
        assert conns, "no connection to publish on"

        async def one(i: int) -> None:
            dialect.publish(conns[i % len(conns)])

        started = await pace(count, rate, one)
        return {"sent": count, "started": started, "finished": time.monotonic()}

    async def reset(self) -> Reply:
        self.recorder.reset()
        return {}

    async def stats(self) -> Reply:
        r = self.recorder
        open_now = sum(1 for c in self.connections if not c.closed.done())
        return {"received": len(r.latencies), "first": r.first, "last": r.last, "open": open_now}

    async def collect(self) -> Reply:
        r = self.recorder
        reply: dict[str, Any] = {
            "received": len(r.latencies),
            "latencies": r.latencies,
            "first": r.first,
            "last": r.last,
            "broadcast_last": r.broadcast_last,
            "broadcast_count": r.broadcast_count,
        }
        r.reset()
        chat = self.dialect
        if isinstance(chat, ChatDialect):
            reply.update(acks=chat.acks, refused=dict(chat.refused), unexpected=chat.unexpected)
            chat.next_phase()
        return reply

    async def close(self) -> Reply:
        for conn in self.connections:
            conn.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(c.closed for c in self.connections), return_exceptions=True), 5
            )
        self.connections.clear()
        return {}


def _claims(user: str) -> dict[str, Any]:
    return {"sub": user, "exp": int(time.time()) + TOKEN_TTL_SECONDS}


async def _main() -> None:
    raise_fd_limit()
    worker = ClientWorker()
    await serve(
        {
            "connect": worker.connect,
            "reset": worker.reset,
            "stats": worker.stats,
            "collect": worker.collect,
            "positions": worker.positions,
            "publish": worker.publish,
            "close": worker.close,
        }
    )
    await worker.close()


if __name__ == "__main__":
    run(_main())
