"""The Labellers page's cached data and figure: one LabellerView per run and data version."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from clipeval.analysis.sources import RUN_SOURCE, LabellerView
from clipeval.formats import percent
from clipeval.render.charts import COLORS, FULL, axis_percent
from clipeval.render.svg import (
    MUTED,
    Band,
    Chart,
    Linear,
    legend_height,
    text_width,
    wrap,
)
from clipeval.store import runnames
from clipeval.ui import data


@st.cache_resource(max_entries=4, show_spinner="Loading the label sources' scores ...")
def _labeller_view(path: str, run_id: str, data_version: str) -> LabellerView:
    return LabellerView(data._open_store(path), run_id, data.run_view(run_id))


def labeller_view(run_id: str) -> LabellerView:
    """Rebuilt only when the run's sources, evaluations or verdicts change (Store.data_version)."""
    data.store()
    return _labeller_view(data.db_path(), run_id, data.version(run_id))


def short_names(lv: LabellerView, runs: pd.DataFrame) -> dict[str, str]:
    """{a labeller's name as the LabellerView gives it: the name the page shows}: runs (this one, and another run
    added as a source under its default name) by what tells them apart, as every run picker names them, not by
    their long names, which all begin "demo: EfficientNet-Lite0 | demo probe ..."."""
    differs = runnames.differences(runs)
    long = dict(zip(runs["run_id"], runs["name"]))
    out = {lv.names[RUN_SOURCE]: f"this run ({differs.get(lv.run_id) or lv.run_id[:8]})"}
    for r in lv.sources.itertuples():
        if r.kind == "run" and differs.get(r.origin) and r.name in (f"run {long.get(r.origin)}", f"run {r.origin}"):
            out[r.name] = f"run {differs[r.origin]}"
    return out


def shares_figure(shares: pd.DataFrame, width: float = FULL) -> Chart:
    """One group of horizontal bars per labeller (one bar per evaluator), with black markers for the
    labeller's own labels shuffled across its units (×) and the run's constant label on the same units
    (|). Horizontal because labellers' names are long (a file name, a run's settings): as x labels they
    were turned and cut."""
    order = list(dict.fromkeys(shares["labeller"]))
    evaluators = list(dict.fromkeys(shares["evaluator"]))
    names = {o: wrap(o, 30 if width >= FULL else 20) for o in order}
    items = [{"label": e, "color": COLORS.get(e, "#888")} for e in evaluators]
    marks = [
        (col, symbol, label)
        for col, symbol, label in (("shuffled", "x", "shuffled (×)"), ("run constant", "|", "constant (|)"))
        if col in shares and shares[col].notna().any()
    ]
    items += [{"label": label, "kind": symbol} for _, symbol, label in marks]
    font, bar = 13, 18
    leg = legend_height(items, width - 20, font - 1)
    left = min(max((text_width(l, font) for v in names.values() for l in v), default=20) + 16, 260)
    group = max(bar * len(evaluators), 16 * max((len(v) for v in names.values()), default=1)) + 16
    c = Chart(width, leg + 24 + group * len(order) + 50, left=left, right=50, top=leg + 16, bottom=50, font=font)
    c.legend(items, 10, 4, width - 20)
    x = Linear(0, 1, c.x0, c.x1)
    c.x_axis(x, axis_percent, "share judged correct", n=5)
    band = Band(order, c.y0, c.y1, pad=16 / group)
    bar = band.width / max(len(evaluators), 1)
    for i, ev in enumerate(evaluators):
        g = shares[shares["evaluator"] == ev].set_index("labeller").reindex(order)
        for name, r in g.iterrows():
            if pd.isna(r["correct"]):
                continue
            y0 = band(name) + i * bar
            c.rect(
                x(0),
                y0 + 1,
                x(r["correct"]) - x(0),
                bar - 2,
                COLORS.get(ev, "#888"),
                title=f"{ev}, {name}: {r['correct']:.1%} of {int(r['n'])} units",
            )
            c.text(x(r["correct"]) + 4, y0 + bar / 2, percent(r["correct"], 0), size=11, color=MUTED)
            for col, symbol, label in marks:
                if pd.notna(r.get(col)):
                    c.marker(
                        symbol, x(r[col]), y0 + bar / 2, min(bar, 14), width=2.5, title=f"{ev}, {label}: {r[col]:.1%}"
                    )
    c.band_labels_y(band, names)
    return c
