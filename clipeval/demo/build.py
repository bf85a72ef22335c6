"""The offline demo: real runs that a fresh machine builds from registry packages alone.

Target: EfficientNet-Lite0 with its real ImageNet weights, five layers from early to the final
classifier (whose 1,000 neurons have known meanings). Labelling model: the ConSE stand-in on an
EfficientNet-Lite1 classifier; evaluator model: ConSE on EfficientNet-Lite2 (a different network, as
the paper evaluated with a model other than the labelling CLIP). Neither is CLIP, and BLIP-2 is not
available offline: the runs record that, and the app says it.

The evaluator shares as little with the labeller as the registries allow: another classifier
(Lite2, not Lite1) and another sentence encoder (all-mpnet-base-v2, not all-MiniLM-L6-v2). Still
shared, and said beside the numbers: the classifier family (EfficientNet-Lite) and the ImageNet-1k
label space through which ConSE sees every image.

Three configurations share one probe pass (cached): concept sets common-10k, common-20k and the
ImageNet class names (the last gives the original paper's final-layer label accuracy check).
A reference rater for the final layer comes from the ground truth: does the label name the
neuron's ImageNet class (its name or a WordNet synonym)? The stand-in evaluator's default thresholds
are calibrated against it (clipeval.evaluators.judges): the paper's CLIP thresholds mean nothing on ConSE cosines.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

from clipeval.analysis.imagenet import imagenet_label_accuracy
from clipeval.analysis.runview import RunView
from clipeval.compute import progress as prog
from clipeval.compute.progress import stage
from clipeval.config import (
    ConceptConfig,
    DissectConfig,
    ImageTextConfig,
    ProbeConfig,
    SimilarityConfig,
    TargetConfig,
)
from clipeval.datasets.imagenet import imagenet_synonyms
from clipeval.errors import ClipevalError
from clipeval.evaluators.judges import CALIBRATED, calibrate_splits, save_calibration
from clipeval.evaluators.sources import add_source, complete_evaluations, evaluate_source
from clipeval.store import DEFAULT_DB, Store

# Imported inside the functions that use them: the dissection and evaluation code (torch and the models) and
# subprocess, only when the demo is built, not when the app asks for its status.

DEMO_VERSION = 3  # bump when the demo's settings change, so older stores rebuild (3: activation maps)
DEMO_LAYERS = ("blocks.1", "blocks.3", "blocks.5", "bn2", "classifier")
DEMO_CONCEPTS = ("common-10k", "common-20k", "imagenet")
# How long a whole build took (seconds, and where it was measured), so the app gives the time left for the
# whole build: the current step's own estimate said "about 3 min left" 70 minutes before the end.
MEASURED_BUILD = {"full": (4589.0, "the full build took 4,589 s on 2 cores with two test suites beside it")}
LABELLING_MODEL = ImageTextConfig("conse", "efficientnet_lite1")
EVAL_MODEL = ImageTextConfig("conse", "efficientnet_lite2", image_size=128, text_encoder="mpnet")
REFERENCE_RATER = "ImageNet class (automatic)"
FINAL_LAYER = "classifier"


def demo_config(probe_dir: Path, concepts: str, dtype: str = "float32") -> DissectConfig:
    return DissectConfig(
        target=TargetConfig("efficientnet_lite0"),
        layers=DEMO_LAYERS,
        probe=ProbeConfig((str(probe_dir),)),
        concepts=ConceptConfig(concepts),
        image_text=LABELLING_MODEL,
        similarity=SimilarityConfig("soft_wpmi"),
        dtype=dtype,
    )


def _meta_key(size: str) -> str:
    return f"demo:{size}:v{DEMO_VERSION}"


def demo_runs(store: Store, size: str = "full") -> list[str] | None:
    """The demo's run ids if the store holds a complete demo of this size, else None."""
    value = store.get_meta(_meta_key(size))
    if not value:
        return None
    ids = json.loads(value)
    runs = store.runs()
    done = set(runs[runs["status"] == "complete"]["run_id"])
    return ids if set(ids) <= done else None


def reference_verdicts(store: Store, run_id: str, layer: str = FINAL_LAYER) -> pd.DataFrame:
    """Yes where the label names the neuron's ImageNet class (exact name or a WordNet synonym)."""
    neurons = store.neurons(run_id, layer)
    synonyms = imagenet_synonyms()
    verdict = [str(label).lower() in synonyms[int(u)] for u, label in zip(neurons["unit"], neurons["label"])]
    return neurons.assign(verdict=verdict, rater=REFERENCE_RATER)[["layer", "unit", "rater", "verdict"]]


def add_sibling_sources(store: Store, run_ids: list[str], progress: bool = True, cache_dir=None) -> None:
    """Each demo run gets the other demo runs' labels as label sources (same network, probe and units;
    other concept sets), judged by its own evaluators (a run without a complete evaluation gets them
    unjudged), for the Labellers page. Runs that have them already are left alone (a store built
    before this step gets them on the next start)."""

    for run_id in run_ids:
        have = set(store.label_sources(run_id)["origin"])
        todo = [o for o in run_ids if o != run_id and o not in have]
        for other in todo:
            if progress:
                print(f"label source for {run_id}: the labels of demo run {other}", file=sys.stderr)
            sid = add_source(store, run_id, "run", other)
            # warnings are shown, as in the rest of the build (a shared text encoder would be said here too)
            if len(complete_evaluations(store, run_id)):
                evaluate_source(store, run_id, sid, progress=progress, cache_dir=cache_dir)


ACCURACY_CAVEAT = (
    "not comparable with the paper's 95.5%: that is CLIP ViT-B/16 labelling ResNet-50 on ImageNet "
    "val; here the ConSE stand-in, itself an ImageNet classifier that sees images through the same "
    "1,000 class names, labels EfficientNet-Lite0 on the demo probe"
)


def calibrate_stand_in(store: Store, run_ids: list[str], layer: str = FINAL_LAYER) -> dict:
    """Default thresholds of the demo's evaluator model (not CLIP), fitted against the reference rater on
    `layer` of every demo run pooled, over repeated random half splits; stored under the model's
    fingerprint, so that every run it judged starts from them (judges.defaults)."""

    frames: dict[str, list] = {e: [] for e in CALIBRATED}
    info = None
    used = []
    for run_id in run_ids:
        view = RunView(store, run_id)
        ref = view.humans.get(REFERENCE_RATER)
        if ref is None:
            continue
        used.append(view.run_id)
        for e in CALIBRATED:
            if e not in view.available:
                continue
            t = view.table(e)
            info = info or view.evaluators[e].models.get("image_text")
            score = t.neuron_scores("real")
            if e == "cp":  # rank / |S|: comparable across concept sets (see calibrate_splits)
                score = score / t.n_concepts
            f = t.neurons.assign(score=score).merge(ref, on=["layer", "unit"])
            frames[e].append(f[f["layer"] == layer])
    if info is None:
        return {}
    results = {}
    for e, parts in frames.items():
        if parts:
            f = pd.concat(parts, ignore_index=True)
            results[e] = calibrate_splits(f["score"].to_numpy(), f["verdict"].to_numpy().astype(bool), e)
    save_calibration(
        store,
        info,
        results,
        REFERENCE_RATER,
        f"the final layer ({layer}) of the {len(run_ids)} demo runs pooled",
        runs=used,
    )
    return results


def build_demo(
    db: str | Path = DEFAULT_DB,
    size: str = "full",
    progress: bool = True,
    device="cpu",
    dtype: str = "float32",
    status: bool = False,
) -> list[str]:
    """Build the demo runs into `db` unless they are already there (the ones present are kept whatever
    device and dtype made them); returns their run ids. Models run on `device` in `dtype`. With `status`,
    the stage and progress bars also go to the store's build status file, which the app shows."""
    if not status:
        return _build_demo(db, size, progress, device, dtype)

    running = prog.read(db)
    if running and running["alive"] and running["state"] == "running" and running["pid"] != os.getpid():
        raise ClipevalError(
            f"another demo build (process {running['pid']}) is writing {db}; wait for it, or stop it first"
        )
    with prog.reporting_to(prog.BuildStatus(prog.status_path(db), f"the offline demo ({size})")):
        return _build_demo(db, size, progress, device, dtype)


def start_in_background(db: str | Path, size: str, device: str, dtype: str) -> str:
    """Start `clipeval demo` as a detached process writing the store's build status file and log, unless
    the demo is complete or a build is already running; returns what happened, in a sentence."""
    import subprocess

    running = prog.read(db)
    if running and running["alive"] and running["state"] == "running":
        return f"a demo build is already running (process {running['pid']}); the app's Overview shows its progress"
    if Path(db).exists():
        store = Store(db)
        try:
            ready = demo_runs(store, size)
        finally:
            store.close()
        if ready:
            return f"demo runs present in {db}: {', '.join(ready)}"
    log = prog.log_path(db)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "clipeval",
        "--db",
        str(db),
        "demo",
        "--size",
        size,
        "--device",
        device,
        "--dtype",
        dtype,
        "--status",
    ]
    with open(log, "w") as out:
        # a session of its own: Ctrl-C on the app (or the app's exit) does not kill a half-done build
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    return (
        f"building the offline demo in the background (process {proc.pid}): the app serves now, its "
        f"Overview shows the build's progress and each run as it completes; log: {log}"
    )


def _build_demo(db, size: str, progress: bool, device, dtype: str) -> list[str]:
    from clipeval.demo.probe import build_demo_probe, describe_sources
    from clipeval.dissect import pipeline
    from clipeval.evaluators.run import evaluate

    store = Store(db)
    try:
        ready = demo_runs(store, size)
        if ready:
            if progress:
                print(f"demo runs present in {store.path}: {', '.join(ready)}", file=sys.stderr)
            add_sibling_sources(store, ready, progress)
            return ready
        start = time.perf_counter()
        if progress:
            print(
                f"building the offline demo ({size}) into {store.path}"
                + (f" ({MEASURED_BUILD[size][1]})" if size in MEASURED_BUILD else "")
                + "; each step shows a progress bar with its own time left. Later starts reuse it.",
                file=sys.stderr,
            )
        prog.plan(3 + len(DEMO_CONCEPTS), *MEASURED_BUILD.get(size, (None, "")))
        stage("probe images: generating and collecting the demo's probe set")
        probe_dir = build_demo_probe(store.path.parent / "probe" / f"demo-{size}", size=size, progress=progress)
        if progress:
            counts = pd.DataFrame(describe_sources(probe_dir)).groupby("source")["count"].sum()
            print("probe images per source: " + ", ".join(f"{s} {n}" for s, n in counts.items()), file=sys.stderr)
        run_ids = []
        for i, concepts in enumerate(DEMO_CONCEPTS, 1):
            stage(f"demo run {i} of {len(DEMO_CONCEPTS)}: concept set {concepts}")
            if progress:
                print(
                    f"\n== demo run {i}/{len(DEMO_CONCEPTS)}: concepts {concepts} "
                    f"({time.perf_counter() - start:.0f} s so far)",
                    file=sys.stderr,
                )
            # warnings are shown, not silenced: they are what a user of the same commands would see
            # force: a store with an older demo version gets its runs recomputed with what this version
            # stores (same run ids, e.g. activation maps since version 3; the arrays cached on disk are reused)
            run_id = pipeline.dissect(
                demo_config(probe_dir, concepts, dtype),
                store,
                progress=progress,
                force=True,
                name=f"demo: EfficientNet-Lite0 | demo probe ({size}) | {concepts}",
                device=device,
            )
            outcomes = evaluate(
                store,
                run_id,
                "cp,es,contrast,vqa",
                eval_model=EVAL_MODEL,
                progress=progress,
                device=device,
                dtype=dtype,
            )
            if progress:
                for o in outcomes:
                    note = "BLIP-2 weights are not on this machine (see the app)" if o.status == "unavailable" else ""
                    print(f"   {o.evaluator:<9} {o.status:<12} {o.wall_s:7.1f} s  {note}", file=sys.stderr)
            ref = reference_verdicts(store, run_id)
            if store.human_verdicts(run_id, REFERENCE_RATER).empty:
                store.add_human_verdicts(run_id, ref, source="auto: label names the ImageNet class (WordNet)")
            run_ids.append(run_id)
        stage("labellers side by side: each demo run judges the others' labels")
        add_sibling_sources(store, run_ids, progress)
        stage("calibrating the stand-in evaluator's thresholds")
        results = calibrate_stand_in(store, run_ids)
        store.set_meta(_meta_key(size), json.dumps(run_ids))
        if progress:
            for r in results.values():
                lo, hi = r["interval"]
                klo, khi = r["heldout_kappa_interval"]
                print(
                    f"calibrated {r['evaluator']}: {r['param']} = {r['value']:.4g} [{lo:.4g}, {hi:.4g}], held-out kappa "
                    f"{r['heldout_kappa']:.3f} [{klo:.3f}, {khi:.3f}] ({r['n_splits']} splits of {r['n_neurons']} "
                    f"neurons, {r['n_yes']} 'yes' by the reference)",
                    file=sys.stderr,
                )
            acc = imagenet_label_accuracy(store, run_ids[DEMO_CONCEPTS.index("imagenet")], FINAL_LAYER)
            print(
                f"\ndemo ready in {time.perf_counter() - start:.0f} s. Final-layer label accuracy with ImageNet "
                f"class names: top-1 {acc.get('top1', float('nan')):.1%}, top-5 {acc.get('top5', float('nan')):.1%} "
                f"({ACCURACY_CAVEAT})",
                file=sys.stderr,
            )
        return run_ids
    finally:
        store.close()
