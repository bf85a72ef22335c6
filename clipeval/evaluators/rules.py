"""Verdict rules: stored raw per-image scores -> per-image and per-neuron verdicts at any threshold.

No model runs here. A `ScoreTable` holds one evaluation's raw scores as dense arrays
(neurons x images, per variant) so that re-thresholding every neuron, or sweeping 50 thresholds,
is a handful of vectorised numpy operations.

A neuron's label is judged correct if ANY of its top-k images matches (method.md section 2):
  CP        raw = the label's rank among the concept set (1 = best); match if rank <= int(|S| * p) (cp_cutoff)
  ES        raw = cosine(image, label);                                match if cosine >= tau
  VQA       raw = P(yes);                                              match if P(yes) > cut
  contrast  raw = cosine(image, label) on top-k AND inactive images; the neuron's score is the ROC-AUC
            of those cosines separating its top-k images from inactive ones; correct if AUC >= threshold
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from clipeval.errors import ClipevalError

VARIANTS = ("real", "shuffled", "constant")


@dataclass(frozen=True)
class Rule:
    evaluator: str
    param: str  # the threshold's name in the UI and URL
    title: str
    default: float
    lo: float
    hi: float
    step: float
    reduce: str  # how a neuron's top-k image scores become one score: 'min', 'max' or 'auc'
    inclusive: bool = True  # match at equality (>=, <=) or strictly (>)

    def check(self, threshold: float) -> float:
        if not self.lo <= threshold <= self.hi:
            raise ClipevalError(
                f"{self.evaluator} threshold {self.param}={threshold} is outside [{self.lo}, {self.hi}]"
            )
        return float(threshold)


RULES = {
    "cp": Rule("cp", "p", "CP: label within the top p of the concept set", 0.01, 0.0, 1.0, 0.001, "min"),
    "es": Rule("es", "tau", "ES: cosine(image, label) at least tau", 0.25, -1.0, 1.0, 0.005, "max"),
    "vqa": Rule("vqa", "cut", "VQA: P(yes) above the cut-off", 0.5, 0.0, 1.0, 0.01, "max", inclusive=False),
    "contrast": Rule(
        "contrast",
        "auc",
        "Contrast: ROC-AUC of label cosine, top-k vs inactive images, at least",
        0.75,
        0.0,
        1.0,
        0.01,
        "auc",
    ),
}


def image_matches(evaluator: str, raw: np.ndarray, threshold: float, n_concepts: int | None = None) -> np.ndarray:
    """Per-image verdicts (contrast images are judged with the ES rule: cosine >= threshold)."""
    raw = np.asarray(raw, float)
    if evaluator == "cp":
        return raw <= cp_cutoff(threshold, n_concepts)
    if evaluator == "vqa":
        return raw > threshold
    return raw >= threshold


# Ranks are compared with p as rank / |S| <= p + CP_TOLERANCE, by calibration (judges.calibrate_splits, on
# rank / |S| scores) and by every verdict alike, so that a calibrated p passes exactly the ranks it was fitted on.
CP_TOLERANCE = 1e-12


def cp_cutoff(p, n_concepts: int | None):
    """The original took the top int(|S| * p) concepts (so a tiny set with small p admits none): the largest
    rank r with r / |S| <= p. Not floor(|S| * p) as such: that product can fall just under an integer
    (998 * (4 / 998) = 3.9999999999999996), which would apply a p calibrated as rank 4 / 998 as rank 3.
    An int for one p, an array of ints for an array of p."""
    if not n_concepts:
        raise ClipevalError("CP needs the size of the concept set")
    limit = np.asarray(p, float) + CP_TOLERANCE
    r = np.floor(n_concepts * limit)
    r = np.where((r + 1) / n_concepts <= limit, r + 1, r)
    r = np.where(r / n_concepts > limit, r - 1, r).astype(np.int64)
    return int(r) if r.ndim == 0 else r


def compare(rule: Rule, scores: np.ndarray, thresholds, n_concepts: int | None = None) -> np.ndarray:
    """Neuron verdicts from neuron scores (NaN: no score, not correct) at one threshold, or at every one of a
    sequence: (len(thresholds), neurons)."""
    t = np.asarray(thresholds, float)
    s = scores[None, :] if t.ndim else scores
    t = t[:, None] if t.ndim else t
    with np.errstate(invalid="ignore"):
        if rule.reduce == "min":
            return s <= (cp_cutoff(t, n_concepts) if n_concepts else _missing_concepts())
        return s > t if not rule.inclusive else s >= t


class ScoreTable:
    """One evaluation's raw scores as arrays: top[variant] (neurons x k), inactive[variant] (neurons x m)."""

    def __init__(self, scores: pd.DataFrame, evaluator: str, neurons: pd.DataFrame, n_concepts: int | None = None):
        self._start(evaluator, neurons, n_concepts)
        pos = pd.Series(np.arange(len(self.neurons)), index=pd.MultiIndex.from_frame(self.neurons))
        for variant, g in scores.groupby("variant", sort=False):
            rows = pos.reindex(pd.MultiIndex.from_frame(g[["layer", "unit"]])).to_numpy()
            if np.isnan(rows.astype(float)).any():
                raise ClipevalError(f"{evaluator} scores name neurons the run does not have")
            rows = rows.astype(int)
            is_top = (g["kind"] == "top").to_numpy()
            slot = np.full(len(g), -1)
            slot[~is_top] = g.loc[~is_top].groupby(["layer", "unit"], sort=False).cumcount().to_numpy()
            self._add(
                variant,
                rows,
                g["label"].to_numpy(),
                {"row": rows, "top": is_top, "slot": slot, **{c: g[c].to_numpy() for c in ("rank", "image_id", "raw")}},
            )

    @classmethod
    def from_arrays(
        cls,
        arrays: dict[str, dict[str, np.ndarray]],
        evaluator: str,
        neurons: pd.DataFrame,
        n_concepts: int | None = None,
    ) -> ScoreTable:
        """The same table from flat arrays per variant (Store.eval_score_arrays: the neuron's row in
        `neurons`, whether the image is a top one, its rank, image id, raw score and, for the others, its
        place among the neuron's inactive images; the label per row in 'label_row' / 'label'): a run of
        100k neurons has 10M scores, which as a frame of strings take minutes and gigabytes to read."""
        table = cls.__new__(cls)
        table._start(evaluator, neurons, n_concepts)
        for variant, a in arrays.items():
            if (a["row"] < 0).any() or (a["label_row"] < 0).any():
                raise ClipevalError(f"{evaluator} scores name neurons the run does not have")
            table._add(variant, a["label_row"], a["label"], a)
        return table

    def _start(self, evaluator: str, neurons: pd.DataFrame, n_concepts: int | None) -> None:
        if evaluator not in RULES:
            raise ClipevalError(f"unknown evaluator {evaluator!r}")
        self.evaluator, self.rule, self.n_concepts = evaluator, RULES[evaluator], n_concepts
        self.neurons = neurons[["layer", "unit"]].reset_index(drop=True)
        self.top: dict[str, np.ndarray] = {}
        self.inactive: dict[str, np.ndarray] = {}
        self._scores: dict[tuple[str, int], np.ndarray] = {}  # neuron_scores per (variant, k)
        self.labels: dict[str, np.ndarray] = {}
        self.top_images: dict[str, np.ndarray] = {}

    def _add(self, variant: str, label_rows: np.ndarray, labels: np.ndarray, a: dict[str, np.ndarray]) -> None:
        """One variant's scores: a[...] per score row (row, top, rank, image_id, raw, slot)."""
        n = len(self.neurons)
        by_neuron = np.full(n, None, dtype=object)
        by_neuron[label_rows] = labels
        self.labels[variant] = by_neuron
        rows, is_top = a["row"], a["top"].astype(bool)
        kmax = int(a["rank"][is_top].max()) if is_top.any() else 0
        top = np.full((n, kmax), np.nan)
        images = np.full((n, kmax), -1, dtype=np.int64)
        top[rows[is_top], a["rank"][is_top] - 1] = a["raw"][is_top]
        images[rows[is_top], a["rank"][is_top] - 1] = a["image_id"][is_top]
        self.top[variant], self.top_images[variant] = top, images
        if (~is_top).any():
            slot = a["slot"][~is_top]
            arr = np.full((n, int(slot.max()) + 1), np.nan)
            arr[rows[~is_top], slot] = a["raw"][~is_top]
            self.inactive[variant] = arr

    @property
    def variants(self) -> list[str]:
        return [v for v in VARIANTS if v in self.top]

    @property
    def kmax(self) -> int:
        return max((a.shape[1] for a in self.top.values()), default=0)

    def _k(self, k: int | None) -> int:
        k = self.kmax if k is None else int(k)
        if not 1 <= k <= self.kmax:
            raise ClipevalError(f"k={k} is outside 1..{self.kmax}, the top-k images scored by {self.evaluator}")
        return k

    def neuron_scores(self, variant: str = "real", k: int | None = None) -> np.ndarray:
        """One score per neuron from its top-k images (min rank, max cosine / P(yes), or ROC-AUC). Kept per
        (variant, k) and read-only: a threshold only changes the comparison, and the pages ask for the same
        scores many times per slider step (Contrast's AUC alone was ~20 ms per call on the full demo)."""
        k = self._k(k)
        got = self._scores.get((variant, k))
        if got is None:
            got = self._neuron_scores(variant, k)
            got.setflags(write=False)
            self._scores[(variant, k)] = got
        return got

    def _neuron_scores(self, variant: str, k: int) -> np.ndarray:
        top = self.top[variant][:, :k]
        with np.errstate(invalid="ignore"), _quiet():
            if self.rule.reduce == "min":
                return np.nanmin(top, axis=1)
            if self.rule.reduce == "max":
                return np.nanmax(top, axis=1)
            neg = self.inactive.get(variant)
            if neg is None:
                raise ClipevalError("contrast scores lack inactive images")
            diff = top[:, :, None] - neg[:, None, :]
            valid = ~np.isnan(diff)
            wins = (diff > 0).sum((1, 2)) + 0.5 * (diff == 0).sum((1, 2))
            return np.where(valid.any((1, 2)), wins / np.maximum(valid.sum((1, 2)), 1), np.nan)

    def compare(self, scores: np.ndarray, thresholds) -> np.ndarray:
        """Verdicts for every threshold: (len(thresholds), neurons) when thresholds is a sequence."""
        return compare(self.rule, scores, thresholds, self.n_concepts)

    def verdicts(self, threshold: float, variant: str = "real", k: int | None = None) -> np.ndarray:
        return self.compare(self.neuron_scores(variant, k), self.rule.check(threshold))

    def verdict_frame(self, threshold: float, variant: str = "real", k: int | None = None) -> pd.DataFrame:
        out = self.neurons.copy()
        out["score"] = self.neuron_scores(variant, k)
        out["verdict"] = self.compare(out["score"].to_numpy(), self.rule.check(threshold))
        return out

    def sweep(self, thresholds, variant: str = "real", k: int | None = None) -> np.ndarray:
        return self.compare(self.neuron_scores(variant, k), np.asarray(thresholds, float))


class _quiet:
    """nanmin/nanmax warn on all-NaN rows (neurons without scores); those stay NaN -> verdict False."""

    def __enter__(self):
        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc):
        self._w.__exit__(*exc)


def _missing_concepts():
    raise ClipevalError("CP verdicts need the size of the concept set")
