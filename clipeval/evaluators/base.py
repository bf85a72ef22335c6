"""What every evaluator shares: its inputs (labels per variant, images per neuron), the baseline
label variants, and image/text embeddings computed once per unique image and concept (cached)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pandas as pd

from clipeval.compute import ray_map
from clipeval.compute.device import CPU
from clipeval.config import stable_hash

# Imported inside the functions that use them: the image and text encoders' batching (torch), only when
# embeddings are not in the cache.


@dataclass
class EvalInputs:
    run_id: str
    probe_fingerprint: str
    n_images: int
    labels: dict[str, pd.DataFrame]  # variant -> (layer, unit, label)
    images: pd.DataFrame  # (layer, unit, kind, rank, image_id): the images each neuron is judged on
    paths: dict[int, str]  # image_id -> file
    concepts: list[str] | None  # the run's concept set (CP ranks labels among it)

    def pairs(self, kinds: Iterable[str] = ("top",)) -> pd.DataFrame:
        """Every (neuron, variant, image) to score: columns layer, unit, variant, kind, rank, image_id, label."""
        imgs = self.images[self.images["kind"].isin(list(kinds))]
        parts = [imgs.merge(lab, on=["layer", "unit"]).assign(variant=v) for v, lab in self.labels.items()]
        return pd.concat(parts, ignore_index=True)[["layer", "unit", "variant", "kind", "rank", "image_id", "label"]]


def label_variants(
    neurons: pd.DataFrame, seed: int, constant_label: str = "", baselines: bool = True
) -> tuple[dict[str, pd.DataFrame], str]:
    """The real labels, and (baselines) the labels shuffled across the neurons of each layer (seeded)
    and one constant label for all neurons (default: the run's most frequent label, the vaguest
    label the labeller actually produced)."""
    real = neurons[["layer", "unit", "label"]].reset_index(drop=True)
    out = {"real": real}
    constant = constant_label or (real["label"].value_counts().idxmax() if len(real) else "")
    if baselines:
        rng = np.random.default_rng(seed)
        shuffled = real.copy()
        for _, idx in real.groupby("layer", sort=False).groups.items():
            shuffled.loc[idx, "label"] = rng.permutation(real.loc[idx, "label"].to_numpy())
        out["shuffled"] = shuffled
        out["constant"] = real.assign(label=constant)
    return out, constant


def image_embeddings(
    model,
    model_key: str,
    inputs: EvalInputs,
    ids: np.ndarray,
    cache,
    *,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    engine=None,
) -> dict[int, np.ndarray]:
    """Embeddings of the given probe images, each encoded once; rows already in the cache are reused.
    The model runs where it was placed (batch size and decoding workers default per device), or on the
    workers of a Ray `engine` in the placement's dtype; either way the same cache entry fills."""
    from clipeval.compute.batches import ImageEmbedder

    key = stable_hash("eval-image-embeddings", model_key, inputs.probe_fingerprint)
    table = cache.get("eval_image_embeddings", key)
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    todo = ids if table is None else ids[np.isnan(table[ids, 0])]
    if len(todo):
        placement = getattr(model, "placement", None) or CPU
        paths = [inputs.paths[int(i)] for i in todo]
        if engine is not None and engine.is_ray:
            new = ray_map.embed(
                engine, model, paths, batch_size=batch_size, dtype=placement.dtype_name, progress=progress
            )
        else:
            new = ImageEmbedder(model, placement, batch_size).embed(paths, num_workers=num_workers, progress=progress)
        if table is None:
            table = np.full((inputs.n_images, new.shape[1]), np.nan, dtype=np.float32)
        table[todo] = new
        cache.put("eval_image_embeddings", key, table)
    return {int(i): table[i] for i in ids}


def text_embeddings(model, model_key: str, texts: list[str], cache) -> np.ndarray:
    from clipeval.dissect.pipeline import encode_texts, encode_texts_cached

    if not model.info().get("text_fingerprint"):
        # a model that does not say what its text side is: key its texts by the whole model, never by
        # the texts alone (another model's embeddings of the same words would be reused silently)
        key = stable_hash("eval-text-embeddings", model_key, list(texts))
        got = cache.get("eval_text_embeddings", key)
        if got is None:
            got = encode_texts(model, list(texts))
            cache.put("eval_text_embeddings", key, got)
        return got
    return encode_texts_cached(model, texts, cache)


def stack(rows: dict[int, np.ndarray], ids) -> np.ndarray:
    return np.stack([rows[int(i)] for i in ids])
