"""Threshold sweeps for the Thresholds page: which range to show, and RunView.sweep over it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from clipeval.analysis.runview import RunView
from clipeval.evaluators.rules import RULES

N_STEPS = 101


def _snap(x: float, step: float, lo: float, hi: float) -> float:
    return float(min(hi, max(lo, round(round(x / step) * step, 6))))


def default_range(view: RunView, evaluator: str, current: float) -> tuple[float, float]:
    """An x range where the curves move: the span of the neurons' scores (all label variants) for
    cosine / P(yes) rules, a small p for CP, the whole [0, 1] for an AUC; always including `current`."""
    rule = RULES[evaluator]
    if rule.reduce == "min":
        lo, hi = 0.0, max(0.05, 2.5 * current)
    elif rule.reduce == "auc":
        lo, hi = 0.0, 1.0
    else:
        t = view.table(evaluator)
        scores = np.concatenate([t.neuron_scores(v) for v in t.variants])
        scores = scores[~np.isnan(scores)]
        if not scores.size:
            lo, hi = rule.lo, rule.hi
        else:
            pad = 0.05 * max(float(scores.max() - scores.min()), rule.step * 10)
            lo, hi = float(scores.min()) - pad, float(scores.max()) + pad
    lo, hi = min(lo, current), max(hi, current)
    lo = _snap(lo - rule.step / 2, rule.step, rule.lo, rule.hi)
    hi = _snap(hi + rule.step / 2, rule.step, rule.lo, rule.hi)
    if hi <= lo:
        lo, hi = rule.lo, rule.hi
    return lo, hi


def slider_bounds(evaluator: str, lo: float, hi: float) -> tuple[float, float]:
    """The range slider's own ends: the shown range widened to about three times its width (clipped to the
    rule's range), so the default range fills a third of the track instead of CP's 5% of [0, 1]."""
    rule = RULES[evaluator]
    width = max(hi - lo, rule.step * 10)
    a = _snap(lo - width, rule.step, rule.lo, rule.hi)
    b = _snap(hi + width, rule.step, rule.lo, rule.hi)
    return (a, b) if b > a else (rule.lo, rule.hi)


def clamp_range(value: tuple[float, float], bounds: tuple[float, float]) -> tuple[float, float]:
    a, b = (min(max(float(v), bounds[0]), bounds[1]) for v in value)
    return (a, b) if b > a else bounds


def sweep(view: RunView, evaluator: str, lo: float, hi: float, k: int, reference: str | None) -> pd.DataFrame:
    """RunView.sweep over N_STEPS thresholds from lo to hi (the paper's Figure 3, per layer)."""
    values = np.linspace(lo, hi, N_STEPS)
    return view.sweep(evaluator, values, k, reference)
