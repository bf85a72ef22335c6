"""The reads the app's pages make on a first visit and on Next, before and after they were bounded by what a
page shows (issue 27, point 4), as direct calls on one run of a store (e.g. bench_scale_store.py's 100k neurons):

    python bench/bench_app_reads.py STORE [--run RUN_ID] [--json FILE]

Each read set runs in a fresh process (no cache, the store file in the OS cache after the first): its wall
time and the process's peak RSS. Navigation and the unit grid keep a "before" beside "after": the neuron
explorer's navigation read the run's whole neuron list (and each cached rerun unpickled it), the unit grid had
every unit of the run. A run's RunView held every evaluator's image scores until it computed the neuron
scores in the store: run this script from a checkout before that change (git archive) for its "before".
Load average beside every number: this 2-core machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser  # noqa: E402


def _nav_before(store, run_id):
    stored = pickle.dumps(store.neurons(run_id))  # read once, then cached: st.cache_data hands each rerun a copy
    start = time.perf_counter()  # what every rerun (each Next) did with it
    neurons = pickle.loads(stored)
    units = neurons.groupby("layer", sort=False)["unit"].agg(list).to_dict()
    order = list(neurons[["layer", "unit"]].itertuples(index=False, name=None))
    here = order[len(order) // 2]
    i = order.index(here)  # the step the page took on the list in memory (Previous, Next)
    order[i - 1], order[i + 1]
    row = neurons[(neurons["layer"] == here[0]) & (neurons["unit"] == here[1])].iloc[0]
    return {"layers": len(units), "label": row["label"], "per_rerun_s": round(time.perf_counter() - start, 3)}


def _nav_after(store, run_id):
    spans = store.layer_units(run_id)
    here = store.neuron_at(run_id, int(spans["neurons"].sum()) // 2)
    store.neuron_step(run_id, *here, -1), store.neuron_step(run_id, *here, 1)
    return len(spans), store.neurons(run_id, *here).iloc[0]["label"]


def _grid(store, run_id, layer):
    from clipeval.analysis.runview import RunView
    from clipeval.render import tables

    view = RunView(store, run_id)
    thresholds = view.default_thresholds()
    start = time.perf_counter()
    grid = tables.unit_grid(view, thresholds, 5, view.available, layer(view))
    grid = grid.assign(open=tables.neuron_links(run_id, grid["layer"], grid["unit"], thresholds, 5, 5))
    tables.verdict_marks(grid, [tables.INTERPRETABLE])
    return {"rows": len(grid), "grid_s": round(time.perf_counter() - start, 3)}


def _shares(store, run_id):
    from clipeval.analysis import sweeps
    from clipeval.analysis.runview import RunView

    view = RunView(store, run_id)
    sweeps.score_spans(view)
    summary = view.layer_summary(view.default_thresholds(), 5)
    start = time.perf_counter()
    view.layer_summary({**view.default_thresholds(), "es": 0.3}, 5)
    return {"rows": len(summary), "next_threshold_s": round(time.perf_counter() - start, 3)}


def _neuron_view(store, run_id, whole: bool):
    from clipeval.analysis.runview import RunView

    here = store.neuron_at(run_id, 0)
    view = RunView(store, run_id) if whole else RunView(store, run_id, here)
    return {"neurons": len(view.neurons), "evaluators": view.available}


STEPS = {
    "neuron page, Next: before (the run's neuron list read, then per rerun a cached copy)": _nav_before,
    "neuron page, Next: after (Store.layer_units, neuron_step x2, one neuron: each Next's new queries)": _nav_after,
    "unit grid: before (every unit of the run; RunView built first, not timed in grid_s)": lambda s, r: _grid(
        s, r, lambda view: None
    ),
    "unit grid: after (one layer)": lambda s, r: _grid(s, r, lambda view: view.layers[0]),
    "the run's RunView (every page but the neuron explorer)": lambda s, r: _neuron_view(s, r, True),
    "the neuron explorer's RunView (its neuron)": lambda s, r: _neuron_view(s, r, False),
    "home shares + sidebar spans + one threshold step (RunView)": _shares,
}


def _one(store_path: str, run_id: str, step: str) -> dict:
    from clipeval.store import Store

    store = Store(store_path, read_only=True)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    got = STEPS[step](store, run_id)
    return {
        "step": step,
        "seconds": round(time.perf_counter() - start, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_at_start_mb": round(base),
        "result": got,
        "load_average": [round(x, 1) for x in os.getloadavg()],
    }


def main() -> None:
    p = parser(__doc__)
    p.add_argument("store")
    p.add_argument("--run", default=None, help="run id (default: the newest complete run)")
    p.add_argument("--step", default=None, help=argparse.SUPPRESS)  # one read set, in the child process
    a = p.parse_args()
    if a.step:
        print(json.dumps(_one(a.store, a.run, a.step)))
        return
    if not Path(a.store).exists():
        p.error(f"no store at {a.store}")
    from clipeval.store import Store

    runs = Store(a.store, read_only=True).runs()
    complete = list(runs.loc[runs["status"] == "complete", "run_id"])
    if not complete or (a.run and a.run not in complete):
        p.error(f"{a.run or 'no run'} is not a complete run of {a.store} (complete: {', '.join(complete) or 'none'})")
    run_id = a.run or complete[0]
    out = []
    for step in STEPS:
        done = subprocess.run(
            [sys.executable, __file__, a.store, "--run", run_id, "--step", step],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(done.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        out.append(row)
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
