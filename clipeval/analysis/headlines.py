"""Shares judged correct as a collaborator should read them: never alone, always beside the same
evaluator's share on wrong labels (shuffled across neurons, one constant label) and with a warning
where the real labels barely beat a baseline. Pages and the CLI show these; nothing here runs a model.

A share without its baselines misleads: the demo's ES passes 97.6% of real labels at the paper's tau,
but also 90.1% of shuffled and 99.0% of constant labels, so the 97.6% says almost nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from clipeval.analysis.runview import EVALUATOR_TITLES
from clipeval.formats import percent

BASELINES = ("shuffled", "constant")


# An evaluator is flagged when a baseline (labels shuffled across neurons, or one label for all) passes
# at least this fraction as often as the real labels. Relative, not in percentage points: a calibrated
# strict threshold passes 3.5% of real labels and 0.1% of shuffled ones (35x, a sharp judge), while the
# paper's ES tau on another embedding model passes 97.6% against 99.0% (a judge that tells nothing).
WEAK_RATIO = 0.5


def barely_beats(real: float, baseline: float, ratio: float = WEAK_RATIO) -> bool:
    """True when a baseline's share judged correct is at least `ratio` times the real labels' share."""
    return baseline >= ratio * real


def weak_evaluators(summary: pd.DataFrame, ratio: float = WEAK_RATIO) -> list[dict]:
    """Evaluators whose pooled share judged correct for real labels a baseline comes close to (see
    barely_beats; from RunView.layer_summary): at these thresholds they barely tell a run's labels
    from wrong ones, e.g. ES at the paper's CLIP tau on another embedding model."""
    out = []
    pooled = summary[summary["layer"] == "overall"]
    for e, g in pooled.groupby("evaluator", sort=False):
        share = dict(zip(g["variant"], g["share_correct"]))
        baselines = {v: s for v, s in share.items() if v != "real"}
        if "real" not in share or not baselines:
            continue
        variant = max(baselines, key=baselines.get)
        if barely_beats(share["real"], baselines[variant], ratio):
            out.append(
                {"evaluator": e, "real": share["real"], "baseline": variant, "baseline_share": baselines[variant]}
            )
    return out


@dataclass(frozen=True)
class ShareHeadline:
    """One evaluator's share judged correct over a set of neurons, beside its baselines."""

    evaluator: str  # display title (CP, ES, ...)
    real: float
    n: int  # neurons the share is over
    baselines: dict  # variant -> share (only the variants that were scored)
    ratio: float = WEAK_RATIO

    @property
    def worst_baseline(self) -> str | None:
        """The baseline variant that comes closest to (or beats) the real labels."""
        return max(self.baselines, key=self.baselines.get) if self.baselines else None

    @property
    def gap(self) -> float | None:
        """Real share minus the highest baseline share (negative: a baseline passes more often)."""
        b = self.worst_baseline
        return None if b is None else self.real - self.baselines[b]

    @property
    def weak(self) -> bool:
        b = self.worst_baseline
        return b is not None and barely_beats(self.real, self.baselines[b], self.ratio)

    def baseline_text(self) -> str:
        if not self.baselines:
            return "no baselines scored"
        return " · ".join(f"{v} labels {percent(s)}" for v, s in self.baselines.items())

    def warning(self) -> str | None:
        """The sentence shown wherever this share is shown, or None when the evaluator is not weak."""
        if not self.weak:
            return None
        b = self.worst_baseline
        return (
            f"**{self.evaluator}** judges {percent(self.baselines[b])} of {b} labels correct against "
            f"{percent(self.real)} of the real ones: at this threshold it barely tells right labels from wrong. "
            "Calibrate it on the Thresholds page before reading its share."
        )


def headlines(summary: pd.DataFrame, layer: str = "overall", ratio: float = WEAK_RATIO) -> dict[str, ShareHeadline]:
    """{evaluator title: ShareHeadline} for one layer ('overall' pools every neuron) of
    RunView.layer_summary's frame, in the frame's evaluator order."""
    out = {}
    part = summary[summary["layer"] == layer]
    for e, g in part.groupby("evaluator", sort=False):
        share = dict(zip(g["variant"], g["share_correct"]))
        if "real" not in share:
            continue
        n = int(g.loc[g["variant"] == "real", "n"].iloc[0])
        out[e] = ShareHeadline(e, float(share["real"]), n, {v: float(share[v]) for v in BASELINES if v in share}, ratio)
    return out


def comparison_headlines(row: dict, ratio: float = WEAK_RATIO) -> list[ShareHeadline]:
    """The ShareHeadlines of one row of analysis.runs_comparison (columns 'ES', 'ES shuffled', ...)."""
    out = []
    for title in EVALUATOR_TITLES.values():
        real = row.get(title)
        if real is None or pd.isna(real):
            continue
        base = {v: float(row[f"{title} {v}"]) for v in BASELINES if pd.notna(row.get(f"{title} {v}"))}
        out.append(ShareHeadline(title, float(real), int(row.get("neurons") or 0), base, ratio))
    return out


def share_headline(
    view, evaluator: str, threshold: float, k: int | None = None, ratio: float = WEAK_RATIO
) -> ShareHeadline:
    """One evaluator's share over all the run's neurons at `threshold`, beside its baselines."""
    t = view.table(evaluator)
    shares = {v: float(view.verdicts(evaluator, threshold, v, k)["verdict"].mean()) for v in t.variants}
    return ShareHeadline(
        EVALUATOR_TITLES[evaluator],
        shares["real"],
        len(t.neurons),
        {v: shares[v] for v in BASELINES if v in shares},
        ratio,
    )


def interpretable_shares(
    view, thresholds: dict[str, float], k: int | None, evaluators: list[str], layers: list[str]
) -> pd.DataFrame:
    """Per layer (and 'overall'): neurons, how many are interpretable (every chosen evaluator judges the
    real label correct), the share, and the same share for the shuffled and constant labels (every
    chosen evaluator judges that wrong label correct): the baseline for 'N of M units interpretable'."""
    chosen = [e for e in evaluators if e in view.available]
    codes, names = pd.factorize(view.neurons["layer"], sort=False)
    hits: dict[str, np.ndarray] = {}  # per variant: interpretable units per layer
    for v in ("real", *BASELINES):
        if chosen and all(v in view.table(e).variants for e in chosen):
            every = np.logical_and.reduce([view.table(e).verdicts(thresholds[e], v, k) for e in chosen])
            hits[v] = np.bincount(codes, weights=every, minlength=len(names))
        elif v == "real":
            hits[v] = np.zeros(len(names))
    n = np.bincount(codes, minlength=len(names))
    where = {layer: [i] for i, layer in enumerate(names)}
    rows = []
    for layer in [l for l in layers if l in where] + ["overall"]:
        idx = where.get(layer, list(range(len(names))))
        m = int(n[idx].sum())
        row = {
            "layer": layer,
            "neurons": m,
            "interpretable": int(hits["real"][idx].sum()),
            "share": float(hits["real"][idx].sum() / m) if m else float("nan"),
        }
        for v in BASELINES:
            row[v] = float(hits[v][idx].sum() / m) if v in hits and m else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def baseline_delta(row) -> str:
    """'shuffled 12.0% · constant 3.0%' for a row of interpretable_shares (the metric's second line)."""
    parts = [f"{v} {percent(row[v])}" for v in BASELINES if v in row and pd.notna(row[v])]
    return " · ".join(parts) if parts else "no baselines scored"
