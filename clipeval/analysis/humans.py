"""Human verdicts in and out: CSVs of layer,unit,verdict[,rater], checked completely before anything is
written, and exported with their rater, source and time."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from clipeval.errors import ClipevalError
from clipeval.files import atomic_write, first_rows, layer_column, read_csv, unit_column
from clipeval.store import Store

HUMAN_COLUMNS = ("layer", "unit", "verdict")
YES = {"yes", "y", "1", "true", "t"}
NO = {"no", "n", "0", "false", "f"}


def parse_verdicts(values: pd.Series, path) -> pd.Series:
    v = values.str.strip().str.lower()
    bad = ~v.isin(YES | NO)
    if bad.any():
        raise ClipevalError(
            f"{path}: verdict must be yes/no/1/0/true/false; row {int(np.argmax(bad)) + 2} has {values[bad].iloc[0]!r}"
        )
    return v.isin(YES)


def import_human(store: Store, run_id: str, path, *, rater: str | None = None, replace: bool = False) -> int:
    """Import yes/no verdicts; a verdict that contradicts the same rater's current one is refused
    unless `replace` (then it is added on top: the history is kept)."""
    run = store.complete_run(run_id)
    df = read_csv(path, HUMAN_COLUMNS, "verdicts")
    df["unit"] = unit_column(df, path)
    df["layer"] = layer_column(df, path)
    df["verdict"] = parse_verdicts(df["verdict"], path)
    if "rater" not in df.columns or (df["rater"].str.strip() == "").any():
        if not rater:
            raise ClipevalError(f"{path} has no rater column (or empty raters): pass --rater NAME")
        df["rater"] = df["rater"].where(df["rater"].str.strip() != "", rater) if "rater" in df.columns else rater
    df["rater"] = df["rater"].str.strip()
    dup = df.duplicated(["layer", "unit", "rater"])
    if dup.any():
        raise ClipevalError(f"{path}: rater {df[dup]['rater'].iloc[0]!r} judges neuron {first_rows(df[dup])} twice")
    known = store.neurons(run["run_id"])[["layer", "unit"]]
    unknown = df.merge(known, on=["layer", "unit"], how="left", indicator=True)
    unknown = unknown[unknown["_merge"] == "left_only"]
    if len(unknown):
        raise ClipevalError(f"{path}: {len(unknown)} neuron(s) not in run {run['run_id']}, e.g. {first_rows(unknown)}")
    current = store.human_verdicts(run["run_id"])
    clash = df.merge(current, on=["layer", "unit", "rater"], suffixes=("", "_old"))
    clash = clash[clash["verdict"] != clash["verdict_old"]]
    if len(clash) and not replace:
        raise ClipevalError(
            f"{path}: {len(clash)} verdict(s) differ from the rater's stored ones, e.g. "
            f"{first_rows(clash, ('rater', 'layer', 'unit'))}; pass --replace to record the "
            "new ones (the old ones stay in the history)"
        )
    return store.add_human_verdicts(run["run_id"], df, source=f"import:{Path(path).name}")


def export_human(store: Store, run_id: str, out) -> Path:
    run = store.complete_run(run_id)
    df = store.human_verdicts(run["run_id"])
    df["verdict"] = np.where(df["verdict"], "yes", "no")
    return atomic_write(
        Path(out), df[["layer", "unit", "verdict", "rater", "source", "created_at"]].to_csv(index=False).encode()
    )
