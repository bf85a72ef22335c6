"""The pages' and the report's charts, as static SVG (clipeval.ui.svg says why). They only draw numbers
computed by clipeval (analysis, metrics); each bar, point and cell carries its value as a hover title.

Widths are the chart's own units, picked for where it sits. A full-width chart is drawn twice, at FULL and
at NARROW, and the page shows the one that fits its column (widgets.chart: at 800 px, with the sidebar open,
the column is ~470 px and a 900-unit drawing shrank its text to 6 px). A chart of two side by side is drawn
at HALF in a wrapping row (st.container(horizontal=True) with children of width HALF: side by side at
1440 px, one under the other at 800 px).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clipeval.formats import bracket, percent
from clipeval.render.svg import (
    BLUES,
    MUTED,
    RDBU,
    TEXT,
    Band,
    Chart,
    Linear,
    interpolate,
    legend_height,
    luminance,
    text_width,
    wrap,
)

COLORS = {"VQA": "#8e44ad", "CP": "#2f6fdf", "ES": "#e67e22", "Contrast": "#16a085"}
# no red among the layers (red is the current threshold); 'overall' is drawn wide and pale grey
PALETTE = ["#2f6fdf", "#e67e22", "#16a085", "#8e44ad", "#b8860b", "#7f8c8d", "#17becf", "#27ae60"]
STEPS = [*PALETTE, "#d62728", "#e377c2", "#bcbd22", "#8c564b"]  # a run has 9 or more pipeline stages
FULL, HALF, NARROW = 900, 470, 480
BASELINE_MARKS = (("shuffled", "x", "shuffled labels (×)"), ("constant", "-", "one constant label (–)"))


def axis_percent(v: float) -> str:
    """A share on an axis tick, in whole percent."""
    return percent(v, 0)


def activation_histogram(hist: pd.DataFrame, top_activations: list[float], k: int, width: float = FULL) -> Chart:
    """Probe images per activation bin, with a red line per top image (solid for the k that are judged)."""
    c = Chart(width, 300, left=64, bottom=56)
    lo = float(min(hist["lo"].min(), *top_activations)) if top_activations else float(hist["lo"].min())
    hi = float(max(hist["hi"].max(), *top_activations)) if top_activations else float(hist["hi"].max())
    x = Linear(lo, hi, c.x0, c.x1)
    y = Linear(0, max(float(hist["count"].max()), 1) * 1.05, c.y1, c.y0)
    c.y_axis(y, lambda v: f"{v:g}", "images")
    c.x_axis(x, lambda v: f"{v:.3g}", "activation", grid=False)
    for r in hist.itertuples():
        x0, x1 = x(r.lo), x(r.hi)
        c.rect(
            x0 + (x1 - x0) * 0.025,
            y(r.count),
            (x1 - x0) * 0.95,
            y(0) - y(r.count),
            "#9bb7e8",
            title=f"activation {r.lo:.3f} to {r.hi:.3f}: {int(r.count)} images",
        )
    for i, a in enumerate(top_activations):
        c.line(
            x(a),
            c.y0,
            x(a),
            c.y1,
            "#c0392b",
            1.5,
            "solid" if i < k else "dot",
            title=f"top image #{i + 1}: activation {a:.3f}" + ("" if i < k else f" (not judged: beyond top-{k})"),
        )
    return c


def layer_shares(summary: pd.DataFrame, layers: list[str], width: float = FULL) -> Chart:
    """Share judged correct per layer: one bar per evaluator (real labels), its shuffled and constant
    baselines as black markers on the bar, and the values above the plot, one row per evaluator (on the
    bars the markers struck them through)."""
    real = summary[summary["variant"] == "real"]
    order = [l for l in layers if l in set(real["layer"])] + ["overall"]
    evaluators = list(dict.fromkeys(real["evaluator"]))
    items = [{"label": e, "color": COLORS.get(e, "#888")} for e in evaluators]
    items += [
        {"label": label, "kind": symbol}
        for variant, symbol, label in BASELINE_MARKS
        if (summary["variant"] == variant).any()
    ]
    font = 13
    leg = legend_height(items, width - 80, font - 1)
    value_rows = len(evaluators) * 16
    c = Chart(width, 300 + leg + value_rows + 56, left=64, top=leg + value_rows + 18, bottom=56, font=font)
    c.legend(items, c.x0, 4, width - 80)
    y = Linear(0, 1, c.y1, c.y0)
    c.y_axis(y, axis_percent, "share judged correct", ticks=[0, 0.2, 0.4, 0.6, 0.8, 1.0])
    band = Band(order, c.x0, c.x1, pad=0.25)
    bar = band.width / max(len(evaluators), 1)
    value_size = 11 if bar >= text_width("00%", 11) + 2 else 9.5  # a value no wider than about its bar
    share = {(r.evaluator, r.variant, r.layer): r.share_correct for r in summary.itertuples()}
    for row, ev in enumerate(evaluators):
        color = COLORS.get(ev, "#888")
        for layer in order:
            v = share.get((ev, "real", layer), np.nan)
            bx = band(layer) + row * bar
            if pd.notna(v):
                c.rect(bx + 1, y(v), bar - 2, y(0) - y(v), color, title=f"{ev} {layer}: {v:.1%}")
            c.text(
                bx + bar / 2,
                c.y0 - 10 - (len(evaluators) - 1 - row) * 16,
                percent(v, 0) if pd.notna(v) else "",
                size=value_size,
                anchor="middle",
                color=color,
            )
            for variant, symbol, _label in BASELINE_MARKS:
                b = share.get((ev, variant, layer), np.nan)
                if pd.notna(b):
                    c.marker(
                        symbol,
                        bx + bar / 2,
                        y(b),
                        min(bar * 0.8, 16),
                        width=2.5,
                        title=f"{ev}, {variant} labels, {layer}: {b:.1%}",
                    )
    c.band_labels_x(band)
    return c


def sweep_figure(
    sweep: pd.DataFrame,
    param: str,
    current: float,
    metric: str,
    baselines: bool = True,
    current_text: str | None = None,
    paper: float | None = None,
    width: float = HALF,
) -> Chart:
    """A metric (share_correct, agreement, kappa) against the threshold: one line per layer and a wide pale
    'overall' line, the baselines dashed, the current value as a red vertical line and the paper's (CLIP)
    value as a dashed grey one. Hovering anywhere over the plot reads every line at that threshold."""
    real = sweep[sweep["variant"] == "real"]
    layers = list(dict.fromkeys(real["layer"]))
    ordered = (["overall"] if "overall" in layers else []) + [l for l in layers if l != "overall"]
    colors = {l: PALETTE[i % len(PALETTE)] for i, l in enumerate(l for l in ordered if l != "overall")}
    lines: list[tuple[str, pd.DataFrame, dict]] = []
    for layer in ordered:
        g = real[real["layer"] == layer]
        if metric in g and g[metric].notna().any():
            overall = layer == "overall"
            lines.append(
                (
                    layer,
                    g,
                    {"color": "#b5b5b5" if overall else colors[layer], "width": 7 if overall else 2, "dash": "solid"},
                )
            )
    if baselines and metric == "share_correct":
        for variant, dash in (("shuffled", "dash"), ("constant", "dot")):
            g = sweep[(sweep["variant"] == variant) & (sweep["layer"] == "overall")]
            if len(g):
                lines.append((f"overall, {variant} labels", g, {"color": "#888", "width": 2.5, "dash": dash}))
    items = [{"label": name, "kind": "line", **style} for name, _, style in lines]
    font = 13
    leg = legend_height(items, width - 30, font - 1)
    c = Chart(width, 290 + leg, left=62, right=16, top=26, bottom=58 + leg, font=font)
    xs = pd.concat([g["threshold"] for _, g, _ in lines]) if lines else pd.Series([current])
    x = Linear(float(xs.min()), float(xs.max()), c.x0, c.x1)
    if metric in ("share_correct", "agreement"):
        y, fmt = Linear(0, 1, c.y1, c.y0), axis_percent
    else:
        vals = pd.concat([g[metric] for _, g, _ in lines]).dropna() if lines else pd.Series([0.0])
        lo, hi = min(0.0, float(vals.min())), max(float(vals.max()), 0.1)
        pad = (hi - lo) * 0.05
        y, fmt = Linear(lo - pad, hi + pad, c.y1, c.y0), (lambda v: f"{v:.2g}")
    c.y_axis(y, fmt, metric.replace("_", " "))
    c.x_axis(x, lambda v: f"{v:.3g}", param, n=5)
    for name, g, style in lines:
        c.polyline(
            [(x(a), y(b)) for a, b in zip(g["threshold"], g[metric])],
            style["color"],
            style["width"],
            style["dash"],
            title=name,
        )
    # one hover strip per threshold: every line's value there (plotly's unified hover)
    grid = sorted(set(xs.round(12)))
    by_line = [(name, dict(zip(g["threshold"].round(12), g[metric]))) for name, g, _ in lines]
    for i, t in enumerate(grid):
        left = x((grid[i - 1] + t) / 2) if i else c.x0
        right = x((t + grid[i + 1]) / 2) if i + 1 < len(grid) else c.x1
        parts = [
            f"{name}: {fmt(v) if metric != 'kappa' else f'{v:.3f}'}"
            for name, vals in by_line
            if (v := vals.get(t)) is not None and pd.notna(v)
        ]
        c.rect(left, c.y0, right - left, c.y1 - c.y0, "transparent", title=f"{param} = {t:.4g}\n" + "\n".join(parts))
    text = f"{param} = {current_text or f'{current:g}'}"
    if paper is not None and abs(paper - current) > 1e-12 and x.lo <= paper <= x.hi:
        c.line(x(paper), c.y0, x(paper), c.y1, "#777", 1.5, "dash", title=f"the paper's value (CLIP): {paper:g}")
        right_of = paper > current
        c.text(
            x(paper) + (5 if right_of else -5),
            c.y0 + 10,
            f"paper (CLIP): {paper:g}",
            size=11,
            color=MUTED,
            anchor="start" if right_of else "end",
        )
    if x.lo <= current <= x.hi:
        c.line(x(current), c.y0, x(current), c.y1, "#d62728", 2, title=f"current: {text}")
        cx = min(max(x(current), c.x0 + text_width(text, 12) / 2), c.x1 - text_width(text, 12) / 2)
        c.text(cx, c.y0 - 12, text, size=12, anchor="middle", color="#d62728")
    c.legend(items, 16, c.y1 + 46, width - 30)
    return c


def kappa_heatmap(
    matrix: pd.DataFrame,
    n: pd.DataFrame | None = None,
    lo: pd.DataFrame | None = None,
    hi: pd.DataFrame | None = None,
    min_n: int = 0,
    width: float = FULL,
) -> Chart:
    """Kappa per pair, each cell with its 95% interval and n; cells over fewer than `min_n` neurons grey."""
    z = matrix.to_numpy(float)
    names = [str(s) for s in matrix.columns]
    rows = [str(s) for s in matrix.index]
    shape = z.shape
    n_ = n.reindex(index=matrix.index, columns=matrix.columns).to_numpy(int) if n is not None else np.full(shape, -1)
    lo_ = (
        lo.reindex(index=matrix.index, columns=matrix.columns).to_numpy(float)
        if lo is not None
        else np.full(shape, np.nan)
    )
    hi_ = (
        hi.reindex(index=matrix.index, columns=matrix.columns).to_numpy(float)
        if hi is not None
        else np.full(shape, np.nan)
    )
    small = (n_ >= 0) & (n_ < min_n)
    font = 13
    row_names = [wrap(r, 22 if width >= FULL else 14) for r in rows]
    left = min(max((text_width(l, font) for r in row_names for l in r), default=20) + 16, 220)
    right = 90 if width >= FULL else 56
    cell_w = (width - left - right) / max(len(names), 1)
    cell_font = min(12.0, cell_w / (0.56 * 13))  # '[-0.25, 0.75]' (13 characters) inside its cell
    col_names = [wrap(s, max(int(cell_w / (0.56 * (font - 1))), 6)) for s in names]
    bottom = 20 + 16 * max((len(l) for l in col_names), default=1)
    cell_h = 84
    c = Chart(width, 20 + cell_h * len(rows) + bottom, left=left, right=right, top=14, bottom=bottom, font=font)
    xb, yb = Band(names, c.x0, c.x1, pad=0.0), Band(rows, c.y0, c.y1, pad=0.0)
    for i, r in enumerate(rows):
        for j, col in enumerate(names):
            v = z[i, j]
            lines = ["n/a" if np.isnan(v) else f"{v:.2f}"]
            if i != j and not np.isnan(lo_[i, j]):
                lines.append(bracket(lo_[i, j], hi_[i, j]))
            if n_[i, j] >= 0 and i != j:
                lines.append(f"n={n_[i, j]}" + (" (too few)" if small[i, j] else ""))
            fill = "#e6e6e6" if small[i, j] or np.isnan(v) else interpolate(RDBU, (v + 1) / 2)
            c.rect(xb(col), yb(r), xb.step, yb.step, fill, stroke="#fff", title=f"{r} vs {col}: " + " ".join(lines))
            ink = "#666" if small[i, j] else ("#fff" if luminance(fill) < 0.5 else TEXT)
            c.text(xb.center(col), yb.center(r), lines, size=cell_font, anchor="middle", color=ink)
    c.band_labels_y(yb, dict(zip(rows, row_names)))
    for col, lines in zip(names, col_names):
        c.text(xb.center(col), c.y1 + 10 + (len(lines) - 1) * 8, lines, size=font - 1, anchor="middle")
    # colour bar: kappa from -1 to 1
    bx, steps = c.x1 + right / 4, 20
    for s in range(steps):
        v = 1 - 2 * (s + 0.5) / steps
        c.rect(bx, c.y0 + (c.y1 - c.y0) * s / steps, 14, (c.y1 - c.y0) / steps + 0.5, interpolate(RDBU, (v + 1) / 2))
    for v in (1, 0, -1):
        c.text(bx + 20, c.y0 + (c.y1 - c.y0) * (1 - v) / 2, f"{v:g}", size=11, color=MUTED)
    c.text(bx + 7, c.y0 - 2, "kappa", size=11, anchor="middle", color=MUTED, baseline="auto")
    return c


def timings_bar(t: pd.DataFrame, width: float = FULL) -> Chart:
    """Seconds per pipeline stage, stacked per run (the run's name and id on two lines)."""
    steps = list(dict.fromkeys(t["step"]))
    colors = {s: STEPS[i % len(STEPS)] for i, s in enumerate(steps)}
    runs = list(dict.fromkeys(t["run"]))
    names = {r: [*wrap(t.loc[t["run"] == r, "name"].iloc[0], 26 if width >= FULL else 18), r[:8]] for r in runs}
    font = 13
    items = [{"label": s, "color": colors[s]} for s in steps]
    leg = legend_height(items, width - 20, font - 1)
    left = min(max((text_width(l, font) for ls in names.values() for l in ls), default=20) + 16, 240)
    row_h = max(44, 16 * max((len(v) for v in names.values()), default=1) + 12)
    c = Chart(width, leg + 30 + row_h * len(runs) + 50, left=left, right=30, top=leg + 20, bottom=50, font=font)
    c.legend(items, 10, 4, width - 20)
    total = t.groupby("run")["seconds"].sum()
    x = Linear(0, float(total.max()) * 1.05 if len(total) else 1.0, c.x0, c.x1)
    c.x_axis(x, lambda v: f"{v:g}", "seconds")
    band = Band(runs, c.y0, c.y1, pad=0.3)
    for r in runs:
        acc = 0.0
        for s in steps:
            sec = t[(t["run"] == r) & (t["step"] == s)]["seconds"].sum()
            if sec > 0:
                c.rect(x(acc), band(r), x(acc + sec) - x(acc), band.width, colors[s], title=f"{s}: {sec:.1f} s")
                acc += sec
    c.band_labels_y(band, names)
    return c


def label_bars(counts: pd.DataFrame, width: float = HALF) -> Chart:
    """Neurons per label, the most frequent first."""
    font = 13
    labels = {str(l): wrap(str(l), 28) for l in counts["label"]}
    left = min(max((text_width(x, font) for v in labels.values() for x in v), default=40) + 16, 230)
    c = Chart(width, max(180, 24 * len(counts) + 70), left=left, right=40, top=10, bottom=50, font=font)
    band = Band(list(labels), c.y0, c.y1, pad=0.25)
    x = Linear(0, max(float(counts["neurons"].max()), 1) * 1.08 if len(counts) else 1.0, c.x0, c.x1)
    c.x_axis(x, lambda v: f"{v:g}", "neurons", n=4)
    for r in counts.itertuples():
        c.rect(
            x(0),
            band(str(r.label)),
            x(r.neurons) - x(0),
            band.width,
            "#2f6fdf",
            title=f"{r.label}: {r.neurons} neurons",
        )
        c.text(x(r.neurons) + 4, band.center(str(r.label)), f"{r.neurons}", size=11, color=MUTED)
    c.band_labels_y(band, labels)
    return c


def confusion_heatmap(conf: pd.DataFrame, rater: str, reference: str, width: float = HALF) -> Chart:
    """Neurons per (rater's verdict, reference's verdict)."""
    z = conf.to_numpy(float)
    rows, cols = [str(r) for r in conf.index], [str(s) for s in conf.columns]
    font = 13
    left = max(text_width(r, font) for r in rows) + 40
    c = Chart(width, 250, left=left, right=16, top=10, bottom=60, font=font)
    xb, yb = Band(cols, c.x0, c.x1, pad=0.0), Band(rows, c.y0, c.y1, pad=0.0)
    top = max(float(np.nanmax(z)), 1.0) if z.size else 1.0
    for i, r in enumerate(rows):
        for j, col in enumerate(cols):
            fill = interpolate(BLUES, z[i, j] / top)
            c.rect(
                xb(col),
                yb(r),
                xb.step,
                yb.step,
                fill,
                stroke="#fff",
                title=f"{rater}: {r}, {reference}: {col}: {int(z[i, j])} neurons",
            )
            c.text(
                xb.center(col),
                yb.center(r),
                f"{int(z[i, j])}",
                size=16,
                anchor="middle",
                color="#fff" if luminance(fill) < 0.5 else TEXT,
            )
    c.band_labels_y(yb)
    for col in cols:
        c.text(xb.center(col), c.y1 + 14, col, size=font - 1, anchor="middle")
    c.text((c.x0 + c.x1) / 2, c.y1 + 40, reference, anchor="middle")
    c.text(14, (c.y0 + c.y1) / 2, rater, anchor="middle", rotate=-90)
    return c


__all__ = [
    "activation_histogram",
    "layer_shares",
    "sweep_figure",
    "kappa_heatmap",
    "timings_bar",
    "label_bars",
    "confusion_heatmap",
    "COLORS",
    "FULL",
    "HALF",
    "NARROW",
]
