"""Run evaluators over a complete CLIP-Dissect run and store their raw scores.

Each evaluator pass is keyed by a hash of the run, its settings and its model's fingerprint: an
unchanged pass is not recomputed, a changed one is stored beside the old, and the app shows the
newest. Scores and the 'complete' flag are written in one transaction.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from clipeval.compute.batches import place_image_text
from clipeval.compute.device import CPU, Placement, dtype_name
from clipeval.compute.engine import LOCAL, Engine, ray_scope
from clipeval.compute.ray_map import VqaWork, weights_unavailable_message
from clipeval.config import EvalConfig, ImageTextConfig, stable_hash
from clipeval.dissect.pipeline import ArrayCache, compute_info
from clipeval.errors import ClipevalError, WeightsUnavailable
from clipeval.evaluators import judges
from clipeval.evaluators.base import EvalInputs, label_variants
from clipeval.evaluators.contrast import Contrast
from clipeval.evaluators.cp import ConceptProportion
from clipeval.evaluators.es import EmbeddingSimilarity
from clipeval.evaluators.vqa import IMAGE_SIZE as VQA_IMAGE_SIZE
from clipeval.evaluators.vqa import VisualQuestionAnswering
from clipeval.models.image_text import load_image_text
from clipeval.models.vqa import DEFAULT_MODEL as DEFAULT_VQA_MODEL
from clipeval.models.vqa import DEFAULT_TEMPLATE, Blip2Vqa, format_prompt, vqa_identity
from clipeval.store import Store

EVALUATORS = ("cp", "es", "vqa", "contrast")
EMBEDDING_EVALUATORS = {"cp": ConceptProportion, "es": EmbeddingSimilarity, "contrast": Contrast}
# The paper's evaluator model, and the offline stand-in used when its weights are not here.
PAPER_EVAL_MODEL = ImageTextConfig("open_clip", "ViT-B-32", "laion2b_s34b_b79k", image_size=128)
# Its classifier (EfficientNet-Lite2) and sentence encoder (all-mpnet-base-v2) both differ from the default
# labeller's (Lite1, all-MiniLM-L6-v2); the classifier family and the ImageNet label space are still shared.
OFFLINE_EVAL_MODEL = ImageTextConfig("conse", "efficientnet_lite2", image_size=128, text_encoder="mpnet")


def parse_evaluators(text: str | list[str]) -> list[str]:
    names = [n.strip().lower() for n in (text.split(",") if isinstance(text, str) else text) if n.strip()]
    unknown = [n for n in names if n not in EVALUATORS]
    if unknown or not names:
        raise ClipevalError(f"unknown evaluator(s) {unknown or names}; choose from {', '.join(EVALUATORS)}")
    return list(dict.fromkeys(names))


@dataclass
class Outcome:
    evaluator: str
    status: str  # complete | cached | unavailable
    eval_id: str
    wall_s: float = 0.0
    message: str = ""


def load_inputs(
    store: Store, run_id: str, kinds, seed: int, baselines: bool, constant_label: str, k: int
) -> tuple[EvalInputs, str]:
    run = store.complete_run(run_id)
    neurons = store.neurons(run["run_id"])
    if neurons.empty:
        raise ClipevalError(f"run {run['run_id']} has no neurons")
    neurons = neurons[~neurons["dead"].astype(bool)]  # dead units have no label and no images to judge
    if neurons.empty:
        raise ClipevalError(f"every neuron of run {run['run_id']} is dead (constant over the probe)")
    images = store.neuron_images(run["run_id"], kinds=kinds)
    top = images[images["kind"] == "top"]
    if top.empty:
        raise ClipevalError(
            f"run {run['run_id']} has no top-k images (labels imported without activations): "
            "import it again with --target and --probe so the images can be judged"
        )
    stored_k = int(top["rank"].max())
    if not 1 <= k <= stored_k:
        raise ClipevalError(f"k={k} is outside 1..{stored_k}, the top-k images stored for run {run['run_id']}")
    images = images[(images["kind"] != "top") | (images["rank"] <= k)]
    variants, constant = label_variants(neurons, seed, constant_label, baselines)
    paths = store.probe_images(run["probe_fingerprint"]).set_index("image_id")["path"].to_dict()
    concepts = store.concepts(run["concept_hash"]) if run.get("concept_hash") else None
    return EvalInputs(
        run["run_id"], run["probe_fingerprint"], int(run["n_images"]), variants, images, paths, concepts
    ), constant


def resolve_eval_model(cfg: ImageTextConfig | None, progress: bool = True, placement: Placement = CPU):
    """The requested image-text model, or the paper's default if its weights are here, else the
    offline stand-in (and say so: a run must never pass a stand-in off as CLIP), on `placement`."""

    if cfg is not None:
        return cfg, load_image_text(cfg, placement)
    try:
        return PAPER_EVAL_MODEL, load_image_text(PAPER_EVAL_MODEL, placement)
    except WeightsUnavailable as e:
        if progress:
            print(
                f"note: {e}\n      -> evaluating with the offline stand-in {OFFLINE_EVAL_MODEL.describe()}",
                file=sys.stderr,
            )
        return OFFLINE_EVAL_MODEL, load_image_text(OFFLINE_EVAL_MODEL, placement)


def evaluate(
    store: Store,
    run_id: str,
    evaluators,
    *,
    eval_model: ImageTextConfig | None = None,
    vqa_model: str = DEFAULT_VQA_MODEL,
    prompt: str = DEFAULT_TEMPLATE,
    k: int = 5,
    baselines: bool = True,
    constant_label: str = "",
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
    cache_dir=None,
    vqa_backend=None,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype | None = "auto",
    batch_size: int | None = None,
    num_workers: int | None = None,
    engine: Engine = LOCAL,
) -> list[Outcome]:
    """Score the run's top-k images with each evaluator (plus shuffled/constant-label baselines), every
    model on `device` in `dtype` ('auto': float32 on the CPU, bfloat16/float16 on a GPU); batch size and
    decoding workers default per device. `vqa_backend` may be a ready Blip2Vqa (tests pass a small one).
    With a Ray `engine` the image work (embeddings, P(yes)) runs on its workers in `dtype`; text
    embeddings, rules and the store stay here. Ray starts only if some evaluator is not cached."""
    with ray_scope(engine):
        return _evaluate(
            store,
            run_id,
            evaluators,
            eval_model=eval_model,
            vqa_model=vqa_model,
            prompt=prompt,
            k=k,
            baselines=baselines,
            constant_label=constant_label,
            seed=seed,
            force=force,
            progress=progress,
            cache_dir=cache_dir,
            vqa_backend=vqa_backend,
            device=device,
            dtype=dtype,
            batch_size=batch_size,
            num_workers=num_workers,
            engine=engine,
        )


def _evaluate(
    store,
    run_id,
    evaluators,
    *,
    eval_model,
    vqa_model,
    prompt,
    k,
    baselines,
    constant_label,
    seed,
    force,
    progress,
    cache_dir,
    vqa_backend,
    device,
    dtype,
    batch_size,
    num_workers,
    engine,
) -> list[Outcome]:
    placement = Placement.resolve(device, dtype)
    names = parse_evaluators(evaluators)
    run = store.complete_run(run_id)
    run_id = run["run_id"]
    cache = ArrayCache(cache_dir or store.path.parent / "cache")
    kinds = ("top", "low", "random") if "contrast" in names else ("top",)
    inputs, constant = load_inputs(store, run_id, kinds, seed, baselines, constant_label, k)
    # cheap checks of every requested evaluator first: nothing is loaded, run or recorded if one fails
    if "cp" in names:
        ConceptProportion.check(inputs)
    if "vqa" in names:
        format_prompt(prompt, "x")
    model_cfg, model = (None, None)
    if any(n in EMBEDDING_EVALUATORS for n in names):
        model_cfg, model = resolve_eval_model(eval_model, progress)
        place_image_text(model, placement)
        labelling = json.loads(run.get("config_json") or "{}").get("image_text") or {}
        if [labelling.get(f) for f in ("backend", "arch", "pretrained", "text_encoder")] == [
            model_cfg.backend,
            model_cfg.arch,
            model_cfg.pretrained,
            model_cfg.text_encoder,
        ]:
            warnings.warn("the evaluator model is the labelling model itself: the judgement is circular", stacklevel=2)
        else:
            labeller_info = json.loads(run.get("models_json") or "{}").get("image_text") or {}
            shared = judges.shared_components(labeller_info, model.info())
            if any(s.startswith("text encoder") for s in shared):
                warnings.warn(
                    f"the evaluator model {model_cfg.describe()} shares the labeller's text encoder: "
                    "CP and ES then judge labels in the labeller's own text space; "
                    + judges.shared_note(labeller_info, model.info()),
                    stacklevel=2,
                )
    if vqa_backend is not None:  # record the model that answers, not a default name that was never loaded
        vqa_model = getattr(vqa_backend, "name", "") or vqa_model
    run_kw = dict(batch_size=batch_size, num_workers=num_workers, engine=engine)
    outcomes = []
    for name in names:
        cfg = EvalConfig(
            evaluator=name,
            image_text=model_cfg if name in EMBEDDING_EVALUATORS else None,
            vqa_model=vqa_model if name == "vqa" else "",
            prompt=prompt if name == "vqa" else "",
            k=k,
            baselines=baselines,
            constant_label=constant,
            seed=seed,
            dtype=_vqa_dtype(vqa_backend, placement) if name == "vqa" else placement.dtype_name,
        )
        if name == "vqa":
            outcomes.append(_run_vqa(store, run_id, cfg, inputs, vqa_backend, force, progress, placement, run_kw))
            continue
        info = model.info()
        eval_id = stable_hash("evaluation", run_id, cfg, info.get("fingerprint", ""))
        if store.evaluation_status(eval_id) == "complete" and not force:
            outcomes.append(Outcome(name, "cached", eval_id, message="already computed with these settings"))
            continue
        model_key = stable_hash(model_cfg, info.get("fingerprint", ""), placement.dtype_name)
        start = time.perf_counter()
        with _recorded(store, eval_id, run_id, name, cfg):
            scores = EMBEDDING_EVALUATORS[name](model, model_key, cache, **run_kw).score(inputs, progress)
        wall = time.perf_counter() - start
        store.record_evaluation(
            eval_id,
            run_id,
            name,
            _cfg_json(cfg),
            status="complete",
            scores=scores,
            wall_s=wall,
            models={"image_text": info, "compute": compute_info(placement, engine)},
            n_concepts=len(inputs.concepts) if inputs.concepts else None,
            constant_label=constant,
        )
        outcomes.append(Outcome(name, "complete", eval_id, wall))
    return outcomes


def _vqa_dtype(backend, placement: Placement) -> str:
    """The dtype the VQA model answers in: a ready backend's own, else the command's."""
    if backend is None:
        return placement.dtype_name
    return dtype_name(backend.model.language_model.dtype)


def _run_vqa(
    store, run_id, cfg, inputs, backend, force, progress, placement: Placement = CPU, run_kw: dict | None = None
) -> Outcome:

    # keyed by the weights (files, or the in-memory model's hash) and dtype too, not the name alone:
    # a replaced local BLIP-2 folder must not reuse the old model's scores
    eval_id = stable_hash(
        "evaluation", run_id, cfg, vqa_identity(cfg.vqa_model, backend, placement.dtype, placement.device)
    )
    if store.evaluation_status(eval_id) == "complete" and not force:
        return Outcome("vqa", "cached", eval_id, message="already computed with these settings")
    engine = (run_kw or {}).get("engine") or LOCAL
    if engine.is_ray:
        return _run_vqa_on_ray(store, run_id, cfg, eval_id, inputs, backend, progress, run_kw)
    try:
        backend = backend or Blip2Vqa.load(cfg.vqa_model, device=placement.device, dtype=placement.dtype)
    except WeightsUnavailable as e:
        return _vqa_unavailable(store, run_id, cfg, eval_id, str(e))
    start = time.perf_counter()
    with _recorded(store, eval_id, run_id, "vqa", cfg):
        scores = VisualQuestionAnswering(backend, cfg.prompt, **(run_kw or {})).score(inputs, progress)
    wall = time.perf_counter() - start
    compute = {"device": str(backend.device), "dtype": cfg.dtype}
    store.record_evaluation(
        eval_id,
        run_id,
        "vqa",
        _cfg_json(cfg),
        status="complete",
        scores=scores,
        wall_s=wall,
        models={"vqa": backend.info(), "compute": compute},
        constant_label=cfg.constant_label,
    )
    return Outcome("vqa", "complete", eval_id, wall)


def _vqa_unavailable(store, run_id, cfg, eval_id, message: str) -> Outcome:
    store.record_evaluation(
        eval_id, run_id, "vqa", _cfg_json(cfg), status="unavailable", error=message, constant_label=cfg.constant_label
    )
    return Outcome("vqa", "unavailable", eval_id, message=message)


def _run_vqa_on_ray(store, run_id, cfg, eval_id, inputs, backend, progress, run_kw) -> Outcome:
    """VQA on Ray workers, each loading BLIP-2 from its own disk (this process never loads it). Weights
    missing on a worker make the evaluator unavailable, with the worker's message, as they do locally."""

    engine = run_kw["engine"]
    work = VqaWork(cfg.vqa_model, VQA_IMAGE_SIZE, run_kw.get("batch_size"), cfg.dtype, backend=backend)
    start = time.perf_counter()
    vqa = VisualQuestionAnswering(None, cfg.prompt, engine=engine, ray_work=work)
    try:
        with _recorded(store, eval_id, run_id, "vqa", cfg):
            scores = vqa.score(inputs, progress)
    except Exception as e:
        message = weights_unavailable_message(e)
        if message is None:
            raise
        return _vqa_unavailable(store, run_id, cfg, eval_id, message)
    wall = time.perf_counter() - start
    compute = {"device": vqa.model_info.get("device", ""), "dtype": cfg.dtype, "engine": engine.describe()}
    store.record_evaluation(
        eval_id,
        run_id,
        "vqa",
        _cfg_json(cfg),
        status="complete",
        scores=scores,
        wall_s=wall,
        models={"vqa": vqa.model_info, "compute": compute},
        constant_label=cfg.constant_label,
    )
    return Outcome("vqa", "complete", eval_id, wall)


@contextmanager
def _recorded(store: Store, eval_id: str, run_id: str, name: str, cfg: EvalConfig):
    """Around an evaluator's computation: a 'running' row with this process's id before it (so a kill
    shows as 'interrupted', not absent), 'failed' / 'interrupted' if it raises. A complete earlier
    result of the same evaluation stays until record_evaluation swaps the new one in."""
    with running_row(
        lambda: store.start_evaluation(eval_id, run_id, name, _cfg_json(cfg), cfg.constant_label),
        lambda status, error: store.fail_evaluation(eval_id, status, error),
    ):
        yield


@contextmanager
def running_row(start, fail):
    """`start()` writes a 'running' row and says whether it did; if the body raises, `fail(status,
    error)` marks that row 'interrupted' (Ctrl-C) or 'failed' (an exception) and the error goes on."""
    started = start()
    try:
        yield
    except KeyboardInterrupt:
        if started:
            fail("interrupted", "interrupted by the user")
        raise
    except Exception as e:
        if started:
            fail("failed", f"{type(e).__name__}: {e}")
        raise


def _cfg_json(cfg: EvalConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True)
