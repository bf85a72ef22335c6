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
        lo, hi = _score_span(view, evaluator)
    return _around(evaluator, lo, hi, current)


def score_spans(view: RunView) -> dict[str, tuple[float, float] | None]:
    """Each judge's span of this run's neuron scores (all label variants, padded); None where it has not
    scored the run. A few numbers per run: the app's sidebar keeps these, not the scores."""
    return {e: (_score_span(view, e) if e in view.available else None) for e in RULES}


def threshold_range_from(evaluator: str, span: tuple[float, float] | None, current: float) -> tuple[float, float]:
    """A threshold slider's ends: where this run's neuron scores lie (`span`, score_spans), so each pixel of
    the track moves the threshold through scores the run has: ES's -1..1 put the useful 0.75-1.0 on 28 px of a
    228 px track. CP's p as on the Thresholds page (a small share of the concept set); always including
    `current`; the rule's whole range for a judge that has not scored the run (span None)."""
    if span is None:
        return RULES[evaluator].lo, RULES[evaluator].hi
    if RULES[evaluator].reduce == "min":
        return _around(evaluator, 0.0, max(0.05, 2.5 * current), current)
    return _around(evaluator, *span, current)


def threshold_range(view: RunView, evaluator: str, current: float) -> tuple[float, float]:
    """threshold_range_from with the span read from `view`."""
    span = _score_span(view, evaluator) if evaluator in view.available else None
    return threshold_range_from(evaluator, span, current)


def _score_span(view: RunView, evaluator: str) -> tuple[float, float]:
    t = view.table(evaluator)
    return span_of(evaluator, np.concatenate([t.neuron_scores(v) for v in t.variants]))


def span_of(evaluator: str, scores: np.ndarray) -> tuple[float, float]:
    """The span of neuron scores (NaN: none) padded by 5%, the rule's whole range without any."""
    rule = RULES[evaluator]
    scores = scores[~np.isnan(scores)]
    if not scores.size:
        return rule.lo, rule.hi
    pad = 0.05 * max(float(scores.max() - scores.min()), rule.step * 10)
    return float(scores.min()) - pad, float(scores.max()) + pad


def _around(evaluator: str, lo: float, hi: float, current: float) -> tuple[float, float]:
    """[lo, hi] widened to hold `current`, snapped to the rule's steps inside its range."""
    rule = RULES[evaluator]
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
