"""Activation collection (one forward pass over the probe for every requested layer, with every image
decoded once for the target, the image-text models and the thumbnail) and per-neuron summaries
(top-k, lowest, random inactive, examples across activation levels, histograms)."""

from __future__ import annotations

import io
import os
import pickle
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from clipeval.compute.batches import ACT, EMB, MAPS, THUMB, ProbeBatch, iterate
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
    failed: list[tuple[int, str]] = ()  # (index into the images given, why) of images that did not decode;
    # the arrays above hold the other images only, in order (and the maps' image ids count those)
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
    sinks: dict | None = None,
) -> Collected:
    """One pass over `images`: pooled activations of `layers` of `target`, embeddings of every model in
    `image_models` (name -> ImageTextModel), and thumbnails if `thumb_size` is set (handed to sinks[THUMB],
    e.g. a ThumbFile, a batch at a time: never all in memory), every model on
    `placement` (batch size and decoding workers default per device). `layouts` (layer -> layout, see
    pool) defaults to what targets.layer_layouts detects. An image that does not decode is skipped and
    counted ('skip') or stops the pass ('fail'). With `maps_keep`, also the spatial activation maps of
    each unit's `maps_keep` most active images (clipeval.dissect.maps), from the same forward pass.
    An output in `sinks` (ACT + layer or EMB + model name -> callable(rows, block)) is handed each batch's
    rows (ids into `images`) instead of being kept: it is then not in the result."""

    if thumb_size and THUMB not in (sinks or {}):
        raise ValueError("thumbnails go to a sink (sinks[THUMB], e.g. a ThumbFile), a batch at a time")
    n = len(images)
    acts: dict[str, np.ndarray] = {}
    embs: dict[str, np.ndarray] = {}
    maps: dict[str, KeptMaps] = {}
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
                if key in (sinks or {}):
                    sinks[key](rows, out)
                    continue
                table, name = (acts, key[len(ACT) :]) if key.startswith(ACT) else (embs, key[len(EMB) :])
                if name not in table:
                    table[name] = np.empty((n, out.shape[1]), dtype=np.float32)
                table[name][rows] = out
            if thumb_size:
                sinks[THUMB](rows, batch_thumbs)
    return without_failed(images, Collected(acts, embs, failed, maps), on_bad_image)


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
        failed,
        got.maps,
    )


def dead_units(A: np.ndarray) -> np.ndarray:
    """Units whose activation is constant over the probe (up to float rounding): no image activates
    them more than another, so they have no top images and nothing to label."""
    return dead_from_range(A.min(0), A.max(0))


def dead_from_range(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """dead_units from each unit's minimum and maximum activation (what a LayerStream keeps)."""
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    return hi - lo <= DEAD_RTOL * np.maximum(1.0, np.maximum(np.abs(lo), np.abs(hi)))


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
    _check_k(k, n_images)
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
    return _summaries(layer, A, np.arange(n_units), order, k, n_low, pos, has)


def _check_k(k: int, n_images: int) -> None:
    if k > n_images:
        raise ClipevalError(f"k={k} is more than the {n_images} probe images")


def _summaries(
    layer: str,
    A: np.ndarray,
    units: np.ndarray,
    order: np.ndarray,
    k: int,
    n_low: int,
    pos: np.ndarray,
    has: np.ndarray,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """neuron_summaries' frames for the columns of A (every probe image, the layer's units `units`),
    given each column's order (most active first) and its random negatives' rank positions `pos`
    (those with `has`)."""
    n_images = A.shape[0]
    dead = dead_units(A)
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
                    "unit": units[u[mask]],
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

    n_units = len(units)
    lo, hi = A.min(0), A.max(0)
    width = np.where(hi > lo, hi - lo, 1.0)
    bins = np.clip(((A - lo) / width * HIST_BINS).astype(int), 0, HIST_BINS - 1)
    counts = np.zeros((HIST_BINS, n_units), dtype=np.int64)
    np.add.at(counts, (bins, np.broadcast_to(np.arange(n_units), A.shape)), 1)
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


# ------------------------------------------------------------------------------ streaming summaries
# The probe pass need not hold a layer's (images x units) matrix: its rows go to a .npy file as they come
# (RowFile) and a LayerStream keeps what the later steps need of them (each unit's top images, its range
# and sum). What needs every image in rank order (levels, random negatives, histograms) is computed from
# the file afterwards, a block of units at a time (stream_summaries). The file is read and written with
# plain reads and writes, not a memory map: a map's resident pages count in the process's memory.
SUMMARY_BUDGET = 256 * 2**20  # bytes a block of stream_summaries' work may take


class RowFile:
    """A float32 (rows, columns) .npy file written and read in blocks of rows (or of columns, for the
    transposed scratch copy), never whole in memory."""

    def __init__(self, path, shape: tuple[int, int] | None = None):
        self.path = Path(path)
        if shape is not None:
            with open(self.path, "wb") as f:
                self._start(f, shape)
        else:
            with open(self.path, "rb") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read(f)
                if fortran or dtype != np.float32 or len(shape) != 2:
                    raise ClipevalError(f"{self.path} is not a (rows, columns) float32 array")
                self.offset, self.shape = f.tell(), tuple(shape)

    def _start(self, f, shape) -> None:
        """Write the header and size the file (f open for writing)."""
        header = self._header(shape)
        f.write(header)
        f.truncate(self.offset + 4 * self.shape[0] * self.shape[1])

    def _header(self, shape) -> bytes:
        """The .npy header of `shape`, whose length (where the rows start) depends on the shape only."""
        self.shape = tuple(int(s) for s in shape)
        out = io.BytesIO()
        np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False, "shape": self.shape})
        self.offset = out.tell()
        return out.getvalue()

    @classmethod
    def shared(cls, path, shape: tuple[int, int]) -> "RowFile":
        """The file at `path` of `shape`, made by whichever of several processes writing rows of it (Ray
        workers) comes first, never emptied by the others: all of them write each row at the same place,
        whether the header is there yet or not, and no row ends past the size the first one gives the file."""
        rows = cls.__new__(cls)
        rows.path = Path(path)
        try:
            fd = os.open(rows.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            rows._header(shape)
            return rows
        with os.fdopen(fd, "wb") as f:
            rows._start(f, shape)
        return rows

    def write_rows(self, rows: np.ndarray, block: np.ndarray) -> None:
        """block[i] -> row rows[i]; each run of consecutive rows in one write."""
        rows = np.asarray(rows, dtype=np.int64)
        block = np.ascontiguousarray(block, dtype=np.float32)
        if not len(rows):
            return
        cuts = np.flatnonzero(np.diff(rows) != 1) + 1
        with open(self.path, "r+b") as f:
            for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(rows)]):
                f.seek(self.offset + 4 * int(rows[a]) * self.shape[1])
                f.write(block[a:b].tobytes())

    def write_columns(self, a: int, block: np.ndarray) -> None:
        """block.T -> columns a.. of every row (the transposed copy: one write per row)."""
        block = np.ascontiguousarray(np.asarray(block, dtype=np.float32).T)
        with open(self.path, "r+b") as f:
            for r in range(self.shape[0]):
                f.seek(self.offset + 4 * (r * self.shape[1] + a))
                f.write(block[r].tobytes())

    def read_at(self, ids: np.ndarray) -> np.ndarray:
        """The rows `ids` (sorted, distinct), one read per run of consecutive ids."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self.shape[1]), dtype=np.float32)
        cuts = np.flatnonzero(np.diff(ids) != 1) + 1
        with open(self.path, "rb") as f:
            for a, b in zip(np.r_[0, cuts], np.r_[cuts, len(ids)]):
                if b > a:
                    f.seek(self.offset + 4 * int(ids[a]) * self.shape[1])
                    out[a:b] = np.fromfile(f, dtype=np.float32, count=(b - a) * self.shape[1]).reshape(b - a, -1)
        return out

    def read_rows(self, a: int, b: int) -> np.ndarray:
        with open(self.path, "rb") as f:
            f.seek(self.offset + 4 * a * self.shape[1])
            return np.fromfile(f, dtype=np.float32, count=(b - a) * self.shape[1]).reshape(b - a, self.shape[1])

    def read_columns(self, a: int, b: int, r0: int = 0, r1: int | None = None) -> np.ndarray:
        """Columns a:b of rows r0:r1 (default: every row): one read per row when they are a small part of
        it, else whole rows."""
        r1 = self.shape[0] if r1 is None else r1
        out = np.empty((r1 - r0, b - a), dtype=np.float32)
        if 2 * (b - a) >= self.shape[1]:
            step = max(1, (b - a) * len(out) * 4 // max(1, 4 * self.shape[1]))  # at most out's size at once
            for r in range(r0, r1, step):
                out[r - r0 : r - r0 + step] = self.read_rows(r, min(r1, r + step))[:, a:b]
            return out
        with open(self.path, "rb") as f:
            for i, r in enumerate(range(r0, r1)):
                f.seek(self.offset + 4 * (r * self.shape[1] + a))
                f.readinto(memoryview(out[i]).cast("B"))
        return out

    def row_blocks(self, budget: int = SUMMARY_BUDGET):
        step = max(1, budget // max(1, 4 * self.shape[1]))
        for a in range(0, self.shape[0], step):
            b = min(self.shape[0], a + step)
            yield a, self.read_rows(a, b)


def _desc_keys(block: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """(units, rows) uint64 keys that sort as neuron_summaries orders images: activation descending, then
    image id ascending (the float's bits made to order like the float; -0.0 counted as 0.0, as a sort does)."""
    bits = (np.asarray(block, dtype=np.float32).T + np.float32(0)).view(np.int32)
    ordered = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).astype(np.int64)
    return ((np.int64(2**31 - 1) - ordered).astype(np.uint64) << np.uint64(32)) | np.asarray(rows, dtype=np.uint64)


def _key_values(keys: np.ndarray) -> np.ndarray:
    ordered = (np.int64(2**31 - 1) - (keys >> np.uint64(32)).astype(np.int64)).astype(np.int32)
    return (ordered ^ ((ordered >> 31) & 0x7FFFFFFF)).view(np.float32)


class LayerStream:
    """Per unit of one layer, over the images fed so far (a batch of rows at a time, in any order): its
    `keep` most active images (ties: the lower image id), its minimum, maximum and sum. Two streams over
    disjoint images merge into the stream over both (what a Ray worker's batch summary is)."""

    def __init__(self, keep: int):
        self.keep = int(keep)
        self.keys: np.ndarray | None = None  # (units, <= keep) uint64, see _desc_keys
        self.lo = self.hi = self.total = None
        self.n = 0

    def add(self, rows, block: np.ndarray) -> None:
        block = np.asarray(block, dtype=np.float32)
        if not len(block):
            return
        other = LayerStream(self.keep)
        other.keys = _desc_keys(block, rows)
        other.lo, other.hi = block.min(0), block.max(0)
        other.total, other.n = block.sum(0, dtype=np.float64), len(block)
        self.merge(other)

    def merge(self, other: "LayerStream") -> None:
        if other.keys is None:
            return
        if self.keys is None:
            self.keys, self.lo, self.hi, self.total = other.keys, other.lo, other.hi, other.total
        else:
            self.keys = np.concatenate([self.keys, other.keys], axis=1)
            self.lo, self.hi = np.minimum(self.lo, other.lo), np.maximum(self.hi, other.hi)
            self.total = self.total + other.total
        self.n += other.n
        if self.keys.shape[1] > self.keep:
            self.keys = np.partition(self.keys, self.keep - 1, axis=1)[:, : self.keep]

    @property
    def n_units(self) -> int:
        return 0 if self.keys is None else self.keys.shape[0]

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(units, k) image ids and activations, most active first (k at most `keep` and the images fed)."""
        keys = np.sort(self.keys, axis=1)[:, :k]
        return (keys & np.uint64(0xFFFFFFFF)).astype(np.int64), _key_values(keys)

    def dead(self) -> np.ndarray:
        return dead_from_range(self.lo, self.hi)

    def mean(self) -> np.ndarray:
        return self.total / max(1, self.n)

    def renumber(self, keep: np.ndarray) -> None:
        """Image ids counted again among the images `keep` (sorted; the others were never fed)."""
        ids = np.searchsorted(keep, (self.keys & np.uint64(0xFFFFFFFF)).astype(np.int64)).astype(np.uint64)
        self.keys = (self.keys & ~np.uint64(0xFFFFFFFF)) | ids


def batch_part(stream: LayerStream, rows, block: np.ndarray) -> bytes:
    """Feed a batch to a Ray worker's running `stream`; return what the driver's stream needs of the batch
    (merge_part takes it): the (unit, image) entries that entered the worker's top, and the batch's range
    and sum per unit. An image of a unit's top over all images is in the top of what its worker has seen
    when it comes, so the driver misses none; and the entries thin out as the worker's tops fill: about
    12 x keep x batch / images seen + 20 bytes per unit, where the rows are 4 x batch."""
    rows = np.asarray(rows, dtype=np.int64)
    block = np.asarray(block, dtype=np.float32)
    stream.add(rows, block)
    unit, col = np.nonzero(np.isin((stream.keys & np.uint64(0xFFFFFFFF)).astype(np.int64), rows))
    lo, hi, total = block.min(0), block.max(0), block.sum(0, dtype=np.float64)
    return pickle.dumps((unit.astype(np.int32), stream.keys[unit, col], lo, hi, total, len(rows)))


_MISSING = np.uint64(2**64 - 1)  # after every real key (activation descending, then image id)


def merge_part(stream: LayerStream, part: bytes) -> None:
    """Merge a worker's batch_part into the driver's `stream`. Units that took fewer entries than others
    are filled with keys that sort last: the driver then holds at least `keep` real entries of each unit
    (all of its worker's top), so merge drops them."""
    unit, keys, lo, hi, total, n = pickle.loads(part)
    counts = np.bincount(unit, minlength=len(lo))
    dense = np.full((len(lo), int(counts.max(initial=0))), _MISSING, dtype=np.uint64)
    dense[unit, np.arange(len(unit)) - np.repeat(np.cumsum(counts) - counts, counts)] = keys  # unit-major
    other = LayerStream(stream.keep)
    other.keys, other.lo, other.hi, other.total, other.n = dense, lo, hi, total, n
    stream.merge(other)


THUMB_CHUNK = 4096  # thumbnails read back at once (about 20 MB)


class ThumbFile:
    """The thumbnails a probe pass makes, on disk instead of in memory: a folder holding, per process that
    wrote some (the driver, or each Ray worker), an append-only file of JPEG bytes (N.jpg) and an index
    of (probe row, offset, length) int64 records (N.idx) appended after each batch's bytes, so a record
    never points at bytes not yet written. Each writer claims its own N, so concurrent writers (also on
    a shared file system) never write to one file; a row written twice (a retried batch) has the same
    bytes either way. Read back by probe row, a chunk at a time (`read`)."""

    def __init__(self, path):
        self.path = Path(path)
        self.part: int | None = None  # this process's N, claimed at its first batch
        self.keep: np.ndarray | None = None  # after keep_only: image id i is probe row keep[i]

    def _claim(self) -> int:
        self.path.mkdir(parents=True, exist_ok=True)
        part = 0
        while True:
            try:
                os.close(os.open(self.path / f"{part}.idx", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                return part
            except FileExistsError:
                part += 1

    def __call__(self, rows, blobs) -> None:
        """Append a batch: blobs[i] is the thumbnail of probe row rows[i]."""
        rows = np.asarray(rows, dtype=np.int64)
        if not len(rows):
            return
        if self.part is None:
            self.part = self._claim()
        blobs = [bytes(b) for b in blobs]
        lengths = np.array([len(b) for b in blobs], dtype=np.int64)
        with open(self.path / f"{self.part}.jpg", "ab") as f:
            start = f.seek(0, os.SEEK_END)
            f.write(b"".join(blobs))
        offsets = start + np.cumsum(lengths) - lengths
        with open(self.path / f"{self.part}.idx", "ab") as f:
            f.write(np.stack([rows, offsets, lengths], axis=1).tobytes())

    def keep_only(self, keep: np.ndarray) -> None:
        """The images `keep` (sorted rows; the others did not decode) counted again from 0."""
        keep = np.asarray(keep, dtype=np.int64)
        self.keep = keep if self.keep is None else self.keep[keep]

    def _locate(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), 3) part, offset, length of each of `rows` (sorted), part -1 where none was written;
        the index files are read a chunk of records at a time."""
        where = np.full((len(rows), 3), -1, dtype=np.int64)
        if not len(rows) or not self.path.is_dir():
            return where
        for idx in self.path.glob("*.idx"):
            part, size = int(idx.stem), idx.stat().st_size // 24  # a record cut short by a crash is left out
            with open(idx, "rb") as f:
                for a in range(0, size, THUMB_CHUNK * 16):
                    rec = np.fromfile(f, dtype=np.int64, count=3 * min(THUMB_CHUNK * 16, size - a)).reshape(-1, 3)
                    pos = np.minimum(np.searchsorted(rows, rec[:, 0]), len(rows) - 1)
                    hit = rows[pos] == rec[:, 0]
                    where[pos[hit], 0] = part
                    where[pos[hit], 1:] = rec[hit, 1:]
        return where

    def read(self, ids, chunk: int = THUMB_CHUNK):
        """(ids, {id: JPEG}) per chunk of the image ids `ids` (sorted), the dict holding those this pass
        made; the index is read once, the bytes of each chunk's thumbnails only."""
        ids = np.asarray(ids, dtype=np.int64)
        where = self._locate(ids if self.keep is None else self.keep[ids])
        for a in range(0, len(ids), chunk):
            got: dict[int, bytes] = {}
            mine, spots = ids[a : a + chunk], where[a : a + chunk]
            for part in np.unique(spots[spots[:, 0] >= 0, 0]):
                blob = self.path / f"{part}.jpg"
                size = blob.stat().st_size
                sel = np.flatnonzero(spots[:, 0] == part)
                sel = sel[np.argsort(spots[sel, 1], kind="stable")]  # in file order
                with open(blob, "rb") as f:
                    for i in sel:
                        offset, length = int(spots[i, 1]), int(spots[i, 2])
                        if offset + length <= size:
                            f.seek(offset)
                            got[int(mine[i])] = f.read(length)
            yield mine, got

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self.part, self.keep = None, None  # written again, it starts afresh


STREAM = "stream/"  # + an output key: a batch's batch_part, pickled, from a worker that wrote its rows


class WorkerRows:
    """On a Ray worker: writes the probe pass's outputs in `specs` (output key -> (cache file, rows,
    keep)) to their cache files itself (this machine, or a file system every node shares at the same
    path), and hands back in their place, for outputs with a `keep`, the batch_part of the worker's
    running LayerStream (in the first row of STREAM + key; the other rows b''). With `thumbs` (a
    ThumbFile's folder) the batch's thumbnails go there too, and nothing per image comes back. `check`: (path, text) of a
    file the driver wrote beside the cache files; a worker that does not read the same text there would
    write rows the driver never sees, and stops at its first batch instead."""

    def __init__(
        self, specs: dict[str, tuple[str, int, int]], check: tuple[str, str] | None = None, thumbs: str | None = None
    ):
        self.specs, self.check = specs, check
        self.thumbs = ThumbFile(thumbs) if thumbs else None  # the batches' thumbnails go there, not back
        self.files: dict[str, RowFile] = {}
        self.streams: dict[str, LayerStream] = {}

    def _check(self) -> None:
        path, text = self.check
        try:
            seen = Path(path).read_text()
        except OSError:
            seen = None
        if seen != text:
            raise ClipevalError(
                f"this Ray worker ({os.uname().nodename}) does not see the driver's cache folder "
                f"{Path(path).parent}: the workers write the probe pass's activations there, so it must be on "
                "a file system every node mounts at the same path (--cache-dir)"
            )
        self.check = None

    def __call__(self, out: dict, rows: np.ndarray, decoded: np.ndarray) -> dict:
        """`out` of a batch of images `rows`, of which `decoded` (bool) went through the models (the
        others' rows are zeros, left out as by the local pass)."""
        if self.check is not None:
            self._check()
        if self.thumbs is not None and THUMB in out:
            self.thumbs(rows[decoded], out.pop(THUMB)[decoded])
        for key, (path, n_rows, keep) in self.specs.items():
            if key not in out:
                continue
            block = out.pop(key)[decoded]
            if key not in self.files:
                self.files[key] = RowFile.shared(path, (n_rows, block.shape[1]))
            self.files[key].write_rows(rows[decoded], block)
            if keep and len(block):
                out[STREAM + key] = np.full(len(rows), b"", dtype=object)
                out[STREAM + key][0] = batch_part(self.streams.setdefault(key, LayerStream(keep)), rows[decoded], block)
        return out


def stream_file(path, keep: int, budget: int = SUMMARY_BUDGET) -> LayerStream:
    """A LayerStream of a layer's rows already on disk (a cached pass), read a block of rows at a time."""
    stream = LayerStream(keep)
    for a, block in RowFile(path).row_blocks(budget):
        stream.add(np.arange(a, a + len(block)), block)
    return stream


def random_positions(
    n_images: int, first: np.ndarray, end: int, n_contrast: int, seed: int, budget: int = SUMMARY_BUDGET
) -> tuple[np.ndarray, np.ndarray]:
    """neuron_summaries' random negatives as rank positions, drawn from the same random numbers a row
    block at a time: per unit u, the n_contrast positions in [first[u], end) with the smallest keys
    (rank position p's key is the (p, u) entry of rng.random((n_images, units)), as there)."""
    n_units = len(first)
    rng = np.random.default_rng(seed)
    best_keys = np.empty((0, n_units))
    best_pos = np.empty((0, n_units), dtype=np.int64)
    step = max(1, budget // max(1, 24 * n_units))
    for a in range(0, n_images, step):
        b = min(n_images, a + step)
        keys = rng.random((b - a, n_units))  # the same stream as one call for the whole matrix
        p = np.arange(a, b)[:, None]
        keys[(p < first[None, :]) | (p >= end)] = np.inf
        both_keys = np.concatenate([best_keys, keys])
        both_pos = np.concatenate([best_pos, np.broadcast_to(p, keys.shape)])
        pick = np.argsort(both_keys, axis=0, kind="stable")[:n_contrast]  # earlier positions first on ties
        best_keys = np.take_along_axis(both_keys, pick, axis=0)
        best_pos = np.take_along_axis(both_pos, pick, axis=0)
    return best_pos, np.isfinite(best_keys)


def stream_summaries(
    layer: str,
    path,
    stream: LayerStream,
    k: int,
    n_contrast: int,
    seed: int,
    scratch: Path,
    budget: int = SUMMARY_BUDGET,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """neuron_summaries(layer, A, k, n_contrast, seed) with A the rows in `path` (a RowFile) and `stream`
    fed with them, in memory bounded by `budget` whatever the number of images: one pass over the rows
    counts each unit's images at least as active as its k-th top image (where its random candidates
    start) and, when the matrix exceeds the budget, copies it transposed to `scratch`; the random
    positions come from the same random numbers; then each block of units is ranked as a whole."""
    rows = RowFile(path)
    n_images, n_units = rows.shape
    _check_k(k, n_images)
    n_low = min(n_contrast, max(0, n_images - k))
    kth = stream.top(k)[1][:, k - 1]
    at_least = np.zeros(n_units, dtype=np.int64)
    whole = 4 * n_images * n_units * 10 <= budget  # A, its order and temporaries: rank it in one block
    columns = None if whole else RowFile(Path(scratch) / f"transposed-{os.getpid()}.npy", (n_units, n_images))
    try:
        for a, block in rows.row_blocks(budget // 2):
            at_least += (block >= kth).sum(0)
            if columns is not None:
                columns.write_columns(a, block)
        start = max(k, int(np.ceil((1 - INACTIVE_QUANTILE) * n_images)))
        pos, has = random_positions(n_images, np.maximum(start, at_least), n_images - n_low, n_contrast, seed, budget)
        parts = []
        width = n_units if whole else max(1, budget // (40 * n_images))
        for u0 in range(0, n_units, width):
            u1 = min(n_units, u0 + width)
            A = rows.read_rows(0, n_images) if whole else columns.read_rows(u0, u1).T
            order = np.argsort(-A, axis=0, kind="stable")
            parts.append(_summaries(layer, A, np.arange(u0, u1), order, k, n_low, pos[:, u0:u1], has[:, u0:u1]))
    finally:
        if columns is not None:
            columns.path.unlink(missing_ok=True)
    images, hist, stats = (pd.concat(frames, ignore_index=True) for frames in zip(*parts))
    # neuron_summaries' row order: kind, then rank, then unit (bins: bin, then unit)
    kind = images["kind"].map({"top": 0, "low": 1, "random": 2, "level": 3})
    images = images.iloc[np.lexsort((images["unit"], images["rank"], kind))].reset_index(drop=True)
    hist = hist.iloc[np.lexsort((hist["unit"], hist["bin"]))].reset_index(drop=True)
    return images, hist, stats
