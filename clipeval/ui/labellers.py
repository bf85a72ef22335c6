"""The Labellers page's cached data and figure: one LabellerView per run and data version."""

from __future__ import annotations

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


def shares_figure(shares: pd.DataFrame) -> go.Figure:
    """One group of bars per labeller (one bar per evaluator), with black markers for the labeller's
    own labels shuffled across its units (×) and the run's constant label on the same units (–)."""
    fig = go.Figure()
    order = list(dict.fromkeys(shares["labeller"]))
    done = set()
    for ev, g in shares.groupby("evaluator", sort=False):
        g = g.set_index("labeller").reindex(order)
        fig.add_bar(x=order, y=g["correct"], name=ev, marker_color=COLORS.get(ev), offsetgroup=ev,
                    text=[f"{v:.0%}" if pd.notna(v) else "" for v in g["correct"]], textposition="outside",
                    customdata=g["n"], hovertemplate=ev + " %{x}: %{y:.1%} of %{customdata} units<extra></extra>")
        for col, symbol, label in (("shuffled", "x-thin-open", "its labels shuffled (×)"),
                                   ("run constant", "line-ew-open", "one constant label (–)")):
            if col in g and g[col].notna().any():
                fig.add_scatter(x=order, y=g[col], mode="markers", offsetgroup=ev, name=label, legendgroup=col,
                                showlegend=col not in done, hovertemplate=f"{ev}, {label}: " + "%{y:.1%}<extra></extra>",
                                marker=dict(symbol=symbol, size=18, color="#222", line=dict(width=3)))
                done.add(col)
    fig.update_layout(**LAYOUT, height=420, barmode="group", scattermode="group",
                      yaxis=dict(title="share judged correct", tickformat=".0%", range=[0, 1.12]),
                      legend=dict(orientation="h", y=-0.25))
    return fig
