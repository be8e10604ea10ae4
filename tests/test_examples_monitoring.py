"""The monitoring examples: the Grafana dashboard and the alerting rules use only
metrics that trackerd exports, and the rules pass promtool."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from servertracker.exposition import METRIC_NAMES

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DASHBOARD = EXAMPLES / "grafana-dashboard.json"
ALERTS = EXAMPLES / "prometheus-alerts.yml"
NAME = re.compile(r"\bservertracker_[a-z_]+\b")


def expressions(node: Any) -> Iterator[str]:
    """Every PromQL "expr" (and variable query) anywhere in a dashboard."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            else:
                yield from expressions(value)
    elif isinstance(node, list):
        for item in node:
            yield from expressions(item)


def test_dashboard_uses_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = list(expressions(dashboard))
    assert len(exprs) >= 8
    used = {name for expr in exprs for name in NAME.findall(expr)}
    assert used, "the dashboard queries no servertracker metric"
    assert used <= METRIC_NAMES, f"not exported by trackerd: {sorted(used - METRIC_NAMES)}"
    titles = " ".join(panel["title"] for panel in dashboard["panels"])
    for question in ("today", "still arriving", "IP literals"):
        assert question in titles


def test_alert_rules_use_only_exported_metrics_and_pass_promtool() -> None:
    used = set(NAME.findall(ALERTS.read_text()))
    assert "servertracker_distinct_servers" in used
    assert used <= METRIC_NAMES, f"not exported by trackerd: {sorted(used - METRIC_NAMES)}"
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed")
    result = subprocess.run(
        [promtool, "check", "rules", str(ALERTS)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
