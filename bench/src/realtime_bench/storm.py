"""The recovery storm: a crowd comes back to a restarted edge and recovers what it missed.

Once per run (ws-edge only): `notifications-service` on a fresh database and an edge;
`--storm-clients` users connect and each gets one notification, so every client holds a
position `(epoch, seq)`. Then:

1. the edge is stopped (`--storm-signal`: KILL, a crash, by default; TERM, a deploy);
2. `--storm-missed` notifications per user are created through the service's REST API
   (numbered and kept as history, as users' would be), and the bench waits until the
   service's relay has published all of them, so no live message races the recovery;
3. the edge starts again on the same port; the clock starts when its `/readyz` first
   answers 200 (polled every 10 ms);
4. every client reconnects at once and sends `subscribe` with `recover` as soon as it
   gets `connected`; a client is done when `subscribed` says `recovered: true` and the
   frames before it were exactly its missed seqs, each once, in order (dialect.py).

Each further repetition stops the edge again (1) and repeats 3 and 4 from the same
positions: the owner answers the same requests from the same history, and the 20,000
creates (a minute of the service's CPU) are paid once per run.

With --profile, py-spy samples the edge and the owner through the first reconnect.

Reported: seconds from ready until the last client is done, per-client time to done,
what the recoveries came to (exact, not recovered, inexact), the owner's CPU per
replayed message and the edge's CPU, both over the reconnect phase; and, read from both
services' `/metrics`, why recoveries failed (the edge's reasons), how long the edge
waited for answers, and how long the owner took per request it answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import TYPE_CHECKING, Any

import aio_pika
import httpx
import psutil

from realtime_bench.dialect import NOTIFICATIONS, OK
from realtime_bench.profile import Profiler
from realtime_bench.report import latency_summary
from realtime_bench.targets import TARGETS, Server
from realtime_shared.routing import stream_key

if TYPE_CHECKING:
    from realtime_bench.runner import Runner

DIALECT = "ws-edge-recover"
LABEL = "ws-edge-storm"
READY_POLL_SECONDS = 0.01
"""The storm's clock starts at the first 200 from /readyz: poll it finely."""
PRIME_RATE = 500.0
"""Creates per second for the one notification that gives each client its position."""
CREATE_IN_ONE_GO = 0.0
"""The missed notifications are created as fast as the service takes them (rate 0)."""


async def storm_rounds(runner: Runner) -> None:
    """Set up once, then one storm per repetition (positions carry on between them)."""
    opts = runner.opts
    target = TARGETS["ws-edge"]
    exchange = f"bench-{runner.ctx.run_id}-{LABEL}"
    users = [f"storm-{i:05d}" for i in range(opts.storm_clients)]
    runner.progress(f"[storm: {len(users)} clients, {opts.storm_missed} missed each]")
    await runner._exchange(exchange, declare="topic")
    edge: Server | None = None
    try:
        async with runner.notifications(
            opts.storm_database, exchange, f"notifications-storm-{opts.storm_database}"
        ) as api:
            ctx = runner.edge_context(target)
            edge = await target.start(runner.supervisor, ctx, LABEL, poll=READY_POLL_SECONDS)
            positions = await _prime(runner, edge, api, users)
            expect: dict[str, int] = {}
            for rep in range(opts.reps):
                await _stop(runner, edge, rep)
                if rep == 0:
                    expect = await _create_missed(runner, api, edge.exchange, users)
                edge = await _storm(runner, edge, api, users, positions, expect, rep)
    finally:
        await runner._close_clients()
        if edge is not None:
            await runner.supervisor.stop(edge.process)
        await runner._exchange(exchange, declare=None, delete=True)


async def _prime(
    runner: Runner, edge: Server, api: Server, users: list[str]
) -> dict[str, list[Any]]:
    """Connect everyone and give each user one notification: their starting positions."""
    conn = await runner.connect(edge, users, DIALECT)
    if conn["failed"]:
        raise RuntimeError(f"storm: {conn['failed']} clients could not connect: {conn}")
    publisher = runner.publisher
    assert publisher is not None
    await asyncio.gather(*(c.call("reset") for c in runner.clients))
    pub = await publisher.call(
        "rest",
        wait=len(users) / PRIME_RATE * 10 + 60,
        base_url=api.base_url,
        token=runner.producer_token(),
        users=users,
        count=len(users),
        rate=PRIME_RATE,
    )
    if pub["failed"]:
        raise RuntimeError(f"storm: creating the first notifications failed: {pub['failures']}")
    await runner.drain(len(users))
    positions = await _positions(runner)
    if len(positions) != len(users):
        raise RuntimeError(f"storm: only {len(positions)} of {len(users)} clients got a position")
    return positions


async def _positions(runner: Runner) -> dict[str, list[Any]]:
    replies = await asyncio.gather(*(c.call("positions") for c in runner.clients))
    return {user: pos for r in replies for user, pos in r["positions"].items()}


async def _stop(runner: Runner, edge: Server, rep: int) -> None:
    opts = runner.opts
    runner.progress(f"[storm #{rep + 1}/{opts.reps}] SIG{opts.storm_signal} to the edge")
    await runner.supervisor.kill(edge.process, signal.Signals[f"SIG{opts.storm_signal}"])
    await runner._close_clients()


async def _storm(
    runner: Runner,
    edge: Server,
    api: Server,
    users: list[str],
    positions: dict[str, list[Any]],
    expect: dict[str, int],
    rep: int,
) -> Server:
    """Restart the edge where it was; every client recovers from `positions`."""
    await asyncio.gather(*(c.call("reset") for c in runner.clients))
    edge = await TARGETS["ws-edge"].start(
        runner.supervisor,
        runner.edge_context(TARGETS["ws-edge"]),
        LABEL,  # the same label: the same exchange, and the same log file, appended
        port=edge.port,
        poll=READY_POLL_SECONDS,
    )
    profilers = await _profile(runner, rep, edge, api)
    ready_at = time.monotonic()
    costs = _Costs(runner, edge, api)
    owner0 = await scrape(api.base_url)

    def options(chunk: list[str]) -> dict[str, Any]:
        return {
            "positions": {u: positions[u] for u in chunk},
            "expect": {u: expect[u] for u in chunk},
        }

    replies = await runner.connect_replies(edge, users, DIALECT, options)
    spent = costs.spent()
    said = _said(await scrape(edge.base_url), owner0, await scrape(api.base_url))
    for profiler in profilers:
        runner.profiles.append(await profiler.finish())
    done = [t - ready_at for r in replies for t in r["ready"]]
    outcome = await asyncio.gather(*(c.call("positions") for c in runner.clients))
    verdicts: dict[str, int] = {}
    for reply in outcome:
        for verdict, n in reply["verdicts"].items():
            verdicts[verdict] = verdicts.get(verdict, 0) + n
    replayed = sum(r["replayed"] for r in outcome)
    exact = verdicts.get(OK, 0)
    errors = sorted({e for r in replies for e in r["errors"]})[:3]
    runner.emit(
        "storm",
        "ws-edge",
        rep,
        None,
        clients=len(users),
        missed=sum(expect.values()) / max(1, len(expect)),
        recovered=exact,
        failed=len(users) - exact,
        not_recovered=verdicts.get("not_recovered", 0),
        inexact=sum(n for v, n in verdicts.items() if v not in (OK, "not_recovered")),
        replayed=replayed,
        late_duplicates=sum(r["late_duplicates"] for r in outcome),
        seconds=max(done, default=0.0),
        **latency_summary(done, "done_"),
        owner_cpu_us_per_msg=spent["owner"] * 1e6 / max(1, replayed),
        owner_cpu_s=spent["owner"],
        edge_cpu_s=spent["edge"],
        edge_cpu_ms_per_client=spent["edge"] * 1e3 / len(users),
        edge_cpu_pct=spent["edge"] / max(1e-9, spent["wall"]) * 100,
        broker_cpu_pct=spent["broker"] / max(1e-9, spent["wall"]) * 100,
        box_cpu_pct=spent["box_pct"],
        **said,
        verdicts=verdicts,
        **({"errors": errors} if errors else {}),
    )
    return edge


async def _profile(runner: Runner, rep: int, edge: Server, api: Server) -> list[Profiler]:
    """With --profile, py-spy the edge and the owner through the first storm's reconnect."""
    if not runner.opts.profile or rep != 0:
        return []
    profilers = []
    for server, name in ((edge, "edge-storm.txt"), (api, "notifications-storm.txt")):
        profiler = Profiler(server.process.pid, runner.supervisor.log_dir / name)
        await profiler.start(runner.opts.connect_timeout)  # stopped when the storm is over
        profilers.append(profiler)
    return profilers


Samples = dict[str, float]


async def scrape(base_url: str) -> Samples:
    """A service's `/metrics`, as {"name{labels}": value} (Prometheus text format)."""
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(f"{base_url}/metrics")
    samples: Samples = {}
    for line in response.text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def _said(edge: Samples, owner0: Samples, owner: Samples) -> dict[str, Any]:
    """What the edge and the owner say about the storm (the edge started with it)."""

    def delta(name: str) -> float:
        return owner.get(name, 0.0) - owner0.get(name, 0.0)

    prefix = 'edge_recovery_failures_total{reason="'
    reasons = {k[len(prefix) : -2]: int(v) for k, v in edge.items() if k.startswith(prefix) and v}
    waits = edge.get("edge_recovery_seconds_count", 0.0)
    answered = delta("notifications_history_request_duration_seconds_count")
    owner_s = delta("notifications_history_request_duration_seconds_sum")
    return {
        "timeouts": reasons.get("timeout", 0),
        "edge_wait_ms_mean": edge.get("edge_recovery_seconds_sum", 0.0) / max(1, waits) * 1e3,
        "owner_answered": answered,
        "owner_ms_per_answer": owner_s / max(1, answered) * 1e3,
        **({"failure_reasons": reasons} if reasons else {}),
    }


class _Costs:
    """CPU seconds of the edge, the owner and RabbitMQ from now until `spent()`."""

    def __init__(self, runner: Runner, edge: Server, api: Server) -> None:
        self.edge, self.api, self.broker = edge.monitor, api.monitor, runner.broker
        self.wall = time.monotonic()
        self.edge0 = self.edge.cpu_seconds()
        self.api0 = self.api.cpu_seconds()
        self.broker0 = self.broker.cpu_seconds() if self.broker else 0.0
        psutil.cpu_percent(None)

    def spent(self) -> dict[str, float]:
        return {
            "wall": time.monotonic() - self.wall,
            "edge": self.edge.cpu_seconds() - self.edge0,
            "owner": self.api.cpu_seconds() - self.api0,
            "broker": (self.broker.cpu_seconds() - self.broker0) if self.broker else 0.0,
            "box_pct": psutil.cpu_percent(None),
        }


async def _create_missed(
    runner: Runner, api: Server, exchange: str, users: list[str]
) -> dict[str, int]:
    """Create the missed notifications, wait until the relay published every one; per user,
    how many were made (a create the service refused is not a message the user missed)."""
    opts = runner.opts
    count = len(users) * opts.storm_missed
    publisher = runner.publisher
    assert publisher is not None
    started = time.monotonic()
    connection = await aio_pika.connect(runner.ctx.amqp_url)
    async with connection:
        channel = await connection.channel()
        # A queue of our own sees what the relay published while no edge listens.
        published = await channel.declare_queue(exclusive=True)
        await published.bind(exchange, f"{stream_key(NOTIFICATIONS)}.*")
        pub = await publisher.call(
            "rest",
            wait=count / 100 + 120,
            base_url=api.base_url,
            token=runner.producer_token(),
            users=users,
            count=count,
            rate=CREATE_IN_ONE_GO,
        )
        await _published(channel, published.name, pub["sent"], runner.opts.drain_seconds)
        with contextlib.suppress(aio_pika.exceptions.AMQPError):
            await published.delete(if_unused=False, if_empty=False)
    failed: dict[str, int] = pub["failed_users"]
    runner.progress(
        f"  storm: {pub['sent']} notifications created and published in "
        f"{time.monotonic() - started:.1f} s ({pub['failed']} refused)"
    )
    return {u: opts.storm_missed - failed.get(u, 0) for u in users}


async def _published(
    channel: aio_pika.abc.AbstractChannel, queue: str, expected: int, patience: float
) -> None:
    """Wait until `expected` messages reached `queue`, or none came for `patience` seconds."""
    last, last_change = -1, time.monotonic()
    while True:
        declared = await channel.declare_queue(queue, passive=True)
        count = declared.declaration_result.message_count or 0
        if count >= expected:
            return
        now = time.monotonic()
        if count != last:
            last, last_change = count, now
        elif now - last_change > patience:
            raise RuntimeError(f"storm: the relay published {count} of {expected} notifications")
        await asyncio.sleep(0.05)  # polling the broker's count, with a deadline
