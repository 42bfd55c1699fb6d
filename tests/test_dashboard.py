"""docs/grafana-dashboard.json loads, and every panel's query names a metric the server
exports (as its exposition spells it: a counter's `_total`, a histogram's `_bucket`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from handler.local.metrics import ChatMetrics

DASHBOARD = Path(__file__).resolve().parent.parent / "docs" / "grafana-dashboard.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def exported() -> set[str]:
    metrics = ChatMetrics()  # a registry of its own: every family, with samples or not
    registry = metrics.registry  # what /metrics collects
    assert registry is not None
    return {
        family.name + suffix
        for family in registry.collect()
        for suffix in SUFFIXES.get(family.type, ())
    }


def test_every_panel_queries_metrics_the_server_exports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    names = exported()
    queried = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\bwschat_[a-z_]+", target["expr"]))
            assert used, f"{panel['title']}: {target['expr']}"
            assert used <= names, f"{panel['title']} queries {used - names}"
            queried |= used
    # And every metric has a panel.
    families = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in names}
    assert families == {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in queried}
