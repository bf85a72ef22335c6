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

import threading
import warnings
from collections.abc import Callable
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
    def computed(
        cls,
        evaluator: str,
        neurons: pd.DataFrame,
        n_concepts: int | None,
        kmaxes: dict[str, int],
        fetch: Callable[[int], pd.DataFrame],
    ) -> ScoreTable:
        """The same table's neuron scores computed elsewhere, without its image scores: `fetch(k)` gives
        every neuron's score at k (columns row: its position in `neurons`, variant, score; a neuron not
        listed has none, as Store.neuron_scores gives them), asked once per k when a page first needs it.
        `kmaxes`: {variant: its largest top-image rank}. A run of 100k neurons has 10M image scores, which
        take seconds and gigabytes to load; a whole run needs only these. Such a table has no per-image
        arrays (top, inactive, labels, top_images): the neuron explorer reads those for its one neuron."""
        table = cls.__new__(cls)
        table._start(evaluator, neurons, n_concepts)
        table._kmaxes = {v: int(k) for v, k in kmaxes.items()}
        table._fetch = fetch
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
        self._kmaxes: dict[str, int] = {}  # per variant: its largest top-image rank
        self._fetch: Callable[[int], pd.DataFrame] | None = None
        self._lock = threading.Lock()  # pages of several sessions ask a shared table at once

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
        self._kmaxes[variant] = kmax
        if (~is_top).any():
            slot = a["slot"][~is_top]
            arr = np.full((n, int(slot.max()) + 1), np.nan)
            arr[rows[~is_top], slot] = a["raw"][~is_top]
            self.inactive[variant] = arr

    @property
    def variants(self) -> list[str]:
        return [v for v in VARIANTS if v in self._kmaxes]

    @property
    def kmax(self) -> int:
        return max(self._kmaxes.values(), default=0)

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
        if got is None and self._fetch is not None:
            with self._lock:
                if (variant, k) not in self._scores:
                    self._fetched(k)
            got = self._scores.get((variant, k))
            if got is None:
                raise ClipevalError(f"{self.evaluator} has no label variant {variant!r}")
        elif got is None:
            got = self._neuron_scores(variant, k)
            got.setflags(write=False)
            self._scores[(variant, k)] = got
        return got

    def _fetched(self, k: int) -> None:
        """Every variant's neuron scores at k, from `fetch` (ScoreTable.computed)."""
        frame = self._fetch(k)
        rows, variant, score = frame["row"].to_numpy(), frame["variant"].to_numpy(), frame["score"].to_numpy(float)
        for v in self.variants:
            got = np.full(len(self.neurons), np.nan)
            mine = variant == v
            got[rows[mine]] = score[mine]
            got.setflags(write=False)
            self._scores[(v, k)] = got

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
