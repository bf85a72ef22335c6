"""Label sources: other labellers' labels put on a run's units, judged by the run's own evaluators.

A run's CLIP-Dissect labels are one answer to "what does this unit do?". Other answers:
  run          another CLIP-Dissect run (other concept set, similarity function, image-text model)
  clip-dissect descriptions.csv of the original CLIP-Dissect (layer,unit,description,similarity)
  milan        MILAN descriptions (layer,unit,description): the label only
  netdissect   NetDissect's tally CSV (unit,category,label,score,...; units counted from 1; one layer
               per file), with its IoU as the label's score

Labels are matched to the run's units by (layer, unit), after an optional layer map (a file made for
ResNet-50 names its layers layer1..layer4); units the run lacks stay in the store and are counted in
the coverage, never dropped silently. Labels on dead units (no images) are counted, not judged: every
share, baseline and coverage is over the run's live units, the units its own shares are over.
Evaluating a source needs no new forward pass of the target: its labels are judged on the run's stored
top-k (and inactive) images with the settings and model of the run's own evaluations, so the numbers
of all sources compare on the same images and judges.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from clipeval.config import EvalConfig, ImageTextConfig, stable_hash
from clipeval.dissect.descriptions import read_descriptions
from clipeval.errors import ClipevalError, WeightsUnavailable
from clipeval.files import read_csv, unit_column
from clipeval.store import Store

# Imported inside the functions that use them: the evaluators and models (torch, transformers), only when a
# label source is judged; listing sources stays light.

KINDS = ("run", "clip-dissect", "milan", "netdissect")
KIND_TITLES = {
    "run": "CLIP-Dissect run",
    "clip-dissect": "original CLIP-Dissect",
    "milan": "MILAN",
    "netdissect": "NetDissect",
}
SCORE_NAMES = {"run": "similarity", "clip-dissect": "similarity", "milan": "", "netdissect": "IoU"}
SOURCE_EVALUATORS = ("cp", "es", "contrast", "vqa")


# ------------------------------------------------------------------------- reading the files
def _read(path, required: tuple[str, ...], what: str) -> pd.DataFrame:

    df = read_csv(path, required, what)
    df["unit"] = unit_column(df, path)
    return df


def _no_duplicates(df: pd.DataFrame, path) -> None:
    dup = df.duplicated(["layer", "unit"])
    if dup.any():
        row = df[dup].iloc[0]
        raise ClipevalError(f"{path}: neuron ({row['layer']}, {int(row['unit'])}) appears twice")


def read_clip_dissect(path) -> pd.DataFrame:
    """descriptions.csv of the original: layer,unit,description[,similarity]."""

    df = read_descriptions(path)
    return df.assign(score=df["similarity"], detail="")[["layer", "unit", "label", "score", "detail"]]


def read_milan(path) -> pd.DataFrame:
    """MILAN's layer,unit,description (a free-text description; MILAN gives no score)."""
    from clipeval.files import layer_column

    df = _read(path, ("layer", "unit", "description"), "MILAN")
    df["layer"] = layer_column(df, path)
    df["label"] = df["description"].str.strip()
    if (df["label"] == "").any():
        raise ClipevalError(f"{path}: empty description for unit {int(df[df['label'] == '']['unit'].iloc[0])}")
    _no_duplicates(df, path)
    return df.assign(score=np.nan, detail="")[["layer", "unit", "label", "score", "detail"]]


def netdissect_label_text(label: str) -> str:
    """NetDissect's Broden names as words: 'green-c' (colour) -> 'green', 'bow_window-outdoor-s'
    (scene) -> 'bow window outdoor', 'plastic-opaque' -> 'plastic opaque'."""
    text = re.sub(r"-[cs]$", "", label.strip())
    return re.sub(r"[_\-]+", " ", text).strip()


def read_netdissect(path, layer: str | None = None) -> pd.DataFrame:
    """NetDissect's tally CSV of one layer. Units in the file count from 1 (NetDissect writes unit+1);
    stored from 0 like every other source. The layer is `layer`, or the file name's last '_' part
    (resnet50_imagenet_layer4.csv -> layer4)."""
    df = _read(path, ("unit", "category", "label", "score"), "NetDissect tally")
    if (df["unit"] < 1).any():
        raise ClipevalError(f"{path}: NetDissect units count from 1; found unit {int(df['unit'].min())}")
    layer = layer or Path(path).stem.split("_")[-1]
    score = pd.to_numeric(df["score"], errors="coerce")
    if score.isna().any():
        raise ClipevalError(
            f"{path}: score (IoU) must be a number; row {int(np.argmax(score.isna())) + 2} has "
            f"{df['score'][score.isna()].iloc[0]!r}"
        )
    if (df["label"].str.strip() == "").any():
        raise ClipevalError(f"{path}: empty label for unit {int(df[df['label'].str.strip() == '']['unit'].iloc[0])}")
    out = pd.DataFrame(
        {
            "layer": layer,
            "unit": df["unit"] - 1,
            "label": df["label"].map(netdissect_label_text),
            "score": score,
            "detail": df["category"].str.strip() + ": " + df["label"].str.strip(),
        }
    )
    _no_duplicates(out, path)
    return out


def parse_layer_map(items) -> dict[str, str]:
    """'layer4=bn2' (or a comma-separated list of them) -> {'layer4': 'bn2'}."""
    out: dict[str, str] = {}
    for item in items or []:
        for pair in str(item).split(","):
            if not pair.strip():
                continue
            if pair.count("=") != 1 or not all(p.strip() for p in pair.split("=")):
                raise ClipevalError(f"--layer-map takes SOURCE_LAYER=RUN_LAYER, not {pair!r}")
            src, dst = (p.strip() for p in pair.split("="))
            out[src] = dst
    return out


# ------------------------------------------------------------------------- adding a source
def add_source(
    store: Store,
    run_id: str,
    kind: str,
    origin: str,
    *,
    name: str = "",
    layer_map=None,
    netdissect_layer: str | None = None,
    replace: bool = False,
) -> str:
    """Read a source (a file, or another run's id for kind 'run'), match it to the run's units and
    store it. Everything is checked before anything is written; a source that matches no unit of
    the run is refused with the layers on each side, so a missing layer map is noticed at once.
    The same labels added again keep their evaluations; other labels under an existing source's id
    or name are refused unless `replace` (Store.put_label_source)."""
    if kind not in KINDS:
        raise ClipevalError(f"unknown label source kind {kind!r}; choose from {', '.join(KINDS)}")
    run = store.complete_run(run_id)
    run_id = run["run_id"]
    layer_map = parse_layer_map(layer_map) if not isinstance(layer_map, dict) else layer_map
    settings: dict = {"layer_map": layer_map}
    if kind == "run":
        other = store.complete_run(origin)
        if other["run_id"] == run_id:
            raise ClipevalError("a run's own labels are always shown; give another run as a source")
        labels = store.neurons(other["run_id"]).assign(detail="")
        labels = labels.rename(columns={"similarity": "score"})[["layer", "unit", "label", "score", "detail"]]
        content = other["run_id"]
        cfg = json.loads(other.get("config_json") or "{}")
        settings["run"] = {"run_id": other["run_id"], "name": other["name"], "config": cfg}
        default_name = f"run {other['name'] or other['run_id']}"
        origin = other["run_id"]
    else:
        path = Path(origin)
        labels = {
            "clip-dissect": read_clip_dissect,
            "milan": read_milan,
            "netdissect": lambda p: read_netdissect(p, netdissect_layer),
        }[kind](path)
        content = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        settings["file"] = path.name
        settings["sha256_16"] = content
        if kind == "netdissect":
            settings["layer"] = str(labels["layer"].iloc[0])
        default_name = f"{KIND_TITLES[kind]}: {path.name}"
        origin = str(path.resolve())
    labels = labels.assign(layer=labels["layer"].map(lambda l: layer_map.get(l, l)))
    neurons = store.neurons(run_id)[["layer", "unit"]]
    matched = labels.merge(neurons, on=["layer", "unit"])
    if matched.empty:
        raise ClipevalError(
            f"no label of {origin} falls on a unit of run {run_id}: the source names layers "
            f"{', '.join(sorted(set(labels['layer'])))}; the run has {', '.join(dict.fromkeys(neurons['layer']))}. "
            "Map them with --layer-map SOURCE_LAYER=RUN_LAYER"
        )
    source_id = stable_hash("label-source", run_id, kind, content, sorted(layer_map.items()), settings.get("layer", ""))
    if not name:  # added again without a name: it keeps the one it has
        known = store.label_sources(run_id)
        name = next(iter(known.loc[known["source_id"] == source_id, "name"]), default_name)
    store.put_label_source(
        {
            "source_id": source_id,
            "run_id": run_id,
            "name": name,
            "kind": kind,
            "origin": origin,
            "settings": settings,
            "score_name": SCORE_NAMES[kind],
        },
        labels,
        replace=replace,
    )
    return source_id


def describe_coverage(store: Store, run_id: str) -> pd.DataFrame:
    """One row per source: its labels, how many fall on the run's units, and the share of the run's
    units it labels."""
    if not store.has_table("label_sources"):  # an older store opened read-only: no sources yet
        return pd.DataFrame(
            columns=[
                "source_id",
                "name",
                "kind",
                "origin",
                "settings_json",
                "score_name",
                "n_labels",
                "created_at",
                "n_matched",
                "n_units",
                "n_on_dead",
                "coverage",
            ]
        )
    s = store.label_sources(run_id)
    if s.empty:
        return s
    return s.assign(coverage=s["n_matched"] / s["n_units"].where(s["n_units"] > 0))


# ------------------------------------------------------------------------- evaluating a source
def complete_evaluations(store: Store, run_id: str) -> pd.DataFrame:
    """The run's complete evaluations, the newest per evaluator: the judges of its sources."""
    latest = store.latest_evaluations(run_id)
    return latest[latest["status"] == "complete"]


def run_evaluations(store: Store, run_id: str) -> pd.DataFrame:
    """complete_evaluations, refused when there is none (a source would be judged by nothing)."""
    done = complete_evaluations(store, run_id)
    if done.empty:
        latest = store.latest_evaluations(run_id)
        found = ", ".join(f"{e} {st}" for e, st in zip(latest["evaluator"], latest["status"])) or "none"
        raise ClipevalError(
            f"run {run_id} has no complete evaluation (found: {found}); a source's labels are "
            f"judged with the settings and models of the run's own evaluations: evaluate the run "
            f"first (clipeval evaluate {run_id}); `sources add --no-evaluate` stores a source unjudged"
        )
    return done


def _shuffled(labels: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The source's own labels shuffled across its units of each layer: the source's baseline."""
    rng = np.random.default_rng(seed)
    out = labels.copy()
    for _, idx in labels.groupby("layer", sort=False).groups.items():
        out.loc[idx, "label"] = rng.permutation(labels.loc[idx, "label"].to_numpy())
    return out


def evaluate_source(
    store: Store,
    run_id: str,
    source_id: str,
    evaluators=None,
    *,
    force: bool = False,
    progress: bool = True,
    cache_dir=None,
    vqa_backend=None,
) -> list[dict]:
    """Judge a source's labels (and the same labels shuffled within each layer) with every evaluator
    the run was judged by, with that evaluation's own settings and model, on the run's stored images.
    Returns one dict per evaluator: evaluator, status (complete | cached | unavailable | skipped), message."""
    from clipeval.dissect.pipeline import ArrayCache
    from clipeval.evaluators.base import EvalInputs
    from clipeval.evaluators.run import EMBEDDING_EVALUATORS

    run = store.complete_run(run_id)
    run_id = run["run_id"]
    sources = store.label_sources(run_id)
    if source_id not in set(sources["source_id"]):
        raise ClipevalError(
            f"run {run_id} has no label source {source_id!r}; sources: {', '.join(sources['source_id']) or 'none'}"
        )
    done = run_evaluations(store, run_id)
    wanted = list(evaluators) if evaluators else [e for e in SOURCE_EVALUATORS if e in set(done["evaluator"])]
    labels = store.source_labels(run_id, source_id)[["layer", "unit", "label"]]  # on live units only
    # the labels judged are part of a pass's identity: a pass over other units (one whose shuffled baseline
    # moved labels onto dead units) is not taken for this one
    judged = hashlib.sha256(labels.to_csv(index=False).encode()).hexdigest()[:16]
    on_dead = int(sources.loc[sources["source_id"] == source_id, "n_on_dead"].iloc[0])
    units = f"on {len(labels):,} live units" + (f" ({on_dead:,} labels on dead units not judged)" if on_dead else "")
    cache = ArrayCache(cache_dir or store.path.parent / "cache")
    out = []
    for name in wanted:
        hit = done[done["evaluator"] == name]
        if hit.empty:
            out.append(
                {
                    "evaluator": name,
                    "status": "skipped",
                    "message": f"the run itself has no complete {name} evaluation to take settings from",
                }
            )
            continue
        cfg_dict = json.loads(hit.iloc[0]["config_json"])
        it = cfg_dict.get("image_text")
        cfg = EvalConfig(**{**cfg_dict, "image_text": ImageTextConfig(**it) if it else None})
        kinds = ("top", "low", "random") if name == "contrast" else ("top",)
        images = store.neuron_images(run_id, kinds=kinds)
        images = images[(images["kind"] != "top") | (images["rank"] <= cfg.k)]
        images = images.merge(labels[["layer", "unit"]], on=["layer", "unit"])
        variants = {"real": labels, "shuffled": _shuffled(labels, cfg.seed)}
        inputs = EvalInputs(
            run_id,
            run["probe_fingerprint"],
            int(run["n_images"]),
            variants,
            images,
            store.probe_images(run["probe_fingerprint"]).set_index("image_id")["path"].to_dict(),
            store.concepts(run["concept_hash"]) if run.get("concept_hash") else None,
        )
        if name == "vqa":
            got = _vqa(store, run_id, source_id, cfg, inputs, vqa_backend, force, progress, judged)
            out.append({**got, "message": got["message"] or units})
            continue
        from clipeval.models.image_text import load_image_text

        model = load_image_text(cfg.image_text)
        info = model.info()
        source_eval_id = stable_hash("source-evaluation", source_id, cfg, info.get("fingerprint", ""), judged)
        if store.source_evaluation_status(source_eval_id) == "complete" and not force:
            out.append({"evaluator": name, "status": "cached", "message": units})
            continue
        start = time.perf_counter()
        evaluator = EMBEDDING_EVALUATORS[name](model, stable_hash(cfg.image_text, info.get("fingerprint", "")), cache)
        cfg_json = json.dumps(dataclasses.asdict(cfg), sort_keys=True)
        with _recorded(store, source_eval_id, source_id, run_id, name, cfg_json):
            # CP ranks a label among the run's concept set; a label outside it (MILAN's sentences) is
            # ranked where it would fall among them, the same number for labels inside it
            scores = (
                evaluator.score(inputs, progress, outside_labels=True)
                if name == "cp"
                else evaluator.score(inputs, progress)
            )
        store.record_source_evaluation(
            source_eval_id,
            source_id,
            run_id,
            name,
            cfg_json,
            status="complete",
            scores=scores,
            wall_s=time.perf_counter() - start,
            models={"image_text": info},
            n_concepts=len(inputs.concepts) if inputs.concepts else None,
        )
        out.append({"evaluator": name, "status": "complete", "message": units})
    return out


def _vqa(store, run_id, source_id, cfg, inputs, backend, force, progress, judged: str) -> dict:
    from clipeval.evaluators.vqa import VisualQuestionAnswering
    from clipeval.models.vqa import Blip2Vqa

    source_eval_id = stable_hash(
        "source-evaluation", source_id, cfg, getattr(backend, "name", "") if backend else "", judged
    )
    if store.source_evaluation_status(source_eval_id) == "complete" and not force:
        return {"evaluator": "vqa", "status": "cached", "message": ""}
    try:
        backend = backend or Blip2Vqa.load(cfg.vqa_model)
    except WeightsUnavailable as e:
        return {"evaluator": "vqa", "status": "unavailable", "message": str(e)}
    start = time.perf_counter()
    cfg_json = json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=str)
    with _recorded(store, source_eval_id, source_id, run_id, "vqa", cfg_json):
        scores = VisualQuestionAnswering(backend, cfg.prompt).score(inputs, progress)
    store.record_source_evaluation(
        source_eval_id,
        source_id,
        run_id,
        "vqa",
        cfg_json,
        status="complete",
        scores=scores,
        wall_s=time.perf_counter() - start,
        models={"vqa": backend.info()},
    )
    return {"evaluator": "vqa", "status": "complete", "message": ""}


def _recorded(store: Store, source_eval_id: str, source_id: str, run_id: str, evaluator: str, cfg_json: str):
    """A 'running' row around one pass, so a killed pass shows as interrupted and a failed one says why."""
    from clipeval.evaluators.run import running_row

    return running_row(
        lambda: store.start_source_evaluation(source_eval_id, source_id, run_id, evaluator, cfg_json),
        lambda status, error: store.fail_source_evaluation(source_eval_id, status, error),
    )


def print_outcomes(outcomes: list[dict], file=sys.stdout) -> None:
    for o in outcomes:
        print(
            f"  {o['evaluator']:<9} {o['status']:<12} {o['message'].splitlines()[0] if o['message'] else ''}", file=file
        )
