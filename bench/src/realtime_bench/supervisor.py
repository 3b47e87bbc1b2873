"""Every process the benchmark starts, and stopping all of them whatever happens.

Servers run in their own session so a Ctrl-C reaches only the orchestrator,
which then stops them in order (SIGTERM, then SIGKILL after a grace period),
each by the process group id it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from realtime_bench.rpc import MAX_LINE, Remote

STOP_GRACE_SECONDS = 5.0


def venv_script(name: str) -> str:
    """A console script of this environment (``ws-edge``), found beside the interpreter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise FileNotFoundError(f"{name} is not installed in {path.parent}: run `make install`")
    return str(path)


class Supervisor:
    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: list[asyncio.subprocess.Process] = []

    async def spawn(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        *,
        worker: bool = False,
    ) -> asyncio.subprocess.Process:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = (self.log_dir / f"{name}.log").open("ab")
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if worker else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if worker else log,
                stderr=log,
                env={**os.environ, **(env or {})},
                start_new_session=True,
                limit=MAX_LINE,
            )
        finally:
            log.close()
        self.processes.append(process)
        return process

    async def worker(self, name: str, module: str, *args: str) -> Remote:
        """A Python worker speaking `rpc` on stdin/stdout."""
        process = await self.spawn(name, [sys.executable, "-m", module, *args], worker=True)
        return Remote(name, process)

    async def stop(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_SECONDS)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if process.stdin is not None:
            process.stdin.close()
        if process in self.processes:
            self.processes.remove(process)

    async def kill(self, process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
        """End a server abruptly or gracefully, as an operator or a crash would: `sig` only."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), STOP_GRACE_SECONDS)
        await self.stop(process)  # SIGKILL if it is still there after the grace period

    async def stop_all(self) -> None:
        # Shielded: a second Ctrl-C must not leave servers running.
        await asyncio.shield(
            asyncio.gather(*(self.stop(p) for p in list(reversed(self.processes))))
        )
