"""Agreement intervals: the 95% bootstrap intervals the Agreement page shows (a kappa matrix over every
evaluator and reference rater, recomputed whenever a threshold moves), two ways side by side.

    python bench/bench_bootstrap.py [--quick] [--neurons N] [--raters R]

Data: R raters (default 6: 4 evaluators, 2 references) giving yes/no on N neurons (default 1,000, the
demo's final layer; --quick 300), each agreeing with a hidden truth 60-90% of the time.

ours      clipeval.analysis.intervals.kappa_with_intervals: the raters' verdicts put on one neuron index once; each pair's
          resamples drawn as 2x2 tables from a multinomial over the four cells (one draw per resample).
baseline  the straightforward way, which clipeval used before: per pair, merge the two raters' frames on
          (layer, unit), resample the neurons' indices (n per resample) and compute kappa on each.
Both use 1,000 seeded resamples. The intervals are not bit-identical (different random draws from the
same distribution); the table reports the largest difference of an interval end between the two, which
is Monte-Carlo noise of the percentile at 1,000 resamples.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_s, median_time, parser, print_machine, ratio, table, write_json  # noqa: E402

from clipeval.analysis import intervals, metrics


def raters(n_neurons: int, n_raters: int, seed: int = 0) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    truth = rng.random(n_neurons) < 0.4
    out = {}
    for i in range(n_raters):
        right = rng.random(n_neurons) < rng.uniform(0.6, 0.9)
        out[f"rater{i}"] = pd.DataFrame(
            {"layer": "classifier", "unit": np.arange(n_neurons), "verdict": np.where(right, truth, ~truth)}
        )
    return out


def index_bootstrap_kappa(a: np.ndarray, b: np.ndarray, n_boot: int = intervals.N_BOOT, seed: int = 0):
    idx = np.random.default_rng(seed).integers(0, a.size, (n_boot, a.size))
    A, B = a[idx], b[idx]
    po = (A == B).mean(1)
    pa, pb = A.mean(1), B.mean(1)
    pe = pa * pb + (1 - pa) * (1 - pb)
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = np.where(pe < 1, (po - pe) / (1 - pe), np.nan)
    kappa = kappa[~np.isnan(kappa)]
    return tuple(np.percentile(kappa, [2.5, 97.5]))


def baseline_matrix(rs: dict[str, pd.DataFrame]) -> dict[tuple[str, str], tuple[float, float]]:
    names, out = list(rs), {}
    for i, x in enumerate(names):
        for y in names[i + 1 :]:
            w = metrics.align({x: rs[x], y: rs[y]})
            out[(x, y)] = index_bootstrap_kappa(w[x].to_numpy(bool), w[y].to_numpy(bool))
    return out


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--neurons", type=int, default=None)
    p.add_argument("--raters", type=int, default=6)
    args = p.parse_args()
    info = print_machine()
    n = args.neurons or (300 if args.quick else 1000)
    rs = raters(n, args.raters)
    base = baseline_matrix(rs)
    ours = intervals.kappa_with_intervals(rs)
    diff = max(max(abs(ours["lo"].loc[x, y] - lo), abs(ours["hi"].loc[x, y] - hi)) for (x, y), (lo, hi) in base.items())
    t_base = median_time(lambda: baseline_matrix(rs), repeat=3)
    t_ours = median_time(lambda: intervals.kappa_with_intervals(rs), repeat=5)
    rows = [
        {
            "raters x neurons": f"{args.raters} x {n:,}",
            "pairs": len(base),
            "baseline (index resampling)": fmt_s(t_base),
            "ours (multinomial 2x2)": fmt_s(t_ours),
            "speed-up": ratio(t_base, t_ours),
            "largest interval-end difference": f"{diff:.3f}",
        }
    ]
    print(table(rows, list(rows[0])))
    write_json(
        args.json,
        {
            "machine": info,
            "neurons": n,
            "raters": args.raters,
            "baseline_s": t_base,
            "ours_s": t_ours,
            "max_interval_end_difference": diff,
        },
    )


if __name__ == "__main__":
    main()
