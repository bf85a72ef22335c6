"""The Labellers page's cached data and figure: one LabellerView per run and data version."""

from __future__ import annotations

import textwrap

import pandas as pd
import plotly.graph_objects as go
import streamlit as st

from clipeval.labellers import LabellerView
from clipeval.ui import data
from clipeval.ui.charts import COLORS, LAYOUT


@st.cache_resource(max_entries=4, show_spinner="Loading the label sources' scores ...")
def _labeller_view(path: str, run_id: str, data_version: str) -> LabellerView:
    return LabellerView(data._open_store(path), run_id, data.run_view(run_id))


def labeller_view(run_id: str) -> LabellerView:
    """Rebuilt only when the run's sources, evaluations or verdicts change (Store.data_version)."""
    data.store()
    return _labeller_view(data.db_path(), run_id, data.version(run_id))


def _wrapped(name: str, width: int = 30) -> str:
    """A labeller's name on lines of at most `width` characters (plotly breaks lines at <br> only)."""
    return "<br>".join(textwrap.wrap(name, width, break_long_words=False)) or name


def shares_figure(shares: pd.DataFrame) -> go.Figure:
    """One group of horizontal bars per labeller (one bar per evaluator), with black markers for the
    labeller's own labels shuffled across its units (×) and the run's constant label on the same units
    (|). Horizontal because labellers' names are long (a file name, a run's settings): as x labels they
    were turned, cut at the left edge and run into the legend."""
    fig = go.Figure()
    order = list(dict.fromkeys(shares["labeller"]))
    y = [_wrapped(o) for o in order]
    done = set()
    for ev, g in shares.groupby("evaluator", sort=False):
        g = g.set_index("labeller").reindex(order)
        fig.add_bar(y=y, x=g["correct"], name=ev, orientation="h", marker_color=COLORS.get(ev), offsetgroup=ev,
                    text=[f"{v:.0%}" if pd.notna(v) else "" for v in g["correct"]], textposition="outside",
                    customdata=g["n"], hovertemplate=ev + " %{y}: %{x:.1%} of %{customdata} units<extra></extra>")
        # short legend names (the caption says more): two rows at 800 px
        for col, symbol, label in (("shuffled", "x-thin-open", "shuffled (×)"),
                                   ("run constant", "line-ns-open", "constant (|)")):
            if col in g and g[col].notna().any():
                fig.add_scatter(y=y, x=g[col], mode="markers", orientation="h", offsetgroup=ev, name=label,
                                legendgroup=col, showlegend=col not in done,
                                hovertemplate=f"{ev}, {label}: " + "%{x:.1%}<extra></extra>",
                                marker=dict(symbol=symbol, size=14, color="#222", line=dict(width=3)))
                done.add(col)
    n_ev = shares["evaluator"].nunique()
    # a top margin that holds two legend rows below plotly's toolbar (which covered them at 800 px)
    fig.update_layout(**{**LAYOUT, "margin": dict(LAYOUT["margin"], t=100)},
                      height=200 + len(order) * (18 * max(n_ev, 1) + 16), barmode="group",
                      scattermode="group",
                      xaxis=dict(title="share judged correct", tickformat=".0%", range=[0, 1.12]),
                      yaxis=dict(autorange="reversed", automargin=True),
                      legend=dict(orientation="h", x=0, xanchor="left", y=1.0, yanchor="bottom"))
    return fig
