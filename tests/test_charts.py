"""The benchmark charts regenerate from the committed JSON, and docs/benchmarks.md shows them."""

from __future__ import annotations

import re
from pathlib import Path

from tools import charts

BENCHMARKS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


def test_charts_regenerate_from_the_results(tmp_path):
    written = charts.render_all(tmp_path)
    names = sorted(p.name for p in written)
    assert names == sorted(p.name for p in charts.CHARTS.glob("*.png"))  # none stale, none missing
    for path in written:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_benchmarks_page_embeds_every_chart():
    linked = set(re.findall(r"\]\(charts/([\w.-]+\.png)\)", BENCHMARKS.read_text()))
    assert linked == {p.name for p in charts.CHARTS.glob("*.png")}
