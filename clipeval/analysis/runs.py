"""Every run of a store side by side: shares judged correct per evaluator (the paper's Table 2) and
seconds per stage (its Table 3)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from clipeval.analysis.runview import EVALUATOR_TITLES, RunView
from clipeval.evaluators.rules import RULES, VARIANTS
from clipeval.formats import json_cell
from clipeval.store import Store


def runs_comparison(
    store: Store,
    thresholds: dict[str, float] | None = None,
    k: int | None = None,
    view_of=None,
    runs: pd.DataFrame | None = None,
    row_of=None,
    cp_rank: int | None = None,
) -> pd.DataFrame:
    """Share judged correct per evaluator (overall, real labels and baselines, and '<evaluator> n', the neurons
    the share is over) for every complete run,
    with its probe set and concept set: the paper's Table 2. Each run at its own judges' defaults
    (RunView.thresholds), with `thresholds` replacing those it names; the 'thresholds' column says which
    each row used and where they came from. With `cp_rank`, CP judges every run at that rank cut-off (the
    label within the top cp_rank concepts): one p over concept sets of 998 and 20,000 concepts is the top 1
    against the top 40. `view_of(run_id)` may hand out cached RunViews and `runs` the cached store.runs()
    (the app's), so a threshold change does not reload every run; `row_of(run)` may hand out cached rows
    (the app's: one run's row depends on that run alone)."""
    view_of = view_of or (lambda run_id: RunView(store, run_id))
    row_of = row_of or (lambda r: comparison_row(view_of(r["run_id"]), r, thresholds, k, cp_rank))
    runs = store.runs() if runs is None else runs
    return pd.DataFrame([row_of(r) for r in runs[runs["status"] == "complete"].to_dict("records")])


def comparison_row(
    view: RunView, r: dict, thresholds: dict[str, float] | None = None, k: int | None = None, cp_rank: int | None = None
) -> dict:
    """One run's row of runs_comparison (`r`: its row of store.runs())."""
    cfg = json_cell(r["config_json"])
    probe = (
        " + ".join(p.rstrip("/").split("/")[-1] for p in (cfg.get("probe", {}) or {}).get("paths", []))
        if isinstance(cfg.get("probe"), dict)
        else ", ".join(cfg.get("probe") or [])
    )
    concepts = (
        (cfg.get("concepts") or {}).get("source") if isinstance(cfg.get("concepts"), dict) else cfg.get("concepts")
    )
    row = {"run": r["run_id"], "name": r["name"], "probe": probe, "concepts": concepts, "neurons": int(r["n_neurons"])}
    used = view.thresholds(thresholds)
    n_concepts = view.table("cp").n_concepts if cp_rank and "cp" in view.available else None
    if n_concepts:
        used["cp"] = min(cp_rank / n_concepts, 1.0)  # cp_cutoff of this p is cp_rank exactly
    row["thresholds"] = view.thresholds_text(used)
    summary = view.layer_summary(used, min(k, view.kmax) if k and view.available else None)
    for e in RULES:
        t = EVALUATOR_TITLES[e]
        for v in VARIANTS:
            hit = summary[(summary["layer"] == "overall") & (summary["evaluator"] == t) & (summary["variant"] == v)]
            row[f"{t} {v}" if v != "real" else t] = float(hit["share_correct"].iloc[0]) if len(hit) else np.nan
            if v == "real":  # the neurons the share is over (dead units left out): its interval's n
                row[f"{t} n"] = int(hit["n"].iloc[0]) if len(hit) else 0
    return row


def timings(store: Store) -> pd.DataFrame:
    """Seconds per dissection stage and per evaluator, for every run (the paper's Table 3)."""
    rows = []
    runs = store.runs()
    evals = store.evaluations()
    for r in runs.itertuples():
        for stage, secs in json_cell(r.timings_json).items():
            rows.append({"run": r.run_id, "name": r.name, "step": f"dissect: {stage}", "seconds": secs})
        for e in evals[(evals["run_id"] == r.run_id) & (evals["status"] == "complete")].itertuples():
            rows.append(
                {
                    "run": r.run_id,
                    "name": r.name,
                    "step": f"evaluate: {EVALUATOR_TITLES[e.evaluator]}",
                    "seconds": e.wall_s,
                }
            )
    return pd.DataFrame(rows, columns=["run", "name", "step", "seconds"])
