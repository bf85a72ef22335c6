"""The Labellers page's cached data: one LabellerView per run and data version."""

from __future__ import annotations

import streamlit as st

from clipeval.analysis.sources import LabellerView
from clipeval.ui import data


@st.cache_resource(max_entries=4, show_spinner="Loading the label sources' scores ...")
def _labeller_view(path: str, run_id: str, data_version: str) -> LabellerView:
    return LabellerView(data._open_store(path), run_id, data.run_view(run_id))


def labeller_view(run_id: str) -> LabellerView:
    """Rebuilt only when the run's sources, evaluations or verdicts change (Store.data_version)."""
    data.store()
    return _labeller_view(data.db_path(), run_id, data.version(run_id))
