"""Checked CSV reading and atomic file writing shared by every importer and exporter: a file is read and
checked completely before anything is written, and an export goes to a temporary file renamed at the end."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from clipeval.errors import (
    ClipevalError,
    check_path,
    check_space,
    no_space,
    out_of_space,
)

MAX_UNIT = 2**31 - 2  # the largest unit: a layer's n_units (unit + 1) is a 32-bit INTEGER in the store


def read_csv(path, required, what: str) -> pd.DataFrame:
    p = check_path(path, f"{what} file", "read")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise ClipevalError(f"{path} is not a readable CSV: {e}") from e
    df.columns = [c.strip().lower() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ClipevalError(
            f"{path} lacks column(s) {', '.join(missing)}: found {', '.join(df.columns) or 'none'}, "
            f"expected {','.join(required)}"
        )
    if df.empty:
        raise ClipevalError(f"{path} has no rows")
    return df


def unit_column(df: pd.DataFrame, path) -> pd.Series:
    bad = ~df["unit"].str.strip().str.fullmatch(r"\d+")
    if bad.any():
        raise ClipevalError(
            f"{path}: unit must be a non-negative integer; row {int(np.argmax(bad)) + 2} has "
            f"{df['unit'][bad].iloc[0]!r}"
        )
    units = df["unit"].str.strip().map(int)  # Python ints: a 20-digit unit must not wrap around
    big = units > MAX_UNIT
    if big.any():
        raise ClipevalError(
            f"{path}: unit {units[big].iloc[0]} in row {int(np.argmax(big)) + 2} is beyond any "
            f"layer's size (at most {MAX_UNIT:,})"
        )
    return units.astype("int64")


def layer_column(df: pd.DataFrame, path) -> pd.Series:
    """The layer column, stripped; an empty layer name is refused (it names no layer of any network)."""
    layers = df["layer"].str.strip()
    if (layers == "").any():
        raise ClipevalError(f"{path}: empty layer name in row {int(np.argmax(layers == '')) + 2}")
    return layers


def first_rows(rows: pd.DataFrame, columns=("layer", "unit")) -> list:
    """The first row's values as plain Python values, for messages (not numpy reprs like np.int64(3))."""
    return [v.item() if isinstance(v, np.generic) else v for v in rows[list(columns)].iloc[0].tolist()]


def atomic_write(path: Path, data: bytes) -> Path:
    """Write `data` to a temporary file beside `path`, then rename it over `path`: a reader, a kill or
    a full disk finds the old file or the new one. The bytes are made first, so a disk without room
    for them is refused before anything is written, saying how much was needed."""
    check_path(path, "output file", "write", new_folders=True)
    check_space(path, len(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:
        if out_of_space(e):
            raise no_space(path, len(data)) from e
        raise
    finally:
        tmp.unlink(missing_ok=True)
    return path
