"""Plotly figures for the pages. They only draw numbers computed by clipeval (analysis, metrics)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

COLORS = {"VQA": "#8e44ad", "CP": "#2f6fdf", "ES": "#e67e22", "Contrast": "#16a085"}
# No plotly template: st.plotly_chart draws in Streamlit's own theme anyway, and naming one ("plotly_white")
# made plotly rebuild it for every figure, 150 ms each on a busy machine, on every slider step.
LAYOUT = dict(margin=dict(l=10, r=10, t=40, b=10), font=dict(size=13))


def vline(x: float, color: str, width: float = 1.5, dash: str = "solid") -> dict:
    """A vertical line across the plot as a layout shape (Figure.add_vline is ~10x slower per line)."""
    return dict(type="line", x0=x, x1=x, xref="x", y0=0, y1=1, yref="paper", line=dict(color=color, width=width,
                                                                                        dash=dash))


def activation_histogram(hist: pd.DataFrame, top_activations: list[float], k: int) -> go.Figure:
    centers = (hist["lo"] + hist["hi"]) / 2
    fig = go.Figure(go.Bar(x=centers, y=hist["count"], width=(hist["hi"] - hist["lo"]) * 0.95,
                           marker_color="#9bb7e8", name="probe images",
                           hovertemplate="activation %{x:.3f}<br>%{y} images<extra></extra>"))
    shapes = [vline(a, "#c0392b", 1.5, "solid" if i < k else "dot") for i, a in enumerate(top_activations)]
    fig.update_layout(**LAYOUT, height=300, xaxis_title="activation", yaxis_title="images", showlegend=False,
                      shapes=shapes)
    return fig


LABEL_ROW0, LABEL_ROW_STEP = 1.06, 0.07  # where layer_shares writes its values, above 100%


def layer_shares(summary: pd.DataFrame, layers: list[str]) -> go.Figure:
    """Share judged correct per layer: one bar per evaluator (real labels), with its shuffled and
    constant baselines as black markers on the bar."""
    real = summary[summary["variant"] == "real"]
    fig = go.Figure()
    order = [l for l in layers if l in set(real["layer"])] + ["overall"]
    legend_done = set()
    for row, (ev, g) in enumerate(real.groupby("evaluator", sort=False)):
        g = g.set_index("layer").reindex(order)
        fig.add_bar(x=order, y=g["share_correct"], name=ev, marker_color=COLORS.get(ev),
                    offsetgroup=ev, hovertemplate=ev + " %{x}: %{y:.1%}<extra></extra>")
        # the value above the plot area, in line with its bar (on the bar, the baseline markers struck it
        # through), one row per evaluator: side by side, a narrow window ran them into each other ("8%4%0%")
        fig.add_scatter(x=order, y=[LABEL_ROW0 + LABEL_ROW_STEP * row] * len(order), mode="text", offsetgroup=ev,
                        showlegend=False,
                        text=[f"{v:.0%}" if pd.notna(v) else "" for v in g["share_correct"]],
                        textfont=dict(size=11, color=COLORS.get(ev, "#333")), hoverinfo="skip")
        for variant, symbol, label in (("shuffled", "x-thin-open", "shuffled labels (×)"),
                                       ("constant", "line-ew-open", "one constant label (–)")):
            b = summary[(summary["evaluator"] == ev) & (summary["variant"] == variant)]
            b = b.set_index("layer").reindex(order)
            if b["share_correct"].notna().any():
                fig.add_scatter(x=order, y=b["share_correct"], mode="markers", offsetgroup=ev, name=label,
                                legendgroup=variant, showlegend=variant not in legend_done,
                                marker=dict(symbol=symbol, size=18, color="#222", line=dict(width=3)),
                                hovertemplate=f"{ev}, {variant} labels, " + "%{x}: %{y:.1%}<extra></extra>")
                legend_done.add(variant)
    top = LABEL_ROW0 + LABEL_ROW_STEP * (real["evaluator"].nunique() - 1) + 0.05
    fig.update_layout(**LAYOUT, height=400, barmode="group", yaxis=dict(title="share judged correct",
                      tickformat=".0%", range=[0, top], tickvals=[0, 0.2, 0.4, 0.6, 0.8, 1.0]),
                      legend=dict(orientation="h", y=-0.12),
                      scattermode="group")
    return fig


def sweep_figure(sweep: pd.DataFrame, param: str, current: float, metric: str,
                 baselines: bool = True, current_text: str | None = None, paper: float | None = None) -> go.Figure:
    """A metric (share_correct, agreement, kappa) against the threshold, one line per layer and a thick
    'overall' line, the baselines dashed, the current value as a vertical line, and the paper's
    (CLIP) value as a dashed grey one when given."""
    fig = go.Figure()
    real = sweep[sweep["variant"] == "real"]
    layers = list(dict.fromkeys(real["layer"]))
    # no red in the layer palette (red is the current-threshold line); 'overall' drawn first, wide and pale,
    # so a layer whose curve equals it (e.g. the one big layer) stays visible on top of it
    palette = ["#2f6fdf", "#e67e22", "#16a085", "#8e44ad", "#b8860b", "#7f8c8d", "#17becf", "#27ae60"]
    ordered = (["overall"] if "overall" in layers else []) + [l for l in layers if l != "overall"]
    colors = {l: palette[i % len(palette)] for i, l in enumerate(l for l in ordered if l != "overall")}
    for layer in ordered:
        g = real[real["layer"] == layer]
        if metric not in g or g[metric].isna().all():
            continue
        overall = layer == "overall"
        color = "rgba(17,17,17,0.35)" if overall else colors[layer]
        fig.add_scatter(x=g["threshold"], y=g[metric], mode="lines", name=layer,
                        line=dict(width=7 if overall else 2, color=color),
                        hovertemplate=f"{layer}: {param}=" + "%{x:.3g} → %{y:.3f}<extra></extra>")
    if baselines and metric == "share_correct":
        for variant, dash in (("shuffled", "dash"), ("constant", "dot")):
            g = sweep[(sweep["variant"] == variant) & (sweep["layer"] == "overall")]
            if len(g):
                fig.add_scatter(x=g["threshold"], y=g[metric], mode="lines", name=f"overall, {variant} labels",
                                line=dict(width=2.5, dash=dash, color="#888"),
                                hovertemplate=f"{variant}: {param}=" + "%{x:.3g} → %{y:.3f}<extra></extra>")
    text = f"{param} = {current_text or f'{current:g}'}"
    shapes = [vline(current, "#d62728", 2)]
    annotations = [dict(x=current, xref="x", y=1, yref="paper", yanchor="bottom", text=text, showarrow=False)]
    if paper is not None and abs(paper - current) > 1e-12:  # the paper's (CLIP) value, dashed grey
        shapes.append(vline(paper, "#777", 1.5, "dash"))
        annotations.append(dict(x=paper, xref="x", y=0, yref="paper", yanchor="top", text=f"paper (CLIP): {paper:g}",
                                showarrow=False))
    fig.update_layout(shapes=shapes, annotations=annotations)
    yfmt = ".0%" if metric in ("share_correct", "agreement") else None  # kappa: plotly's own ticks
    # legend at the right, not under the plot, where it ran into the x axis title at narrow widths
    fig.update_layout(**LAYOUT, height=340, xaxis_title=param,
                      yaxis=dict(title=metric.replace("_", " "), tickformat=yfmt),
                      legend=dict(orientation="v", x=1.02, y=1, yanchor="top", font=dict(size=11)))
    return fig


def kappa_heatmap(matrix: pd.DataFrame, n: pd.DataFrame | None = None, lo: pd.DataFrame | None = None,
                  hi: pd.DataFrame | None = None, min_n: int = 0) -> go.Figure:
    """Kappa per pair, each cell with its 95% interval and n; cells over fewer than `min_n` neurons grey."""
    z = matrix.to_numpy(float)
    names = list(matrix.columns)
    n_ = n.reindex(index=matrix.index, columns=names).to_numpy(int) if n is not None else np.full(z.shape, -1)
    lo_ = lo.reindex(index=matrix.index, columns=names).to_numpy(float) if lo is not None else np.full(z.shape, np.nan)
    hi_ = hi.reindex(index=matrix.index, columns=names).to_numpy(float) if hi is not None else np.full(z.shape, np.nan)
    small = (n_ >= 0) & (n_ < min_n)
    text = np.empty(z.shape, dtype=object)
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            cell = "n/a" if np.isnan(z[i, j]) else f"{z[i, j]:.2f}"
            if i != j and not np.isnan(lo_[i, j]):
                cell += f"<br>[{lo_[i, j]:.2f}, {hi_[i, j]:.2f}]"
            if n_[i, j] >= 0 and i != j:
                cell += f"<br>n={n_[i, j]}" + (" (too few)" if small[i, j] else "")
            text[i, j] = cell
    fig = go.Figure(go.Heatmap(z=np.where(small, np.nan, z), x=names, y=list(matrix.index), zmin=-1, zmax=1,
                               text=np.where(small, "", text), texttemplate="%{text}", textfont=dict(size=12),
                               colorscale="RdBu", colorbar=dict(title="kappa"),
                               hovertemplate="%{y} vs %{x}: %{text}<extra></extra>"))
    if small.any():  # grey where the pair shares too few neurons to read its kappa
        fig.add_heatmap(z=np.where(small, 0.0, np.nan), x=names, y=list(matrix.index), showscale=False,
                        text=np.where(small, text, ""), texttemplate="%{text}", textfont=dict(size=12, color="#666"),
                        colorscale=[[0, "#e6e6e6"], [1, "#e6e6e6"]],
                        hovertemplate="%{y} vs %{x}: %{text}<extra></extra>")
    size = len(matrix)
    fig.update_layout(**LAYOUT, height=max(320, 90 * size + 140), yaxis=dict(autorange="reversed", automargin=True),
                      xaxis=dict(automargin=True))
    return fig


def timings_bar(t: pd.DataFrame) -> go.Figure:
    fig = go.Figure()
    for step, g in t.groupby("step", sort=False):
        # the run id on a second line and the legend above the bars, in rows: at 800 px a legend on the
        # right took half the width and the run names were cut at the left edge
        fig.add_bar(y=g["name"] + "<br>" + g["run"].str[:8], x=g["seconds"], name=step, orientation="h",
                    hovertemplate=step + ": %{x:.1f} s<extra></extra>")
    n = t["run"].nunique()
    # room for the legend as one row per step (what it wraps to at 800 px) above the bars
    fig.update_layout(**LAYOUT, barmode="stack", height=120 + 50 * n + 20 * t["step"].nunique(), xaxis=dict(title="seconds"),
                      legend=dict(orientation="h", x=0, xanchor="left", y=1.02, yanchor="bottom"),
                      yaxis=dict(automargin=True))
    return fig


def label_bars(counts: pd.DataFrame) -> go.Figure:
    c = counts.iloc[::-1]
    fig = go.Figure(go.Bar(x=c["neurons"], y=c["label"], orientation="h", marker_color="#2f6fdf",
                           hovertemplate="%{y}: %{x} neurons<extra></extra>"))
    fig.update_layout(**LAYOUT, height=max(260, 22 * len(c) + 80), xaxis_title="neurons")
    return fig


def confusion_heatmap(conf: pd.DataFrame, rater: str, reference: str) -> go.Figure:
    z = conf.to_numpy()
    fig = go.Figure(go.Heatmap(z=z, x=list(conf.columns), y=list(conf.index), text=z, texttemplate="%{text}",
                               textfont=dict(size=16), colorscale="Blues", showscale=False,
                               hovertemplate=f"{rater}: " + "%{y}<br>" + f"{reference}: " + "%{x}<br>%{z} neurons"
                                             "<extra></extra>"))
    fig.update_layout(**LAYOUT, height=260, yaxis=dict(autorange="reversed", title=rater),
                      xaxis=dict(title=reference, side="bottom", tickangle=0))
    return fig


__all__ = ["activation_histogram", "layer_shares", "sweep_figure", "kappa_heatmap", "timings_bar", "label_bars",
           "confusion_heatmap"]
