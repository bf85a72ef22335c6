"""Activation collection (one forward pass over the probe for every requested layer, with every image
decoded once for the target, the image-text models and the thumbnail) and per-neuron summaries
(top-k, lowest, random inactive, examples across activation levels, histograms)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import pandas as pd

from clipeval.compute.batches import ACT, EMB, MAPS, ProbeBatch, iterate
from clipeval.compute.device import CPU, Placement
from clipeval.datasets.probe import ProbeImage
from clipeval.dissect.maps import KeptMaps
from clipeval.errors import ClipevalError
from clipeval.models.targets import Target

LEVEL_QUANTILES = (0.995, 0.98, 0.95, 0.9, 0.75, 0.5, 0.25, 0.05)
HIST_BINS = 24
INACTIVE_QUANTILE = 0.9  # 'random' contrast images come from below this activation quantile
# a unit is dead when its activations over the probe spread less than this (relative to their size)
DEAD_RTOL = 1e-6


@dataclass
class Collected:
    activations: dict[str, np.ndarray]  # layer -> (images, units) float32
    embeddings: dict[str, np.ndarray]  # model name -> (images, dim) float32, L2-normalised
    thumbnails: list[bytes] | None
    failed: list[tuple[int, str]] = ()  # (index into the images given, why) of images that did not decode;
    # the arrays and thumbnails above hold the other images only, in order (and the maps' image ids count those)
    maps: dict = field(default_factory=dict)  # layer -> maps.KeptMaps (layers with a spatial layout)


def collect(
    images: Sequence[ProbeImage],
    *,
    target: Target | None = None,
    layers: Sequence[str] = (),
    pooling: str = "mean",
    image_models: dict | None = None,
    thumb_size: int | None = None,
    batch_size: int | None = None,
    num_workers: int | None = None,
    progress: bool = True,
    desc: str = "images",
    placement: Placement = CPU,
    layouts: dict[str, str] | None = None,
    on_bad_image: str = "skip",
    maps_keep: int = 0,
) -> Collected:
    """One pass over `images`: pooled activations of `layers` of `target`, embeddings of every model in
    `image_models` (name -> ImageTextModel), and thumbnails if `thumb_size` is set, every model on
    `placement` (batch size and decoding workers default per device). `layouts` (layer -> layout, see
    pool) defaults to what targets.layer_layouts detects. An image that does not decode is skipped and
    counted ('skip') or stops the pass ('fail'). With `maps_keep`, also the spatial activation maps of
    each unit's `maps_keep` most active images (clipeval.dissect.maps), from the same forward pass."""

    n = len(images)
    acts: dict[str, np.ndarray] = {}
    embs: dict[str, np.ndarray] = {}
    maps: dict[str, KeptMaps] = {}
    thumbs: list[bytes] | None = [b""] * n if thumb_size else None
    failed: list[tuple[int, str]] = []
    with ProbeBatch(
        target, layers, pooling, image_models, thumb_size, placement, batch_size, layouts=layouts, maps_keep=maps_keep
    ) as work:
        for rows, tensors, batch_thumbs in iterate(
            [im.path for im in images],
            work.decode,
            placement,
            batch_size,
            num_workers,
            progress=progress,
            desc=desc,
            failed=failed,
        ):
            if failed and on_bad_image == "fail":
                raise bad_image_error(images, failed)
            for key, out in work.forward(tensors, rows).items():
                if key.startswith(MAPS):
                    maps.setdefault(key[len(MAPS) :], KeptMaps(maps_keep)).add(rows, out)
                    continue
                table, name = (acts, key[len(ACT) :]) if key.startswith(ACT) else (embs, key[len(EMB) :])
                if name not in table:
                    table[name] = np.empty((n, out.shape[1]), dtype=np.float32)
                table[name][rows] = out
            if thumbs is not None:
                for r, t in zip(rows, batch_thumbs):
                    thumbs[r] = t
    return without_failed(images, Collected(acts, embs, thumbs, failed, maps), on_bad_image)


def bad_image_error(images: Sequence[ProbeImage], failed: list[tuple[int, str]]) -> ClipevalError:
    """What --on-bad-image fail stops with: the first image that did not decode, and why."""
    i, why = min(failed)
    return ClipevalError(
        f"cannot decode probe image {images[i].path}: {why} (pass --on-bad-image skip to leave such images out)"
    )


def without_failed(images: Sequence[ProbeImage], got: Collected, on_bad_image: str) -> Collected:
    """A pass's result with the images that did not decode (got.failed) left out and counted, or for
    'fail' an error naming the first; the same for the local and the Ray pass."""
    failed = sorted(got.failed)
    if not failed:
        return got
    if on_bad_image == "fail":
        raise bad_image_error(images, failed)
    gone = {i for i, _ in failed}
    keep = np.array([i for i in range(len(images)) if i not in gone], dtype=np.int64)
    if not len(keep):
        raise ClipevalError(f"none of the {len(images)} probe images could be decoded (e.g. {failed[0][1]})")
    for kept in got.maps.values():
        kept.renumber(keep)
    return Collected(
        {k: v[keep] for k, v in got.activations.items()},
        {k: v[keep] for k, v in got.embeddings.items()},
        [got.thumbnails[i] for i in keep] if got.thumbnails is not None else None,
        failed,
        got.maps,
    )


def dead_units(A: np.ndarray) -> np.ndarray:
    """Units whose activation is constant over the probe (up to float rounding): no image activates
    them more than another, so they have no top images and nothing to label."""
    A = np.asarray(A, dtype=np.float64)
    spread = A.max(0) - A.min(0)
    return spread <= DEAD_RTOL * np.maximum(1.0, np.abs(A).max(0))


def neuron_summaries(
    layer: str, A: np.ndarray, k: int, n_contrast: int, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per neuron of one layer: images of kind top/low/random/level with activations, a histogram, and
    per unit whether it is dead and how many contrast negatives (low + random images) it has.

    Dead units (constant activation) get a histogram but no images: their 'top' images would just be
    the first images of the probe. Random negatives are drawn per unit by rank position: among the
    images ranked below the unit's top (1 - INACTIVE_QUANTILE) share, strictly less active than its
    k-th top image and not among its 'low' images (every negative is a distinct image), so ties (a unit at its minimum on 90% of the probe, common after ReLU6) still leave
    it negatives; a unit with fewer candidates than n_contrast keeps fewer, without taking any from
    the other units of the layer."""
    n_images, n_units = A.shape
    if k > n_images:
        raise ClipevalError(f"k={k} is more than the {n_images} probe images")
    dead = dead_units(A)
    order = np.argsort(-A, axis=0, kind="stable")  # (images, units), most active first
    sorted_acts = np.take_along_axis(A, order, axis=0)
    n_low = min(n_contrast, max(0, n_images - k))
    rng = np.random.default_rng(seed)
    start = max(k, int(np.ceil((1 - INACTIVE_QUANTILE) * n_images)))
    candidate = np.zeros(A.shape, dtype=bool)  # by rank position
    candidate[start:] = sorted_acts[start:] < sorted_acts[k - 1]
    candidate[n_images - n_low :] = False  # the 'low' images: a negative drawn again would count twice in the AUC
    keys = rng.random(A.shape)
    keys[~candidate] = np.inf
    pos = np.argsort(keys, axis=0, kind="stable")[:n_contrast]  # (<= n_contrast, units) rank positions
    has = np.isfinite(np.take_along_axis(keys, pos, axis=0))
    random_idx = np.take_along_axis(order, pos, axis=0)
    level_pos = sorted({min(n_images - 1, int((1 - q) * n_images)) for q in LEVEL_QUANTILES})

    parts = []
    live = np.flatnonzero(~dead)

    def add(kind: str, idx: np.ndarray, keep: np.ndarray | None = None):
        idx = idx[:, live]
        if idx.size == 0:
            return
        r, u = np.meshgrid(np.arange(idx.shape[0]), live, indexing="ij")
        mask = np.ones(idx.shape, dtype=bool) if keep is None else keep[:, live]
        parts.append(
            pd.DataFrame(
                {
                    "layer": layer,
                    "unit": u[mask],
                    "kind": kind,
                    "rank": r[mask] + 1,
                    "image_id": idx[mask],
                    "activation": A[idx, live][mask],
                }
            )
        )

    add("top", order[:k])
    add("low", order[::-1][:n_low])
    add("random", random_idx, has)
    add("level", order[level_pos])
    images = (
        pd.concat(parts, ignore_index=True)
        if parts
        else pd.DataFrame(columns=["layer", "unit", "kind", "rank", "image_id", "activation"])
    )

    units = np.arange(n_units)
    lo, hi = A.min(0), A.max(0)
    width = np.where(hi > lo, hi - lo, 1.0)
    bins = np.clip(((A - lo) / width * HIST_BINS).astype(int), 0, HIST_BINS - 1)
    counts = np.zeros((HIST_BINS, n_units), dtype=np.int64)
    np.add.at(counts, (bins, np.broadcast_to(units, A.shape)), 1)
    b, u = np.meshgrid(np.arange(HIST_BINS), units, indexing="ij")
    edges = lo + width * np.arange(HIST_BINS + 1)[:, None] / HIST_BINS
    hist = pd.DataFrame(
        {
            "layer": layer,
            "unit": u.ravel(),
            "bin": b.ravel(),
            "lo": edges[:-1].ravel(),
            "hi": edges[1:].ravel(),
            "count": counts.ravel(),
        }
    )
    stats = pd.DataFrame(
        {"layer": layer, "unit": units, "dead": dead, "n_negatives": np.where(dead, 0, n_low + has.sum(0)).astype(int)}
    )
    return images, hist, stats
