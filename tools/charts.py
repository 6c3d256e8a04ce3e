"""Benchmark JSON (docs/results/) → PNG charts (docs/charts/) embedded in docs/benchmarks.md.

    python -m tools.charts                     # regenerate every chart from docs/results/*.json

Each chart is drawn from one results file written by a benchmark tool (copied to
docs/results/ when its numbers go into docs/benchmarks.md); a missing file skips its
charts with a message. The charts carry the run's date and machine, since numbers
from different runs (and machines) do not compare.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
CHARTS = ROOT / "docs" / "charts"

SCENARIOS = {
    "batched_16x8": "(a) passages,\n16/request, 8 clients",
    "serial_single_short": "(b) serial\nshort texts",
    "c32_single_passage": "(c) 32 clients,\n1 passage each",
    "mixed_short_long": "(d) short + long,\n16 clients",
}
COLORS = {
    "jaxembed": "#1f77b4",
    "infinity": "#ff7f0e",
    "sentence-transformers": "#7f7f7f",
    "off": "#aec7e8",
}


def _load(name: str) -> dict | None:
    path = RESULTS / name
    return json.loads(path.read_text()) if path.is_file() else None


def _subtitle(results: dict) -> str:
    machine = results.get("machine") or results.get("cpu") or "unknown machine"
    return f"{results.get('date', '')} · {machine}"


def _bars(ax, groups: list[str], series: dict[str, list[float]], colors: dict[str, str]) -> None:
    width = 0.8 / max(len(series), 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        bars = ax.bar(xs, values, width, label=name, color=colors.get(name))
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=2)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.legend(fontsize=8)


def _save(fig, name: str, out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def compare_charts(out: Path) -> list[Path]:
    """Throughput and latency per scenario: jaxembed vs Infinity (vs sentence-transformers)."""
    results = _load("compare.json")
    if results is None:
        return []
    engines = [e for e in ("jaxembed", "infinity") if e in results]
    scenarios = [s for s in SCENARIOS if all(s in results[e] for e in engines)]
    labels = [SCENARIOS[s] for s in scenarios]
    fig, ax = plt.subplots(figsize=(8, 4))
    series = {e: [results[e][s]["texts_per_s"] for s in scenarios] for e in engines}
    _bars(ax, labels, series, COLORS)
    baseline = results.get("sentence_transformers_batch32", {}).get("texts_per_s")
    if baseline:
        ax.axhline(baseline, color=COLORS["sentence-transformers"], linestyle="--", linewidth=1)
        ax.text(-0.45, baseline * 1.02, "sentence-transformers in-process, batch 32", fontsize=7)
        top = max(baseline, *(v for values in series.values() for v in values))
        ax.set_ylim(top=top * 1.2)
    ax.set_ylabel("texts / s (higher is better)")
    ax.set_title(f"all-MiniLM-L6-v2 over HTTP — throughput\n{_subtitle(results)}", fontsize=9)
    paths = [_save(fig, "compare-throughput.png", out)]

    fig, ax = plt.subplots(figsize=(8, 4))
    series = {
        f"{e} {m[:3]}": [results[e][s][m] for s in scenarios]
        for e in engines
        for m in ("p50_ms", "p99_ms")
    }
    # p50 in the engine's colour, p99 the same colour half transparent.
    colors = {
        f"{e} {m}": COLORS[e] + ("" if m == "p50" else "80")
        for e in engines
        for m in ("p50", "p99")
    }
    _bars(ax, labels, series, colors)
    ax.set_yscale("log")
    ax.set_ylabel("latency, ms (log scale; lower is better)")
    ax.set_title(f"all-MiniLM-L6-v2 over HTTP — latency\n{_subtitle(results)}", fontsize=9)
    paths.append(_save(fig, "compare-latency.png", out))
    return paths


def packing_chart(out: Path) -> list[Path]:
    """Packing on vs off over HTTP, per scenario (two runs of tools.compare --skip-infinity)."""
    on, off = _load("packing-on.json"), _load("packing-off.json")
    if on is None or off is None:
        return []
    scenarios = [s for s in SCENARIOS if s in on["jaxembed"] and s in off["jaxembed"]]
    fig, ax = plt.subplots(figsize=(8, 4))
    series = {
        "packing on": [on["jaxembed"][s]["texts_per_s"] for s in scenarios],
        "--no-packing": [off["jaxembed"][s]["texts_per_s"] for s in scenarios],
    }
    _bars(
        ax,
        [SCENARIOS[s] for s in scenarios],
        series,
        {"packing on": COLORS["jaxembed"], "--no-packing": COLORS["off"]},
    )
    ax.set_ylabel("texts / s (higher is better)")
    ax.set_title(f"Sequence packing A/B (jaxembed, MiniLM)\n{_subtitle(on)}", fontsize=9)
    return [_save(fig, "packing.png", out)]


def attention_chart(out: Path) -> list[Path]:
    """Attention temporary memory and time per bucket length: XLA vs blocked vs auto."""
    results = _load("attention.json")
    if results is None:
        return []
    rows = results["rows"]
    lengths = [int(r["bucket"].split("x")[1]) for r in rows]
    fig, (mem, time) = plt.subplots(1, 2, figsize=(9, 3.8))
    for impl, style in (("xla", "o-"), ("blocked", "s-"), ("auto", "^--")):
        mem.plot(lengths, [r[f"{impl}_temp_mib"] for r in rows], style, label=impl)
        time.plot(lengths, [r[f"{impl}_ms"] for r in rows], style, label=impl)
    for ax, label in ((mem, "temporary memory, MiB"), (time, "time per batch, ms")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(lengths, [str(n) for n in lengths], fontsize=8)
        ax.minorticks_off()
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (bucket)")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle(
        f"Attention per bucket ({results.get('model', '')})\n{_subtitle(results)}", fontsize=9
    )
    return [_save(fig, "attention.png", out)]


def rerank_chart(out: Path) -> list[Path]:
    results = _load("rerank.json")
    if results is None:
        return []
    engines = results["engines"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    names = list(engines)
    bars = ax.barh(names, [engines[n]["pairs_per_s"] for n in names],
                   color=[COLORS.get(n, "#999999") for n in names])  # fmt: skip
    ax.bar_label(bars, fmt="%.0f pairs/s", fontsize=8, padding=3)
    ax.set_xlabel("pairs / s (higher is better)")
    ax.set_title(
        f"Rerank 1 query × {results['documents_per_query']} documents\n{_subtitle(results)}",
        fontsize=9,
    )
    ax.margins(x=0.3)
    return [_save(fig, "rerank.png", out)]


CHARTS_BY_SOURCE: tuple[Callable[[Path], list[Path]], ...] = (
    compare_charts,
    packing_chart,
    attention_chart,
    rerank_chart,
)


def render_all(out: Path = CHARTS) -> list[Path]:
    written = []
    for draw in CHARTS_BY_SOURCE:
        paths = draw(out)
        if not paths:
            print(f"skipped {draw.__name__}: its results file is not in {RESULTS}")
        written += paths
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=CHARTS)
    args = parser.parse_args()
    for path in render_all(args.out):
        print(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")


if __name__ == "__main__":
    main()
