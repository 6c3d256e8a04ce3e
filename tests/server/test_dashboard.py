"""deploy/grafana/jaxembed.json: importable structure, and every metric it queries exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "jaxembed.json"
SUFFIXES = ("_bucket", "_sum", "_count", "_total", "_created")


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_structure_imports():
    board = _dashboard()
    assert board["uid"] and board["title"] and isinstance(board["schemaVersion"], int)
    assert board["__inputs"][0]["pluginId"] == "prometheus"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    for panel in board["panels"]:
        assert {"type", "title", "gridPos", "targets", "datasource"} <= set(panel)
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"}
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert all(t["expr"] and t["refId"] for t in panel["targets"])


def test_every_queried_metric_exists_on_a_running_server(server):
    httpx.post(server.url + "/v1/embeddings", json={"input": "dashboard probe"})  # some traffic
    exposed = set()
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line and not line.startswith("#"):
            exposed.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    queried = {
        name
        for panel in _dashboard()["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\bjaxembed_[a-z_]+", target["expr"])
    }
    assert queried, "the dashboard queries nothing"
    missing = sorted(q for q in queried if q not in exposed)
    assert not missing, f"metrics the dashboard queries but the server does not expose: {missing}"
    # And the other way round: every family the server exposes has a panel.
    families = {
        re.sub("(" + "|".join(SUFFIXES) + ")$", "", m) for m in exposed if m.startswith("jaxembed_")
    }
    shown = {re.sub("(" + "|".join(SUFFIXES) + ")$", "", q) for q in queried}
    assert families <= shown, f"metrics without a panel: {sorted(families - shown)}"
