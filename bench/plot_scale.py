"""The cost curve of a dissection against the probe's size, as a picture for docs/performance.md:

    python bench/plot_scale.py [--out docs/scale.png] RESULTS.json ...

Reads bench_scale.py's aggregation results (--json files; default: bench/results/scale.json,
scale_300k.json and scale_1m.json, those that exist), draws time per stage and the driver's peak RSS
against the number of images with plotly, and has headless Chromium photograph the figure (plotly's own
static export needs kaleido, which this project does not otherwise use).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from screenshots import CHROME_FLAGS, find_chromium  # noqa: E402

RESULTS = ROOT / "bench" / "results"
DEFAULT = [RESULTS / "scale.json", RESULTS / "scale_300k.json", RESULTS / "scale_1m.json"]
STAGES = {
    "feed_s": "probe pass feed",
    "summaries_s": "summaries",
    "similarity_s": "soft_wpmi labels",
    "total_s": "total",
}
WIDTH, HEIGHT = 1100, 460


def rows_of(paths: list[Path]) -> tuple[list[dict], dict]:
    rows, machine = {}, {}
    for p in paths:
        got = json.loads(p.read_text())
        machine = machine or got.get("machine", {})
        for r in got["results"]["aggregation"]["rows"]:
            rows[r["images"]] = r  # a size measured twice: the later file's
    if not rows:
        sys.exit("no aggregation rows in " + ", ".join(map(str, paths)))
    return [rows[n] for n in sorted(rows)], machine


def figure(rows: list[dict], machine: dict) -> go.Figure:
    n = [r["images"] for r in rows]
    units, concepts = rows[0]["units"], rows[0]["concepts"]
    fig = make_subplots(
        cols=2,
        subplot_titles=("wall time per stage (s)", "driver peak RSS (MB)"),
        horizontal_spacing=0.1,
    )
    for key, name in STAGES.items():
        fig.add_scatter(
            x=n,
            y=[r[key] for r in rows],
            name=name,
            mode="lines+markers",
            row=1,
            col=1,
            line={"width": 3 if key == "total_s" else 1.5},
        )
    if 30_000 in n:  # the targets: linear from the 30k point (within 1.3x), RSS flat within 1.2x and < 6 GB
        base = rows[n.index(30_000)]
        fig.add_scatter(
            x=n,
            y=[1.3 * base["total_s"] * x / 30_000 for x in n],
            name="target: 1.3 x linear from 30k",
            mode="lines",
            line={"dash": "dot", "color": "grey"},
            row=1,
            col=1,
        )
        fig.add_scatter(
            x=n,
            y=[1.2 * base["peak_rss_bytes"] / 2**20] * len(n),
            name="target: 1.2 x the 30k peak",
            mode="lines",
            line={"dash": "dot", "color": "grey"},
            row=1,
            col=2,
            showlegend=True,
        )
    fig.add_scatter(
        x=n,
        y=[r["peak_rss_bytes"] / 2**20 for r in rows],
        name="driver peak RSS",
        mode="lines+markers",
        line={"width": 3, "color": "black"},
        row=1,
        col=2,
    )
    fig.add_scatter(
        x=n,
        y=[6 * 1024] * len(n),
        name="target: 6 GB",
        mode="lines",
        line={"dash": "dash", "color": "firebrick"},
        row=1,
        col=2,
    )
    fig.update_xaxes(type="log", title_text="probe images (log)")
    fig.update_yaxes(type="log", row=1, col=1)
    fig.update_yaxes(rangemode="tozero", row=1, col=2)
    cpu = f"{machine.get('cpu', '?')}, {machine.get('cores', '?')} cores"
    fig.update_layout(
        title=f"bench/bench_scale.py: {units:,} units, {concepts:,} concepts, synthetic activations ({cpu}; n = 1 per size)",
        width=WIDTH,
        height=HEIGHT,
        template="plotly_white",
        margin={"t": 70, "b": 50, "l": 60, "r": 20},
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", nargs="*", type=Path)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "scale.png")
    a = ap.parse_args()
    paths = a.results or [p for p in DEFAULT if p.exists()]
    missing = [p for p in paths if not p.exists()]
    if missing:
        ap.error("no such results file: " + ", ".join(map(str, missing)))
    fig = figure(*rows_of(paths))
    with tempfile.TemporaryDirectory() as tmp:
        html = Path(tmp) / "scale.html"
        fig.write_html(html, include_plotlyjs=True, full_html=True, config={"staticPlot": True})
        subprocess.run(
            [
                find_chromium(),
                *CHROME_FLAGS,
                f"--window-size={WIDTH},{HEIGHT + 40}",
                f"--screenshot={a.out.resolve()}",
                "--virtual-time-budget=5000",
                html.as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    print(f"wrote {a.out} from {', '.join(p.name for p in paths)}")


if __name__ == "__main__":
    main()
