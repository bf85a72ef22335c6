"""What the neuron explorer and the annotation page show about one neuron: its images with each
evaluator's raw score and per-image verdict, and its neuron-level verdicts beside the baselines.
Only stored raw scores are read; thresholds are applied with clipeval.evaluators.rules."""

from __future__ import annotations

import numpy as np
import pandas as pd

from clipeval.analysis.runview import RunView
from clipeval.evaluators import thresholds
from clipeval.evaluators.rules import VARIANTS, image_matches
from clipeval.ui import data
from clipeval.ui.widgets import EVALUATOR_ORDER, Context, title

RAW_NAMES = {"cp": "rank", "es": "cos", "vqa": "P(yes)", "contrast": "cos"}


def neuron_position(view: RunView, layer: str, unit: int) -> int | None:
    hit = np.flatnonzero((view.neurons["layer"].to_numpy() == layer) & (view.neurons["unit"].to_numpy() == unit))
    return int(hit[0]) if len(hit) else None


def effective_k(view: RunView, evaluator: str, k: int) -> int:
    return max(1, min(int(k), view.table(evaluator).kmax))


def image_table(ctx: Context, view: RunView, layer: str, unit: int) -> pd.DataFrame:
    """The neuron's images (kinds top / level / low / random) with, per available evaluator, the raw
    score for the real label (`<e> raw`) and the per-image verdict at the current threshold
    (`<e> match`). Contrast images are judged with the ES rule at the ES tau (per-image display only:
    the contrast neuron verdict is the AUC rule)."""
    images = data.neuron_images(ctx.run_id, layer, unit).copy()
    images["counted"] = (images["kind"] == "top") & (images["rank"] <= ctx.k)
    for e in view.available:
        state = view.evaluators[e]
        scores = data.eval_scores(ctx.run_id, state.eval_id, layer, unit)
        real = scores[scores["variant"] == "real"][["kind", "rank", "image_id", "raw"]]
        images = images.merge(real.rename(columns={"raw": f"{e} raw"}), on=["kind", "rank", "image_id"], how="left")
        threshold = ctx.thresholds["es" if e == "contrast" else e]
        rule_e = "es" if e == "contrast" else e
        raw = images[f"{e} raw"].to_numpy(float)
        match = image_matches(rule_e, raw, threshold, state.table.n_concepts)
        images[f"{e} match"] = np.where(np.isnan(raw), None, match)
    return images


def _score_text(evaluator: str, score) -> str:
    if score is None or pd.isna(score):
        return "no score"
    if evaluator == "cp":
        return f"rank {int(score)}"
    return f"{'AUC' if evaluator == 'contrast' else RAW_NAMES[evaluator]} {float(score):.3f}"


def _mark(verdict: bool) -> str:
    return "✓ correct" if verdict else "✗ not correct"


def verdict_table(ctx: Context, view: RunView, layer: str, unit: int) -> pd.DataFrame:
    """One row per evaluator: the neuron's score from its top-k images, the threshold, and the verdict
    for the real label and for the shuffled and constant baseline labels; one row per human rater."""
    pos = neuron_position(view, layer, unit)
    rows = []
    for e in EVALUATOR_ORDER:
        state = view.evaluators[e]
        if state.table is None:
            rows.append({"rater": title(e), "verdict": state.status, "score": "", "threshold": ""})
            continue
        t = state.table
        k = effective_k(view, e, ctx.k)
        row = {"rater": title(e), "threshold": thresholds.label(e, ctx.thresholds[e])}
        for v in VARIANTS:
            if v not in t.variants:
                continue
            # this neuron's score alone: a verdict frame of the whole run (100k rows) per evaluator and variant
            # made each Next slow
            score = t.neuron_scores(v, k)[pos]
            verdict = bool(t.compare(score, t.rule.check(ctx.thresholds[e])))
            if v == "real":
                row["score"] = _score_text(e, score)
                row["verdict"] = _mark(verdict)
            else:
                row[f"{v} label"] = f"{'✓' if verdict else '✗'} {t.labels[v][pos]} ({_score_text(e, score)})"
        rows.append(row)
    for rater, frame in view.humans.items():
        hit = frame[(frame["layer"] == layer) & (frame["unit"] == unit)]
        rows.append(
            {
                "rater": view.rater_label(rater),
                "score": "",
                "threshold": "",
                "verdict": _mark(bool(hit["verdict"].iloc[0])) if len(hit) else "not judged",
            }
        )
    cols = ["rater", "verdict", "score", "threshold", "shuffled label", "constant label"]
    return pd.DataFrame(rows).reindex(columns=cols).fillna("")


def image_lines(row: pd.Series, shown: list[str]) -> list[str]:
    """Caption lines under one image: each shown evaluator's raw score and per-image verdict."""
    lines = []
    for e in shown:
        col = f"{e} raw"
        if col not in row or pd.isna(row[col]):
            continue
        raw = row[col]
        value = f"{int(raw)}" if e == "cp" else f"{raw:.3f}"
        mark = ":green[match]" if row[f"{e} match"] else ":red[no match]"
        lines.append(f"{title(e)} {RAW_NAMES[e]} {value} {mark}")
    return lines


def verdict_summary(verdicts: pd.DataFrame) -> str:
    """One line of the verdict table for under the label: 'Verdicts: CP ✓ (rank 3, p = 0.010) · ES ✗ (cos 0.612,
    tau = 0.800) · alice ✓'; a judge that did not score the run is left out (the details below say why)."""
    parts = []
    for r in verdicts.itertuples():
        if r.verdict.startswith("✓") or r.verdict.startswith("✗"):
            detail = ", ".join(x for x in (r.score, r.threshold) if x)
            parts.append(f"{r.rater} {r.verdict[0]}" + (f" ({detail})" if detail else ""))
        elif r.verdict == "not judged":
            parts.append(f"{r.rater}: not judged")
    return "**Verdicts:** " + (" · ".join(parts) if parts else "none shown")
