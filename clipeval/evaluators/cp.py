"""Concept proportion (CP): the image matches if the label ranks within the top p of the concept set
by image-text similarity. Raw score: the label's rank (1 = most similar concept)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from clipeval.errors import ClipevalError
from clipeval.evaluators.base import (
    EvalInputs,
    image_embeddings,
    stack,
    text_embeddings,
)

CHUNK = 256  # images per similarity block: bounds memory at CHUNK x |S| floats


class ConceptProportion:
    name = "cp"
    kinds = ("top",)

    def __init__(
        self, model, model_key: str, cache, batch_size: int | None = None, num_workers: int | None = None, engine=None
    ):
        self.model, self.model_key, self.cache = model, model_key, cache
        # None: the device's defaults; engine: where the image embeddings are made (None: here)
        self.loader = dict(batch_size=batch_size, num_workers=num_workers, engine=engine)

    @classmethod
    def check(cls, inputs: EvalInputs) -> None:
        """CP can judge only labels of the run's concept set (cheap: run before any model is loaded)."""
        if not inputs.concepts:
            raise ClipevalError(
                "CP ranks each label among the run's concept set, and this run has none "
                "(import it again with --concepts FILE)"
            )
        missing = sorted(set(inputs.pairs(cls.kinds)["label"]) - set(inputs.concepts))
        if missing:
            raise ClipevalError(
                f"CP needs every label in the concept set; not in it: {', '.join(missing[:10])}"
                f"{' ...' if len(missing) > 10 else ''}"
            )

    def score(self, inputs: EvalInputs, progress: bool = True, outside_labels: bool = False) -> pd.DataFrame:
        """`outside_labels`: also rank labels that are not in the concept set (another labeller's, e.g.
        MILAN's sentences) by where their own cosine falls among the concepts' (1 + the number of
        concepts more similar to the image); a label inside the set keeps its exact rank."""
        if not outside_labels:
            self.check(inputs)
        elif not inputs.concepts:
            raise ClipevalError("CP ranks each label among the run's concept set, and this run has none")
        index = {c: i for i, c in enumerate(inputs.concepts)}
        pairs = inputs.pairs(self.kinds)
        T = text_embeddings(self.model, self.model_key, list(inputs.concepts), self.cache)
        outside = sorted(set(pairs["label"]) - set(index))
        if outside:
            extra = text_embeddings(self.model, self.model_key, outside, self.cache)
            index.update({l: len(T) + i for i, l in enumerate(outside)})
            labels_T = np.concatenate([T, extra])
        else:
            labels_T = T
        rows = image_embeddings(
            self.model,
            self.model_key,
            inputs,
            pairs["image_id"].to_numpy(),
            self.cache,
            progress=progress,
            **self.loader,
        )
        ids = np.array(sorted(rows))
        row_of = {int(i): j for j, i in enumerate(ids)}
        pair_rows = pairs["image_id"].map(row_of).to_numpy()
        pair_labels = pairs["label"].map(index).to_numpy()
        ranks = np.empty(len(pairs), dtype=np.int64)
        placement = getattr(self.model, "placement", None)
        if placement is not None and placement.is_cuda and not outside:
            # the same float32 ranking on the GPU, in larger blocks (20k concepts x 19k images is about
            # 200 GFLOP: seconds on a CPU); the CPU keeps the numpy path below, its results unchanged
            return pairs.assign(raw=self._ranks_on(placement.device, rows, ids, T, pair_rows, pair_labels))
        for start in range(0, len(ids), CHUNK):
            block = stack(rows, ids[start : start + CHUNK])
            sims = block @ T.T  # (chunk, |S|)
            sel = np.nonzero((pair_rows >= start) & (pair_rows < start + CHUNK))[0]
            local = pair_rows[sel] - start
            inside = pair_labels[sel] < len(T)
            own = np.empty(len(sel))
            own[inside] = sims[local[inside], pair_labels[sel][inside]]
            if (~inside).any():
                own[~inside] = np.einsum("nd,nd->n", block[local[~inside]], labels_T[pair_labels[sel][~inside]])
            ranks[sel] = 1 + (sims[local] > own[:, None]).sum(1)
        return pairs.assign(raw=ranks.astype(float))

    @staticmethod
    def _ranks_on(device, rows, ids, T, pair_rows, pair_labels, chunk: int = 4096) -> np.ndarray:

        Tt = torch.from_numpy(np.ascontiguousarray(T, dtype=np.float32)).to(device)
        ranks = np.empty(len(pair_rows), dtype=np.int64)
        with torch.no_grad():
            for start in range(0, len(ids), chunk):
                E = torch.from_numpy(stack(rows, ids[start : start + chunk])).to(device)
                sel = np.nonzero((pair_rows >= start) & (pair_rows < start + chunk))[0]
                local = torch.from_numpy(pair_rows[sel] - start).to(device)
                sims = (E @ Tt.T)[local]  # (pairs in chunk, |S|), float32
                own = sims.gather(1, torch.from_numpy(pair_labels[sel]).to(device)[:, None])
                ranks[sel] = (1 + (sims > own).sum(1)).cpu().numpy()
        return ranks.astype(float)
