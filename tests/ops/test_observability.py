"""docs/operations.md and the Grafana dashboard name the metrics the services really export."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]
from prometheus_client import CollectorRegistry
from support.ops import ROOT, require_tool

from realtime_edge.metrics import EdgeMetrics
from realtime_notifications.metrics import Metrics

pytestmark = pytest.mark.unit

OPERATIONS = ROOT / "docs" / "operations.md"
DASHBOARD = ROOT / "deploy" / "grafana" / "realtime-dashboard.json"
PROMETHEUS = ROOT / "deploy" / "prometheus"
ALERT_TESTS = Path(__file__).with_name("alerts_test.yml")
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


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def test_every_exported_metric_is_documented_with_its_meaning(
    metrics: dict[str, set[str]],
) -> None:
    first_cells = [
        line.split("|")[1] for line in metrics_section().splitlines() if line.startswith("| `")
    ]
    documented = {m.group(0) for cell in first_cells if (m := METRIC_NAME.search(cell))}

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


def test_prometheus_config_and_alert_rules_are_valid() -> None:
    result = promtool("check", "config", str(PROMETHEUS / "prometheus.yml"))

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_the_alerts_fire_when_they_should_and_not_before() -> None:
    result = promtool("test", "rules", str(ALERT_TESTS))

    assert result.returncode == 0, result.stdout + result.stderr


def test_the_alerts_use_real_series_and_are_all_documented(metrics: dict[str, set[str]]) -> None:
    series = set().union(*metrics.values())
    documented = set(re.findall(r"^\| `(Realtime\w+)` \|", OPERATIONS.read_text(), re.M))

    for rule in alert_rules():
        assert set(METRIC_NAME.findall(rule["expr"])) <= series, rule["alert"]
    assert {rule["alert"] for rule in alert_rules()} == documented


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    # Grafana fills $__rate_interval in; any fixed range makes the query Prometheus's own.
    exprs = [e.replace("$__rate_interval", "5m") for e in dashboard_exprs()]
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules))

    result = promtool("check", "rules", str(path))

    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout
