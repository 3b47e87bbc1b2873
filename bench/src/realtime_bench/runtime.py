"""Shared by the benchmark's own processes: uvloop, file descriptors, pacing, quiet exit."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import uvloop


def raise_fd_limit() -> int:
    """Lift the soft limit on open files to the hard one: 10,000 sockets need it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return int(target)
    return int(soft)


PACE_SECONDS = 0.001


async def pace(count: int, rate: float, send_one: Callable[[int], Awaitable[None]]) -> float:
    """Call `send_one(i)` for i < count, `rate` per second (0: as fast as possible)."""
    started = time.monotonic()
    sent = 0
    while sent < count:
        due = count if rate <= 0 else min(count, int((time.monotonic() - started) * rate) + 1)
        while sent < due:
            await send_one(sent)
            sent += 1
        if rate > 0:
            await asyncio.sleep(PACE_SECONDS)
        elif sent % 256 == 0:
            await asyncio.sleep(0)
    return started


def run(main: Coroutine[Any, Any, None]) -> None:
    """Run a worker on uvloop; Ctrl-C (sent to the whole terminal group) ends it quietly."""
    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main)


AppFactory = Callable[[str, str, str], Any]
"""``create_app(amqp_url, exchange, secret)`` of a peer target (floor, python-socketio)."""

UVICORN_BACKLOG = 8192
"""Above the default 2048 so a crowd connecting at once is not dropped by the listen queue."""


def serve_target(prog: str, description: str | None, create_app: AppFactory) -> None:
    """The command line shared by the peer targets: build the app, run it under uvicorn."""
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--amqp-url", required=True)
    parser.add_argument("--exchange", required=True)
    parser.add_argument("--secret", required=True)
    args = parser.parse_args()
    app = create_app(args.amqp_url, args.exchange, args.secret)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        backlog=UVICORN_BACKLOG,
    )
