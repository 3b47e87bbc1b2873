"""Support for the client and browser tests: service processes on fixed ports, Chromium.

The browser tests restart the edge mid-test; the page can only reconnect to the origin
it was loaded from, so the edge comes back on the same port (support.edge picks port 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
from playwright.async_api import Browser, async_playwright

from support.edge import SCRUBBED_ENV
from support.missing import missing
from support.notifications import free_port

BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


class ServiceProcess:
    """A console script (`ws-edge`, `notifications-service`) run `--dev` on one port, which
    stays the same across restarts; each start logs to its own file in `log_dir`."""

    def __init__(
        self, script: str, amqp_url: str, exchange: str, log_dir: Path, **env: str
    ) -> None:
        self.script = script
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
        self.env.update(AMQP_URL=amqp_url, REALTIME_EXCHANGE=exchange, PYTHONUNBUFFERED="1")
        self.env.update(env)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.script}-{self.port}-{self.starts}.log"

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.starts += 1
        argv = [str(BIN / self.script), "--dev", "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log_path.open("wb") as log:
            return subprocess.Popen(
                argv, cwd=self.log_dir, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )

    async def start(self) -> None:
        """Start and return once /readyz answers 200 (the process is connected to RabbitMQ)."""
        self.proc = self._spawn()
        deadline = time.monotonic() + START_TIMEOUT
        async with httpx.AsyncClient(timeout=1) as client:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.script} exited:\n{self.log_path.read_text()}")
                try:
                    if (await client.get(f"{self.base_url}/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.script} not ready:\n{self.log_path.read_text()}")
                await asyncio.sleep(0.05)  # readiness is only visible over HTTP

    async def stop(self) -> None:
        await asyncio.to_thread(self._terminate)

    async def kill(self) -> None:
        """SIGKILL: a crash. Nothing is closed politely; RabbitMQ drops its queue on the
        broken connection, and clients see their socket reset (1006)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            await asyncio.to_thread(proc.wait)

    async def __aenter__(self) -> ServiceProcess:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()

    def _terminate(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def logs(self) -> str:
        paths = sorted(self.log_dir.glob(f"{self.script}-*.log"))
        return "\n".join(p.read_text(errors="replace") for p in paths)


def require_chromium() -> None:
    """Skip without the browser, except under CI=true, where its absence is a failure."""
    if Path(CHROMIUM).exists():
        return
    missing(f"{CHROMIUM} is missing (scripts/ci-setup/20-browser.sh installs it)")


def chromium_launch_options() -> dict[str, Any]:
    """Debian's Chromium, never a browser Playwright would download."""
    return {"executable_path": CHROMIUM, "args": CHROMIUM_ARGS, "headless": True}


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Headless Chromium for one test (skipped without it, failed under CI=true)."""
    require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(**chromium_launch_options())
        try:
            yield browser
        finally:
            await browser.close()
