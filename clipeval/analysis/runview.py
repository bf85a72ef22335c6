"""Everything the pages and the CLI compute from stored raw scores: verdicts at given thresholds,
per-layer shares beside baselines, agreement between raters, threshold sweeps and calibration.
No model runs here; a `RunView` loads a run's scores once and answers each slider move with numpy."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from clipeval.analysis import intervals, metrics
from clipeval.errors import ClipevalError
from clipeval.evaluators import judges
from clipeval.evaluators.rules import RULES, ScoreTable, cp_cutoff
from clipeval.formats import json_cell, text_cell
from clipeval.store import Store

EVALUATOR_TITLES = {"vqa": "VQA", "cp": "CP", "es": "ES", "contrast": "Contrast"}


@dataclass
class EvaluatorState:
    evaluator: str
    status: str  # complete | unavailable | failed | missing
    reason: str = ""
    table: ScoreTable | None = None
    eval_id: str = ""
    wall_s: float | None = None
    models: dict = field(default_factory=dict)
    constant_label: str = ""


class RunView:
    """One run's neurons, evaluator scores and human verdicts, held in memory for instant re-thresholding.

    A whole run's view holds each evaluator's neuron scores (three numbers per neuron and k, computed in
    the store when a k is first asked for), not its image scores: 10M at 100k neurons."""

    def __init__(self, store: Store, run_id: str, neuron: tuple[str, int] | None = None):
        """`neuron` (layer, unit): that neuron alone, with its image scores (the neuron explorer's view: the
        same verdicts for it, and each image's score); every rater of the run, with this neuron's verdicts."""
        self.run = store.complete_run(run_id)
        self.run_id = self.run["run_id"]
        every = store.neurons(self.run_id, *neuron) if neuron else store.neurons(self.run_id)
        # dead units (constant over the probe) have no label: left out of every share, agreement and
        # kappa; `dead` keeps them so that pages and the report say how many were left out
        is_dead = every["dead"].astype(bool).to_numpy()
        self.dead = every[is_dead].reset_index(drop=True)
        self.neurons = every[~is_dead].reset_index(drop=True)
        self.layers = list(store.layers(self.run_id)["layer"])
        self.evaluators: dict[str, EvaluatorState] = {}
        latest = store.latest_evaluations(self.run_id)
        for name in RULES:
            hit = latest[latest["evaluator"] == name]
            if hit.empty:
                self.evaluators[name] = EvaluatorState(
                    name, "missing", f"not run yet: clipeval evaluate {self.run_id} --evaluators {name}"
                )
                continue
            e = hit.iloc[0]
            state = EvaluatorState(
                name,
                e["status"],
                text_cell(e["error"]),
                eval_id=e["eval_id"],
                wall_s=e["wall_s"],
                models=json_cell(e["models_json"]),
                constant_label=text_cell(e["constant_label"]),
            )
            if e["status"] == "complete":
                n_concepts = None if pd.isna(e["n_concepts"]) else int(e["n_concepts"])
                state.table = (
                    ScoreTable(store.eval_scores(e["eval_id"], *neuron), name, self.neurons, n_concepts)
                    if neuron
                    else ScoreTable.computed(
                        name,
                        self.neurons,
                        n_concepts,
                        store.eval_variants(e["eval_id"]),
                        _neuron_scores_of(store, e["eval_id"], self.neurons, RULES[name].reduce),
                    )
                )
            self.evaluators[name] = state
        self.labeller = (json_cell(self.run.get("models_json")) or {}).get("image_text") or {}
        self.defaults = judges.defaults(store, {e: s.models for e, s in self.evaluators.items()})
        humans = store.human_verdicts(self.run_id)
        if len(self.dead):
            gone = humans.merge(self.dead[["layer", "unit"]], on=["layer", "unit"], how="left", indicator=True)
            humans = humans[(gone["_merge"] == "left_only").to_numpy()]
        self.humans = {r: g[["layer", "unit", "verdict"]].reset_index(drop=True) for r, g in humans.groupby("rater")}
        # a reference computed from ground truth (source 'auto: ...') is not a person: say so in its name
        self.automatic = {r for r, g in humans.groupby("rater") if g["source"].astype(str).str.startswith("auto").all()}
        if neuron:  # every rater of the run (the page lists those who did not judge it), this neuron's verdicts
            self.humans = {
                r: v[(v["layer"] == neuron[0]) & (v["unit"] == int(neuron[1]))].reset_index(drop=True)
                for r, v in self.humans.items()
            }

    # Every rater beside the evaluators is a *reference rater*: a person (Annotate page, CSV import) or an
    # automatic reference computed from ground truth (the demo's ImageNet-class rater). Their labels say
    # which, so an automatic reference is never read as a human judgement.
    HUMAN, AUTOMATIC = "human: ", "automatic: "

    def is_automatic(self, rater: str) -> bool:
        return self.rater_name(rater) in self.automatic

    def default_thresholds(self) -> dict[str, float]:
        """Each evaluator's default threshold for the model that scored it (judges.defaults)."""
        return {e: d.value for e, d in self.defaults.items()}

    def thresholds(self, given: dict[str, float] | None = None) -> dict[str, float]:
        """The thresholds an output applies (text and HTML report, app, comparison of runs): those given,
        and for every other evaluator its judge's default (judges.defaults), the one source of defaults."""
        return {**self.default_thresholds(), **(given or {})}

    def threshold_origin(self, evaluator: str, value: float) -> str:
        """'calibrated default', 'paper default', 'paper (uncalibrated) default', 'provisional (calibration
        pending) default' (judges.PENDING), or 'given' (any other value)."""
        return threshold_origin(self.defaults[evaluator], value)

    def threshold_detail(self, evaluator: str, value: float, given: str = "given") -> str:
        """'top 4 of 998 concepts; calibrated default': CP's cut-off rank where the concept set is known (the
        rank applied, whatever the decimals p is printed with), and where the value came from (`given`
        names a value that is not the default)."""
        state = self.evaluators.get(evaluator)
        n = state.table.n_concepts if state is not None and state.table is not None else None
        return threshold_detail(evaluator, value, self.defaults[evaluator], n, given)

    def threshold_text(self, evaluator: str, value: float) -> str:
        """'CP p=0.004 (top 4 of 998 concepts; calibrated default)': three significant digits (a fitted p is
        0.00400802), beside the rank it judges at."""
        return (
            f"{EVALUATOR_TITLES[evaluator]} {RULES[evaluator].param}={float(value):.3g} "
            f"({self.threshold_detail(evaluator, value)})"
        )

    def thresholds_text(self, thresholds: dict[str, float], evaluators=None) -> str:
        """threshold_text of every available evaluator (or of `evaluators`), joined."""
        chosen = [e for e in (evaluators if evaluators is not None else self.available) if e in thresholds]
        return ", ".join(self.threshold_text(e, thresholds[e]) for e in chosen)

    def default_notes(self, thresholds: dict[str, float]) -> list[str]:
        """How each available evaluator's default was set (calibration, intervals, held-out kappa, or why
        the paper's value), for the evaluators whose threshold here is that default."""
        return [
            f"{EVALUATOR_TITLES[e]}: {self.defaults[e].note}"
            for e in self.available
            if self.defaults[e].note and self.threshold_origin(e, thresholds[e]) != "given"
        ]

    def shared_note(self, evaluator: str) -> str:
        """Which parts of the labelling model this evaluator's model shares ('' when none or unknown)."""
        state = self.evaluators.get(evaluator)
        return judges.shared_note(self.labeller, (state.models if state else {}).get("image_text") or {})

    def n_dead(self, layer: str | None = None) -> int:
        """Dead units left out (of one layer, or of the run)."""
        return int(len(self.dead) if layer in (None, "overall") else (self.dead["layer"] == layer).sum())

    def dead_note(self) -> str:
        """One line saying how many dead units were left out, per layer ('' when none)."""
        if self.dead.empty:
            return ""
        per = self.dead.groupby("layer", sort=False).size()
        return (
            f"{len(self.dead)} dead unit(s) (constant activation over the probe, no label) left out of shares, "
            "agreement and kappa: " + ", ".join(f"{l} {n}" for l, n in per.items())
        )

    def rater_label(self, rater: str) -> str:
        """'human: alice', 'automatic: ImageNet class' (a name that already ends in '(automatic)', as the demo's
        does, is not told so twice)."""
        if rater in self.automatic:
            return self.AUTOMATIC + (rater.removesuffix(" (automatic)") or rater)
        return self.HUMAN + rater

    def rater_name(self, label: str) -> str:
        """The stored rater name behind a label from rater_label (bare names pass through)."""
        name = next((r for r in self.humans if self.rater_label(r) == label), None)
        name = name or label.removeprefix(self.HUMAN).removeprefix(self.AUTOMATIC)
        if name not in self.humans:
            raise ClipevalError(f"no rater {name!r} for run {self.run_id}; raters: {', '.join(self.humans) or 'none'}")
        return name

    @property
    def rater_labels(self) -> list[str]:
        """Every reference rater, people first, each marked human or automatic."""
        return self.human_labels + self.automatic_labels

    def reference_rater(self) -> str | None:
        """The label of the reference rater who judged the most neurons (people first among equals), None without
        any: the default reference, so a rater who judged 5 neurons does not stand in for a 1,000-neuron one."""
        return max(self.rater_labels, key=lambda r: len(self.humans[self.rater_name(r)]), default=None)

    def rater_counts(self) -> dict[str, int]:
        """{rater label: neurons judged}, people first."""
        return {r: len(self.humans[self.rater_name(r)]) for r in self.rater_labels}

    @property
    def human_labels(self) -> list[str]:
        return [self.rater_label(r) for r in self.humans if r not in self.automatic]

    @property
    def automatic_labels(self) -> list[str]:
        return [self.rater_label(r) for r in self.humans if r in self.automatic]

    @property
    def available(self) -> list[str]:
        return [n for n, s in self.evaluators.items() if s.table is not None]

    def table(self, evaluator: str) -> ScoreTable:
        state = self.evaluators.get(evaluator)
        if state is None or state.table is None:
            raise ClipevalError(
                f"evaluator {evaluator} is not available for run {self.run_id}: "
                f"{state.reason if state else 'unknown evaluator'}"
            )
        return state.table

    @property
    def kmax(self) -> int:
        return min((self.table(e).kmax for e in self.available), default=0)

    def verdicts(self, evaluator: str, threshold: float, variant: str = "real", k: int | None = None) -> pd.DataFrame:
        return self.table(evaluator).verdict_frame(threshold, variant, k)

    def rater_verdicts(
        self, thresholds: dict[str, float], k: int | None = None, evaluators: list[str] | None = None
    ) -> dict[str, pd.DataFrame]:
        """Verdict frames of every available evaluator (real labels) and every human rater."""
        out = {
            EVALUATOR_TITLES[e]: self.verdicts(e, thresholds[e], "real", k)
            for e in (evaluators if evaluators is not None else self.available)
            if e in self.available
        }
        out.update({self.rater_label(r): v for r, v in self.humans.items()})
        return out

    def layer_summary(
        self, thresholds: dict[str, float], k: int | None = None, evaluators: list[str] | None = None
    ) -> pd.DataFrame:
        """Share of labels judged correct per layer (and overall) per evaluator and label variant."""
        hits = {}
        layers = n = None
        for e in evaluators if evaluators is not None else self.available:
            if e not in self.available:
                continue
            t = self.table(e)
            codes, layers = pd.factorize(t.neurons["layer"], sort=False)  # layers in the order they come
            n = np.bincount(codes, minlength=len(layers))
            for v in t.variants:
                hits[(e, v)] = np.bincount(codes, weights=t.verdicts(thresholds[e], v, k), minlength=len(layers))
        dead = self.dead["layer"].value_counts().to_dict() if len(self.dead) else {}
        return summary_frame(list(layers) if layers is not None else [], n, dead, hits)

    def unit_grid(
        self,
        thresholds: dict[str, float],
        k: int | None = None,
        evaluators: list[str] | None = None,
        layer: str | None = None,
    ) -> pd.DataFrame:
        """One row per neuron (of `layer`, or of the run): label, similarity, each evaluator's score and
        verdict, human verdicts."""
        keep = slice(None) if layer is None else (self.neurons["layer"] == layer).to_numpy()
        # all alive here; dead units are in self.dead
        grid = self.neurons[keep].drop(columns=["dead"], errors="ignore").reset_index(drop=True)
        chosen = [e for e in (evaluators if evaluators is not None else self.available) if e in self.available]
        for e in chosen:
            t = self.table(e)
            score = np.array(t.neuron_scores("real", k)[keep])  # a copy: the cached scores are read-only
            grid[f"{EVALUATOR_TITLES[e]} score"] = score
            grid[f"{EVALUATOR_TITLES[e]}"] = t.compare(score, t.rule.check(thresholds[e]))
        for r, v in self.humans.items():
            grid = grid.merge(v.rename(columns={"verdict": self.rater_label(r)}), on=["layer", "unit"], how="left")
        if chosen:
            grid["all evaluators agree correct"] = grid[[EVALUATOR_TITLES[e] for e in chosen]].all(axis=1)
        return grid

    def sweep(self, evaluator: str, values, k: int | None = None, reference: str | None = None) -> pd.DataFrame:
        """Per layer (and overall) and variant: share judged correct, and agreement/kappa with the
        reference rater, at every threshold in `values` (the paper's Figure 3)."""
        t = self.table(evaluator)
        values = np.asarray(values, float)
        ref = self.humans[self.rater_name(reference)] if reference else None
        rows = []
        for v in t.variants:
            V = t.sweep(values, v, k)  # (thresholds, neurons)
            groups = list(t.neurons.groupby("layer", sort=False).indices.items()) + [
                ("overall", np.arange(len(t.neurons)))
            ]
            for layer, idx in groups:
                part = pd.DataFrame({"threshold": values, "share_correct": V[:, idx].mean(1)})
                if ref is not None and v == "real":
                    sel = t.neurons.iloc[idx].merge(ref, on=["layer", "unit"], how="left")
                    has = sel["verdict"].notna().to_numpy()
                    if has.any():
                        s = metrics.sweep_against(V[:, idx][:, has], sel["verdict"].to_numpy()[has].astype(bool))
                        part["agreement"], part["kappa"], part["n_reference"] = (
                            s["agreement"],
                            s["kappa"],
                            int(has.sum()),
                        )
                rows.append(part.assign(layer=layer, variant=v))
        return pd.concat(rows, ignore_index=True)

    def rater_agreement(self, thresholds: dict[str, float], k: int | None = None) -> pd.DataFrame:
        """Each available evaluator against each rater, pooled over the neurons both judged."""
        rows = []
        for e in self.available:
            mine = self.verdicts(e, thresholds[e], "real", k)
            for r, ref in self.humans.items():
                pooled = metrics.pairwise_table(mine, ref, by_layer=False).iloc[0]
                rows.append({"evaluator": EVALUATOR_TITLES[e], "rater": self.rater_label(r), **pooled.drop("layer")})
        return pd.DataFrame(rows)

    def calibrate(
        self, evaluator: str, rater: str, fit_fraction: float = 0.5, seed: int = 0, k: int | None = None
    ) -> dict:
        t = self.table(evaluator)
        rater = self.rater_name(rater)
        frame = t.neurons.assign(score=t.neuron_scores("real", k)).merge(self.humans[rater], on=["layer", "unit"])
        frame = frame[frame["score"].notna()]
        rule = t.rule
        candidates = np.linspace(rule.lo, rule.hi, 201)
        if rule.reduce != "min":  # also every observed score, so the best cut is not missed between grid points
            candidates = np.concatenate([candidates, frame["score"].to_numpy()])
        elif t.n_concepts:  # CP: every rank cut-off int(|S| * p) seen, not only those on the p grid (whose
            # 0.005 steps skip most ranks of a large concept set); (r + 0.5) / |S| gives cut-off r exactly
            ranks = np.unique(frame["score"].to_numpy())
            candidates = np.concatenate([candidates, (ranks + 0.5) / t.n_concepts])
        candidates = candidates[(candidates >= rule.lo) & (candidates <= rule.hi)]
        res = metrics.calibrate(
            frame["score"].to_numpy(),
            frame["verdict"].to_numpy().astype(bool),
            candidates,
            lambda s, th: t.compare(s, th),
            fit_fraction,
            seed,
        )
        lo, hi = intervals.bootstrap_cells(res["test_cells"])["kappa"]
        return {"evaluator": evaluator, "rater": rater, "param": rule.param, **res, "test_kappa_interval": (lo, hi)}


def _neuron_scores_of(store: Store, eval_id: str, neurons: pd.DataFrame, reduce: str):
    """fetch(k) for ScoreTable.computed: the neurons' scores at k, computed in the store."""
    return lambda k: store.neuron_scores(eval_id, reduce, k, neurons)


def threshold_origin(default, value: float) -> str:
    """RunView.threshold_origin, given the judge's default (judges.defaults)."""
    return f"{default.source} default" if float(value) == default.value else "given"


def threshold_detail(evaluator: str, value: float, default, n_concepts: int | None, given: str = "given") -> str:
    """RunView.threshold_detail, given the judge's default and the size of CP's concept set (None: unknown)."""
    rank = (
        f"top {cp_cutoff(value, n_concepts)} of {n_concepts:,} concepts; " if evaluator == "cp" and n_concepts else ""
    )
    origin = threshold_origin(default, value)
    return rank + (given if origin == "given" else origin)


def summary_frame(
    layers: list[str], n: np.ndarray, dead: dict[str, int], hits: dict[tuple[str, str], np.ndarray]
) -> pd.DataFrame:
    """RunView.layer_summary's frame: per (evaluator, variant) of `hits` (the neurons judged correct in each
    of `layers`, which have `n` live neurons), a row per layer and one 'overall'; `dead`: dead units per
    layer, of every layer."""
    rows = []
    for (e, v), h in hits.items():
        parts = [(layer, h[i], n[i], dead.get(layer, 0)) for i, layer in enumerate(layers)]
        for layer, c, m, d in [*parts, ("overall", h.sum(), n.sum(), sum(dead.values()))]:
            rows.append(
                {
                    "layer": layer,
                    "evaluator": EVALUATOR_TITLES[e],
                    "variant": v,
                    "share_correct": float(c / m) if m else float("nan"),
                    "n": int(m),
                    "n_dead": int(d),
                }
            )
    return pd.DataFrame(rows, columns=["layer", "evaluator", "variant", "share_correct", "n", "n_dead"])


def default_thresholds() -> dict[str, float]:
    """The rules' fixed values (the paper's). Not what an output applies to a run: RunView.thresholds
    gives each evaluator its judge's default (a calibrated one for a stand-in judge)."""
    return {e: r.default for e, r in RULES.items()}


def calibrate_threshold(
    store: Store, run_id: str, evaluator: str, rater: str, fit_fraction: float = 0.5, seed: int = 0
) -> dict:
    return RunView(store, run_id).calibrate(evaluator, rater, fit_fraction, seed)
