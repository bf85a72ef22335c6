"""What a judge's numbers depend on: its default thresholds, and what it shares with the labeller.

Thresholds belong to the judge's model. The paper's values (CP p = 0.01, ES tau = 0.25) are CLIP
ViT-B-32 numbers: an evaluator on OpenCLIP starts from them. Any other image-text backend (the ConSE
stand-in) has cosines and ranks on another scale, so its defaults are calibrated against a reference
rater (the demo: the automatic ImageNet-class rater of the final layer) and stored in the run store
under the backend's fingerprint, with the held-out kappa and intervals over repeated random splits.
A backend without a calibration falls back to the paper's values, and says so.

A judge that shares parts with the labeller (its text encoder, its classifier, its label space) grades
labels partly in the labeller's own terms; `shared_components` names those parts so that every page
and the report can say so beside the numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from clipeval.analysis import intervals, metrics
from clipeval.compute import progress
from clipeval.config import stable_hash
from clipeval.errors import ClipevalError
from clipeval.evaluators.rules import CP_TOLERANCE, RULES
from clipeval.formats import bracket

# The paper's thresholds (CLIP ViT-B-32 for CP/ES, BLIP-2 for VQA); contrast is ours (an AUC, model-free scale)
PAPER_THRESHOLDS = {"cp": 0.01, "es": 0.25, "vqa": 0.5, "contrast": 0.75}
CALIBRATED = ("cp", "es", "contrast")  # evaluators whose scale depends on the image-text model
N_SPLITS = 50
# the source of a stand-in's default while a build of its store is running: the demo calibrates its thresholds
# at the very end, so until then the paper's CLIP value stands in and every number made with it will change
PENDING = "provisional (calibration pending)"


@dataclass
class Default:
    evaluator: str
    value: float
    source: str  # 'paper' | 'calibrated' | 'paper (uncalibrated)' | PENDING
    note: str = ""


def backend_key(info: dict) -> str:
    """Store key of an image-text model's calibrated thresholds: its backend and weights' fingerprint."""
    return "thresholds:" + stable_hash(
        info.get("backend", ""), info.get("fingerprint", ""), info.get("description", "")
    )


def _interval(values) -> tuple[float, float]:
    v = np.asarray([x for x in values if x == x], float)
    return (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))) if v.size else (np.nan, np.nan)


def calibrate_splits(
    scores: np.ndarray,
    reference: np.ndarray,
    evaluator: str,
    n_splits: int = N_SPLITS,
    fit_fraction: float = 0.5,
    seed: int = 0,
) -> dict:
    """Fit the kappa-maximising threshold on a random half of the neurons and test it on the other half,
    `n_splits` times. CP scores must be rank / |S| (then 'rank <= int(|S| p)' is 'score <= p' exactly,
    whatever each run's concept-set size). Returns the median threshold, its 95% interval over the
    splits, and the held-out kappa (mean and 95% interval)."""
    rule = RULES[evaluator]
    keep = ~np.isnan(scores)
    scores, reference = np.asarray(scores, float)[keep], np.asarray(reference, bool)[keep]
    if rule.reduce == "min":
        verdict = lambda s, t: s[None, :] <= np.asarray(t, float)[:, None] + CP_TOLERANCE  # noqa: E731
        candidates = np.unique(np.concatenate([scores, np.linspace(0, 0.2, 201)]))
    else:
        verdict = lambda s, t: s[None, :] >= np.asarray(t, float)[:, None]  # noqa: E731
        candidates = np.unique(np.concatenate([scores, np.linspace(rule.lo, rule.hi, 201)]))
    candidates = candidates[(candidates >= rule.lo) & (candidates <= rule.hi)]
    fits = []
    for i in range(n_splits):
        try:
            fits.append(metrics.calibrate(scores, reference, candidates, verdict, fit_fraction, seed + i))
        except ClipevalError:
            continue  # a split whose fit half has only one verdict: no kappa to maximise
    if not fits:
        raise ClipevalError(f"cannot calibrate {evaluator}: the reference has one verdict only")
    thresholds = [f["threshold"] for f in fits]
    kappas = [f["test_kappa"] for f in fits]
    value = float(np.median(thresholds))
    if rule.reduce != "min":  # on the app's slider grid (CP's p is a free number input)
        value = float(np.clip(round(round(value / rule.step) * rule.step, 6), rule.lo, rule.hi))
    return {
        "evaluator": evaluator,
        "param": rule.param,
        "value": value,
        "interval": _interval(thresholds),
        "heldout_kappa": float(np.nanmean(kappas)),
        "heldout_kappa_interval": _interval(kappas),
        "n_splits": len(fits),
        "n_neurons": int(len(scores)),
        "n_yes": int(reference.sum()),
        "heldout_share_correct": float(np.mean([f["test_share_correct"] for f in fits])),
    }


def save_calibration(store, info: dict, results: dict, rater: str, where: str, runs=()) -> None:
    """Store a model's calibrated thresholds, fitted on `runs` (refused if one was removed meanwhile)."""
    store.set_meta(
        backend_key(info),
        json.dumps({"model": info.get("description", ""), "rater": rater, "where": where, "results": results}),
        runs=runs,
    )


def load_calibration(store, info: dict) -> dict | None:
    value = store.get_meta(backend_key(info)) if info else None
    return json.loads(value) if value else None


def calibration_pending(store) -> bool:
    """A build of this store (the offline demo, which calibrates its stand-in at its end) is running now."""
    state = progress.read(store.path)
    return bool(state and state["state"] == "running" and state["alive"])


def defaults(store, models: dict[str, dict]) -> dict[str, Default]:
    """Per evaluator the default threshold for the model that made its scores (models: evaluator ->
    its models_json, e.g. {'image_text': info}); every evaluator has one. An uncalibrated stand-in's default
    is PENDING while a build of the store runs (its calibration comes at the build's end)."""
    out = {}
    pending = None  # asked once, and only for a model without a calibration
    for e in RULES:
        info = (models.get(e) or {}).get("image_text") or {}
        paper = PAPER_THRESHOLDS[e]
        if e not in CALIBRATED or not info or info.get("is_clip"):
            out[e] = Default(e, paper, "paper")
            continue
        cal = load_calibration(store, info)
        res = (cal or {}).get("results", {}).get(e)
        if res:
            lo, hi = res["interval"]
            klo, khi = res["heldout_kappa_interval"]
            out[e] = Default(
                e,
                float(res["value"]),
                "calibrated",
                f"{RULES[e].param} = {res['value']:.4g} calibrated for {info.get('description', 'this model')} "
                f"against '{cal['rater']}' on {cal['where']} ({res['n_neurons']} neurons, "
                f"{res['n_splits']} random half splits): {RULES[e].param} 95% interval "
                f"{bracket(lo, hi, '.4g')}, held-out kappa {res['heldout_kappa']:.3f} {bracket(klo, khi, '.3f')}"
                + (
                    " - near chance: this default agrees with the reference hardly better than chance"
                    if intervals.near_chance(res["heldout_kappa"], klo)
                    else ""
                )
                + f"; the paper's CLIP value is {paper:g}",
            )
        else:
            pending = calibration_pending(store) if pending is None else pending
            if pending:
                out[e] = Default(
                    e,
                    paper,
                    PENDING,
                    f"calibration pending: {RULES[e].param} = {paper:g} is the paper's CLIP value, standing in until "
                    f"the build running now calibrates this model ({info.get('description', '?')}, not CLIP) at its "
                    "end; numbers made with it will change then",
                )
                continue
            out[e] = Default(
                e,
                paper,
                "paper (uncalibrated)",
                f"{RULES[e].param} = {paper:g} is the paper's CLIP value; this model "
                f"({info.get('description', '?')}) is not CLIP and has no calibrated threshold",
            )
    return out


def shared_components(labeller: dict, judge: dict) -> list[str]:
    """Parts of the labelling image-text model that the judge's model also uses (infos as recorded)."""
    if not labeller or not judge:
        return []
    same = []
    if labeller.get("backend") == judge.get("backend") and labeller.get("fingerprint") == judge.get("fingerprint"):
        return [f"the whole image-text model ({judge.get('description', '?')}): the judgement is circular"]
    if labeller.get("text_fingerprint") and labeller.get("text_fingerprint") == judge.get("text_fingerprint"):
        name = judge.get("text_encoder_name") or judge.get("arch") or "the same"
        same.append(f"text encoder ({name}): labels are judged (CP: ranked) in the labeller's own text space")
    if labeller.get("backend") == judge.get("backend") == "conse":
        if labeller.get("classifier") == judge.get("classifier"):
            same.append(f"image classifier ({judge.get('classifier')})")
        else:
            fam = [str(x.get("classifier", "")).rstrip("0123456789") for x in (labeller, judge)]
            if fam[0] and fam[0] == fam[1]:
                same.append(
                    f"classifier family ({fam[0].rstrip('_')}*, ImageNet-trained: "
                    f"{labeller.get('classifier')} labels, {judge.get('classifier')} judges)"
                )
        same.append("label space (both see an image only through its ImageNet-1k class names)")
    return same


def shared_note(labeller: dict, judge: dict) -> str:
    parts = shared_components(labeller, judge)
    return ("shared with the labeller: " + "; ".join(parts)) if parts else ""
