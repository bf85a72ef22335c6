"""Embedding similarity (ES): the image matches if cosine(image, label text) >= tau.
Raw score: the cosine. Each unique image and each unique label is encoded once."""

from __future__ import annotations

import numpy as np
import pandas as pd

from clipeval.evaluators.base import (
    EvalInputs,
    image_embeddings,
    stack,
    text_embeddings,
)


class EmbeddingSimilarity:
    name = "es"
    kinds: tuple[str, ...] = ("top",)

    def __init__(
        self, model, model_key: str, cache, batch_size: int | None = None, num_workers: int | None = None, engine=None
    ):
        self.model, self.model_key, self.cache = model, model_key, cache
        # None: the device's defaults; engine: where the image embeddings are made (None: here)
        self.loader = dict(batch_size=batch_size, num_workers=num_workers, engine=engine)

    def score(self, inputs: EvalInputs, progress: bool = True) -> pd.DataFrame:
        pairs = inputs.pairs(self.kinds)
        labels = sorted(set(pairs["label"]))
        T = text_embeddings(self.model, self.model_key, labels, self.cache)
        rows = image_embeddings(
            self.model,
            self.model_key,
            inputs,
            pairs["image_id"].to_numpy(),
            self.cache,
            progress=progress,
            **self.loader,
        )
        E = stack(rows, pairs["image_id"].to_numpy())
        lab = pairs["label"].map({l: i for i, l in enumerate(labels)}).to_numpy()
        return pairs.assign(raw=np.einsum("nd,nd->n", E, T[lab]).astype(float))
