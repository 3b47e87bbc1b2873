"""Figures out of raw results: percentiles, medians over repetitions, tables, the goals."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Result = dict[str, Any]
"""One JSON line: ``scenario``, ``target``, ``rep`` and the scenario's metrics."""

BASELINE = "floor"
KEYS = ("scenario", "target", "rep", "variant")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[rank]


def latency_summary(seconds: Sequence[float], prefix: str = "") -> dict[str, float]:
    ms = sorted(v * 1000 for v in seconds)
    return {
        f"{prefix}p50_ms": percentile(ms, 50),
        f"{prefix}p90_ms": percentile(ms, 90),
        f"{prefix}p99_ms": percentile(ms, 99),
        f"{prefix}max_ms": ms[-1] if ms else 0.0,
    }


def scenario_name(result: Result) -> str:
    variant = result.get("variant")
    return f"{result['scenario']} {variant}" if variant else str(result["scenario"])


def medians(results: Iterable[Result]) -> dict[str, dict[str, dict[str, float]]]:
    """{scenario: {target: {metric: median over repetitions}}} for numeric metrics."""
    samples: dict[str, dict[str, dict[str, list[float]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list))
    )
    for result in results:
        for key, value in result.items():
            if key in KEYS or isinstance(value, bool) or not isinstance(value, int | float):
                continue
            samples[scenario_name(result)][result["target"]][key].append(float(value))
    return {
        scenario: {
            target: {metric: statistics.median(vals) for metric, vals in metrics.items()}
            for target, metrics in by_target.items()
        }
        for scenario, by_target in samples.items()
    }


def repetitions(results: Iterable[Result]) -> dict[str, int]:
    """How many repetitions each scenario ran (hold runs once, the others `--reps` times)."""
    seen: dict[str, set[int]] = defaultdict(set)
    for result in results:
        seen[scenario_name(result)].add(int(result.get("rep", 0)))
    return {scenario: len(reps) for scenario, reps in seen.items()}


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def tables(summary: dict[str, dict[str, dict[str, float]]], reps: Mapping[str, int]) -> str:
    """One Markdown table per scenario: each target's median and its ratio to the floor."""
    out: list[str] = []
    for scenario, by_target in summary.items():
        targets = sorted(by_target, key=lambda t: (t != BASELINE, t))
        metrics: list[str] = []
        for target in targets:
            metrics += [m for m in by_target[target] if m not in metrics]
        out.append(f"### {scenario} (median of {reps.get(scenario, 1)})\n")
        out.append("| metric | " + " | ".join(targets) + " |")
        out.append("|---|" + "---|" * len(targets))
        for metric in metrics:
            cells = []
            for target in targets:
                value = by_target[target].get(metric)
                if value is None:
                    cells.append("")
                    continue
                base = by_target.get(BASELINE, {}).get(metric)
                ratio = f" ({value / base:.2f}x)" if base and target != BASELINE else ""
                cells.append(_fmt(value) + ratio)
            out.append(f"| {metric} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


@dataclass(frozen=True)
class Goal:
    number: int
    text: str
    scenario: str
    metric: str
    target: str
    limit: float
    relative_to: str | None = None
    at_least: bool = False

    def measure(self, summary: dict[str, dict[str, dict[str, float]]]) -> float | None:
        by_target = summary.get(self.scenario, {})
        value = by_target.get(self.target, {}).get(self.metric)
        if value is None:
            return None
        if self.relative_to is None:
            return value
        base = by_target.get(self.relative_to, {}).get(self.metric)
        return value / base if base else None


GOALS = (
    Goal(
        1,
        "CPU/msg at 1,000/s ≤ 1.3x floor",
        "fanout 1000/s",
        "cpu_us_per_msg",
        "ws-edge",
        1.3,
        BASELINE,
    ),
    Goal(
        1,
        "CPU/msg at 1,000/s ≤ 0.5x python-socketio",
        "fanout 1000/s",
        "cpu_us_per_msg",
        "ws-edge",
        0.5,
        "python-socketio",
    ),
    Goal(2, "fan-out p99 at 1,000/s ≤ 10 ms", "fanout 1000/s", "p99_ms", "ws-edge", 10),
    Goal(3, "fan-out at 3,000/s: none lost", "fanout 3000/s", "lost", "ws-edge", 0),
    Goal(
        3,
        "fan-out at 3,000/s: rate ≥ 0.95x floor",
        "fanout 3000/s",
        "delivered_per_s",
        "ws-edge",
        0.95,
        BASELINE,
        at_least=True,
    ),
    Goal(
        4,
        "broadcast last client p50 ≤ 1.3x floor",
        "broadcast",
        "last_p50_ms",
        "ws-edge",
        1.3,
        BASELINE,
    ),
    Goal(5, "≤ 20 KB per idle connection", "fanout 1000/s", "kb_per_conn", "ws-edge", 20),
    Goal(5, "10,000 connections held by one edge", "hold", "held", "ws-edge", 10000, at_least=True),
    Goal(5, "fan-out over the 10,000: none lost", "hold", "lost", "ws-edge", 0),
    Goal(6, "5,000 clients subscribed ≤ 5 s", "connect big", "seconds", "ws-edge", 5),
    Goal(7, "REST→WS p99 ≤ 25 ms at 200/s, SQLite", "rest sqlite", "e2e_p99_ms", "ws-edge", 25),
    # Recovery (issue 12) and client messages (issue 13).
    Goal(8, "storm: clients not recovered exactly", "storm", "failed", "ws-edge", 0),
    Goal(8, "storm: all recovered ≤ 5 s after the edge is ready", "storm", "seconds", "ws-edge", 5),
    Goal(9, "publish round trip p99 ≤ 10 ms at 500/s", "roundtrip", "rtt_p99_ms", "ws-edge", 10),
    Goal(9, "publish round trip: none lost", "roundtrip", "lost", "ws-edge", 0),
    Goal(
        10,
        "fan-out CPU/msg at 1,000/s ≤ 1.1x ws-edge-before",
        "fanout 1000/s",
        "cpu_us_per_msg",
        "ws-edge",
        1.1,
        "ws-edge-before",
    ),
)


def goals_table(summary: dict[str, dict[str, dict[str, float]]]) -> str:
    out = ["| goal | measured | limit | met |", "|---|---|---|---|"]
    for goal in GOALS:
        value = goal.measure(summary)
        unit = "x" if goal.relative_to else ""
        if value is None:
            out.append(f"| {goal.number}. {goal.text} | not measured | | |")
            continue
        met = value >= goal.limit if goal.at_least else value <= goal.limit
        out.append(
            f"| {goal.number}. {goal.text} | {_fmt(value)}{unit} | {_fmt(goal.limit)}{unit} | "
            f"{'yes' if met else 'NO'} |"
        )
    return "\n".join(out)
