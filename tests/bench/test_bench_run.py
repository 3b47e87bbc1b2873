"""`python -m realtime_bench` end to end with tiny N: every target and scenario, then Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psutil
import pytest

pytestmark = pytest.mark.integration

TINY = [
    "--reps", "1", "--clients", "10", "--rates", "200", "--duration", "0.5",
    "--broadcasts", "2", "--connect-n", "20", "--hold-n", "30", "--rest-rate", "50",
    "--rest-duration", "0.4", "--rest-users", "3", "--client-procs", "2",
    "--drain-seconds", "2", "--max-minutes", "2",
]  # fmt: skip
PEERS = [
    "--targets",
    "floor,python-socketio,ws-edge",
    "--scenarios",
    "connect,fanout,broadcast,hold,rest",
]  # fmt: skip (storm, roundtrip and ws-edge-before: test_recovery_and_publish.py)


def bench(env: dict[str, str], *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "realtime_bench", *TINY, *args],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_every_target_delivers_everything_and_the_report_has_every_scenario(
    amqp_url: str, postgres_url: str, tmp_path: Path
) -> None:
    out = tmp_path / "raw.jsonl"
    env = {"AMQP_URL": amqp_url, "POSTGRES_URL": postgres_url}
    proc = bench(env, *PEERS, "--work-dir", str(tmp_path), "--out", str(out), "--profile")
    stdout, stderr = proc.communicate(timeout=150)
    assert proc.returncode == 0, stderr.decode()[-3000:]
    results = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    by = {(r["scenario"], r.get("variant"), r.get("target")): r for r in results}
    assert results[0]["scenario"] == "machine"
    for target in ("floor", "python-socketio", "ws-edge"):
        assert by[("connect", None, target)]["subscribed"] == 10
        assert by[("connect", "big", target)]["subscribed"] == 20
        fanout = by[("fanout", "200/s", target)]
        assert (fanout["delivered"], fanout["lost"]) == (100, 0)
        assert fanout["p99_ms"] > 0
        assert fanout["cpu_us_per_msg"] > 0
        assert by[("broadcast", None, target)]["complete"] == 2
    assert by[("hold", None, "ws-edge")]["lost"] == 0
    for db in ("sqlite", "postgresql"):
        rest = by[("rest", db, "ws-edge")]
        # a busy SQLite may answer 503 (retry later): counted as failed, never as lost
        assert rest["sent"] + rest["failed"] == 20, rest
        assert rest["sent"] > 0, rest
        assert rest["lost"] == 0, rest
    report = stdout.decode()
    assert "### fanout 200/s (median of 1)" in report
    assert "| p99_ms |" in report
    assert "### goals" in report
    assert "### profile edge-fanout-200.txt" in report  # py-spy sampled the edge
    assert by[("fanout", "200/s", "ws-edge")]["broker_cpu_pct"] > 0


def test_ctrl_c_stops_every_process_it_started(amqp_url: str, tmp_path: Path) -> None:
    proc = bench(
        {"AMQP_URL": amqp_url}, "--work-dir", str(tmp_path), "--targets", "floor",
        "--scenarios", "fanout", "--rates", "50", "--duration", "60",
    )  # fmt: skip
    assert proc.stderr is not None
    started: list[psutil.Process] = []
    deadline = time.monotonic() + 60
    for line in proc.stderr:
        if b"starting" in line:
            break
        assert time.monotonic() < deadline, "the run never started"
    while time.monotonic() < deadline and len(started) < 4:  # 2 clients, publisher, server
        started = psutil.Process(proc.pid).children(recursive=True)
        time.sleep(0.05)  # polling another process's children, with a deadline
    assert len(started) >= 4, started
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)
    assert proc.returncode == 130
    _, alive = psutil.wait_procs(started, timeout=10)
    assert not alive, f"left running: {alive}"
