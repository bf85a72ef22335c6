"""Agreement between raters (humans or evaluators) over the same neurons.

Every function takes equal-length sequences of 0/1 or booleans. The paper's "IoU" is plain
agreement (share of neurons with equal verdicts); the Jaccard index of the two "yes" sets is
reported separately under its own name.

Undefined values are NaN, never a made-up number: Jaccard when neither rater says yes, Cohen's
kappa when chance agreement is 1 (both raters constant and equal, e.g. both all-yes), precision
when the evaluator never says yes, recall when the reference never does.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from clipeval.errors import ClipevalError


def paired(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.ndim != 1:
        raise ClipevalError(f"raters must give one verdict per neuron for the same neurons: {a.shape} vs {b.shape}")
    for x in (a, b):
        if x.size and not np.isin(x, (0, 1)).all():
            raise ClipevalError("verdicts must be 0/1 or booleans")
    return a.astype(bool), b.astype(bool)


def agreement(a, b) -> float:
    """Share of neurons on which the two verdicts are equal (what the paper calls IoU)."""
    a, b = paired(a, b)
    return float((a == b).mean()) if a.size else float("nan")


def jaccard(a, b) -> float:
    """|yes(a) & yes(b)| / |yes(a) | yes(b)|; NaN when neither says yes."""
    a, b = paired(a, b)
    union = (a | b).sum()
    return float((a & b).sum() / union) if union else float("nan")


def cohen_kappa(a, b) -> float:
    """(Po - Pe) / (1 - Pe), Pe from the two raters' marginal yes-rates; NaN when Pe = 1."""
    a, b = paired(a, b)
    if not a.size:
        return float("nan")
    po = (a == b).mean()
    pa, pb = a.mean(), b.mean()
    pe = pa * pb + (1 - pa) * (1 - pb)
    return float((po - pe) / (1 - pe)) if pe < 1 else float("nan")


def precision_recall_f1(pred, reference) -> dict[str, float]:
    """Of an evaluator against a reference rater (e.g. a human)."""
    p, r = paired(pred, reference)
    tp, fp, fn = (p & r).sum(), (p & ~r).sum(), (~p & r).sum()
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else float("nan")
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def confusion(pred, reference) -> pd.DataFrame:
    p, r = paired(pred, reference)
    # rows: the evaluator's verdict; columns: the reference's (so [yes, no] is [tp, fp], then [fn, tn])
    return pd.DataFrame(
        [[int((p & r).sum()), int((p & ~r).sum())], [int((~p & r).sum()), int((~p & ~r).sum())]],
        index=["evaluator yes", "evaluator no"],
        columns=["reference yes", "reference no"],
    )


def roc_auc(positive_scores, negative_scores) -> float:
    """P(score of a random positive > score of a random negative), ties count half."""
    pos, neg = np.asarray(positive_scores, float), np.asarray(negative_scores, float)
    pos, neg = pos[~np.isnan(pos)], neg[~np.isnan(neg)]
    if not pos.size or not neg.size:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def align(raters: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Verdict frames (layer, unit, verdict) -> one wide frame over the neurons ALL raters judged."""
    wide = None
    for name, df in raters.items():
        col = df[["layer", "unit", "verdict"]].rename(columns={"verdict": name})
        wide = col if wide is None else wide.merge(col, on=["layer", "unit"], how="inner")
    if wide is None:
        return pd.DataFrame(columns=["layer", "unit"])
    return wide.reset_index(drop=True)


def kappa_matrix(raters: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Pairwise Cohen's kappa, each pair over the neurons both raters judged."""
    names = list(raters)
    out = pd.DataFrame(np.nan, index=names, columns=names)
    for i, x in enumerate(names):
        for y in names[i:]:
            w = align({x: raters[x], y: raters[y]}) if x != y else align({x: raters[x]})
            k = cohen_kappa(w[x], w[y]) if x != y else 1.0
            out.loc[x, y] = out.loc[y, x] = k
    return out


def pairwise_table(a: pd.DataFrame, b: pd.DataFrame, by_layer: bool = True) -> pd.DataFrame:
    """Agreement, Jaccard, kappa of rater a against reference b, per layer and pooled ("overall" is
    over all neurons together, as the paper's, not the mean of the layers)."""
    w = align({"a": a, "b": b})
    rows = []
    groups = list(w.groupby("layer", sort=False)) if by_layer else []
    for layer, g in groups + [("overall", w)]:
        rows.append(
            {
                "layer": layer,
                "n": len(g),
                "agreement": agreement(g["a"], g["b"]),
                "jaccard": jaccard(g["a"], g["b"]),
                "kappa": cohen_kappa(g["a"], g["b"]),
                **precision_recall_f1(g["a"], g["b"]),
            }
        )
    return pd.DataFrame(rows)


def sweep_against(verdicts_by_threshold: np.ndarray, reference: np.ndarray) -> pd.DataFrame:
    """For a (thresholds x neurons) verdict matrix: share judged correct, agreement and kappa with
    the reference at each threshold (vectorised: a 50-value sweep over 4,000 neurons is one pass)."""
    v, ref = np.asarray(verdicts_by_threshold), np.asarray(reference)
    if v.ndim != 2 or ref.ndim != 1 or v.shape[1] != ref.shape[0]:
        raise ClipevalError(
            f"a sweep needs a (thresholds x neurons) verdict matrix and one reference verdict per "
            f"neuron: {v.shape} vs {ref.shape}"
        )
    for x in (v, ref):
        if x.size and not np.isin(x, (0, 1)).all():
            raise ClipevalError("verdicts must be 0/1 or booleans")
    v, ref = v.astype(bool), ref.astype(bool)[None, :]
    po = (v == ref).mean(1)
    pa, pb = v.mean(1), ref.mean()
    pe = pa * pb + (1 - pa) * (1 - pb)
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = np.where(pe < 1, (po - pe) / (1 - pe), np.nan)
    return pd.DataFrame({"share_correct": pa, "agreement": po, "kappa": kappa})


def calibrate(
    scores: np.ndarray,
    reference: np.ndarray,
    candidates: Sequence[float],
    verdict_fn,
    fit_fraction: float = 0.5,
    seed: int = 0,
) -> dict:
    """Pick the threshold that maximises kappa with the reference on a random `fit_fraction` of the
    neurons, and report agreement and kappa on the rest (held out).

    verdict_fn(scores, thresholds) -> (len(thresholds), n) boolean verdicts."""
    scores, reference = np.asarray(scores, float), np.asarray(reference)
    if scores.ndim != 1 or scores.shape != reference.shape:
        raise ClipevalError(f"calibration needs one score per reference verdict: {scores.shape} vs {reference.shape}")
    if reference.size and not np.isin(reference, (0, 1)).all():
        raise ClipevalError("verdicts must be 0/1 or booleans")
    reference = reference.astype(bool)
    n = len(reference)
    if n < 4:
        raise ClipevalError(f"calibration needs at least 4 neurons with a reference verdict, got {n}")
    if not 0 < fit_fraction < 1:
        raise ClipevalError(f"fit_fraction must be between 0 and 1, not {fit_fraction}")
    order = np.random.default_rng(seed).permutation(n)
    n_fit = max(2, min(n - 2, int(round(n * fit_fraction))))
    fit, test = order[:n_fit], order[n_fit:]
    if reference[fit].all() or not reference[fit].any():
        raise ClipevalError(
            f"calibration needs both yes and no verdicts among the {n_fit} fit neurons, and the rater "
            f"says {'yes' if reference[fit].all() else 'no'} to all of them (kappa is 0 or undefined at "
            "every threshold): judge more neurons, or try another seed"
        )
    candidates = np.asarray(sorted(set(float(c) for c in candidates)))
    fit_sweep = sweep_against(verdict_fn(scores[fit], candidates), reference[fit])
    kappa = fit_sweep["kappa"].fillna(-np.inf).to_numpy()
    best = int(np.argmax(kappa))
    threshold = float(candidates[best])
    held = verdict_fn(scores[test], np.array([threshold]))[0]
    return {
        "threshold": threshold,
        "n_fit": int(len(fit)),
        "n_test": int(len(test)),
        "fit_kappa": float(fit_sweep["kappa"].iloc[best]),
        "test_agreement": agreement(held, reference[test]),
        "test_kappa": cohen_kappa(held, reference[test]),
        "test_share_correct": float(held.mean()),
        # the held-out 2x2 table (tp, fp, fn, tn): what an interval of the held-out figures is drawn from
        "test_cells": [int(x) for x in confusion(held, reference[test]).to_numpy().ravel()],
    }


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% (z=1.96) Wilson score interval of a proportion; (nan, nan) for n = 0. Unlike the normal
    approximation it stays inside [0, 1] and is not zero-width at 0% or 100%."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))
