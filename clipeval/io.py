"""Files in and out: descriptions.csv of the original CLIP-Dissect (layer,unit,description,similarity),
Parquet exports, and human verdict CSVs (layer,unit,verdict[,rater]). Every file is checked
completely before anything is written; exports go to a temporary file that is renamed at the end."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from clipeval.config import ProbeConfig, TargetConfig, stable_hash
from clipeval.errors import ClipevalError
from clipeval.store import Store

DESCRIPTION_COLUMNS = ("layer", "unit", "description", "similarity")
HUMAN_COLUMNS = ("layer", "unit", "verdict")
MAX_UNIT = 2**31 - 2  # the largest unit: a layer's n_units (unit + 1) is a 32-bit INTEGER in the store
YES = {"yes", "y", "1", "true", "t"}
NO = {"no", "n", "0", "false", "f"}


def _read_csv(path, required, what: str) -> pd.DataFrame:
    p = Path(path)
    if not p.is_file():
        raise ClipevalError(f"{what} file {path} does not exist")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise ClipevalError(f"{path} is not a readable CSV: {e}") from e
    df.columns = [c.strip().lower() for c in df.columns]
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise ClipevalError(f"{path} lacks column(s) {', '.join(missing)}: found {', '.join(df.columns) or 'none'}, "
                            f"expected {','.join(required)}")
    if df.empty:
        raise ClipevalError(f"{path} has no rows")
    return df


def _units(df: pd.DataFrame, path) -> pd.Series:
    bad = ~df["unit"].str.strip().str.fullmatch(r"\d+")
    if bad.any():
        raise ClipevalError(f"{path}: unit must be a non-negative integer; row {int(np.argmax(bad)) + 2} has "
                            f"{df['unit'][bad].iloc[0]!r}")
    units = df["unit"].str.strip().map(int)  # Python ints: a 20-digit unit must not wrap around
    big = units > MAX_UNIT
    if big.any():
        raise ClipevalError(f"{path}: unit {units[big].iloc[0]} in row {int(np.argmax(big)) + 2} is beyond any "
                            f"layer's size (at most {MAX_UNIT:,})")
    return units.astype("int64")


def layer_column(df: pd.DataFrame, path) -> pd.Series:
    """The layer column, stripped; an empty layer name is refused (it names no layer of any network)."""
    layers = df["layer"].str.strip()
    if (layers == "").any():
        raise ClipevalError(f"{path}: empty layer name in row {int(np.argmax(layers == '')) + 2}")
    return layers


def _first(rows: pd.DataFrame, columns=("layer", "unit")) -> list:
    """The first row's values as plain Python values, for messages (not numpy reprs like np.int64(3))."""
    return [v.item() if isinstance(v, np.generic) else v for v in rows[list(columns)].iloc[0].tolist()]


def _atomic_write(path: Path, write) -> Path:
    if path.is_dir():
        raise ClipevalError(f"{path} is a folder; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ------------------------------------------------------------------------- descriptions
def export_descriptions(store: Store, run_id: str, out) -> Path:
    run = store.complete_run(run_id)
    df = store.neurons(run["run_id"]).rename(columns={"label": "description"})[list(DESCRIPTION_COLUMNS)]
    out = Path(out)
    if out.suffix == ".csv":
        return _atomic_write(out, lambda p: df.to_csv(p, index=False))
    if out.suffix == ".parquet":
        return _atomic_write(out, lambda p: df.to_parquet(p, index=False))
    raise ClipevalError(f"export to .csv or .parquet, not {out.suffix or 'no extension'}")


def read_descriptions(path) -> pd.DataFrame:
    df = _read_csv(path, DESCRIPTION_COLUMNS[:3], "descriptions")
    df["unit"] = _units(df, path)
    df["layer"] = layer_column(df, path)
    df["description"] = df["description"].str.strip()
    if (df["description"] == "").any():
        raise ClipevalError(f"{path}: empty description for {_first(df[df['description'] == ''])}")
    dup = df.duplicated(["layer", "unit"])
    if dup.any():
        raise ClipevalError(f"{path}: neuron {_first(df[dup])} appears twice")
    if "similarity" in df.columns:
        text = df["similarity"].str.strip()
        values = pd.to_numeric(text.replace("", np.nan), errors="coerce")
        bad = (text != "") & ~np.isfinite(values.to_numpy(float))
        if bad.any():
            raise ClipevalError(f"{path}: similarity must be a finite number (or empty); row {int(np.argmax(bad)) + 2} "
                                f"has {df['similarity'][bad].iloc[0]!r}")
        df["similarity"] = values
    else:
        df["similarity"] = np.nan
    return df[list(DESCRIPTION_COLUMNS)].rename(columns={"description": "label"})


def import_descriptions(store: Store, path, *, name: str | None = None, target: str | None = None,
                        weights: str | None = None, probe=None, pooling: str = "mean", concepts: str | None = None,
                        on_bad_image: str = "skip", k: int = 5, n_contrast: int = 10, seed: int = 0,
                        progress: bool = True, placement=None, batch_size: int | None = None,
                        num_workers: int | None = None, engine=None) -> str:
    """Store labels made elsewhere as a run. With a target and probe, activations are collected (on
    `placement`, default the CPU in float32, here or on Ray workers: `engine`) so the labels get top-k
    images and can be evaluated; without, the labels can only be browsed."""
    from clipeval.device import CPU
    from clipeval.engine import LOCAL

    from clipeval import pipeline
    from clipeval.data.concepts import load_concepts
    from clipeval.data.probe import load_probe
    from clipeval.dissect import neuron_summaries
    from clipeval.maps import map_rows
    from clipeval.models import targets as targets_mod

    labels = read_descriptions(path)
    layer_order = list(dict.fromkeys(labels["layer"]))
    if bool(target) != bool(probe):
        raise ClipevalError("give both --target and --probe (to collect activations), or neither")
    concept_set = load_concepts(concepts) if concepts else None
    content = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    probe_set = tgt = None
    if target:
        probe_set = load_probe(probe, on_bad_image)
        if k > len(probe_set):
            raise ClipevalError(f"k={k} is more than the {len(probe_set)} readable probe images")
        tgt = targets_mod.load_target(target, weights)
        shapes = targets_mod.check_layers(tgt, layer_order)
    placement = placement or CPU
    dtype = placement.dtype_name if tgt is not None else None  # activations differ slightly with it: hashed
    run_id = stable_hash("import", content, target, weights, tgt and targets_mod.weights_fingerprint(tgt), pooling,
                         probe_set and probe_set.fingerprint, concept_set and concept_set.content_hash, dtype)
    config = {"kind": "import", "file": str(Path(path).resolve()), "target": target, "weights": weights,
              "probe": list(probe or []), "pooling": pooling, "concepts": concepts,
              **({"dtype": dtype} if dtype else {})}
    store.start_run(run_id, name or f"imported {Path(path).name}", "import", json.dumps(config), run_id)
    try:
        images = hists = map_frame = None
        n_units = labels.groupby("layer")["unit"].max() + 1
        shape_text = {l: "" for l in layer_order}
        if tgt is not None:
            cache = pipeline.ArrayCache(store.path.parent / "cache")
            kept: dict = {}
            acts, _ = pipeline.probe_pass(store, cache, probe_set, TargetConfig(target, weights), tgt, layer_order,
                                          pooling, progress=progress, placement=placement, batch_size=batch_size,
                                          num_workers=num_workers, probe_on_bad_image=on_bad_image, maps_keep=k,
                                          maps_out=kept, engine=engine or LOCAL)
            parts = []
            for layer in layer_order:
                have = acts[layer].shape[1]
                if n_units[layer] > have:
                    raise ClipevalError(f"{path}: layer {layer} has unit {n_units[layer] - 1} but {target} has only "
                                        f"{have} units there")
                n_units[layer] = have
                shape_text[layer] = str(tuple(shapes[layer]))
                parts.append(neuron_summaries(layer, acts[layer], k, n_contrast, seed))
            images = pd.concat([p[0] for p in parts], ignore_index=True)
            hists = pd.concat([p[1] for p in parts], ignore_index=True)
            # the imported labels stay as given; a unit that is constant on this probe is flagged dead
            # (left out of shares and agreement) like in a run made here
            labels = labels.merge(pd.concat([p[2] for p in parts], ignore_index=True), on=["layer", "unit"], how="left")
            labels["dead"] = labels["dead"].fillna(False).astype(bool)
            keep = images.merge(labels[["layer", "unit"]], on=["layer", "unit"])
            images = keep
            frames = [map_rows(layer, images[(images["layer"] == layer) & (images["kind"] == "top")], kept[layer])
                      for layer in layer_order if layer in kept]
            map_frame = pd.concat(frames, ignore_index=True) if frames else None
        if concept_set is not None:
            store.put_concepts(concept_set.content_hash, concept_set.name, concept_set.concepts)
        layers_df = pd.DataFrame({"layer": layer_order, "position": range(len(layer_order)),
                                  "shape": [shape_text[l] for l in layer_order],
                                  "n_units": [int(n_units[l]) for l in layer_order]})
        runner = labels.assign(rank=1, concept=labels["label"], score=labels["similarity"])[
            ["layer", "unit", "rank", "concept", "score"]]
        store.finish_run(run_id, layers=layers_df, neurons=labels, runner_ups=runner, neuron_images=images,
                         histograms=hists, activation_maps=map_frame, meta={
                             "run_id": run_id, "probe_fingerprint": probe_set and probe_set.fingerprint,
                             "concept_hash": concept_set and concept_set.content_hash,
                             "n_images": len(probe_set) if probe_set else 0,
                             "n_skipped_images": len(probe_set.skipped) if probe_set else 0,
                             "models": {"labels": f"imported from {Path(path).name}",
                                        **({"target": {"name": tgt.name, **tgt.info},
                                            "compute": {**placement.info(), "engine": (engine or LOCAL).describe()}}
                                           if tgt else {})},
                             "timings": {}, "peak_rss_mb": pipeline.peak_rss_mb()})
    except BaseException as e:
        store.fail_run(run_id, "failed", f"{type(e).__name__}: {e}")
        raise
    return run_id


# ------------------------------------------------------------------------- human verdicts
def parse_verdicts(values: pd.Series, path) -> pd.Series:
    v = values.str.strip().str.lower()
    bad = ~v.isin(YES | NO)
    if bad.any():
        raise ClipevalError(f"{path}: verdict must be yes/no/1/0/true/false; row {int(np.argmax(bad)) + 2} has "
                            f"{values[bad].iloc[0]!r}")
    return v.isin(YES)


def import_human(store: Store, run_id: str, path, *, rater: str | None = None, replace: bool = False) -> int:
    """Import yes/no verdicts; a verdict that contradicts the same rater's current one is refused
    unless `replace` (then it is added on top: the history is kept)."""
    run = store.complete_run(run_id)
    df = _read_csv(path, HUMAN_COLUMNS, "verdicts")
    df["unit"] = _units(df, path)
    df["layer"] = layer_column(df, path)
    df["verdict"] = parse_verdicts(df["verdict"], path)
    if "rater" not in df.columns or (df["rater"].str.strip() == "").any():
        if not rater:
            raise ClipevalError(f"{path} has no rater column (or empty raters): pass --rater NAME")
        df["rater"] = df["rater"].where(df["rater"].str.strip() != "", rater) if "rater" in df.columns else rater
    df["rater"] = df["rater"].str.strip()
    dup = df.duplicated(["layer", "unit", "rater"])
    if dup.any():
        raise ClipevalError(f"{path}: rater {df[dup]['rater'].iloc[0]!r} judges neuron "
                            f"{_first(df[dup])} twice")
    known = store.neurons(run["run_id"])[["layer", "unit"]]
    unknown = df.merge(known, on=["layer", "unit"], how="left", indicator=True)
    unknown = unknown[unknown["_merge"] == "left_only"]
    if len(unknown):
        raise ClipevalError(f"{path}: {len(unknown)} neuron(s) not in run {run['run_id']}, e.g. "
                            f"{_first(unknown)}")
    current = store.human_verdicts(run["run_id"])
    clash = df.merge(current, on=["layer", "unit", "rater"], suffixes=("", "_old"))
    clash = clash[clash["verdict"] != clash["verdict_old"]]
    if len(clash) and not replace:
        raise ClipevalError(f"{path}: {len(clash)} verdict(s) differ from the rater's stored ones, e.g. "
                            f"{_first(clash, ('rater', 'layer', 'unit'))}; pass --replace to record the "
                            "new ones (the old ones stay in the history)")
    return store.add_human_verdicts(run["run_id"], df, source=f"import:{Path(path).name}")


def export_human(store: Store, run_id: str, out) -> Path:
    run = store.complete_run(run_id)
    df = store.human_verdicts(run["run_id"])
    df["verdict"] = np.where(df["verdict"], "yes", "no")
    return _atomic_write(Path(out), lambda p: df[["layer", "unit", "verdict", "rater", "source", "created_at"]]
                         .to_csv(p, index=False))
