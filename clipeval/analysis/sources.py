"""Labellers side by side: the run's own labels and every label source of the run, judged by the
same evaluators on the same stored images (the paper's Table 2, across labellers), over the same units:
the run's live units (store.source_labels leaves dead units out, as RunView does).

No model runs here: `LabellerView` holds the raw per-image scores of every source evaluation and
answers every threshold from them, like `analysis.RunView` does for the run itself.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from clipeval.analysis import metrics
from clipeval.analysis.runview import EVALUATOR_TITLES, RunView
from clipeval.evaluators.rules import RULES, ScoreTable
from clipeval.evaluators.sources import KIND_TITLES, describe_coverage
from clipeval.store import Store

RUN_SOURCE = "run"  # the key of the run's own labels among the sources


class LabellerView:
    def __init__(self, store: Store, run_id: str, run_view: RunView | None = None):
        self.view = run_view or RunView(store, run_id)
        self.run_id = self.view.run_id
        self.sources = describe_coverage(store, self.run_id)
        have = not self.sources.empty
        self.coverage = (
            store.source_coverage(self.run_id)
            if have
            else pd.DataFrame(columns=["source_id", "layer", "units", "matched"])
        )
        labels = (
            store.source_labels(self.run_id)
            if have
            else pd.DataFrame(columns=["source_id", "layer", "unit", "label", "score", "detail"])
        )
        self.labels: dict[str, pd.DataFrame] = {
            RUN_SOURCE: self.view.neurons.assign(score=self.view.neurons["similarity"], detail="")[
                ["layer", "unit", "label", "score", "detail"]
            ]
        }
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
            if e.status != "complete":
                continue
            scores = store.source_scores(e.source_eval_id)
            units = pd.MultiIndex.from_frame(self.labels[e.source_id][["layer", "unit"]])
            if not pd.MultiIndex.from_frame(scores[["layer", "unit"]]).isin(units).all():
                # a pass that also judged labels on dead units: its shuffled baseline moved labels between dead
                # and live units, so its numbers are not over this source's live units
                self.status[(e.source_id, e.evaluator)] = (
                    f"was judged on dead units too: judge it again with `clipeval sources evaluate {self.run_id}`"
                )
                continue
            n_concepts = None if pd.isna(e.n_concepts) else int(e.n_concepts)
            self.tables[(e.source_id, e.evaluator)] = ScoreTable(
                scores, e.evaluator, self.labels[e.source_id], n_concepts
            )

        # each source's units as an index, to line sources up by (layer, unit) without merging frames
        self.keys = {sid: pd.MultiIndex.from_frame(lab[["layer", "unit"]]) for sid, lab in self.labels.items()}
        self._at: dict[tuple[str, str], np.ndarray] = {}
        self._run_rows: dict[str, np.ndarray] = {}  # per evaluator: the run table's row of each run label

    def rows_in(self, source: str, other: str) -> np.ndarray:
        """For each unit of `source`, its row in `other`'s labels (-1 where `other` lacks it)."""
        key = (source, other)
        if key not in self._at:
            self._at[key] = self.keys[other].get_indexer(self.keys[source])
        return self._at[key]

    def _table(self, source: str, evaluator: str) -> ScoreTable | None:
        if source == RUN_SOURCE:
            return self.view.table(evaluator) if evaluator in self.view.available else None
        return self.tables.get((source, evaluator))

    def verdict_array(
        self, source: str, evaluator: str, thresholds: dict[str, float], k: int | None = None, variant: str = "real"
    ) -> np.ndarray | None:
        """One verdict per row of the source's labels (None where not evaluated)."""
        t = self._table(source, evaluator)
        if t is None or variant not in t.variants:
            return None
        v = t.verdicts(thresholds[evaluator], variant, self._k(t, k))
        if source == RUN_SOURCE:  # the run's table may list its neurons in another order than its labels
            if evaluator not in self._run_rows:
                self._run_rows[evaluator] = pd.MultiIndex.from_frame(t.neurons).get_indexer(self.keys[RUN_SOURCE])
            v = v[self._run_rows[evaluator]]
        return v

    @property
    def source_ids(self) -> list[str]:
        return list(self.labels)

    @property
    def evaluators(self) -> list[str]:
        return [e for e in RULES if e in self.view.available]

    def _k(self, table: ScoreTable, k: int | None) -> int:
        return table.kmax if k is None else min(int(k), table.kmax)

    def verdicts(
        self, source: str, evaluator: str, thresholds: dict[str, float], k: int | None = None, variant: str = "real"
    ) -> pd.DataFrame | None:
        """(layer, unit, score, verdict) of one source's labels, or None where not evaluated."""
        t = self._table(source, evaluator)
        if t is None or variant not in t.variants:
            return None
        return t.verdict_frame(thresholds[evaluator], variant, self._k(t, k))

    def shares(self, thresholds: dict[str, float], k: int | None = None) -> pd.DataFrame:
        """Per source, evaluator and layer (and 'overall', pooled): n units, the share of the source's
        labels judged correct, of the same labels shuffled across the source's units of the layer, and,
        on exactly those units, of the run's own labels and the run's shuffled and constant baselines."""
        rows = []
        for e in self.evaluators:
            run = {v: self.verdict_array(RUN_SOURCE, e, thresholds, k, v) for v in self.view.table(e).variants}
            for sid in self.source_ids:
                real = self.verdict_array(sid, e, thresholds, k)
                if real is None:
                    continue
                shuffled = self.verdict_array(sid, e, thresholds, k, "shuffled")
                at = self.rows_in(sid, RUN_SOURCE)
                codes, layers = pd.factorize(self.labels[sid]["layer"], sort=False)
                groups = [(layer, np.flatnonzero(codes == i)) for i, layer in enumerate(layers)]
                for layer, idx in [*groups, ("overall", np.arange(len(real)))]:
                    row = {
                        "source": sid,
                        "labeller": self.names[sid],
                        "kind": self.kinds[sid],
                        "evaluator": EVALUATOR_TITLES[e],
                        "layer": layer,
                        "n": len(idx),
                        "correct": float(real[idx].mean()) if len(idx) else np.nan,
                    }
                    if shuffled is not None:
                        row["shuffled"] = float(shuffled[idx].mean()) if len(idx) else np.nan
                    present = at[idx][at[idx] >= 0]  # the run's rows of these units
                    for v in ("real", "shuffled", "constant"):
                        if v in run:
                            row[f"run {v}"] = float(run[v][present].mean()) if len(present) else np.nan
                    rows.append(row)
        cols = [
            "source",
            "labeller",
            "kind",
            "evaluator",
            "layer",
            "n",
            "correct",
            "shuffled",
            "run real",
            "run shuffled",
            "run constant",
        ]
        return pd.DataFrame(rows).reindex(columns=cols)

    def agreement(self, thresholds: dict[str, float], k: int | None = None, layer: str | None = None) -> pd.DataFrame:
        """Every pair of sources over the units both label (of `layer`, or all): n, the share with the
        same label (case-insensitive), and per evaluator the agreement and Cohen's kappa of the two
        sources' verdicts (do they get judged correct on the same units?)."""
        ids = self.source_ids
        words = {sid: self.labels[sid]["label"].str.lower().str.strip().to_numpy() for sid in ids}
        verdicts = {(sid, e): self.verdict_array(sid, e, thresholds, k) for sid in ids for e in self.evaluators}
        rows = []
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                ib = self.rows_in(a, b)
                ia = np.flatnonzero(ib >= 0)
                if layer is not None:
                    ia = ia[self.labels[a]["layer"].to_numpy()[ia] == layer]
                ib = ib[ia]
                wa, wb = words[a][ia], words[b][ib]
                same = (wa == wb) & pd.notna(wa) & pd.notna(wb)  # a missing label matches nothing
                row = {
                    "a": self.names[a],
                    "b": self.names[b],
                    "n": len(ia),
                    "same label": float(same.mean()) if len(ia) else np.nan,
                }
                for e in self.evaluators:
                    va, vb = verdicts[(a, e)], verdicts[(b, e)]
                    if va is None or vb is None:
                        continue
                    t = EVALUATOR_TITLES[e]
                    row[f"{t} agreement"] = metrics.agreement(va[ia], vb[ib])
                    row[f"{t} kappa"] = metrics.cohen_kappa(va[ia], vb[ib])
                rows.append(row)
        return pd.DataFrame(rows)

    def neuron(self, layer: str, unit: int, thresholds: dict[str, float], k: int | None = None) -> pd.DataFrame:
        """Every source's label of one unit with its own score and, per evaluator, the neuron score and
        verdict ('not covered' sources are listed with an empty label)."""
        rows = []
        for sid in self.source_ids:
            lab = self.labels[sid]
            hit = lab[(lab["layer"] == layer) & (lab["unit"] == int(unit))]
            row = {
                "labeller": self.names[sid],
                "kind": self.kinds[sid],
                "label": hit["label"].iloc[0] if len(hit) else None,
                "own score": None
                if hit.empty or pd.isna(hit["score"].iloc[0])
                else f"{self.score_names[sid]} {hit['score'].iloc[0]:.3f}",
                "detail": hit["detail"].iloc[0] if len(hit) and hit["detail"].iloc[0] else None,
            }
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
