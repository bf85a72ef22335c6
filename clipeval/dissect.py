"""Activation collection (one forward pass over the probe for every requested layer, with every image
decoded once for the target, the image-text models and the thumbnail) and per-neuron summaries
(top-k, lowest, random inactive, examples across activation levels, histograms)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from clipeval.data.probe import ProbeImage, load_rgb, thumbnail_jpeg
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


class _ProbeDataset(Dataset):
    def __init__(self, images: Sequence[ProbeImage], transforms: Sequence[Callable], thumb_size: int | None):
        self.images, self.transforms, self.thumb_size = images, transforms, thumb_size

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = load_rgb(self.images[i].path)
        thumb = thumbnail_jpeg(img, self.thumb_size) if self.thumb_size else b""
        return i, [t(img) for t in self.transforms], thumb


def _collate(batch):
    idx = torch.tensor([b[0] for b in batch])
    n = len(batch[0][1])
    tensors = [torch.stack([b[1][j] for b in batch]) for j in range(n)]
    return idx, tensors, [b[2] for b in batch]


def _channels_last(batch: torch.Tensor) -> torch.Tensor:
    """Images in channels-last memory order: CPU convolutions (oneDNN) run faster on it (EfficientNet-Lite0
    forward 1.46x, bench/bench_dissect.py); values equal up to float rounding, and the model's weights
    are left as they are."""
    return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch


@dataclass
class Collected:
    activations: dict[str, np.ndarray]  # layer -> (images, units) float32
    embeddings: dict[str, np.ndarray]  # model name -> (images, dim) float32, L2-normalised
    thumbnails: list[bytes] | None


@torch.no_grad()
def collect(images: Sequence[ProbeImage], *, target: Target | None = None, layers: Sequence[str] = (),
            pooling: str = "mean", image_models: dict | None = None, thumb_size: int | None = None,
            batch_size: int = 16, num_workers: int = 0, progress: bool = True, desc: str = "images") -> Collected:
    """One pass over `images`: pooled activations of `layers` of `target`, embeddings of every model in
    `image_models` (name -> ImageTextModel), and thumbnails if `thumb_size` is set."""
    image_models = image_models or {}
    transforms = ([target.preprocess] if target is not None and layers else []) + \
                 [m.preprocess for m in image_models.values()]
    n = len(images)
    acts: dict[str, np.ndarray] = {}
    embs: dict[str, np.ndarray] = {}
    thumbs: list[bytes] | None = [b""] * n if thumb_size else None
    current: dict[str, torch.Tensor] = {}
    hooks = []
    if target is not None and layers:
        modules = target.modules()
        for layer in layers:
            def hook(_m, _i, out, layer=layer):
                if layer in current:
                    raise ClipevalError(f"layer {layer!r} runs more than once per forward pass; pick another")
                current[layer] = pool(out, pooling, layer).float()
            hooks.append(modules[layer].register_forward_hook(hook))
    loader = DataLoader(_ProbeDataset(images, transforms, thumb_size), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=_collate, persistent_workers=False)
    try:
        for idx, tensors, batch_thumbs in tqdm(loader, desc=desc, disable=not progress, unit="batch"):
            rows = idx.numpy()
            j = 0
            if hooks:
                current.clear()
                target.module(_channels_last(tensors[0]))
                for layer in layers:
                    out = current[layer].numpy()
                    if layer not in acts:
                        acts[layer] = np.empty((n, out.shape[1]), dtype=np.float32)
                    acts[layer][rows] = out
                j = 1
            for name, model in image_models.items():
                e = model.encode_images(tensors[j]).float().numpy()
                if name not in embs:
                    embs[name] = np.empty((n, e.shape[1]), dtype=np.float32)
                embs[name][rows] = e
                j += 1
            if thumbs is not None:
                for r, t in zip(rows, batch_thumbs):
                    thumbs[r] = t
    finally:
        for h in hooks:
            h.remove()
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
