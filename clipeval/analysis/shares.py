"""A run's shares per layer and its score spans without its image scores: each neuron's score per
evaluator and label variant is computed in the store (Store.neuron_scores, three numbers per neuron),
not from the 10M per-image scores a RunView of a 100k-neuron run loads. The same numbers as
RunView.layer_summary and sweeps.score_spans, for the pages that show only those (home, the sidebar)."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd

from clipeval.analysis import sweeps
from clipeval.analysis.runview import summary_frame
from clipeval.errors import ClipevalError
from clipeval.evaluators.rules import RULES, VARIANTS, compare
from clipeval.store import Store


class RunShares:
    """Per evaluator that completed on the run: its neuron scores per (variant, k), read when first asked."""

    def __init__(self, store: Store, run_id: str):
        self.store, self.run_id = store, run_id
        counts = store.layer_counts(run_id)
        self.dead = {r.layer: int(r.dead) for r in counts.itertuples() if r.dead}
        live = counts[counts["neurons"] > 0]
        self.layers, self.n = list(live["layer"]), live["neurons"].to_numpy()
        latest = store.latest_evaluations(run_id)
        self.evaluations: dict[str, dict] = {}  # RULES order, as RunView.available
        for e in RULES:
            hit = latest[(latest["evaluator"] == e) & (latest["status"] == "complete")]
            if len(hit):
                row = hit.iloc[0]
                self.evaluations[e] = {
                    "eval_id": row["eval_id"],
                    "n_concepts": None if pd.isna(row["n_concepts"]) else int(row["n_concepts"]),
                    "variants": store.eval_variants(row["eval_id"]),
                }
        self._scores: dict[tuple[str, int], dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        self._lock = threading.Lock()  # pages of several sessions ask at once; each query runs once

    @property
    def available(self) -> list[str]:
        return list(self.evaluations)

    def n_concepts(self, evaluator: str) -> int | None:
        """The size of the concept set the evaluator ranked against (CP), None where unknown or not complete."""
        return self.evaluations.get(evaluator, {}).get("n_concepts")

    def evaluator_kmax(self, evaluator: str) -> int:
        return max(self.evaluations[evaluator]["variants"].values(), default=0)

    @property
    def kmax(self) -> int:
        return min((self.evaluator_kmax(e) for e in self.available), default=0)

    def variants(self, evaluator: str) -> list[str]:
        return [v for v in VARIANTS if v in self.evaluations[evaluator]["variants"]]

    def scores(self, evaluator: str, k: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """{variant: (layer index in self.layers, score)} of the neurons that have a score at this k."""
        kmax = self.evaluator_kmax(evaluator)
        k = kmax if k is None else int(k)
        if not 1 <= k <= kmax:
            raise ClipevalError(f"k={k} is outside 1..{kmax}, the top-k images scored by {evaluator}")
        with self._lock:
            got = self._scores.get((evaluator, k))
            if got is None:
                e = self.evaluations[evaluator]
                frame = self.store.neuron_scores(e["eval_id"], self.run_id, RULES[evaluator].reduce, k)
                codes = pd.Categorical(frame["layer"], categories=self.layers).codes
                got = {
                    v: (codes[mine], frame["score"].to_numpy(float)[mine])
                    for v in self.variants(evaluator)
                    for mine in [(frame["variant"] == v).to_numpy()]
                }
                self._scores[(evaluator, k)] = got
        return got

    def layer_summary(
        self, thresholds: dict[str, float], k: int | None = None, evaluators: list[str] | None = None
    ) -> pd.DataFrame:
        """RunView.layer_summary's frame, equal to it (a neuron without a score is judged not correct)."""
        hits = {}
        for e in evaluators if evaluators is not None else self.available:
            if e not in self.evaluations:
                continue
            threshold = RULES[e].check(thresholds[e])
            for v, (codes, score) in self.scores(e, k).items():
                verdict = compare(RULES[e], score, threshold, self.evaluations[e]["n_concepts"])
                hits[(e, v)] = np.bincount(codes, weights=verdict, minlength=len(self.layers))
        return summary_frame(self.layers, self.n, self.dead, hits)

    def score_spans(self) -> dict[str, tuple[float, float] | None]:
        """sweeps.score_spans: each judge's span of the neuron scores (every variant, at its own kmax)."""
        return {
            e: sweeps.span_of(e, np.concatenate([s for _, s in self.scores(e).values()]))
            if e in self.evaluations
            else None
            for e in RULES
        }
