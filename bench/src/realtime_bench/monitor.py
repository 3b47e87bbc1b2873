"""Server cost as the kernel sees it: CPU time and resident memory of a process tree."""

from __future__ import annotations

import asyncio
import contextlib

import psutil

SAMPLE_SECONDS = 0.1


class Monitor:
    """CPU seconds and RSS of one server process and its children, with a running RSS peak."""

    def __init__(self, pid: int) -> None:
        self.root = psutil.Process(pid)
        self.peak_rss = 0
        self._task: asyncio.Task[None] | None = None

    def _tree(self) -> list[psutil.Process]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu_seconds(self) -> float:
        total = 0.0
        for proc in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                times = proc.cpu_times()
                total += times.user + times.system
        return total

    def rss(self) -> int:
        total = 0
        for proc in self._tree():
            with contextlib.suppress(psutil.NoSuchProcess):
                total += proc.memory_info().rss
        self.peak_rss = max(self.peak_rss, total)
        return total

    async def _sample(self) -> None:
        while True:
            self.rss()
            await asyncio.sleep(SAMPLE_SECONDS)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._sample())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


BROKER_PROCESS_NAMES = frozenset({"beam.smp", "beam"})
"""RabbitMQ's Erlang VM: read-only, to say when the broker limited a figure."""


def find_broker() -> Monitor | None:
    """The local RabbitMQ's process, when it runs on this host (it does in `make bench`)."""
    for proc in psutil.process_iter(["name", "cmdline"]):
        name = proc.info.get("name") or ""
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if name in BROKER_PROCESS_NAMES and "rabbit" in cmdline:
            return Monitor(proc.pid)
    return None
