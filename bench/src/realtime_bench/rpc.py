"""Line-delimited JSON commands between the orchestrator and its worker processes.

The orchestrator writes ``{"cmd": name, ...}`` on a worker's stdin and reads one
JSON reply line from its stdout; workers log to stderr only. A worker exits when
its stdin closes, so a dying orchestrator never leaves one behind.
"""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson

Reply = dict[str, Any]
Handler = Callable[..., Awaitable[Reply]]

MAX_LINE = 256 * 1024 * 1024
"""Replies carry raw latency samples: allow large lines."""


class WorkerError(RuntimeError):
    """A worker answered a command with an error, or died."""


async def serve(handlers: Mapping[str, Handler]) -> None:
    """Run a worker: read commands from stdin until EOF or `exit`, answer each on stdout."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=MAX_LINE)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    out = sys.stdout.buffer
    while line := await reader.readline():
        request = orjson.loads(line)
        name = request.pop("cmd")
        if name == "exit":
            break
        try:
            reply = await handlers[name](**request)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(orjson.dumps(reply, option=orjson.OPT_NON_STR_KEYS) + b"\n")
        out.flush()


class Remote:
    """The orchestrator's handle on one worker process."""

    def __init__(self, name: str, process: asyncio.subprocess.Process) -> None:
        self.name = name
        self.process = process
        self._lock = asyncio.Lock()

    async def call(self, cmd: str, wait: float = 120, **args: Any) -> Reply:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        async with self._lock:
            stdin.write(orjson.dumps({"cmd": cmd, **args}) + b"\n")
            await stdin.drain()
            try:
                line = await asyncio.wait_for(stdout.readline(), wait)
            except TimeoutError:
                raise WorkerError(f"{self.name}: no answer to {cmd!r} in {wait} s") from None
        if not line:
            raise WorkerError(f"{self.name} exited (code {self.process.returncode}) during {cmd!r}")
        reply: Reply = orjson.loads(line)
        if "error" in reply:
            raise WorkerError(f"{self.name}: {cmd}: {reply['error']}")
        return reply
