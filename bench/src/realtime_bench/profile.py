"""Sampling profiles of a running server with py-spy, summarised as % of samples per function."""

from __future__ import annotations

import asyncio
import re
import signal
from collections import Counter
from pathlib import Path

from realtime_bench.supervisor import venv_script

SAMPLE_RATE = 200
TOP = 15
_LINE = re.compile(r":\d+\)$")


def summarise(raw: str, top: int = TOP) -> str:
    """Self and inclusive % of samples per function, from py-spy's collapsed-stack format."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    if not total:
        return "no samples\n"
    lines = [f"{total} samples", "", "self %  function"]
    lines += [f"{100 * n / total:6.1f}  {f}" for f, n in own.most_common(top)]
    lines += ["", "total %  function (inclusive)"]
    lines += [f"{100 * n / total:6.1f}  {f}" for f, n in inclusive.most_common(top)]
    return "\n".join(lines) + "\n"


class Profiler:
    def __init__(self, pid: int, out: Path) -> None:
        self.pid = pid
        self.out = out
        self.raw = out.with_suffix(".raw")
        self.process: asyncio.subprocess.Process | None = None

    async def start(self, seconds: float) -> None:
        self.process = await asyncio.create_subprocess_exec(
            venv_script("py-spy"),
            "record",
            "--pid",
            str(self.pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            str(SAMPLE_RATE),
            "--format",
            "raw",
            "--nonblocking",
            "--output",
            str(self.raw),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )

    async def finish(self) -> str:
        if self.process is not None:
            if self.process.returncode is None:
                self.process.send_signal(signal.SIGINT)  # py-spy writes what it has and exits
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        raw = self.raw.read_text() if self.raw.exists() else ""
        text = summarise(raw)
        self.out.write_text(text)
        return f"{self.out.name}\n{text}"
