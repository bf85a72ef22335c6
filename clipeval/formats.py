"""How numbers and stored cells read wherever they are shown (app, CLI, report): shares as percentages,
intervals in brackets, and the store's nullable JSON and text columns as plain values."""

from __future__ import annotations

import json

import pandas as pd


def missing(x) -> bool:
    """None, NaN or pandas' NA: a share or a score that could not be computed."""
    return x is None or bool(pd.isna(x))


def percent(x, digits: int = 1, none: str = "n/a") -> str:
    """A share in [0, 1] as a percentage: percent(0.1234) == '12.3%'."""
    return none if missing(x) else f"{100 * float(x):.{digits}f}%"


def bracket(lo, hi, spec: str = ".2f") -> str:
    """An interval as '[lo, hi]' with both ends in one number format."""
    return f"[{lo:{spec}}, {hi:{spec}}]"


def json_cell(value) -> dict:
    """A stored JSON column as a dict ({} for NULL or NaN: a run still being written has no models yet)."""
    return json.loads(value) if isinstance(value, str) and value else {}


def text_cell(value, default: str = "") -> str:
    """A stored text column as str (NULL or NaN -> default)."""
    return value if isinstance(value, str) and value else default
