"""The pages' and the report's charts as plotly figures, built from data frames. They only draw numbers
computed by clipeval (analysis, metrics); every mark's hover carries its value and n.

No template and no text or background colours are set here: the app draws them in Streamlit's theme (light
or dark, st.plotly_chart(theme="streamlit")) and the report names its own template. Mark colours are the
Okabe-Ito palette (told apart with the common colour-vision deficiencies) and mid greys that read on a light
and a dark background. Each figure has a title that says what it shows (plotly draws it as text, which a
screen reader reads) and fills the width it is given (autosize).
"""

from __future__ import annotations

import textwrap
from html import escape

import numpy as np
import pandas as pd
import plotly.graph_objects as go

# Okabe & Ito (2008), "Color universal design"; vermillion is kept for the current threshold's line
BLUE, ORANGE, GREEN, PURPLE, SKY, YELLOW, VERMILLION = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#F0E442",
    "#D55E00",
)
GREY = "#8c8c8c"  # baselines, the paper's value: a mid grey reads on a light and a dark background
PALE = "rgba(140,140,140,0.45)"  # the wide 'overall' line, under the layers' lines
MUTED_CELL = "rgba(140,140,140,0.35)"  # heatmap cells with too few neurons to read
COLORS = {"VQA": PURPLE, "CP": BLUE, "ES": ORANGE, "Contrast": GREEN}
PALETTE = [BLUE, ORANGE, GREEN, PURPLE, SKY, YELLOW, "#999933", "#882255"]
STEPS = [*PALETTE, VERMILLION, "#44AA99", "#DDCC77", "#AA4499"]  # a run has 9 or more pipeline stages
# the narrowest a chart sits beside another (ui.widgets.side_by_side): two share the row at 1440 and 1920 px,
# and stack one under the other at 800 px, where half the main area would squeeze their legends
HALF_MIN = 440
BASELINE_MARKS = (
    ("shuffled", "x-thin-open", "shuffled labels (×)"),
    ("constant", "line-ew-open", "one constant label (–)"),
)
CONFIG = {"displaylogo": False, "responsive": True}
LABEL_LIFT = 0.035  # a share axis's units: half a baseline marker's height on a 420 px chart
TITLE_CHARS = 44  # a title's line, short enough to stay left of the mode bar in a HALF_MIN chart


def esc(s) -> str:
    """A name inside a plotly label or hover template (plotly reads a subset of HTML in them)."""
    return escape(str(s), quote=False)


def _top(text: str) -> dict:
    """Layout of a title wrapped into lines of TITLE_CHARS (the mode bar sits at the top right, over a long
    title's end) and a top margin that holds them."""
    lines = textwrap.wrap(text, TITLE_CHARS) or [""]
    return dict(
        title=dict(
            text="<br>".join(esc(l) for l in lines),
            x=0,
            xanchor="left",
            y=1,
            yanchor="top",
            yref="container",
            pad=dict(t=8),
            font=dict(size=14),
        ),
        margin=dict(l=10, r=10, t=22 + 19 * len(lines), b=10),
    )


def _legend_below() -> dict:
    # below the plot in rows: a legend on the right took half of a 470 px chart
    return dict(orientation="h", x=0, xanchor="left", y=-0.26, yanchor="top", font=dict(size=12))


def activation_histogram(hist: pd.DataFrame, top_activations: list[float], k: int) -> go.Figure:
    """Probe images per activation bin, with a vertical line per top image (solid for the k that are judged,
    dotted beyond)."""
    centers = ((hist["lo"] + hist["hi"]) / 2).to_numpy(float)
    fig = go.Figure(
        go.Bar(
            x=centers,
            y=hist["count"],
            width=((hist["hi"] - hist["lo"]) * 0.95).to_numpy(float),
            marker_color=SKY,
            name="probe images",
            customdata=np.stack([hist["lo"], hist["hi"]], axis=-1) if len(hist) else None,
            hovertemplate="activation %{customdata[0]:.3f} to %{customdata[1]:.3f}: %{y} images<extra></extra>",
        )
    )
    top = float(hist["count"].max()) if len(hist) else 1.0
    for judged, name, dash in ((True, f"top {k} images (judged)", "solid"), (False, "beyond the top k", "dot")):
        idx = [i for i in range(len(top_activations)) if (i < k) == judged]
        if not idx:
            continue
        # one trace of vertical segments (None breaks the line between them), hoverable like any data
        x = [v for i in idx for v in (top_activations[i], top_activations[i], None)]
        y = [v for _ in idx for v in (0, top, None)]
        rank = [v for i in idx for v in (i + 1, i + 1, None)]
        fig.add_scatter(
            x=x,
            y=y,
            customdata=rank,
            mode="lines",
            name=name,
            line=dict(color=VERMILLION, width=1.5, dash=dash),
            hovertemplate="top image #%{customdata}: activation %{x:.3f}<extra></extra>",
        )
    fig.update_layout(
        **_top(f"Activation over {int(hist['count'].sum()) if len(hist) else 0} probe images"),
        height=320,
        xaxis_title="activation",
        yaxis_title="images",
        legend=_legend_below(),
        bargap=0,
    )
    return fig


def layer_shares(summary: pd.DataFrame, layers: list[str]) -> go.Figure:
    """Share judged correct per layer: one bar per evaluator (real labels) with its value above it, and its
    shuffled and constant baselines as grey markers on the bar."""
    real = summary[summary["variant"] == "real"]
    order = [l for l in layers if l in set(real["layer"])] + ["overall"]
    fig = go.Figure()
    shown = set()
    for ev in dict.fromkeys(real["evaluator"]):
        g = real[real["evaluator"] == ev].set_index("layer").reindex(order)
        fig.add_bar(
            x=[esc(l) for l in order],
            y=g["share_correct"],
            name=esc(ev),
            marker_color=COLORS.get(ev, GREY),
            offsetgroup=ev,
            legendgroup=ev,
            customdata=g["n"],
            hovertemplate=f"{esc(ev)} " + "%{x}: %{y:.1%} of %{customdata:,} neurons<extra></extra>",
        )
        top = g["share_correct"]
        for variant, symbol, label in BASELINE_MARKS:
            b = (
                summary[(summary["evaluator"] == ev) & (summary["variant"] == variant)]
                .set_index("layer")
                .reindex(order)
            )
            if b["share_correct"].notna().any():
                fig.add_scatter(
                    x=[esc(l) for l in order],
                    y=b["share_correct"],
                    mode="markers",
                    offsetgroup=ev,
                    name=label,
                    legendgroup=variant,
                    showlegend=variant not in shown,
                    marker=dict(symbol=symbol, size=16, color=GREY, line=dict(width=3, color=GREY)),
                    customdata=b["n"],
                    hovertemplate=f"{esc(ev)}, {variant} labels, " + "%{x}: %{y:.1%} of %{customdata:,}<extra></extra>",
                )
                shown.add(variant)
                top = np.fmax(top, b["share_correct"])
        # the bar's value above the bar and its baseline markers both, so a marker never covers it
        fig.add_scatter(
            x=[esc(l) for l in order],
            y=top + LABEL_LIFT,
            mode="text",
            offsetgroup=ev,
            legendgroup=ev,
            showlegend=False,
            text=[f"{v:.0%}" if pd.notna(v) else "" for v in g["share_correct"]],
            textposition="top center",
            cliponaxis=False,
            hoverinfo="skip",
        )
    fig.update_layout(
        **_top("Share of labels judged correct per layer, beside the shuffled and constant baselines"),
        height=420,
        barmode="group",
        scattermode="group",
        yaxis=dict(
            title="share judged correct", tickformat=".0%", range=[0, 1.12], tickvals=[0, 0.2, 0.4, 0.6, 0.8, 1]
        ),
        legend=_legend_below(),
    )
    return fig


METRIC_TITLES = {"share_correct": "Share judged correct", "agreement": "Agreement", "kappa": "Cohen's kappa"}


def sweep_figure(
    sweep: pd.DataFrame,
    param: str,
    current: float,
    metric: str,
    baselines: bool = True,
    current_text: str | None = None,
    paper: float | None = None,
    title: str | None = None,
) -> go.Figure:
    """A metric (share_correct, agreement, kappa) against the threshold: one line per layer over a wide pale
    'overall' line, the baselines dashed and dotted, the current value as a vermillion vertical line and the
    paper's (CLIP) value as a dashed grey one. Hovering reads every line at that threshold (unified hover);
    a click on a legend entry hides its line, a double click shows it alone."""
    real = sweep[sweep["variant"] == "real"]
    layers = list(dict.fromkeys(real["layer"]))
    ordered = (["overall"] if "overall" in layers else []) + [l for l in layers if l != "overall"]
    colors = {l: PALETTE[i % len(PALETTE)] for i, l in enumerate(l for l in ordered if l != "overall")}
    value = "%{y:.1%}" if metric in ("share_correct", "agreement") else "%{y:.3f}"
    lines = []
    for layer in ordered:
        g = real[real["layer"] == layer]
        if metric in g and g[metric].notna().any():
            overall = layer == "overall"
            lines.append((layer, g, dict(color=PALE if overall else colors[layer], width=7 if overall else 2)))
    if baselines and metric == "share_correct":
        for variant, dash in (("shuffled", "dash"), ("constant", "dot")):
            g = sweep[(sweep["variant"] == variant) & (sweep["layer"] == "overall")]
            if len(g):
                lines.append((f"overall, {variant} labels", g, dict(color=GREY, width=2.5, dash=dash)))
    traces = [
        go.Scatter(
            x=g["threshold"].to_numpy(float),
            y=g[metric].to_numpy(float),
            mode="lines",
            name=esc(name),
            line=style,
            hovertemplate=f"{esc(name)}: {value}<extra></extra>",
        )
        for name, g, style in lines
    ]
    xs = pd.concat([g["threshold"] for _, g, _ in lines]) if lines else pd.Series([current], dtype=float)
    lo, hi = float(xs.min()), float(xs.max())
    text = f"{param} = {current_text or f'{current:g}'}"
    # the marked thresholds as layout shapes and notes made in one go: Figure.add_vline took a third of the
    # figure's time (it walks the traces), six figures on every slider step of the Thresholds page
    shapes, notes = [], []

    def mark(x: float, line: dict, note: str, font: dict, y: float, left: bool) -> None:
        shapes.append(dict(type="line", x0=x, x1=x, xref="x", y0=0, y1=1, yref="paper", line=line))
        notes.append(
            dict(
                x=x,
                xref="x",
                y=y,
                yref="paper",
                text=note,
                showarrow=False,
                font=font,
                xanchor="right" if left else "left",
                yanchor="top" if y == 1 else "bottom",
            )
        )

    if paper is not None and abs(paper - current) > 1e-12 and lo <= paper <= hi:
        mark(
            paper,
            dict(color=GREY, width=1.5, dash="dash"),
            f"paper (CLIP): {paper:g}",
            dict(size=11),
            0,
            paper < current,
        )
    if lo <= current <= hi:
        mark(
            current,
            dict(color=VERMILLION, width=2),
            f"current: {esc(text)}",
            dict(size=12, color=VERMILLION),
            1,
            current > (lo + hi) / 2,
        )
    percent = metric in ("share_correct", "agreement")
    return go.Figure(
        traces,
        dict(
            **_top(title or f"{METRIC_TITLES.get(metric, metric)} against {param}, per layer"),
            height=400,
            hovermode="x unified",
            xaxis=dict(title=param, range=[lo, hi]),
            yaxis=dict(
                title=metric.replace("_", " "),
                tickformat=".0%" if percent else None,
                range=[0, 1.04] if percent else None,
            ),
            legend=_legend_below(),
            shapes=shapes,
            annotations=notes,
        ),
    )


def _cells(frame: pd.DataFrame | None, matrix: pd.DataFrame, kind, fill) -> np.ndarray:
    if frame is None:
        return np.full(matrix.shape, fill)
    return frame.reindex(index=matrix.index, columns=matrix.columns).to_numpy(kind)


def kappa_heatmap(
    matrix: pd.DataFrame,
    n: pd.DataFrame | None = None,
    lo: pd.DataFrame | None = None,
    hi: pd.DataFrame | None = None,
    min_n: int = 0,
) -> go.Figure:
    """Kappa per pair, each cell with its 95% interval and n (written in the cell and in its hover); cells
    over fewer than `min_n` neurons are grey, their kappa in the hover only."""
    z = matrix.to_numpy(float)
    names, rows = [esc(s) for s in matrix.columns], [esc(s) for s in matrix.index]
    n_, lo_, hi_ = _cells(n, matrix, float, -1.0), _cells(lo, matrix, float, np.nan), _cells(hi, matrix, float, np.nan)
    small = (n_ >= 0) & (n_ < min_n)
    text = np.empty(z.shape, dtype=object)
    hover = np.empty(z.shape, dtype=object)
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            lines = ["n/a" if np.isnan(z[i, j]) else f"{z[i, j]:.2f}"]
            if i != j and not np.isnan(lo_[i, j]):
                lines.append(f"[{lo_[i, j]:.2f}, {hi_[i, j]:.2f}]")
            if n_[i, j] >= 0 and i != j:
                lines.append(f"n={int(n_[i, j])}" + (f" (under {min_n}: too few)" if small[i, j] else ""))
            text[i, j] = "<br>".join(lines)
            hover[i, j] = (
                f"{rows[i]} vs {names[j]}<br>kappa {lines[0]}"
                + (f"<br>95% interval {lines[1]}" if len(lines) == 3 else "")
                + (f"<br>{lines[-1]}" if len(lines) > 1 else "")
            )
    fig = go.Figure(
        go.Heatmap(
            z=np.where(small, np.nan, z),
            x=names,
            y=rows,
            zmin=-1,
            zmax=1,
            text=np.where(small, "", text),
            customdata=hover,
            texttemplate="%{text}",
            textfont=dict(size=12),
            colorscale="RdBu",
            colorbar=dict(title="kappa"),
            hovertemplate="%{customdata}<extra></extra>",
            hoverongaps=False,
            xgap=2,
            ygap=2,
        )
    )
    if small.any():  # grey where the pair shares too few neurons to read its kappa
        fig.add_heatmap(
            z=np.where(small, 0.0, np.nan),
            x=names,
            y=rows,
            showscale=False,
            text=np.where(small, text, ""),
            customdata=hover,
            texttemplate="%{text}",
            textfont=dict(size=12),
            colorscale=[[0, MUTED_CELL], [1, MUTED_CELL]],
            hovertemplate="%{customdata}<extra></extra>",
            hoverongaps=False,
            xgap=2,
            ygap=2,
        )
    fig.update_layout(
        **_top("Cohen's kappa between every pair of raters (each cell: kappa, 95% interval, n)"),
        height=max(320, 80 * len(matrix) + 140),
        yaxis=dict(autorange="reversed", automargin=True),
        xaxis=dict(automargin=True, side="bottom"),
    )
    return fig


def timings_bar(t: pd.DataFrame) -> go.Figure:
    """Seconds per pipeline stage, stacked per run (the run's name and id on two lines), the legend below."""
    fig = go.Figure()
    steps = list(dict.fromkeys(t["step"]))
    for i, step in enumerate(steps):
        g = t[t["step"] == step]
        fig.add_bar(
            y=[f"{esc(n)}<br>{esc(r[:8])}" for n, r in zip(g["name"], g["run"])],
            x=g["seconds"],
            name=esc(step),
            orientation="h",
            marker_color=STEPS[i % len(STEPS)],
            hovertemplate=f"{esc(step)}: " + "%{x:.1f} s<extra></extra>",
        )
    runs = t["run"].nunique()
    fig.update_layout(
        **_top("Wall-clock seconds per pipeline stage, per run"),
        barmode="stack",
        height=140 + 56 * runs + 22 * len(steps),
        xaxis=dict(title="seconds"),
        yaxis=dict(automargin=True, autorange="reversed"),
        # below the axis title, in rows: above the plot, its rows covered the title in an 800 px window
        legend={**_legend_below(), "y": -56 / (56 * max(runs, 1))},
    )
    return fig


def label_bars(counts: pd.DataFrame) -> go.Figure:
    """Neurons per label, the most frequent at the top."""
    fig = go.Figure(
        go.Bar(
            x=counts["neurons"],
            y=[esc(l) for l in counts["label"]],
            orientation="h",
            marker_color=BLUE,
            text=counts["neurons"],
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{y}: %{x} neurons<extra></extra>",
        )
    )
    fig.update_layout(
        **_top(f"The {len(counts)} most frequent labels"),
        height=max(260, 24 * len(counts) + 110),
        xaxis_title="neurons",
        yaxis=dict(autorange="reversed", automargin=True),
    )
    return fig


def confusion_heatmap(conf: pd.DataFrame, rater: str, reference: str) -> go.Figure:
    """Neurons per (rater's verdict, reference's verdict)."""
    z = conf.to_numpy(float)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[esc(c) for c in conf.columns],
            y=[esc(r) for r in conf.index],
            text=z.astype(int) if z.size else z,
            texttemplate="%{text}",
            textfont=dict(size=16),
            colorscale="Blues",
            showscale=False,
            xgap=2,
            ygap=2,
            hovertemplate=f"{esc(rater)}: "
            + "%{y}<br>"
            + f"{esc(reference)}: "
            + "%{x}<br>%{z} neurons<extra></extra>",
        )
    )
    fig.update_layout(
        **_top(f"Confusion matrix: {rater} against {reference}, {int(np.nansum(z))} neurons"),
        height=300,
        yaxis=dict(autorange="reversed", title=esc(rater), automargin=True),
        xaxis=dict(title=esc(reference), side="bottom", tickangle=0),
    )
    return fig


def labeller_shares(shares: pd.DataFrame) -> go.Figure:
    """One group of horizontal bars per labeller (one bar per evaluator), with grey markers for the
    labeller's own labels shuffled across its units (×) and the run's constant label on the same units (|).
    Horizontal because labellers' names are long (a file name, a run's settings)."""
    order = list(dict.fromkeys(shares["labeller"]))
    fig = go.Figure()
    marks = [
        (col, symbol, label)
        for col, symbol, label in (
            ("shuffled", "x-thin-open", "shuffled (×)"),
            ("run constant", "line-ns-open", "constant (|)"),
        )
        if col in shares and shares[col].notna().any()
    ]
    shown = set()
    for ev in dict.fromkeys(shares["evaluator"]):
        g = shares[shares["evaluator"] == ev].set_index("labeller").reindex(order)
        y = [esc(o) for o in order]
        fig.add_bar(
            y=y,
            x=g["correct"],
            orientation="h",
            name=esc(ev),
            offsetgroup=ev,
            marker_color=COLORS.get(ev, GREY),
            customdata=g["n"],
            text=[f"{v:.0%}" if pd.notna(v) else "" for v in g["correct"]],
            textposition="outside",
            cliponaxis=False,
            hovertemplate=f"{esc(ev)}, " + "%{y}: %{x:.1%} of %{customdata:,} units<extra></extra>",
        )
        for col, symbol, label in marks:
            fig.add_scatter(
                y=y,
                x=g[col],
                mode="markers",
                offsetgroup=ev,
                name=label,
                legendgroup=col,
                showlegend=col not in shown,
                marker=dict(symbol=symbol, size=14, color=GREY, line=dict(width=3, color=GREY)),
                hovertemplate=f"{esc(ev)}, {label}: " + "%{x:.1%}<extra></extra>",
            )
            shown.add(col)
    fig.update_layout(
        **_top("Share judged correct per labeller, beside its shuffled labels and a constant label"),
        height=160 + max(len(order), 1) * (26 * max(shares["evaluator"].nunique(), 1) + 20),
        barmode="group",
        scattermode="group",
        xaxis=dict(title="share judged correct", tickformat=".0%", range=[0, 1.1]),
        yaxis=dict(autorange="reversed", automargin=True),
        legend=_legend_below(),
    )
    return fig


__all__ = [
    "activation_histogram",
    "layer_shares",
    "sweep_figure",
    "kappa_heatmap",
    "timings_bar",
    "label_bars",
    "confusion_heatmap",
    "labeller_shares",
    "COLORS",
    "CONFIG",
    "HALF_MIN",
]
