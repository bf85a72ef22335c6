"""Neuron descriptions in and out: descriptions.csv of the original CLIP-Dissect (layer,unit,description,
similarity) imported as a run of its own (with a probe pass for the evaluators' top images when a target is
given), and a run's labels exported as CSV or Parquet."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from clipeval.compute.engine import LOCAL
from clipeval.config import TargetConfig, stable_hash
from clipeval.datasets.concepts import load_concepts
from clipeval.errors import ClipevalError, NoSpace, check_space, no_space, out_of_space
from clipeval.files import atomic_write, first_rows, layer_column, read_csv, unit_column
from clipeval.store import Store

# Imported inside the functions that use them: the probe pass (torch, the target), only when an import names
# a target to collect activations for.

DESCRIPTION_COLUMNS = ("layer", "unit", "description", "similarity")


def export_descriptions(store: Store, run_id: str, out) -> Path:
    run = store.complete_run(run_id)
    df = store.neurons(run["run_id"]).rename(columns={"label": "description"})[list(DESCRIPTION_COLUMNS)]
    out = Path(out)
    if out.suffix == ".csv":
        return atomic_write(out, df.to_csv(index=False).encode())
    if out.suffix == ".parquet":
        return atomic_write(out, df.to_parquet(index=False))
    raise ClipevalError(f"export to .csv or .parquet, not {out.suffix or 'no extension'}")


def read_descriptions(path) -> pd.DataFrame:
    df = read_csv(path, DESCRIPTION_COLUMNS[:3], "descriptions")
    df["unit"] = unit_column(df, path)
    df["layer"] = layer_column(df, path)
    df["description"] = df["description"].str.strip()
    if (df["description"] == "").any():
        raise ClipevalError(f"{path}: empty description for {first_rows(df[df['description'] == ''])}")
    dup = df.duplicated(["layer", "unit"])
    if dup.any():
        raise ClipevalError(f"{path}: neuron {first_rows(df[dup])} appears twice")
    if "similarity" in df.columns:
        text = df["similarity"].str.strip()
        values = pd.to_numeric(text.replace("", np.nan), errors="coerce")
        bad = (text != "") & ~np.isfinite(values.to_numpy(float))
        if bad.any():
            raise ClipevalError(
                f"{path}: similarity must be a finite number (or empty); row {int(np.argmax(bad)) + 2} "
                f"has {df['similarity'][bad].iloc[0]!r}"
            )
        df["similarity"] = values
    else:
        df["similarity"] = np.nan
    return df[list(DESCRIPTION_COLUMNS)].rename(columns={"description": "label"})


def import_descriptions(
    store: Store,
    path,
    *,
    name: str | None = None,
    target: str | None = None,
    weights: str | None = None,
    probe=None,
    pooling: str = "mean",
    concepts: str | None = None,
    on_bad_image: str = "skip",
    k: int = 5,
    n_contrast: int = 10,
    seed: int = 0,
    progress: bool = True,
    placement=None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    engine=None,
) -> str:
    """Store labels made elsewhere as a run. With a target and probe, activations are collected (on
    `placement`, default the CPU in float32, here or on Ray workers: `engine`) so the labels get top-k
    images and can be evaluated; without, the labels can only be browsed."""
    from clipeval.compute.device import CPU
    from clipeval.datasets.probe import load_probe
    from clipeval.dissect import pipeline
    from clipeval.models import targets as targets_mod

    labels = read_descriptions(path)
    layer_order = list(dict.fromkeys(labels["layer"]))
    if bool(target) != bool(probe):
        raise ClipevalError("give both --target and --probe (to collect activations), or neither")
    concept_set = load_concepts(concepts) if concepts else None
    probe_set = tgt = layouts = None
    if target:
        probe_set = load_probe(probe, on_bad_image)
        if k > len(probe_set):
            raise ClipevalError(f"k={k} is more than the {len(probe_set)} readable probe images")
        tgt = targets_mod.load_target(target, weights)
        shapes = targets_mod.check_layers(tgt, layer_order)
        layouts = targets_mod.layer_layouts(tgt, layer_order, shapes)  # a layer that cannot be pooled stops here
    placement = placement or CPU
    run_id, config = _import_identity(
        path, target, weights, tgt, pooling, probe, probe_set, concepts, concept_set, placement
    )
    # the store grows by less than the CSV's size (measured: 10 MB for a 15 MB, 200,000-row file)
    need = Path(path).stat().st_size
    check_space(store.path, need)
    store.start_run(run_id, name or f"imported {Path(path).name}", "import", json.dumps(config), run_id)
    try:
        n_units = (labels.groupby("layer")["unit"].max() + 1).to_dict()
        shape_text = dict.fromkeys(layer_order, "")
        images = hists = map_frame = None
        if tgt is not None:
            settings = pipeline.PassSettings(
                placement, engine or LOCAL, batch_size, num_workers, on_bad_image, progress
            )
            request = pipeline.LayerRequest(TargetConfig(target, weights), tgt, layer_order, pooling)
            labels, images, hists, map_frame = _summaries_on_probe(
                store, path, labels, probe_set, request, settings, n_units, (k, n_contrast, seed)
            )
            shape_text = {layer: str(tuple(shapes[layer])) for layer in layer_order}
        if concept_set is not None:
            store.put_concepts(concept_set.content_hash, concept_set.name, concept_set.concepts)
        layers_df = pd.DataFrame(
            {
                "layer": layer_order,
                "position": range(len(layer_order)),
                "shape": [shape_text[l] for l in layer_order],
                "n_units": [int(n_units[l]) for l in layer_order],
            }
        )
        runner = labels.assign(rank=1, concept=labels["label"], score=labels["similarity"])[
            ["layer", "unit", "rank", "concept", "score"]
        ]
        store.finish_run(
            run_id,
            layers=layers_df,
            neurons=labels,
            runner_ups=runner,
            neuron_images=images,
            histograms=hists,
            activation_maps=map_frame,
            meta=_import_meta(run_id, path, probe_set, concept_set, tgt, layouts, placement, engine),
        )
    except BaseException as e:
        if isinstance(e, NoSpace) or out_of_space(e):
            # the disk filled although the check found room: the import's own run holds nothing yet, so it
            # goes, leaving the store as it was (a 'failed' run of 0 neurons would be a half-written result)
            if store.run(run_id)["status"] != "complete":
                store.delete_run(run_id)
            raise no_space(store.path, need) from e
        store.fail_run(run_id, "failed", f"{type(e).__name__}: {e}")
        raise
    return run_id


def _summaries_on_probe(store, path, labels, probe_set, request, settings, n_units: dict, summary_args):
    """One probe pass for imported labels: each unit's top, level, low and random images, histograms and
    dead flag (as a run made here has them), its activation maps and the thumbnails the pages show.
    `n_units` is set to each layer's unit count; a label on a unit the layer lacks is refused."""
    from clipeval.dissect import pipeline

    cache = pipeline.ArrayCache(store.path.parent / "cache")
    made = pipeline.thumb_file(cache, probe_set)
    try:
        return _pass_and_summaries(
            store, cache, path, labels, probe_set, request, settings, n_units, summary_args, made
        )
    finally:
        made.remove()  # also when the pass or the summaries fail


def _pass_and_summaries(store, cache, path, labels, probe_set, request, settings, n_units, summary_args, made):
    """_summaries_on_probe's work, the pass's thumbnails going to the ThumbFile `made`."""
    from clipeval.dissect import pipeline
    from clipeval.dissect.activations import stream_summaries
    from clipeval.dissect.maps import map_rows

    k = summary_args[0]
    kept, streamed = {}, {}
    pipeline.probe_pass(
        store,
        cache,
        probe_set,
        request,
        settings=settings,
        maps_keep=k,
        maps_out=kept,
        thumbs_out=made,
        streams=streamed,
        stream_keep=k,
    )
    scratch = cache.folder / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    parts = []
    for layer in request.layers:
        have = streamed[layer].stream.n_units
        if n_units[layer] > have:
            raise ClipevalError(
                f"{path}: layer {layer} has unit {n_units[layer] - 1} but {request.target_cfg.name} has only "
                f"{have} units there"
            )
        n_units[layer] = have
        parts.append(
            stream_summaries(layer, streamed[layer].path, streamed[layer].stream, k, *summary_args[1:], scratch)
        )
    # the imported labels stay as given; a unit that is constant on this probe is flagged dead (left out of
    # shares and agreement) like in a run made here
    labels = labels.merge(pd.concat([p[2] for p in parts], ignore_index=True), on=["layer", "unit"], how="left")
    labels["dead"] = labels["dead"].fillna(False).astype(bool)
    images = pd.concat([p[0] for p in parts], ignore_index=True).merge(labels[["layer", "unit"]], on=["layer", "unit"])
    pipeline.store_thumbnails(store, probe_set, images, made)
    frames = [
        map_rows(layer, images[(images["layer"] == layer) & (images["kind"] == "top")], kept[layer])
        for layer in request.layers
        if layer in kept
    ]
    hists = pd.concat([p[1] for p in parts], ignore_index=True)
    return labels, images, hists, pd.concat(frames, ignore_index=True) if frames else None


def _import_meta(run_id, path, probe_set, concept_set, tgt, layouts, placement, engine) -> dict:
    """What an imported run records beside its labels: where they came from and, with a probe pass, the
    target and where it ran."""
    from clipeval.dissect import pipeline

    return {
        "run_id": run_id,
        "probe_fingerprint": probe_set and probe_set.fingerprint,
        "concept_hash": concept_set and concept_set.content_hash,
        "n_images": len(probe_set) if probe_set else 0,
        "n_skipped_images": len(probe_set.skipped) if probe_set else 0,
        "models": {
            "labels": f"imported from {Path(path).name}",
            **(
                {
                    "target": {"name": tgt.name, **tgt.info, "layouts": layouts},
                    "compute": {**placement.info(), "engine": (engine or LOCAL).describe()},
                }
                if tgt
                else {}
            ),
        },
        "timings": {},
        "peak_rss_mb": pipeline.peak_rss_mb(),
    }


def _import_identity(path, target, weights, tgt, pooling, probe, probe_set, concepts, concept_set, placement):
    """An import's run id (a hash of everything that makes its numbers) and its stored settings."""
    from clipeval.models import targets as targets_mod

    dtype = placement.dtype_name if tgt is not None else None  # activations differ slightly with it: hashed
    run_id = stable_hash(
        "import",
        hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16],
        target,
        weights,
        tgt and targets_mod.weights_fingerprint(tgt),
        pooling,
        probe_set and probe_set.fingerprint,
        concept_set and concept_set.content_hash,
        dtype,
    )
    config = {
        "kind": "import",
        "file": str(Path(path).resolve()),
        "target": target,
        "weights": weights,
        "probe": list(probe or []),
        "pooling": pooling,
        "concepts": concepts,
        **({"dtype": dtype} if dtype else {}),
    }
    return run_id, config
