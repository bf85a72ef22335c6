"""Activation collection (one forward pass over the probe for every requested layer, with every image
decoded once for the target, the image-text models and the thumbnail) and per-neuron summaries
(top-k, lowest, random inactive, examples across activation levels, histograms)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from clipeval.data.probe import ProbeImage
from clipeval.device import CPU, Placement
from clipeval.errors import ClipevalError
from clipeval.models.targets import Target

LEVEL_QUANTILES = (0.995, 0.98, 0.95, 0.9, 0.75, 0.5, 0.25, 0.05)
HIST_BINS = 24
INACTIVE_QUANTILE = 0.9  # 'random' contrast images come from below this activation quantile


def pool(output: torch.Tensor, mode: str, layer: str) -> torch.Tensor:
    """One value per neuron: spatial mean/max for (B,C,H,W), CLS token for (B,T,C), as-is for (B,C)."""
    if not torch.is_tensor(output):
        raise ClipevalError(f"layer {layer!r} returns {type(output).__name__}, not a tensor")
    if output.dim() == 4:
        return output.mean(dim=(2, 3)) if mode == "mean" else output.amax(dim=(2, 3))
    if output.dim() == 3:
        return output[:, 0]
    if output.dim() == 2:
        return output
    raise ClipevalError(f"layer {layer!r} outputs shape {tuple(output.shape)}, which cannot be pooled per neuron")


def pooling_hook(current: dict, layer: str, mode: str) -> Callable:
    """A forward hook that puts `layer`'s pooled output (float32) into current[layer], once per forward."""
    def hook(_module, _inputs, output):
        if layer in current:
            raise ClipevalError(f"layer {layer!r} runs more than once per forward pass; pick another")
        current[layer] = pool(output, mode, layer).float()
    return hook


@dataclass
class Collected:
    activations: dict[str, np.ndarray]  # layer -> (images, units) float32
    embeddings: dict[str, np.ndarray]  # model name -> (images, dim) float32, L2-normalised
    thumbnails: list[bytes] | None


def collect(images: Sequence[ProbeImage], *, target: Target | None = None, layers: Sequence[str] = (),
            pooling: str = "mean", image_models: dict | None = None, thumb_size: int | None = None,
            batch_size: int | None = None, num_workers: int | None = None, progress: bool = True,
            desc: str = "images", placement: Placement = CPU) -> Collected:
    """One pass over `images`: pooled activations of `layers` of `target`, embeddings of every model in
    `image_models` (name -> ImageTextModel), and thumbnails if `thumb_size` is set, every model on
    `placement` (batch size and decoding workers default per device)."""
    from clipeval.batches import ACT, EMB, ProbeBatch, iterate

    n = len(images)
    acts: dict[str, np.ndarray] = {}
    embs: dict[str, np.ndarray] = {}
    thumbs: list[bytes] | None = [b""] * n if thumb_size else None
    with ProbeBatch(target, layers, pooling, image_models, thumb_size, placement, batch_size) as work:
        for rows, tensors, batch_thumbs in iterate([im.path for im in images], work.decode, placement,
                                                   batch_size, num_workers, progress=progress, desc=desc):
            for key, out in work.forward(tensors).items():
                table, name = (acts, key[len(ACT):]) if key.startswith(ACT) else (embs, key[len(EMB):])
                if name not in table:
                    table[name] = np.empty((n, out.shape[1]), dtype=np.float32)
                table[name][rows] = out
            if thumbs is not None:
                for r, t in zip(rows, batch_thumbs):
                    thumbs[r] = t
    return Collected(acts, embs, thumbs)


def neuron_summaries(layer: str, A: np.ndarray, k: int, n_contrast: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per neuron of one layer: images of kind top/low/random/level with activations, and a histogram."""
    n_images, n_units = A.shape
    if k > n_images:
        raise ClipevalError(f"k={k} is more than the {n_images} probe images")
    order = np.argsort(-A, axis=0, kind="stable")  # (images, units), most active first
    n_low = min(n_contrast, max(0, n_images - k))
    rng = np.random.default_rng(seed)
    # random contrast images: uniformly among the images below the neuron's INACTIVE_QUANTILE
    cut = np.quantile(A, INACTIVE_QUANTILE, axis=0, keepdims=True)
    keys = rng.random(A.shape)
    keys[A >= cut] = np.inf
    keys[order[:k], np.arange(n_units)] = np.inf
    n_rand = min(n_contrast, int(np.isfinite(keys).sum(0).min()))
    random_idx = np.argsort(keys, axis=0)[:n_rand]
    level_pos = sorted({min(n_images - 1, int((1 - q) * n_images)) for q in LEVEL_QUANTILES})

    parts = []
    units = np.arange(n_units)

    def add(kind: str, idx: np.ndarray):
        if idx.size == 0:
            return
        r, u = np.meshgrid(np.arange(idx.shape[0]), units, indexing="ij")
        parts.append(pd.DataFrame({"layer": layer, "unit": u.ravel(), "kind": kind, "rank": r.ravel() + 1,
                                   "image_id": idx.ravel(), "activation": A[idx, units].ravel()}))

    add("top", order[:k])
    add("low", order[::-1][:n_low])
    add("random", random_idx)
    add("level", order[level_pos])
    images = pd.concat(parts, ignore_index=True)

    lo, hi = A.min(0), A.max(0)
    width = np.where(hi > lo, hi - lo, 1.0)
    bins = np.clip(((A - lo) / width * HIST_BINS).astype(int), 0, HIST_BINS - 1)
    counts = np.zeros((HIST_BINS, n_units), dtype=np.int64)
    np.add.at(counts, (bins, np.broadcast_to(units, A.shape)), 1)
    b, u = np.meshgrid(np.arange(HIST_BINS), units, indexing="ij")
    edges = lo + width * np.arange(HIST_BINS + 1)[:, None] / HIST_BINS
    hist = pd.DataFrame({"layer": layer, "unit": u.ravel(), "bin": b.ravel(), "lo": edges[:-1].ravel(),
                         "hi": edges[1:].ravel(), "count": counts.ravel()})
    return images, hist
