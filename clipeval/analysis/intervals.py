"""How sure an agreement figure is: its n and a 95% bootstrap interval over neurons, so a kappa from
6 annotated neurons no longer looks like one from 1,000.

The interval resamples the neurons both raters judged with replacement (N_BOOT times, seeded, so a
page shows the same interval on every rerun) and takes the 2.5th and 97.5th percentiles of the figure;
resamples where the figure is undefined (kappa with chance agreement 1, Jaccard with no 'yes') are left
out. Below MIN_N neurons a figure is marked as too small to read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pandas as pd

from clipeval.analysis import metrics
from clipeval.formats import percent

MIN_N = 30
# Below this a kappa is 'slight' agreement (Landis and Koch 1977): hardly better than chance
NEAR_CHANCE_KAPPA = 0.2
N_BOOT = 1000
MEASURES = ("agreement", "kappa", "jaccard", "precision", "recall", "f1")


def _measures(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray) -> dict[str, np.ndarray]:
    """Each measure of a rater against a reference from the four cells of their 2x2 table (arrays: one
    entry per resample). tp: both say correct; fp: only the rater; fn: only the reference; tn: neither."""
    with np.errstate(invalid="ignore", divide="ignore"):
        n = tp + fp + fn + tn
        po = (tp + tn) / n
        pa, pb = (tp + fp) / n, (tp + fn) / n
        pe = pa * pb + (1 - pa) * (1 - pb)
        kappa = np.where(pe < 1, (po - pe) / np.where(pe < 1, 1 - pe, 1), np.nan)
        union = tp + fp + fn
        return {
            "agreement": po,
            "kappa": kappa,
            "jaccard": np.where(union > 0, tp / np.maximum(union, 1), np.nan),
            "precision": np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), np.nan),
            "recall": np.where(tp + fn > 0, tp / np.maximum(tp + fn, 1), np.nan),
            "f1": np.where(2 * tp + fp + fn > 0, 2 * tp / np.maximum(2 * tp + fp + fn, 1), np.nan),
        }


def bootstrap(a, b, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, tuple[float, float]]:
    """{measure: (low, high)} 95% percentile intervals of rater a against reference b over resampled
    neurons; (nan, nan) with no neurons or where a measure is undefined in most resamples.

    Every measure depends on a resample only through its 2x2 table, and resampling n neurons with
    replacement draws that table from a multinomial over the four cells' shares: one draw per resample
    instead of n indices (the same distribution; a 1,000-neuron pair takes under a millisecond, so the
    Agreement page recomputes its intervals as a threshold moves without waiting)."""
    a, b = metrics.paired(a, b)
    return bootstrap_cells([(a & b).sum(), (a & ~b).sum(), (~a & b).sum(), (~a & ~b).sum()], n_boot, seed)


def bootstrap_cells(cells, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, tuple[float, float]]:
    """bootstrap from the pair's 2x2 table (tp, fp, fn, tn) alone."""
    cells = np.asarray(cells, dtype=float)
    n = int(cells.sum())
    if not n:
        return {m: (float("nan"), float("nan")) for m in MEASURES}
    draws = np.random.default_rng(seed).multinomial(n, cells / n, size=n_boot)
    out = {}
    for m, values in _measures(*draws.T).items():
        values = values[~np.isnan(values)]
        if values.size < n_boot / 2:
            out[m] = (float("nan"), float("nan"))
        else:
            lo, hi = np.percentile(values, [2.5, 97.5])
            out[m] = (float(lo), float(hi))
    return out


def pairwise_with_intervals(
    a: pd.DataFrame, b: pd.DataFrame, by_layer: bool = True, n_boot: int = N_BOOT, seed: int = 0
) -> pd.DataFrame:
    """metrics.pairwise_table with, per measure, `<measure> lo` and `<measure> hi` (95% bootstrap over
    neurons) and `small` (fewer than MIN_N neurons)."""
    table = metrics.pairwise_table(a, b, by_layer)
    w = metrics.align({"a": a, "b": b})
    groups = dict(list(w.groupby("layer", sort=False)) if by_layer else [])
    groups["overall"] = w
    rows = []
    for layer in table["layer"]:
        g = groups[layer]
        ci = bootstrap(g["a"].to_numpy(), g["b"].to_numpy(), n_boot, seed)
        rows.append({f"{m} {s}": ci[m][i] for m in MEASURES for i, s in enumerate(("lo", "hi"))})
    out = pd.concat([table, pd.DataFrame(rows)], axis=1)
    out["small"] = out["n"] < MIN_N
    return out


@dataclass(frozen=True)
class Figure:
    """One agreement figure with its n and interval, and how to print it."""

    value: float
    lo: float
    hi: float
    n: int
    percent: bool = False

    @property
    def small(self) -> bool:
        return self.n < MIN_N

    def fmt(self, x: float) -> str:
        if x is None or pd.isna(x):
            return "n/a"
        return percent(x) if self.percent else f"{x:.2f}"

    def interval(self) -> str:
        """'[0.55, 0.70]' or '[41.0%, 49.5%]'; '' where there is none."""
        return "" if pd.isna(self.lo) else f"[{self.fmt(self.lo)}, {self.fmt(self.hi)}]"

    def text(self, with_n: bool = True) -> str:
        """'0.62 [0.55, 0.70] n=120', '45.2% [41.0%, 49.5%] n=1,000', or 'n/a n=0'."""
        ci = self.interval()
        return self.fmt(self.value) + (f" {ci}" if ci else "") + (f" n={self.n:,}" if with_n else "")


def near_chance(kappa: float, lo: float = float("nan")) -> bool:
    """A kappa below NEAR_CHANCE_KAPPA, or whose 95% interval reaches 0 (chance), or undefined."""
    return bool(pd.isna(kappa) or kappa < NEAR_CHANCE_KAPPA or (pd.notna(lo) and lo <= 0))


def share_interval(share: float, n: int) -> Figure:
    """A share judged correct over n neurons with its 95% Wilson score interval: the one every page, the CLI's
    report and the HTML report show beside a share."""
    lo, hi = metrics.wilson_interval(round(share * n), n) if n and pd.notna(share) else (float("nan"),) * 2
    return Figure(float(share), lo, hi, int(n), True)


def figure(row, measure: str) -> Figure:
    """A Figure from one row of pairwise_with_intervals."""
    return Figure(
        float(row[measure]),
        float(row[f"{measure} lo"]),
        float(row[f"{measure} hi"]),
        int(row["n"]),
        measure in ("agreement", "jaccard", "precision", "recall"),
    )


def _verdict_columns(raters: Mapping[str, pd.DataFrame]) -> dict[str, np.ndarray]:
    """Each rater's verdicts over one shared list of neurons (every neuron some rater judged): 1 or 0,
    and -1 where this rater did not judge the neuron. One index lookup per rater, instead of a merge per
    pair of raters (which took most of a matrix's time)."""
    keys = pd.concat([r[["layer", "unit"]] for r in raters.values()], ignore_index=True).drop_duplicates()
    index = pd.MultiIndex.from_frame(keys)
    out = {}
    for name, r in raters.items():
        col = np.full(len(index), -1, np.int8)
        col[index.get_indexer(pd.MultiIndex.from_frame(r[["layer", "unit"]]))] = r["verdict"].to_numpy().astype(np.int8)
        out[name] = col
    return out


def kappa_with_intervals(
    raters: Mapping[str, pd.DataFrame], n_boot: int = N_BOOT, seed: int = 0
) -> dict[str, pd.DataFrame]:
    """Pairwise Cohen's kappa (as metrics.kappa_matrix: each pair over the neurons both judged) with, per
    pair, that number of neurons ('n') and the 95% bootstrap interval ('lo', 'hi'):
    {'kappa', 'n', 'lo', 'hi'} -> rater x rater frames."""
    names = list(raters)
    cols = _verdict_columns(raters) if names else {}
    kappa = pd.DataFrame(np.nan, index=names, columns=names)
    n = pd.DataFrame(0, index=names, columns=names)
    lo = pd.DataFrame(np.nan, index=names, columns=names)
    hi = lo.copy()
    for i, x in enumerate(names):
        kappa.loc[x, x], n.loc[x, x] = 1.0, len(raters[x])
        for y in names[i + 1 :]:
            both = (cols[x] >= 0) & (cols[y] >= 0)
            a, b = cols[x][both].astype(bool), cols[y][both].astype(bool)
            ci = bootstrap(a, b, n_boot, seed)["kappa"]
            kappa.loc[x, y] = kappa.loc[y, x] = metrics.cohen_kappa(a, b)
            n.loc[x, y] = n.loc[y, x] = int(both.sum())
            lo.loc[x, y] = lo.loc[y, x] = ci[0]
            hi.loc[x, y] = hi.loc[y, x] = ci[1]
    return {"kappa": kappa, "n": n, "lo": lo, "hi": hi}
