"""The targets behind one small adapter: start, stop, and how to reach and feed them.

Each target runs as its own process, started the way its users would start it,
on a fresh exchange so runs never see each other's traffic. `ws-edge-before` is the
edge as it was at an older commit (`--before-commit`), run from its own tree and
virtual environment (`revision.py`), to compare the hot path before and after a change.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from realtime_bench.monitor import Monitor
from realtime_bench.supervisor import Supervisor, venv_script

READY_TIMEOUT_SECONDS = 30.0
READY_POLL_SECONDS = 0.1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Context:
    """What every target of one run shares."""

    amqp_url: str
    secret: str
    run_id: str
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    before_edge: str | None = None
    """The `ws-edge` script of the older revision, once `revision.prepare` built it."""


def inbound_exchange(exchange: str) -> str:
    """The edge's exchange for client messages, named after the run's exchange."""
    return f"{exchange}.inbound"


@dataclass
class Server:
    target: Target
    process: asyncio.subprocess.Process
    port: int
    exchange: str
    monitor: Monitor
    host: str = "127.0.0.1"

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class Target:
    name: str
    dialect: str
    publish_mode: str
    """`amqp`: an envelope on the topic exchange; `socketio`: a write-only manager's emit."""
    ready_path: str
    exchange_type: str | None
    """Declared by the bench before start (`topic`), or left to the target (None)."""
    scenarios: frozenset[str] | None = None
    """The per-target scenarios it runs (None: all of them)."""

    @property
    def is_edge(self) -> bool:
        return self.dialect == "ws-edge"

    def argv(self, port: int, ctx: Context, exchange: str) -> list[str]:
        py = [sys.executable, "-m"]
        common = ["--port", str(port), "--amqp-url", ctx.amqp_url, "--exchange", exchange]
        if self.name == "floor":
            return [*py, "realtime_bench.floor", *common, "--secret", ctx.secret]
        if self.name == "python-socketio":
            return [*py, "realtime_bench.socketio_server", *common, "--secret", ctx.secret]
        script = venv_script("ws-edge")
        if self.name == "ws-edge-before":
            if ctx.before_edge is None:
                raise RuntimeError("ws-edge-before: the older revision was not prepared")
            script = ctx.before_edge
        return [script, "--host", "127.0.0.1", "--port", str(port)]

    def env(self, ctx: Context, exchange: str) -> dict[str, str]:
        env = {
            "AMQP_URL": ctx.amqp_url,
            "REALTIME_EXCHANGE": exchange,
            "JWT_SECRET": ctx.secret,
            **ctx.extra_env,
        }
        # Not the shared `realtime.inbound` of `make dev`; an older edge ignores it.
        if self.is_edge:
            env["REALTIME_INBOUND_EXCHANGE"] = inbound_exchange(exchange)
        return env

    async def start(
        self,
        supervisor: Supervisor,
        ctx: Context,
        label: str,
        port: int | None = None,
        poll: float = READY_POLL_SECONDS,
    ) -> Server:
        """Start it (on `port`, to restart one where its clients reconnect) and wait until ready."""
        port = port or free_port()
        exchange = f"bench-{ctx.run_id}-{label}"
        process = await supervisor.spawn(
            f"{label}-{port}", self.argv(port, ctx, exchange), self.env(ctx, exchange)
        )
        server = Server(self, process, port, exchange, Monitor(process.pid))
        await wait_ready(server, supervisor.log_dir / f"{label}-{port}.log", poll)
        return server


async def wait_ready(server: Server, log: Path, poll: float = READY_POLL_SECONDS) -> None:
    """Poll the ready endpoint until 200, the process dies, or the deadline passes."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    url = server.base_url + server.target.ready_path
    async with httpx.AsyncClient(timeout=1) as http:
        while time.monotonic() < deadline:
            if server.process.returncode is not None:
                break
            try:
                if (await http.get(url)).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(poll)  # polling a process we do not control, with a deadline
    raise RuntimeError(f"{server.target.name} did not become ready at {url}:\n{_tail(log)}")


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-2000:] if log.exists() else ""


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("floor", "floor", "amqp", "/healthz", "topic"),
        Target("python-socketio", "python-socketio", "socketio", "/healthz", None),
        Target("ws-edge", "ws-edge", "amqp", "/readyz", "topic"),
        # Only the hot path is compared: fan-out CPU per delivery, before and after.
        Target("ws-edge-before", "ws-edge", "amqp", "/readyz", "topic", frozenset({"fanout"})),
    )
}
