"""docs/operations.md and the Grafana dashboard name the metrics the services really export."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from support.ops import ROOT

from realtime_edge.metrics import EdgeMetrics
from realtime_notifications.metrics import Metrics

pytestmark = pytest.mark.unit

OPERATIONS = ROOT / "docs" / "operations.md"
DASHBOARD = ROOT / "deploy" / "grafana" / "realtime-dashboard.json"
METRIC_NAME = re.compile(r"\b(?:edge|notifications)_[a-z_]+\b")
SERIES_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count", "")}


def exported(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Each metric as an operator writes it (`x_total` for counters) -> every series name."""
    out = {}
    for family in registry.collect():
        suffixes = SERIES_SUFFIXES.get(family.type, ("",))
        documented = family.name + ("_total" if family.type == "counter" else "")
        out[documented] = {family.name + suffix for suffix in suffixes}
    return out


@pytest.fixture(scope="module")
def metrics() -> dict[str, set[str]]:
    return {**exported(EdgeMetrics().registry), **exported(Metrics().registry)}


def metrics_section() -> str:
    text = OPERATIONS.read_text()
    return text[text.index("## Metrics") : text.index("## How these files are checked")]


def dashboard_exprs() -> list[str]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]


def test_every_exported_metric_is_documented_with_its_meaning(
    metrics: dict[str, set[str]],
) -> None:
    table_rows = [line for line in metrics_section().splitlines() if line.startswith("| `")]
    documented = {METRIC_NAME.search(row).group(0) for row in table_rows}  # type: ignore[union-attr]

    assert set(metrics) - documented == set(), "add these to docs/operations.md"


def test_the_docs_and_alerts_name_only_real_series(metrics: dict[str, set[str]]) -> None:
    series = set().union(*metrics.values())

    assert set(METRIC_NAME.findall(metrics_section())) - series == set()


def test_the_dashboard_queries_only_real_series(metrics: dict[str, set[str]]) -> None:
    series = set().union(*metrics.values())
    queried = {name for expr in dashboard_exprs() for name in METRIC_NAME.findall(expr)}

    assert queried - series == set()
    # The four signals the issue asks operators to watch each have a panel.
    for name in (
        "edge_slow_consumer_drops_total",
        "notifications_outbox_oldest_pending_age_seconds",
        "edge_broker_reconnects_total",
        "edge_auth_failures_total",
    ):
        assert name in queried


def test_the_dashboard_imports_cleanly() -> None:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]

    assert len(ids) == len(set(ids))
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
