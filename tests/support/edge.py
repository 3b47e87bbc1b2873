"""Start `ws-edge` as a real process for tests: free port, dev key, wait for /readyz.

    async with edge_process(amqp_url, exchange) as base_url:     # "http://127.0.0.1:PORT"
        ...
    async with running_edge(amqp_url, exchange, EDGE_SEND_QUEUE="4") as edge:
        edge.ws_url("/ws", token=t)  edge.node_id  edge.log_text()  edge.proc

Extra keyword arguments are environment variables for the process. The process runs
with `--dev` (so `make_token` tokens verify), port 0 (the OS picks a free port, read
back from uvicorn's start-up line), in a temporary directory (no stray `.env`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aio_pika
import httpx
import orjson
import websockets

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
_RUNNING = re.compile(r"Uvicorn running on http://[^:]+:(\d+)")
SCRUBBED_ENV = (
    # Key settings a developer's shell or .env may hold: the test processes use --dev,
    # which refuses to start beside a key (given directly or as a file).
    "JWT_SECRET",
    "JWT_PREVIOUS_SECRETS",
    "JWT_PUBLIC_KEY",
    "JWT_SECRET_FILE",
    "JWT_PREVIOUS_SECRETS_FILE",
    "JWT_PUBLIC_KEY_FILE",
    "JWT_AUDIENCE",
    "JWT_ISSUER",
    "JWT_ALGORITHMS",
)


@dataclass
class EdgeProcess:
    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    node_id: str

    def ws_url(self, path: str = "/ws", **params: str) -> str:
        url = "ws" + self.base_url.removeprefix("http") + path
        return f"{url}?{urlencode(params)}" if params else url

    def log_text(self) -> str:
        return _read(self.log_path)

    async def metric(self, name: str, labels: str = "") -> float:
        """One sample of /metrics, e.g. ``metric("edge_messages_consumed_total")``; 0 if absent."""
        async with httpx.AsyncClient() as client:
            text = (await client.get(f"{self.base_url}/metrics")).text
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in text.splitlines():
            key, _, value = line.rpartition(" ")
            if key == wanted:
                return float(value)
        return 0.0

    async def stop(self) -> int:
        """SIGTERM without blocking the event loop (clients keep reading); the exit code."""
        return await asyncio.to_thread(self.terminate)

    def terminate(self) -> int:
        """SIGTERM, wait, SIGKILL if needed; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def _read(path: Path) -> str:
    return path.read_text(errors="replace")


def _spawn(
    workdir: Path, log_path: Path, environ: dict[str, str], *, dev: bool
) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "realtime_edge.cli", *(["--dev"] if dev else [])]
    argv += ["--host", "127.0.0.1"]
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            [*argv, "--port", "0"], cwd=workdir, env=environ, stdout=log_file, stderr=log_file
        )


async def _wait_started(proc: subprocess.Popen[bytes], log_path: Path, probe: str) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    port: str | None = None
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"ws-edge exited with {proc.returncode}:\n{_read(log_path)}")
            if port is None and (match := _RUNNING.search(_read(log_path))):
                port = match.group(1)
            if port is not None:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"http://127.0.0.1:{port}{probe}")).status_code == 200:
                        return f"http://127.0.0.1:{port}"
            await asyncio.sleep(0.05)
    raise RuntimeError(f"ws-edge was not ready within {START_TIMEOUT} s:\n{_read(log_path)}")


@contextlib.asynccontextmanager
async def running_edge(
    amqp_url: str, exchange: str, *, wait_ready: bool = True, dev: bool = True, **env: str
) -> AsyncIterator[EdgeProcess]:
    """`wait_ready=False`: return once the process answers /healthz, connected or not.
    `dev=False`: without `--dev`, for a test that configures its own keys (dev mode refuses
    to start beside one)."""
    workdir = Path(tempfile.mkdtemp(prefix="ws-edge-"))
    log_path = workdir / "ws-edge.log"
    environ = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    environ.update(AMQP_URL=amqp_url, REALTIME_EXCHANGE=exchange, PYTHONUNBUFFERED="1")
    environ.update({k: str(v) for k, v in env.items()})
    proc = _spawn(workdir, log_path, environ, dev=dev)
    edge: EdgeProcess | None = None
    try:
        base_url = await _wait_started(proc, log_path, "/readyz" if wait_ready else "/healthz")
        async with httpx.AsyncClient() as client:
            node_id = (await client.get(f"{base_url}/healthz")).json()["node"]
        edge = EdgeProcess(proc, base_url, log_path, node_id)
        yield edge
    finally:
        if edge is not None:
            edge.terminate()
        elif proc.poll() is None:
            proc.kill()
            proc.wait()


@contextlib.asynccontextmanager
async def edge_process(amqp_url: str, exchange: str, **env: str) -> AsyncIterator[str]:
    """The simple form: yields the base URL, e.g. ``"http://127.0.0.1:40123"``."""
    async with running_edge(amqp_url, exchange, **env) as edge:
        yield edge.base_url


async def recv_frame(ws: object, within: float = 5.0) -> dict[str, object]:
    """The next JSON frame from a `websockets` client connection, or TimeoutError."""
    raw = await asyncio.wait_for(ws.recv(), within)  # type: ignore[attr-defined]
    frame = orjson.loads(raw)
    assert isinstance(frame, dict), raw
    return frame


async def recv_event(ws: object, event: str, within: float = 5.0) -> dict[str, object]:
    """Skip frames until one with this `event` arrives (`within` seconds overall)."""
    deadline = time.monotonic() + within
    while True:
        frame = await recv_frame(ws, max(0.01, deadline - time.monotonic()))
        if frame.get("event") == event:
            return frame


async def connected(url: str, **options: Any) -> websockets.ClientConnection:
    """A `websockets` client on `url` whose `connected` frame has been read."""
    ws = await websockets.connect(url, **options)
    frame = await recv_frame(ws)
    assert frame["event"] == "connected", frame
    return ws


async def publish(
    exchange: aio_pika.abc.AbstractExchange,
    key: str,
    event: str,
    data: dict[str, Any] | None = None,
    *,
    stream: str | None = None,
) -> None:
    """Publish an envelope as a producer would; `stream` defaults to the key's first word."""
    body: dict[str, Any] = {"stream": stream or key.partition(".")[0], "event": event}
    if data is not None:
        body["data"] = data
    message = aio_pika.Message(orjson.dumps(body), content_type="application/json")
    await exchange.publish(message, routing_key=key)
