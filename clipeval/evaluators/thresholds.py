"""One rounding for every threshold the app shows: the sidebar's sliders, the plots' current-value
line, the captions, the tables and the calibrated value that "Apply" sets all print a threshold with
the same number of decimals, so the sidebar never says 0.63 while a plot says 0.627789. The value
itself is not rounded (a fitted threshold is applied exactly; rounding it could lose the best cut)."""

from __future__ import annotations

import math

from clipeval.evaluators.rules import RULES


def decimals(evaluator: str) -> int:
    """Decimals of the threshold's slider step, plus one for CP's p (a share of a large concept set)."""
    step = RULES[evaluator].step
    d = max(0, -math.floor(math.log10(step) + 1e-9))
    if not math.isclose(round(step, d), step):
        d += 1
    return d + (1 if evaluator == "cp" else 0)


def fmt(evaluator: str, value: float) -> str:
    return f"{float(value):.{decimals(evaluator)}f}"


def printf(evaluator: str) -> str:
    """The printf format Streamlit's sliders and number inputs take."""
    return f"%.{decimals(evaluator)}f"


def label(evaluator: str, value: float) -> str:
    """'tau = 0.250'"""
    return f"{RULES[evaluator].param} = {fmt(evaluator, value)}"
