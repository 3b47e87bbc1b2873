"""`python -m realtime_bench` with tiny N: the recovery storm, the publish round trip, and
the edge as it was before both (`ws-edge-before`), run side by side with the current one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

pytestmark = pytest.mark.integration

TINY = [
    "--reps", "2", "--clients", "10", "--rates", "1000", "--duration", "0.2",
    "--storm-clients", "5", "--storm-missed", "3",
    "--roundtrip-clients", "10", "--roundtrip-rate", "50", "--roundtrip-duration", "0.5",
    "--client-procs", "2", "--drain-seconds", "2", "--max-minutes", "2",
]  # fmt: skip

Key = tuple[str, str | None, str, int]


def bench(amqp_url: str, tmp_path: Path, *args: str) -> tuple[dict[Key, dict[str, Any]], str]:
    out = tmp_path / "raw.jsonl"
    where = ["--work-dir", str(tmp_path), "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "realtime_bench", *TINY, *args, *where],
        env={**os.environ, "AMQP_URL": amqp_url},
        capture_output=True,
        timeout=150,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    results = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    by = {
        (r["scenario"], r.get("variant"), r["target"], r["rep"]): r
        for r in results
        if "target" in r
    }
    return by, proc.stdout.decode()


def test_every_client_recovers_exactly_and_every_message_comes_back(
    amqp_url: str, tmp_path: Path
) -> None:
    by, report = bench(
        amqp_url, tmp_path, "--targets", "ws-edge,ws-edge-before",
        "--scenarios", "fanout,storm,roundtrip",
    )  # fmt: skip
    for rep in (0, 1):
        storm = by[("storm", None, "ws-edge", rep)]
        assert (storm["recovered"], storm["failed"], storm["replayed"]) == (5, 0, 15), storm
        assert storm["late_duplicates"] == 0
        assert storm["owner_answered"] == 5  # one history request per client, read off /metrics
        assert 0 < storm["done_p50_ms"] <= storm["seconds"] * 1000 < 10_000
        trip = by[("roundtrip", None, "ws-edge", rep)]
        assert trip["sent"] == 25
        assert trip["acked"] == trip["echoed"] == 25, trip
        assert (trip["lost"], trip["refused"], trip["unexpected"]) == (0, 0, 0)
        assert trip["ack_p50_ms"] > 0
        assert 0 < trip["rtt_p50_ms"] <= trip["rtt_p99_ms"]
        for target in ("ws-edge", "ws-edge-before"):
            fanout = by[("fanout", "1000/s", target, rep)]
            assert (fanout["delivered"], fanout["lost"]) == (200, 0)
    assert ("connect", None, "ws-edge-before", 0) not in by  # it runs the hot path only
    assert "### storm (median of 2)" in report
    assert "| 8. storm: clients not recovered exactly | 0 | 0 | yes |" in report
    assert "| 9. publish round trip: none lost | 0 | 0 | yes |" in report
    assert "10. fan-out CPU/msg at 1,000/s ≤ 1.1x ws-edge-before | not measured" not in report


def test_recoveries_the_edge_refuses_are_counted_as_failed(amqp_url: str, tmp_path: Path) -> None:
    # 3 missed, at most 2 replayed: the edge answers recovered=false, and says so to everyone.
    by, report = bench(
        amqp_url, tmp_path, "--targets", "ws-edge", "--scenarios", "storm", "--reps", "1",
        "--storm-signal", "TERM", "--edge-env", "EDGE_RECOVERY_MAX=2",
    )  # fmt: skip
    storm = by[("storm", None, "ws-edge", 0)]
    assert (storm["recovered"], storm["failed"], storm["not_recovered"]) == (0, 5, 5), storm
    assert storm["replayed"] == 0
    assert storm["failure_reasons"] == {"too_many": 5}  # the edge's own reasons, from /metrics
    assert "| 8. storm: clients not recovered exactly | 5.00 | 0 | NO |" in report
