"""The publish round trip: clients publish on `chat`, a backend answers each one's connection.

Per repetition (ws-edge only): the edge and the echo backend (echo.py, built on
`realtime_shared.backend`); `--roundtrip-clients` connections hold `chat` and together
publish `--roundtrip-rate` messages per second for `--roundtrip-duration` seconds, round
robin (500 connections at 500/s: one message per connection per second, far under the
edge's per-connection rate limit). Each message is timed on the connection that sent it,
from just before its `publish` frame is written: to its `published` acknowledgement
(RabbitMQ confirmed it into the backend's queue), and to the backend's echo (the reply
routed back to that connection by `meta.reply_to`). One untimed message per connection
first, so the backend's and the edge's first-use costs are not measured.

With --profile, py-spy samples the edge and the backend through the first timed phase.

Reported: the round trip p50/p90/p99/max, the acknowledgement's, how many came back,
and the CPU of the edge, the backend and RabbitMQ per message.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING, Any

import aio_pika
import psutil

from realtime_bench.dialect import CHAT
from realtime_bench.echo import ECHO_BACKEND
from realtime_bench.monitor import Monitor
from realtime_bench.profile import Profiler
from realtime_bench.report import latency_summary
from realtime_bench.targets import READY_TIMEOUT_SECONDS, TARGETS, inbound_exchange

if TYPE_CHECKING:
    from realtime_bench.runner import Runner

DIALECT = "ws-edge-chat"
POLL_SECONDS = 0.05


async def roundtrip_round(runner: Runner, rep: int) -> None:
    opts = runner.opts
    runner.progress(f"[roundtrip #{rep + 1}/{opts.reps}]")
    async with runner.server(TARGETS["ws-edge"], f"ws-edge-roundtrip-{rep}") as edge:
        inbound = inbound_exchange(edge.exchange)
        queue = f"{inbound}.{ECHO_BACKEND}.{CHAT}"
        argv = [sys.executable, "-m", "realtime_bench.echo", "--amqp-url", runner.ctx.amqp_url]
        backend = await runner.supervisor.spawn(
            f"echo-{rep}", [*argv, "--exchange", edge.exchange, "--inbound-exchange", inbound]
        )
        try:
            await _consumed(runner, queue, backend)
            users = [f"chat-{i:04d}" for i in range(opts.roundtrip_clients)]
            conn = await runner.connect(edge, users, DIALECT)
            if conn["failed"]:
                raise RuntimeError(f"roundtrip: {conn['failed']} clients did not connect: {conn}")
            await asyncio.gather(*(c.call("reset") for c in runner.clients))
            await _publish(runner, len(users), opts.roundtrip_rate)  # warm-up, untimed
            await runner.drain(len(users))
            warm = sum(r["received"] for r in await runner.collect())
            if warm < len(users):
                runner.progress(f"  warning: {warm} of {len(users)} warm-up echoes came back")

            count = max(1, int(opts.roundtrip_rate * opts.roundtrip_duration))
            monitors: dict[str, Monitor | _Sum] = {
                "edge": edge.monitor,
                "backend": Monitor(backend.pid),
                "clients": _Sum(runner._workers()),
            }
            profilers = []
            if opts.profile and rep == 0:  # the edge and the backend, through the timed phase
                for pid, name in ((edge.process.pid, "edge"), (backend.pid, "echo-backend")):
                    profilers.append(Profiler(pid, runner.supervisor.log_dir / f"{name}-rt.txt"))
                    await profilers[-1].start(opts.roundtrip_duration + 5)
            before = {name: m.cpu_seconds() for name, m in monitors.items()}
            broker0 = runner.broker.cpu_seconds() if runner.broker else 0.0
            psutil.cpu_percent(None)
            wall0 = time.monotonic()
            pub = await _publish(runner, count, opts.roundtrip_rate)
            await runner.drain(count)
            wall = time.monotonic() - wall0
            cpu = {name: m.cpu_seconds() - before[name] for name, m in monitors.items()}
            broker = (runner.broker.cpu_seconds() - broker0) if runner.broker else 0.0
            box = psutil.cpu_percent(None)
            replies = await runner.collect()
            for profiler in profilers:
                runner.profiles.append(await profiler.finish())
        finally:
            await runner.supervisor.stop(backend)
            await _delete_queue(runner, queue)
    echoed = sum(r["received"] for r in replies)
    acks = [v for r in replies for v in r["acks"]]
    refused: dict[str, int] = {}
    for reply in replies:
        for code, n in reply["refused"].items():
            refused[code] = refused.get(code, 0) + n
    runner.emit(
        "roundtrip",
        "ws-edge",
        rep,
        None,
        connections=conn["subscribed"],
        sent=pub["sent"],
        published_per_s=pub["sent"] / max(1e-9, pub["finished"] - pub["started"]),
        acked=len(acks),
        refused=sum(refused.values()),
        echoed=echoed,
        unexpected=sum(r["unexpected"] for r in replies),
        lost=max(0, pub["sent"] - echoed),
        **latency_summary([v for r in replies for v in r["latencies"]], "rtt_"),
        **latency_summary(acks, "ack_"),
        edge_cpu_us_per_msg=cpu["edge"] * 1e6 / max(1, pub["sent"]),
        backend_cpu_us_per_msg=cpu["backend"] * 1e6 / max(1, pub["sent"]),
        edge_cpu_pct=cpu["edge"] / wall * 100,
        backend_cpu_pct=cpu["backend"] / wall * 100,
        clients_cpu_pct=cpu["clients"] / wall * 100,
        broker_cpu_pct=broker / wall * 100,
        box_cpu_pct=box,
        **({"refused_codes": refused} if refused else {}),
    )


class _Sum:
    def __init__(self, monitors: list[Monitor]) -> None:
        self.monitors = monitors

    def cpu_seconds(self) -> float:
        return sum(m.cpu_seconds() for m in self.monitors)


async def _publish(runner: Runner, count: int, rate: float) -> dict[str, Any]:
    """`count` messages at `rate`, shared by the client processes; when it started and ended."""
    parts = len(runner.clients)
    shares = [count // parts + (1 if i < count % parts else 0) for i in range(parts)]
    replies = await asyncio.gather(
        *(
            client.call("publish", wait=share / rate * 10 + 60, count=share, rate=rate / parts)
            for client, share in zip(runner.clients, shares, strict=True)
            if share
        )
    )
    return {
        "sent": sum(r["sent"] for r in replies),
        "started": min(r["started"] for r in replies),
        "finished": max(r["finished"] for r in replies),
    }


async def _consumed(runner: Runner, queue: str, backend: asyncio.subprocess.Process) -> None:
    """Wait until the backend consumes its queue: before that, a publish is NO_HANDLER."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    connection = await aio_pika.connect(runner.ctx.amqp_url)
    async with connection:
        while time.monotonic() < deadline and backend.returncode is None:
            channel = await connection.channel()
            try:
                declared = await channel.declare_queue(queue, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                pass  # not declared yet (a failed passive declare closes the channel)
            else:
                if (declared.declaration_result.consumer_count or 0) > 0:
                    return
                await channel.close()
            await asyncio.sleep(POLL_SECONDS)  # polling a process we do not control
    raise RuntimeError(f"roundtrip: the echo backend never consumed {queue}")


async def _delete_queue(runner: Runner, queue: str) -> None:
    connection = await aio_pika.connect(runner.ctx.amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(queue)
