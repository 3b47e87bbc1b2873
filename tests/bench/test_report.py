"""The figures the benchmark prints: percentiles, medians of repetitions, ratios, goals."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from realtime_bench.__main__ import main
from realtime_bench.profile import summarise
from realtime_bench.report import goals_table, medians, percentile, repetitions, tables

pytestmark = pytest.mark.unit


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile(values, 100) == 100
    assert percentile([], 99) == 0


def test_table_shows_the_median_of_repetitions_and_the_ratio_to_the_floor() -> None:
    results = [
        {"scenario": "fanout", "variant": "1000/s", "target": "floor", "rep": r, "p99_ms": v}
        for r, v in enumerate((5.0, 6.0, 100.0))
    ] + [
        {"scenario": "fanout", "variant": "1000/s", "target": "ws-edge", "rep": r, "p99_ms": v}
        for r, v in enumerate((9.0, 12.0, 1.0))
    ]
    summary = medians(results)
    assert summary["fanout 1000/s"]["floor"]["p99_ms"] == 6.0
    text = tables(summary, repetitions(results))
    assert "| p99_ms | 6.00 | 9.00 (1.50x) |" in text


def test_goals_say_which_are_met_and_which_were_not_measured() -> None:
    summary = {
        "fanout 1000/s": {
            "floor": {"cpu_us_per_msg": 100.0, "p99_ms": 6.0},
            "ws-edge": {"cpu_us_per_msg": 120.0, "p99_ms": 30.0},
        }
    }
    text = goals_table(summary)
    assert "| 1. CPU/msg at 1,000/s ≤ 1.3x floor | 1.20x | 1.30x | yes |" in text
    assert "| 2. fan-out p99 at 1,000/s ≤ 10 ms | 30.0 | 10.0 | NO |" in text
    assert "6. 5,000 clients subscribed ≤ 5 s | not measured" in text


def test_profile_summary_counts_self_and_inclusive_samples() -> None:
    raw = "main (a.py:1);send (b.py:2) 3\nmain (a.py:1);encode (c.py:9) 1\n"
    text = summarise(raw)
    assert "4 samples" in text
    assert "  75.0  send (b.py)" in text
    assert " 100.0  main (a.py)" in text


def test_report_reprints_the_tables_of_a_past_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = tmp_path / "results.jsonl"
    lines = [
        {"scenario": "machine", "date": "2026-11-25", "cpu": "AMD EPYC", "cores": 2},
        {"scenario": "hold", "target": "ws-edge", "rep": 0, "held": 10000, "lost": 0},
    ]
    raw.write_bytes(b"\n".join(orjson.dumps(line) for line in lines) + b"\n")
    assert main(["--report", str(raw)]) == 0
    out = capsys.readouterr().out
    assert "## realtime benchmark 2026-11-25 (AMD EPYC, 2 cores)" in out
    assert "| 5. 10,000 connections held by one edge | 10,000 | 10,000 | yes |" in out


def test_goals_of_recovery_and_client_messages() -> None:
    summary = {
        "storm": {"ws-edge": {"failed": 3.0, "seconds": 2.5}},
        "roundtrip": {"ws-edge": {"rtt_p99_ms": 4.2, "lost": 0.0}},
        "fanout 1000/s": {
            "ws-edge": {"cpu_us_per_msg": 150.0},
            "ws-edge-before": {"cpu_us_per_msg": 120.0},
        },
    }
    text = goals_table(summary)
    assert "| 8. storm: clients not recovered exactly | 3.00 | 0 | NO |" in text
    assert "| 8. storm: all recovered ≤ 5 s after the edge is ready | 2.50 | 5.00 | yes |" in text
    assert "| 9. publish round trip p99 ≤ 10 ms at 500/s | 4.20 | 10.0 | yes |" in text
    assert "| 9. publish round trip: none lost | 0 | 0 | yes |" in text
    assert "| 10. fan-out CPU/msg at 1,000/s ≤ 1.1x ws-edge-before | 1.25x | 1.10x | NO |" in text


def test_the_before_edge_is_a_column_beside_the_current_one() -> None:
    results = [
        {"scenario": "fanout", "variant": "1000/s", "target": t, "rep": 0, "cpu_us_per_msg": v}
        for t, v in (("floor", 200.0), ("ws-edge", 130.0), ("ws-edge-before", 125.0))
    ]
    text = tables(medians(results), repetitions(results))
    assert "| metric | floor | ws-edge | ws-edge-before |" in text
    assert "| cpu_us_per_msg | 200 | 130 (0.65x) | 125 (0.62x) |" in text
