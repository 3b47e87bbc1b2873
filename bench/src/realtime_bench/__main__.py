"""`python -m realtime_bench` (`make bench`): ws-edge, python-socketio and a floor, side by side.

`ws-edge-before` is the edge at `--before-commit`, for the hot path before and after;
`storm` and `roundtrip` measure recovery and client messages (ws-edge only).

Progress goes to stderr; the tables (median of the repetitions, ratio to the
floor) and the goals go to stdout; every raw result is one JSON line in --out.
Every process started is stopped at the end, on error, on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

from realtime_bench import revision
from realtime_bench.report import Result, goals_table, medians, repetitions, tables
from realtime_bench.rpc import WorkerError
from realtime_bench.runner import Options, Runner
from realtime_bench.runtime import raise_fd_limit
from realtime_bench.supervisor import Supervisor
from realtime_bench.targets import TARGETS, Context

SCENARIOS = ("connect", "fanout", "broadcast", "hold", "rest", "storm", "roundtrip")
DEFAULT_MAX_MINUTES = 15.0
QUICK = {
    "reps": 1,
    "clients": 200,
    "duration": 1.5,
    "broadcasts": 5,
    "connect_n": 1000,
    "hold_n": 2000,
    "rest_duration": 1.5,
    "rest_users": 20,
    "storm_clients": 200,
    "storm_missed": 5,
    "roundtrip_clients": 100,
    "roundtrip_rate": 100.0,
    "roundtrip_duration": 1.5,
}


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _names(allowed: tuple[str, ...] | list[str]) -> Any:
    def parse(text: str) -> list[str]:
        names = [part.strip() for part in text.split(",") if part.strip()]
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {list(allowed)}")
        return names

    return parse


def build_parser() -> argparse.ArgumentParser:
    defaults = Options(targets=[], scenarios=set())
    p = argparse.ArgumentParser(
        prog="python -m realtime_bench",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog="examples: make bench; make bench BENCH_ARGS='--quick --targets floor,ws-edge'",
    )
    p.add_argument(
        "--quick", action="store_true", help=f"small and short, for development: {QUICK}"
    )
    p.add_argument(
        "--targets",
        type=_names(list(TARGETS)),
        default=list(TARGETS),
        help=f"comma list of {', '.join(TARGETS)}",
    )
    p.add_argument(
        "--scenarios",
        type=_names(SCENARIOS),
        default=list(SCENARIOS),
        help=f"comma list of {', '.join(SCENARIOS)} (hold, rest, storm, roundtrip: ws-edge only)",
    )
    p.add_argument("--reps", type=int, default=defaults.reps, help="repetitions (median taken)")
    p.add_argument(
        "--clients", type=int, default=defaults.clients, help="N connections, 1 user each"
    )
    p.add_argument("--rates", type=_ints, default=defaults.rates, help="fan-out msg/s (0: max)")
    p.add_argument("--duration", type=float, default=defaults.duration, help="seconds per rate")
    p.add_argument(
        "--broadcasts", type=int, default=defaults.broadcasts, help="broadcasts per repetition"
    )
    p.add_argument(
        "--broadcast-rate", type=float, default=defaults.broadcast_rate, help="broadcasts per s"
    )
    p.add_argument("--connect-n", type=int, default=defaults.connect_n, help="`connect big` size")
    p.add_argument("--hold-n", type=int, default=defaults.hold_n, help="connections in `hold`")
    p.add_argument("--rest-rate", type=float, default=defaults.rest_rate, help="REST creates per s")
    p.add_argument(
        "--rest-duration", type=float, default=defaults.rest_duration, help="seconds of REST load"
    )
    p.add_argument(
        "--rest-users",
        type=int,
        default=defaults.rest_users,
        help="connected users the notifications go to (round robin)",
    )
    p.add_argument(
        "--rest-databases",
        type=_names(("sqlite", "postgresql")),
        default=defaults.rest_databases,
        help="comma list of sqlite, postgresql (postgresql needs POSTGRES_URL)",
    )
    p.add_argument(
        "--storm-clients",
        type=int,
        default=defaults.storm_clients,
        help="storm: clients that recover at once after the edge restarts",
    )
    p.add_argument(
        "--storm-missed",
        type=int,
        default=defaults.storm_missed,
        help="storm: notifications created per user while the edge is down",
    )
    p.add_argument(
        "--storm-signal",
        choices=("KILL", "TERM"),
        default=defaults.storm_signal,
        help="storm: how the edge is stopped (KILL: a crash; TERM: a deploy, 1001 to clients)",
    )
    p.add_argument(
        "--storm-database",
        choices=("sqlite", "postgresql"),
        default=defaults.storm_database,
        help="storm: the notifications service's database (the history owner)",
    )
    p.add_argument(
        "--roundtrip-clients",
        type=int,
        default=defaults.roundtrip_clients,
        help="roundtrip: connections publishing on chat",
    )
    p.add_argument(
        "--roundtrip-rate",
        type=float,
        default=defaults.roundtrip_rate,
        help="roundtrip: client messages per second, all connections together",
    )
    p.add_argument(
        "--roundtrip-duration",
        type=float,
        default=defaults.roundtrip_duration,
        help="roundtrip: seconds of publishing",
    )
    p.add_argument(
        "--before-commit",
        default=defaults.before_commit,
        help="the edge that ws-edge-before runs (its own tree and venv in "
        f"{revision.DEFAULT_ROOT})",
    )
    p.add_argument(
        "--client-procs",
        type=int,
        default=defaults.client_procs,
        help="processes the WebSocket clients are spread over",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=defaults.concurrency,
        help="handshakes in flight per client process",
    )
    p.add_argument(
        "--drain-seconds",
        type=float,
        default=defaults.drain_seconds,
        help="stop waiting for messages after this long without one",
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="py-spy the edge, the REST API, the history owner and the echo backend "
        "in their first repetition",
    )
    p.add_argument(
        "--edge-env",
        action="append",
        default=[],
        metavar="K=V",
        help="extra environment for ws-edge (repeatable)",
    )
    p.add_argument(
        "--max-minutes", type=float, default=DEFAULT_MAX_MINUTES, help="hard bound on the whole run"
    )
    p.add_argument("--out", type=Path, default=None, help="raw JSON lines (default: in --work-dir)")
    p.add_argument(
        "--report",
        type=Path,
        default=None,
        metavar="JSONL",
        help="only print the tables and goals of a past run's raw results",
    )
    p.add_argument(
        "--work-dir",
        type=Path,
        default=Path("bench/results"),
        help="logs, profiles and raw results",
    )
    return p


def options_from(args: argparse.Namespace) -> Options:
    values = {k: v for k, v in vars(args).items() if k in Options.__dataclass_fields__}
    values["scenarios"] = set(args.scenarios)
    values["edge_env"] = dict(item.split("=", 1) for item in args.edge_env)
    values["postgres_url"] = os.environ.get("POSTGRES_URL")
    if args.quick:
        values.update(QUICK)
    return Options(**values)


def machine() -> dict[str, Any]:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": model,
        "cores": psutil.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_1m": os.getloadavg()[0],
    }


def progress(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> int:
    opts = options_from(args)
    run_id = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S") + "-" + secrets.token_hex(2)
    work = args.work_dir / f"run-{run_id}"
    out_path: Path = args.out or work / "results.jsonl"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ctx = Context(
        amqp_url=os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
        secret=secrets.token_hex(32),
        run_id=run_id,
        log_dir=work,
    )
    results: list[Result] = []
    box = machine()
    progress(f"run {run_id}: {box}; raw results in {out_path}")

    with out_path.open("ab") as out:
        out.write(orjson.dumps({"scenario": "machine", **box}) + b"\n")

        def sink(result: Result) -> None:
            results.append(result)
            out.write(orjson.dumps(result) + b"\n")
            out.flush()

        supervisor = Supervisor(work)
        runner = Runner(opts, ctx, supervisor, sink, progress)
        status = 0
        try:
            async with asyncio.timeout(args.max_minutes * 60):
                await runner.run()
        except TimeoutError:
            progress(f"stopped: the run exceeded --max-minutes {args.max_minutes}")
            status = 1
        except (WorkerError, RuntimeError, OSError) as exc:
            progress(f"failed: {exc} (process logs in {work})")
            status = 1
        finally:
            progress("stopping every process started")
            await supervisor.stop_all()

    print_report(box, results)
    for profile in runner.profiles:
        print(f"\n### profile {profile}")
    print(f"\nraw JSON lines: {out_path}")
    return status


def print_report(box: dict[str, Any], results: list[Result]) -> None:
    summary = medians(results)
    print(f"## realtime benchmark {box['date']} ({box['cpu']}, {box['cores']} cores)\n")
    print(tables(summary, repetitions(results)))
    print("### goals\n")
    print(goals_table(summary))


def report_only(path: Path) -> int:
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    box: dict[str, Any] = next((r for r in lines if r.get("scenario") == "machine"), {})
    results = [r for r in lines if "target" in r]
    print_report({"date": "?", "cpu": "?", "cores": "?", **box}, results)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.report is not None:
        return report_only(args.report)
    raise_fd_limit()

    async def guarded() -> int:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        return await run(args)

    try:
        return asyncio.run(guarded())
    except (KeyboardInterrupt, asyncio.CancelledError):
        progress("interrupted: every process started was stopped")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
