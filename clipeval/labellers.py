"""Labellers side by side: the run's own labels and every label source of the run, judged by the
same evaluators on the same stored images (the paper's Table 2, across labellers).

No model runs here: `LabellerView` holds the raw per-image scores of every source evaluation and
answers every threshold from them, like `analysis.RunView` does for the run itself.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from clipeval import metrics
from clipeval.analysis import EVALUATOR_TITLES, RunView
from clipeval.evaluators.rules import RULES, ScoreTable
from clipeval.sources import KIND_TITLES, describe_coverage
from clipeval.store import Store

RUN_SOURCE = "run"  # the key of the run's own labels among the sources


class LabellerView:
    def __init__(self, store: Store, run_id: str, run_view: RunView | None = None):
        self.view = run_view or RunView(store, run_id)
        self.run_id = self.view.run_id
        self.sources = describe_coverage(store, self.run_id)
        have = not self.sources.empty
        self.coverage = store.source_coverage(self.run_id) if have else pd.DataFrame(
            columns=["source_id", "layer", "units", "matched"])
        labels = store.source_labels(self.run_id) if have else pd.DataFrame(
            columns=["source_id", "layer", "unit", "label", "score", "detail"])
        self.labels: dict[str, pd.DataFrame] = {
            RUN_SOURCE: self.view.neurons.assign(score=self.view.neurons["similarity"], detail="")[
                ["layer", "unit", "label", "score", "detail"]]}
        for sid in self.sources["source_id"]:
            self.labels[sid] = labels[labels["source_id"] == sid].drop(columns="source_id").reset_index(drop=True)
        self.names = {RUN_SOURCE: f"this run ({self.view.run.get('name') or self.run_id})"}
        self.kinds = {RUN_SOURCE: "this run"}
        self.score_names = {RUN_SOURCE: "similarity"}
        for r in self.sources.itertuples():
            self.names[r.source_id] = r.name
            self.kinds[r.source_id] = KIND_TITLES.get(r.kind, r.kind)
            self.score_names[r.source_id] = r.score_name or ""
        # (source, evaluator) -> ScoreTable of that source's labels (real, and shuffled within layers)
        self.tables: dict[tuple[str, str], ScoreTable] = {}
        self.status: dict[tuple[str, str], str] = {}
        evals = store.source_evaluations(self.run_id) if have else pd.DataFrame()
        for e in evals.itertuples():
            if e.source_id not in self.labels:
                continue
            self.status[(e.source_id, e.evaluator)] = e.status if e.status == "complete" else (e.error or e.status)
            if e.status == "complete":
                n_concepts = None if pd.isna(e.n_concepts) else int(e.n_concepts)
                self.tables[(e.source_id, e.evaluator)] = ScoreTable(
                    store.source_scores(e.source_eval_id), e.evaluator, self.labels[e.source_id], n_concepts)

    @property
    def source_ids(self) -> list[str]:
        return list(self.labels)

    @property
    def evaluators(self) -> list[str]:
        return [e for e in RULES if e in self.view.available]

    def _k(self, table: ScoreTable, k: int | None) -> int:
        return table.kmax if k is None else min(int(k), table.kmax)

    def verdicts(self, source: str, evaluator: str, thresholds: dict[str, float], k: int | None = None,
                 variant: str = "real") -> pd.DataFrame | None:
        """(layer, unit, score, verdict) of one source's labels, or None where not evaluated."""
        if source == RUN_SOURCE:
            if evaluator not in self.view.available:
                return None
            t = self.view.table(evaluator)
        else:
            t = self.tables.get((source, evaluator))
            if t is None or variant not in t.variants:
                return None
        return t.verdict_frame(thresholds[evaluator], variant, self._k(t, k))

    def shares(self, thresholds: dict[str, float], k: int | None = None) -> pd.DataFrame:
        """Per source, evaluator and layer (and 'overall', pooled): n units, the share of the source's
        labels judged correct, of the same labels shuffled across the source's units of the layer, and,
        on exactly those units, of the run's own labels and the run's shuffled and constant baselines."""
        rows = []
        for e in self.evaluators:
            run_frames = {v: self.verdicts(RUN_SOURCE, e, thresholds, k, v)
                          for v in self.view.table(e).variants}
            for sid in self.source_ids:
                mine = self.verdicts(sid, e, thresholds, k)
                if mine is None:
                    continue
                shuffled = self.verdicts(sid, e, thresholds, k, "shuffled")
                frame = mine[["layer", "unit", "verdict"]].rename(columns={"verdict": "real"})
                if shuffled is not None:
                    frame["shuffled"] = shuffled["verdict"].to_numpy()
                for v, f in run_frames.items():
                    frame = frame.merge(f[["layer", "unit", "verdict"]].rename(columns={"verdict": f"run {v}"}),
                                        on=["layer", "unit"], how="left")
                groups = list(frame.groupby("layer", sort=False)) + [("overall", frame)]
                for layer, g in groups:
                    row = {"source": sid, "labeller": self.names[sid], "kind": self.kinds[sid],
                           "evaluator": EVALUATOR_TITLES[e], "layer": layer, "n": len(g),
                           "correct": float(g["real"].mean())}
                    if "shuffled" in g:
                        row["shuffled"] = float(g["shuffled"].mean())
                    for v in ("real", "shuffled", "constant"):
                        if f"run {v}" in g:
                            row[f"run {v}"] = float(g[f"run {v}"].astype(float).mean())
                    rows.append(row)
        cols = ["source", "labeller", "kind", "evaluator", "layer", "n", "correct", "shuffled", "run real",
                "run shuffled", "run constant"]
        return pd.DataFrame(rows).reindex(columns=cols)

    def agreement(self, thresholds: dict[str, float], k: int | None = None, layer: str | None = None
                  ) -> pd.DataFrame:
        """Every pair of sources over the units both label (of `layer`, or all): n, the share with the
        same label (case-insensitive), and per evaluator the agreement and Cohen's kappa of the two
        sources' verdicts (do they get judged correct on the same units?)."""
        ids = self.source_ids
        rows = []
        for i, a in enumerate(ids):
            for b in ids[i + 1:]:
                la, lb = self.labels[a], self.labels[b]
                if layer is not None:
                    la, lb = la[la["layer"] == layer], lb[lb["layer"] == layer]
                both = la.merge(lb, on=["layer", "unit"], suffixes=("_a", "_b"))
                row = {"a": self.names[a], "b": self.names[b], "n": len(both),
                       "same label": float((both["label_a"].str.lower().str.strip() ==
                                            both["label_b"].str.lower().str.strip()).mean()) if len(both) else np.nan}
                for e in self.evaluators:
                    va, vb = self.verdicts(a, e, thresholds, k), self.verdicts(b, e, thresholds, k)
                    if va is None or vb is None:
                        continue
                    w = both[["layer", "unit"]].merge(va[["layer", "unit", "verdict"]], on=["layer", "unit"]) \
                        .merge(vb[["layer", "unit", "verdict"]], on=["layer", "unit"], suffixes=("_a", "_b"))
                    t = EVALUATOR_TITLES[e]
                    row[f"{t} agreement"] = metrics.agreement(w["verdict_a"], w["verdict_b"])
                    row[f"{t} kappa"] = metrics.cohen_kappa(w["verdict_a"], w["verdict_b"])
                rows.append(row)
        return pd.DataFrame(rows)

    def neuron(self, layer: str, unit: int, thresholds: dict[str, float], k: int | None = None) -> pd.DataFrame:
        """Every source's label of one unit with its own score and, per evaluator, the neuron score and
        verdict ('not covered' sources are listed with an empty label)."""
        rows = []
        for sid in self.source_ids:
            lab = self.labels[sid]
            hit = lab[(lab["layer"] == layer) & (lab["unit"] == int(unit))]
            row = {"labeller": self.names[sid], "kind": self.kinds[sid],
                   "label": hit["label"].iloc[0] if len(hit) else None,
                   "own score": None if hit.empty or pd.isna(hit["score"].iloc[0]) else
                   f"{self.score_names[sid]} {hit['score'].iloc[0]:.3f}",
                   "detail": hit["detail"].iloc[0] if len(hit) and hit["detail"].iloc[0] else None}
            for e in self.evaluators:
                v = self.verdicts(sid, e, thresholds, k) if len(hit) else None
                t = EVALUATOR_TITLES[e]
                if v is None:
                    row[f"{t} score"], row[t] = np.nan, None
                    continue
                one = v[(v["layer"] == layer) & (v["unit"] == int(unit))]
                row[f"{t} score"] = float(one["score"].iloc[0]) if len(one) else np.nan
                row[t] = bool(one["verdict"].iloc[0]) if len(one) else None
            rows.append(row)
        return pd.DataFrame(rows)

    def missing_evaluations(self) -> list[str]:
        """Sentences for sources that an evaluator of the run has not judged (and why)."""
        out = []
        for sid in self.source_ids[1:]:
            for e in self.evaluators:
                if (sid, e) not in self.tables:
                    why = self.status.get((sid, e), f"not evaluated yet: clipeval sources evaluate {self.run_id}")
                    out.append(f"{self.names[sid]}: {EVALUATOR_TITLES[e]} {why}")
        return out

    def settings(self, source: str) -> dict:
        if source == RUN_SOURCE:
            return json.loads(self.view.run.get("config_json") or "{}")
        row = self.sources[self.sources["source_id"] == source]
        return json.loads(row["settings_json"].iloc[0] or "{}") if len(row) else {}
