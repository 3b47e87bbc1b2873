"""The scenarios, run side by side: every target once per repetition, in turn.

Per target and repetition: start the server, connect N clients (the `connect`
scenario), measure idle memory, fan out at each rate, broadcast, reconnect a
larger crowd (`connect big`), stop. Then, for ws-edge only, hold many
connections with fan-out still working (`hold`), REST → WebSocket on SQLite
and PostgreSQL (`rest`), a crowd recovering what it missed while the edge was
down (`storm`, storm.py) and client messages answered by a backend (`roundtrip`,
roundtrip.py). Every result is one JSON line handed to `sink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import jwt
import psutil

from realtime_bench import revision
from realtime_bench.database import fresh_database
from realtime_bench.monitor import Monitor, find_broker
from realtime_bench.profile import Profiler
from realtime_bench.report import Result, latency_summary
from realtime_bench.rpc import Remote
from realtime_bench.supervisor import Supervisor, venv_script
from realtime_bench.targets import (
    TARGETS,
    Context,
    Server,
    Target,
    free_port,
    inbound_exchange,
    wait_ready,
)

PER_TARGET = frozenset({"connect", "fanout", "broadcast"})

SETTLE_SECONDS = 0.5
"""Idle pause before reading RSS after connecting, so allocations of the handshakes land."""
POLL_SECONDS = 0.05
WARM_UP_ATTEMPTS = 3


@dataclass
class Options:
    targets: list[str]
    scenarios: set[str]
    reps: int = 3
    clients: int = 1000
    rates: list[int] = field(default_factory=lambda: [1000, 3000])
    duration: float = 5.0
    broadcasts: int = 20
    broadcast_rate: float = 10.0
    connect_n: int = 5000
    hold_n: int = 10000
    rest_rate: float = 200.0
    rest_duration: float = 5.0
    rest_users: int = 100
    rest_databases: list[str] = field(default_factory=lambda: ["sqlite", "postgresql"])
    client_procs: int = 2
    concurrency: int = 1000
    drain_seconds: float = 3.0
    connect_timeout: float = 30.0
    profile: bool = False
    """py-spy the edge (fan-out, broadcast, connect) and the notifications service (rest)."""
    postgres_url: str | None = None
    edge_env: dict[str, str] = field(default_factory=dict)
    storm_clients: int = 1000
    storm_missed: int = 20
    """Notifications created per user while the edge is down."""
    storm_signal: str = "KILL"
    """How the edge is stopped before the storm: KILL (a crash) or TERM (a deploy)."""
    storm_database: str = "sqlite"
    roundtrip_clients: int = 500
    roundtrip_rate: float = 500.0
    """Client messages per second, all connections together."""
    roundtrip_duration: float = 5.0
    before_commit: str = revision.DEFAULT_BEFORE_COMMIT


Progress = Callable[[str], None]
Sink = Callable[[Result], None]


class Runner:
    def __init__(
        self, opts: Options, ctx: Context, supervisor: Supervisor, sink: Sink, progress: Progress
    ) -> None:
        self.opts = opts
        self.ctx = ctx
        self.supervisor = supervisor
        self.sink = sink
        self.progress = progress
        self.clients: list[Remote] = []
        self.publisher: Remote | None = None
        self.profiles: list[str] = []
        self.broker = find_broker()

    async def setup(self) -> None:
        for i in range(self.opts.client_procs):
            self.clients.append(
                await self.supervisor.worker(f"clients-{i}", "realtime_bench.clients")
            )
        self.publisher = await self.supervisor.worker("publisher", "realtime_bench.publisher")
        if "ws-edge-before" in self.opts.targets and self.scenarios(TARGETS["ws-edge-before"]):
            script = await revision.prepare(self.opts.before_commit, progress=self.progress)
            self.ctx = dataclasses.replace(self.ctx, before_edge=script)

    def scenarios(self, target: Target) -> set[str]:
        """The per-target scenarios `target` runs in this run."""
        return set(PER_TARGET & self.opts.scenarios & (target.scenarios or PER_TARGET))

    async def run(self) -> None:
        from realtime_bench.roundtrip import roundtrip_round
        from realtime_bench.storm import storm_rounds

        await self.setup()
        for rep in range(self.opts.reps):
            for name in self.opts.targets:
                if self.scenarios(TARGETS[name]):
                    await self.target_round(TARGETS[name], rep)
        if "ws-edge" not in self.opts.targets:
            return
        if "hold" in self.opts.scenarios:
            await self.hold_round()
        if "rest" in self.opts.scenarios:
            for rep in range(self.opts.reps):
                for db in self.opts.rest_databases:
                    await self.rest_round(db, rep)
        if "storm" in self.opts.scenarios:
            await storm_rounds(self)
        if "roundtrip" in self.opts.scenarios:
            for rep in range(self.opts.reps):
                await roundtrip_round(self, rep)

    # -- building blocks ------------------------------------------------------------------

    def emit(self, scenario: str, target: str, rep: int, variant: str | None, **m: Any) -> None:
        result: Result = {"scenario": scenario, "target": target, "rep": rep}
        if variant:
            result["variant"] = variant
        result.update(m)
        self.sink(result)
        shown = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in m.items()
            if not isinstance(v, list | dict)
        )
        self.progress(f"  {scenario} {variant or ''} {target} #{rep + 1}: {shown}")

    @contextlib.asynccontextmanager
    async def server(self, target: Target, label: str) -> AsyncIterator[Server]:
        exchange = f"bench-{self.ctx.run_id}-{label}"
        await self._exchange(exchange, declare=target.exchange_type)
        ctx = self.edge_context(target)
        server: Server | None = None
        try:
            server = await target.start(self.supervisor, ctx, label)
            server.monitor.start()
            assert self.publisher is not None
            await self.publisher.call(
                "open", mode=target.publish_mode, amqp_url=ctx.amqp_url, exchange=exchange
            )
            yield server
        finally:
            if self.publisher is not None:
                await self.publisher.call("close")
            await self._close_clients()
            if server is not None:
                await server.monitor.stop()
                await self.supervisor.stop(server.process)
            await self._exchange(exchange, declare=None, delete=True)

    def edge_context(self, target: Target) -> Context:
        """`--edge-env` goes to both edges, so before and after run alike."""
        if target.is_edge and self.opts.edge_env:
            return dataclasses.replace(self.ctx, extra_env=self.opts.edge_env)
        return self.ctx

    async def _exchange(self, name: str, declare: str | None, delete: bool = False) -> None:
        connection = await aio_pika.connect(self.ctx.amqp_url)
        async with connection:
            channel = await connection.channel()
            if declare:
                await channel.declare_exchange(name, aio_pika.ExchangeType(declare), durable=True)
            if delete:
                await channel.exchange_delete(name)
                # What the edge and the services declared for this run's exchange.
                await channel.exchange_delete(inbound_exchange(name))
                await channel.queue_delete(history_queue(name))

    async def _close_clients(self) -> None:
        await asyncio.gather(*(c.call("close") for c in self.clients))

    def _split(self, users: list[str]) -> list[list[str]]:
        parts = len(self.clients)
        return [users[i::parts] for i in range(parts) if users[i::parts]]

    async def connect_replies(
        self,
        server: Server,
        users: list[str],
        dialect: str | None = None,
        options: Callable[[list[str]], dict[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Every client process connects its share of `users` at once; their replies.

        `options(chunk)` gives the dialect's options for one process's share of the users.
        """
        return list(
            await asyncio.gather(
                *(
                    client.call(
                        "connect",
                        wait=self.opts.connect_timeout + 30,
                        dialect=dialect or server.target.dialect,
                        host=server.host,
                        port=server.port,
                        users=chunk,
                        secret=self.ctx.secret,
                        concurrency=self.opts.concurrency,
                        limit_seconds=self.opts.connect_timeout,
                        options=options(chunk) if options else None,
                    )
                    for client, chunk in zip(self.clients, self._split(users), strict=False)
                )
            )
        )

    async def connect(
        self, server: Server, users: list[str], dialect: str | None = None
    ) -> dict[str, Any]:
        workers = self._workers()
        cpu0 = server.monitor.cpu_seconds()
        w0 = sum(w.cpu_seconds() for w in workers)
        psutil.cpu_percent(None)
        replies = await self.connect_replies(server, users, dialect)
        seconds = max(r["finished"] for r in replies) - min(r["started"] for r in replies)
        subscribed = sum(r["subscribed"] for r in replies)
        errors = sorted({e for r in replies for e in r["errors"]})[:3]
        return {
            "n": len(users),
            "subscribed": subscribed,
            "failed": sum(r["failed"] for r in replies),
            "seconds": seconds,
            "subscribed_per_s": subscribed / seconds if seconds else 0.0,
            "server_cpu_ms_per_conn": (server.monitor.cpu_seconds() - cpu0) * 1e3 / len(users),
            "server_cpu_pct": (server.monitor.cpu_seconds() - cpu0) / seconds * 100,
            "clients_cpu_pct": (sum(w.cpu_seconds() for w in workers) - w0) / seconds * 100,
            "box_cpu_pct": psutil.cpu_percent(None),
            **({"errors": errors} if errors else {}),
        }

    async def drain(self, expected: int) -> None:
        """Wait until clients hold `expected` messages, or nothing new came for a while."""
        last_total, last_change = -1, time.monotonic()
        while True:
            stats = await asyncio.gather(*(c.call("stats") for c in self.clients))
            total = sum(s["received"] for s in stats)
            now = time.monotonic()
            if total >= expected:
                return
            if total != last_total:
                last_total, last_change = total, now
            elif now - last_change > self.opts.drain_seconds:
                return
            await asyncio.sleep(POLL_SECONDS)  # polling other processes, with a deadline

    async def warm_up(self, n: int) -> None:
        """One broadcast that every client must see before anything is measured.

        python-socketio binds its queue in the background after the first connect,
        with no signal to wait for; this makes sure the whole path is live.
        """
        assert self.publisher is not None
        for _ in range(WARM_UP_ATTEMPTS):
            await asyncio.gather(*(c.call("reset") for c in self.clients))
            await self.publisher.call("broadcast", count=1, rate=0)
            await self.drain(n)
            if sum(r["received"] for r in await self.collect()) >= n:
                return
        self.progress("  warning: the warm-up broadcast did not reach every client")

    async def collect(self) -> list[dict[str, Any]]:
        return list(await asyncio.gather(*(c.call("collect") for c in self.clients)))

    def _workers(self) -> list[Monitor]:
        procs = [c.process for c in self.clients]
        return [Monitor(p.pid) for p in procs]

    async def measured(
        self, server: Server, expected: int, publish: Callable[[], Any]
    ) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        """Run one publishing phase; return the publisher's reply, client replies and costs."""
        assert self.publisher is not None
        await asyncio.gather(*(c.call("reset") for c in self.clients))
        workers = self._workers()
        pub_mon = Monitor(self.publisher.process.pid)
        cpu0, wall0 = server.monitor.cpu_seconds(), time.monotonic()
        w0 = sum(w.cpu_seconds() for w in workers)
        p0 = pub_mon.cpu_seconds()
        b0 = self.broker.cpu_seconds() if self.broker else 0.0
        psutil.cpu_percent(None)
        pub = await publish()
        await self.drain(expected)
        wall = time.monotonic() - wall0
        costs = {
            "server_cpu_s": server.monitor.cpu_seconds() - cpu0,
            "server_cpu_pct": (server.monitor.cpu_seconds() - cpu0) / wall * 100,
            "clients_cpu_pct": (sum(w.cpu_seconds() for w in workers) - w0) / wall * 100,
            "publisher_cpu_pct": (pub_mon.cpu_seconds() - p0) / wall * 100,
            "box_cpu_pct": psutil.cpu_percent(None),
        }
        if self.broker:
            costs["broker_cpu_pct"] = (self.broker.cpu_seconds() - b0) / wall * 100
        replies = await self.collect()
        return pub, replies, costs

    # -- scenarios ------------------------------------------------------------------------

    async def target_round(self, target: Target, rep: int) -> None:
        opts = self.opts
        scenarios = self.scenarios(target)
        self.progress(f"[{target.name} #{rep + 1}/{opts.reps}] starting")
        async with self.server(target, f"{target.name}-{rep}") as server:
            rss0 = server.monitor.rss()
            users = [f"user-{i:05d}" for i in range(opts.clients)]
            conn = await self.connect(server, users)
            if "connect" in scenarios:
                self.emit("connect", target.name, rep, None, **conn)
            await self.warm_up(conn["subscribed"])
            await asyncio.sleep(SETTLE_SECONDS)
            idle = {
                "kb_per_conn": (server.monitor.rss() - rss0) / 1024 / max(1, conn["subscribed"]),
                "idle_rss_mb": server.monitor.rss() / 2**20,
            }
            if "fanout" in scenarios:
                for rate in opts.rates:
                    await self.fanout(server, users, rate, rep, idle)
            if "broadcast" in scenarios:
                await self.broadcast(server, conn["subscribed"], rep)
            if "connect" in scenarios and opts.connect_n:
                await self._close_clients()
                big = [f"big-{i:05d}" for i in range(opts.connect_n)]
                profiler = await self._profile(server, rep, "connect", self.opts.connect_timeout)
                result = await self.connect(server, big)
                if profiler is not None:
                    self.profiles.append(await profiler.finish())
                self.emit("connect", target.name, rep, "big", **result)

    async def _profile(
        self, server: Server, rep: int, what: str, seconds: float
    ) -> Profiler | None:
        """py-spy the edge during one phase of its first repetition, when --profile is on."""
        if not self.opts.profile or server.target.name != "ws-edge" or rep != 0:
            return None
        profiler = Profiler(server.process.pid, self.supervisor.log_dir / f"edge-{what}.txt")
        await profiler.start(seconds)
        return profiler

    async def fanout(
        self, server: Server, users: list[str], rate: int, rep: int, idle: dict[str, float]
    ) -> None:
        assert self.publisher is not None
        count = max(1, int(rate * self.opts.duration))
        profiler = await self._profile(server, rep, f"fanout-{rate}", self.opts.duration + 1)
        publisher = self.publisher
        pub, replies, costs = await self.measured(
            server,
            count,
            lambda: publisher.call(
                "fanout", wait=self.opts.duration * 10 + 60, users=users, count=count, rate=rate
            ),
        )
        if profiler is not None:
            self.profiles.append(await profiler.finish())
        self._fanout_result(server, rep, f"{rate}/s", count, pub, replies, costs, idle)

    def _fanout_result(
        self,
        server: Server,
        rep: int,
        variant: str | None,
        count: int,
        pub: dict[str, Any],
        replies: list[dict[str, Any]],
        costs: dict[str, Any],
        idle: dict[str, float],
        scenario: str = "fanout",
    ) -> None:
        delivered = sum(r["received"] for r in replies)
        latencies = [v for r in replies for v in r["latencies"]]
        last = max((r["last"] for r in replies), default=0.0)
        span = last - pub["started"] if last else 0.0
        self.emit(
            scenario,
            server.target.name,
            rep,
            variant,
            sent=pub["sent"],
            published_per_s=pub["sent"] / max(1e-9, pub["finished"] - pub["started"]),
            delivered=delivered,
            lost=max(0, count - delivered),
            delivered_per_s=delivered / span if span > 0 else 0.0,
            **latency_summary(latencies),
            cpu_us_per_msg=costs["server_cpu_s"] * 1e6 / max(1, delivered),
            peak_rss_mb=server.monitor.peak_rss / 2**20,
            **idle,
            **{k: v for k, v in costs.items() if k != "server_cpu_s"},
        )

    async def broadcast(self, server: Server, n: int, rep: int) -> None:
        assert self.publisher is not None
        opts = self.opts
        publisher = self.publisher
        seconds = opts.broadcasts / max(0.1, opts.broadcast_rate) + 1
        profiler = await self._profile(server, rep, "broadcast", seconds)
        _, replies, costs = await self.measured(
            server,
            opts.broadcasts * n,
            lambda: publisher.call(
                "broadcast", count=opts.broadcasts, rate=opts.broadcast_rate, wait=300
            ),
        )
        if profiler is not None:
            self.profiles.append(await profiler.finish())
        last: dict[str, float] = {}
        count: dict[str, int] = {}
        for reply in replies:
            for seq, value in reply["broadcast_last"].items():
                last[seq] = max(last.get(seq, 0.0), value)
            for seq, value in reply["broadcast_count"].items():
                count[seq] = count.get(seq, 0) + value
        complete = [last[s] for s in last if count.get(s, 0) >= n]
        delivered = sum(count.values())
        self.emit(
            "broadcast",
            server.target.name,
            rep,
            None,
            n=n,
            broadcasts=opts.broadcasts,
            complete=len(complete),
            lost=opts.broadcasts * n - delivered,
            **latency_summary(complete, "last_"),
            **latency_summary([v for r in replies for v in r["latencies"]]),
            cpu_us_per_msg=costs["server_cpu_s"] * 1e6 / max(1, delivered),
            server_cpu_pct=costs["server_cpu_pct"],
            broker_cpu_pct=costs.get("broker_cpu_pct", 0.0),
            box_cpu_pct=costs["box_cpu_pct"],
        )

    async def hold_round(self) -> None:
        """One edge process holding `hold_n` connections; fan-out at the first rate still works."""
        opts = self.opts
        target = TARGETS["ws-edge"]
        self.progress(f"[hold {opts.hold_n} on ws-edge]")
        async with self.server(target, "ws-edge-hold") as server:
            rss0 = server.monitor.rss()
            users = [f"hold-{i:05d}" for i in range(opts.hold_n)]
            conn = await self.connect(server, users)
            await asyncio.sleep(SETTLE_SECONDS)
            idle = {
                "kb_per_conn": (server.monitor.rss() - rss0) / 1024 / max(1, conn["subscribed"]),
                "idle_rss_mb": server.monitor.rss() / 2**20,
                "held": float(conn["subscribed"]),
                "connect_seconds": conn["seconds"],
            }
            rate = opts.rates[0]
            count = max(1, int(rate * opts.duration))
            publisher = self.publisher
            assert publisher is not None
            pub, replies, costs = await self.measured(
                server,
                count,
                lambda: publisher.call(
                    "fanout", wait=opts.duration * 10 + 60, users=users, count=count, rate=rate
                ),
            )
            idle["rate"] = float(rate)
            self._fanout_result(server, 0, None, count, pub, replies, costs, idle, "hold")

    @contextlib.asynccontextmanager
    async def notifications(self, db: str, exchange: str, label: str) -> AsyncIterator[Server]:
        """`notifications-service` on a fresh database, publishing to `exchange`, until exit."""
        async with fresh_database(db, self.supervisor.log_dir, self.opts.postgres_url) as url:
            port = free_port()
            process = await self.supervisor.spawn(
                label,
                [venv_script("notifications-service"), "--host", "127.0.0.1", "--port", str(port)],
                {
                    "AMQP_URL": self.ctx.amqp_url,
                    "REALTIME_EXCHANGE": exchange,
                    "JWT_SECRET": self.ctx.secret,
                    "DATABASE_URL": url,
                },
            )
            try:
                api = Server(TARGETS["ws-edge"], process, port, exchange, Monitor(process.pid))
                await wait_ready(api, self.supervisor.log_dir / f"{label}.log")
                yield api
            finally:
                await self.supervisor.stop(process)

    def producer_token(self) -> str:
        """A token that may create notifications for anyone."""
        claims = {
            "sub": "bench-producer",
            "exp": int(time.time()) + 3600,
            "permissions": ["notification.manage"],
        }
        return jwt.encode(claims, self.ctx.secret, algorithm="HS256")

    async def rest_round(self, db: str, rep: int) -> None:
        """Notifications created over REST at a fixed rate, received by connected clients."""
        opts = self.opts
        self.progress(f"[rest {db} #{rep + 1}/{opts.reps}]")
        async with (
            self.server(TARGETS["ws-edge"], f"ws-edge-rest-{db}-{rep}") as edge,
            self.notifications(db, edge.exchange, f"notifications-{db}-{rep}") as api,
        ):
            users = [f"rest-{i:04d}" for i in range(opts.rest_users)]
            conn = await self.connect(edge, users)
            count = max(1, int(opts.rest_rate * opts.rest_duration))
            token = self.producer_token()
            publisher = self.publisher
            assert publisher is not None
            api_cpu0 = api.monitor.cpu_seconds()
            profiler = None
            if opts.profile and rep == 0:
                out = self.supervisor.log_dir / f"notifications-{db}.txt"
                profiler = Profiler(api.process.pid, out)
                await profiler.start(opts.rest_duration + 5)
            pub, replies, costs = await self.measured(
                edge,
                count,
                lambda: publisher.call(
                    "rest",
                    wait=opts.rest_duration * 10 + 60,
                    base_url=api.base_url,
                    token=token,
                    users=users,
                    count=count,
                    rate=opts.rest_rate,
                ),
            )
            if profiler is not None:
                self.profiles.append(await profiler.finish())
            delivered = sum(r["received"] for r in replies)
            self.emit(
                "rest",
                "ws-edge",
                rep,
                db,
                clients=conn["subscribed"],
                sent=pub["sent"],
                failed=pub["failed"],
                delivered=delivered,
                lost=max(0, pub["sent"] - delivered),
                **latency_summary([v for r in replies for v in r["latencies"]], "e2e_"),
                **latency_summary(pub["rest_latencies"], "rest_"),
                api_cpu_us_per_msg=(api.monitor.cpu_seconds() - api_cpu0)
                * 1e6
                / max(1, pub["sent"]),
                edge_cpu_pct=costs["server_cpu_pct"],
                broker_cpu_pct=costs.get("broker_cpu_pct", 0.0),
                box_cpu_pct=costs["box_cpu_pct"],
                **({"failures": pub["failures"]} if pub["failures"] else {}),
            )


def history_queue(exchange: str) -> str:
    """The notifications service's durable history queue for `exchange` (Positions and recovery)."""
    return f"{exchange}.history.notifications"
