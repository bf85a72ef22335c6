"""The progress of a build writing this store in the background (the offline demo that `./run app`
starts while the app already serves): its stage, how far its current step is and the time left,
refreshed every 2 s; the whole page reruns when a run completes or the build ends, so new runs appear
in the run picker without a reload."""

from __future__ import annotations

import time

import streamlit as st

from clipeval.compute import progress
from clipeval.ui import data

SEEN_KEY = "_build_complete_runs_seen"


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


def progress_text(state: dict) -> str | None:
    """One line about the current step (what it counts, done/total, rate, time left), or None."""
    b = state.get("bar")
    if not b:
        return None
    done = f"{b['n']:,}/{b['total']:,}" if b.get("total") else f"{b['n']:,}"
    rate = f", {b['rate']:.2f} {b['unit']}/s" if b.get("rate") else ""
    left = f", about {_duration(b['seconds_left'])} left" if b.get("seconds_left") is not None else ""
    return f"{b['desc'] or 'step'}: {done} {b['unit']}{rate}{left}"


def whole_build_text(state: dict, now: float | None = None) -> str | None:
    """'Whole build: step 2 of 6, about 62 min left (...)': the time left for the whole build, from how long a
    measured one took, never less than the current step's own estimate; None when the build gave no plan."""
    steps = state.get("steps")
    if not steps:
        return None
    text = f"Whole build: step {min(int(state.get('step') or 0), steps)} of {steps}"
    expected = state.get("expected_s")
    if not expected:
        return text + " (no measured build to estimate its time left from)"
    elapsed = (now or time.time()) - state["started"]
    step_left = (state.get("bar") or {}).get("seconds_left") or 0.0
    if elapsed < expected:
        return text + f", about {_duration(max(expected - elapsed, step_left))} left ({state.get('basis')})"
    return text + f", running longer than a measured build ({state.get('basis')})"


def build_progress() -> None:
    """Say what a background build of this store is doing (nothing when none has reported)."""
    state = progress.read(data.db_path())
    if state is None:
        return
    if state["state"] == "running" and state["alive"]:
        _live()
    elif state["stale"]:
        st.warning(
            f"The build of {state['what']} (process {state['pid']}) stopped before it finished, "
            f"during: {state['stage'] or 'its start'}. Start it again with `./run app` (or `python -m "
            f"clipeval demo`); what it completed is kept. Its output: `{progress.log_path(data.db_path())}`.",
            icon=":material/warning:",
        )
    elif state["state"] == "failed":
        st.error(
            f"The build of {state['what']} failed during: {state['stage'] or 'its start'}: {state['error']}. "
            f"Its output: `{progress.log_path(data.db_path())}`.",
            icon=":material/error:",
        )


@st.fragment(run_every=2)
def _live() -> None:
    state = progress.read(data.db_path())
    complete = len(data.complete_runs())
    seen = st.session_state.setdefault(SEEN_KEY, complete)
    if state is None or state["state"] != "running" or not state["alive"] or complete != seen:
        st.session_state[SEEN_KEY] = complete
        st.rerun()  # the whole page: the run picker and the tables take the new runs
    b = state.get("bar") or {}
    st.info(
        f"**Building {state['what']} in the background** (for {_duration(time.time() - state['started'])}; "
        f"{complete} run(s) complete so far, each appears here as it completes). Now: "
        f"{state['stage'] or 'starting'}.",
        icon=":material/hourglass_top:",
    )
    whole = whole_build_text(state)
    if whole:
        st.caption(whole)
    text = progress_text(state)
    if text:
        st.progress(min(1.0, b["n"] / b["total"]) if b.get("total") else 0.0, text="Current step: " + text)
