"""Interactivity: re-thresholding every neuron and recomputing the per-layer table, and a 50-value
threshold sweep, from stored raw scores (no model runs), against the straightforward pandas way.

    python bench/bench_interactive.py [--quick] [--neurons N]

Data: a synthetic run of 4,000 neurons (--quick 1,000) in 4 layers, 5 top images each, 3 label
variants (real, shuffled, constant), scored by ES (raw = cosine), CP (raw = rank among 10,000
concepts) and contrast (raw = cosine on the 5 top and 10 inactive images: 5 'low' + 5 'random'),
as the long scores table clipeval stores (columns layer, unit, variant, kind, rank, image_id, label,
raw), plus one human rater's verdicts for every neuron.

ours      clipeval.analysis.runview.RunView over clipeval.evaluators.rules.ScoreTable (dense arrays built once
          when a run is opened; that load time is reported separately):
          'rethreshold' = RunView.layer_summary for es, cp and contrast at new thresholds (all neurons'
          verdicts + share judged correct per layer and overall, for each of the 3 variants);
          'sweep' = RunView.sweep(evaluator, 50 values, reference=the human) (share per layer and
          variant, agreement and kappa with the human, at every value), for one evaluator.
baseline  the straightforward pandas way on the long scores table, per threshold value: per-image
          match -> groupby neuron (any; for contrast the ROC-AUC from the top x inactive pairs) ->
          groupby layer mean; the sweep repeats that for each of the 50 values.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_s, median_time, met, parser, print_machine, ratio, set_threads, table, write_json  # noqa: E402

N_CONCEPTS = 10000
LAYERS = ("layer1", "layer2", "layer3", "layer4")
THRESHOLDS = {"es": 0.27, "cp": 0.02, "contrast": 0.7}
SWEEP = {"es": np.linspace(0.0, 0.5, 50), "cp": np.linspace(0.001, 0.1, 50), "contrast": np.linspace(0.3, 1.0, 50)}


def synthetic_run(n_neurons: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    neurons = pd.DataFrame(
        {
            "layer": np.repeat(LAYERS, n_neurons // len(LAYERS)),
            "unit": np.tile(np.arange(n_neurons // len(LAYERS)), len(LAYERS)),
        }
    )
    neurons["label"] = rng.choice([f"concept{i}" for i in range(N_CONCEPTS)], len(neurons))
    n = len(neurons)
    scores = {}
    for ev in ("es", "cp", "contrast"):
        parts = []
        kinds = [("top", 5)] + ([("low", 5), ("random", 5)] if ev == "contrast" else [])
        for variant in ("real", "shuffled", "constant"):
            for kind, k in kinds:
                rank = np.tile(np.arange(1, k + 1), n)
                if ev == "cp":
                    raw = rng.integers(1, N_CONCEPTS + 1, n * k).astype(float)
                else:
                    raw = rng.normal(0.25 if kind == "top" else 0.22, 0.04, n * k)
                parts.append(
                    pd.DataFrame(
                        {
                            "layer": np.repeat(neurons["layer"].to_numpy(), k),
                            "unit": np.repeat(neurons["unit"].to_numpy(), k),
                            "variant": variant,
                            "kind": kind,
                            "rank": rank,
                            "image_id": rng.integers(0, 5000, n * k),
                            "label": np.repeat(neurons["label"].to_numpy(), k),
                            "raw": raw,
                        }
                    )
                )
        scores[ev] = pd.concat(parts, ignore_index=True)
    human = neurons[["layer", "unit"]].assign(verdict=rng.random(n) < 0.7)
    return neurons, scores, human


def make_view(neurons, scores, human):
    """A RunView over in-memory ScoreTables (what RunView(store, run_id) builds from the store)."""
    from clipeval.analysis.runview import EvaluatorState, RunView
    from clipeval.evaluators.rules import RULES, ScoreTable

    view = RunView.__new__(RunView)
    view.run = {"run_id": "bench"}
    view.run_id = "bench"
    view.neurons = neurons
    view.layers = list(LAYERS)
    view.evaluators = {}
    for name in RULES:
        if name in scores:
            table_ = ScoreTable(scores[name], name, neurons, N_CONCEPTS if name == "cp" else None)
            view.evaluators[name] = EvaluatorState(name, "complete", table=table_, eval_id=name)
        else:
            view.evaluators[name] = EvaluatorState(name, "missing", "not in the benchmark")
    view.humans = {"rater": human.reset_index(drop=True)}
    return view


# ---- the straightforward pandas way ---------------------------------------------------------------


def _neuron_auc(df: pd.DataFrame) -> pd.DataFrame:
    top = df[df["kind"] == "top"][["variant", "layer", "unit", "raw"]]
    neg = df[df["kind"] != "top"][["variant", "layer", "unit", "raw"]]
    pairs = top.merge(neg, on=["variant", "layer", "unit"], suffixes=("_top", "_neg"))
    pairs["win"] = (pairs["raw_top"] > pairs["raw_neg"]) + 0.5 * (pairs["raw_top"] == pairs["raw_neg"])
    return pairs.groupby(["variant", "layer", "unit"])["win"].mean().rename("score").reset_index()


def pandas_verdicts(ev: str, df: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """The straightforward way: one groupby over the long score table per threshold."""
    if ev == "contrast":
        per_neuron = _neuron_auc(df)
        per_neuron["verdict"] = per_neuron["score"] >= threshold
        return per_neuron
    top = df[df["kind"] == "top"]
    match = top["raw"] <= int(N_CONCEPTS * threshold) if ev == "cp" else top["raw"] >= threshold
    return top.assign(match=match).groupby(["variant", "layer", "unit"])["match"].any().rename("verdict").reset_index()


def pandas_layer_table(ev: str, df: pd.DataFrame, threshold: float) -> pd.DataFrame:
    per_neuron = pandas_verdicts(ev, df, threshold)
    by_layer = per_neuron.groupby(["variant", "layer"])["verdict"].mean().reset_index()
    overall = per_neuron.groupby("variant")["verdict"].mean().reset_index().assign(layer="overall")
    return pd.concat([by_layer, overall], ignore_index=True)


def pandas_sweep(ev: str, df: pd.DataFrame, values, human: pd.DataFrame) -> pd.DataFrame:
    out: list[pd.DataFrame] = []
    for t in values:
        per_neuron = pandas_verdicts(ev, df, t)
        shares = per_neuron.groupby(["variant", "layer"])["verdict"].mean().reset_index()
        real = per_neuron[per_neuron["variant"] == "real"].merge(human, on=["layer", "unit"], suffixes=("", "_h"))
        for layer, g in list(real.groupby("layer")) + [("overall", real)]:
            a, b = g["verdict"].to_numpy(), g["verdict_h"].to_numpy()
            po = (a == b).mean()
            pe = a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean())
            out.append(
                pd.DataFrame(
                    [
                        {
                            "threshold": t,
                            "layer": layer,
                            "variant": "real",
                            "agreement": po,
                            "kappa": (po - pe) / (1 - pe),
                        }
                    ]
                )
            )
        out.append(shares.assign(threshold=t))
    return pd.concat(out, ignore_index=True)


def main() -> None:
    ap = parser(__doc__.split("\n")[0])
    ap.add_argument("--neurons", type=int)
    args = ap.parse_args()
    set_threads(args.threads)
    import time

    info = print_machine()
    n = args.neurons or (1000 if args.quick else 4000)
    neurons, scores, human = synthetic_run(n)
    print(
        f"{len(neurons)} neurons in {len(LAYERS)} layers x 5 top images x 3 variants; "
        f"scores rows: " + ", ".join(f"{e} {len(s):,}" for e, s in scores.items())
    )
    start = time.perf_counter()
    view = make_view(neurons, scores, human)
    t_load = time.perf_counter() - start
    print(f"building the ScoreTables (once, when a run is opened): {fmt_s(t_load)}")

    # consistency: our per-layer shares equal the pandas ones
    ours_tab = view.layer_summary(THRESHOLDS)
    worst = 0.0
    for ev in THRESHOLDS:
        ref = pandas_layer_table(ev, scores[ev], THRESHOLDS[ev])
        title = {"es": "ES", "cp": "CP", "contrast": "Contrast"}[ev]
        m = ours_tab[ours_tab["evaluator"] == title].merge(ref, on=["variant", "layer"])
        assert len(m) == len(ref), (ev, len(m), len(ref))
        worst = max(worst, float((m["share_correct"] - m["verdict"]).abs().max()))

    rows, record = [], {}
    moved = {"es": 0.26, "cp": 0.015, "contrast": 0.72}
    t_ours = median_time(lambda: view.layer_summary(moved), repeat=15)
    t_base = median_time(lambda: [pandas_layer_table(e, scores[e], moved[e]) for e in moved], repeat=3)
    rows.append(
        {
            "task": "re-threshold all neurons + per-layer table, es+cp+contrast x 3 variants",
            "ours": fmt_s(t_ours),
            "baseline (pandas)": fmt_s(t_base),
            "ratio": ratio(t_base, t_ours),
            "target": "< 100 ms",
            "met": met(t_ours < 0.1),
        }
    )
    record["rethreshold_all"] = {"ours_s": t_ours, "baseline_s": t_base}
    for ev in moved:
        t_o = median_time(lambda: view.layer_summary(moved, evaluators=[ev]), repeat=15)
        t_b = median_time(lambda: pandas_layer_table(ev, scores[ev], moved[ev]), repeat=3)
        rows.append(
            {
                "task": f"  re-threshold, {ev} only (3 variants)",
                "ours": fmt_s(t_o),
                "baseline (pandas)": fmt_s(t_b),
                "ratio": ratio(t_b, t_o),
                "target": "< 100 ms",
                "met": met(t_o < 0.1),
            }
        )
        record[f"rethreshold_{ev}"] = {"ours_s": t_o, "baseline_s": t_b}
    for ev in ("es", "cp", "contrast"):
        t_o = median_time(lambda: view.sweep(ev, SWEEP[ev], reference="rater"), repeat=9)
        t_b = median_time(lambda: pandas_sweep(ev, scores[ev], SWEEP[ev], human), repeat=1, warmup=0)
        rows.append(
            {
                "task": f"sweep of 50 values, {ev} (3 variants, + agreement/kappa vs a human)",
                "ours": fmt_s(t_o),
                "baseline (pandas)": fmt_s(t_b),
                "ratio": ratio(t_b, t_o),
                "target": "< 1 s",
                "met": met(t_o < 1.0),
            }
        )
        record[f"sweep_{ev}"] = {"ours_s": t_o, "baseline_s": t_b}
    print()
    print(table(rows, list(rows[0])))
    print(f"\nshares judged correct, ours vs pandas at the same thresholds: max |diff| {worst:.1g}")
    write_json(
        args.json,
        {"machine": info, "results": {"neurons": len(neurons), "load_s": t_load, "max_share_diff": worst, **record}},
    )


if __name__ == "__main__":
    main()
