"""The Labellers page's cached data: one LabellerView per run and data version."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from clipeval.analysis.sources import RUN_SOURCE, LabellerView
from clipeval.store import runnames
from clipeval.ui import data


@st.cache_resource(max_entries=4, show_spinner="Loading the label sources' scores ...")
def _labeller_view(path: str, run_id: str, data_version: str) -> LabellerView:
    return LabellerView(data.open_store(path), run_id, data.run_view(run_id))


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
