"""Where a unit fires: its spatial activation map on an image, before pooling.

Layouts (clipeval.dissect.pool): `nchw` (B,C,H,W) is the map as it is, `nhwc` (B,H,W,C) is permuted,
token layers `tokens:cls:P` / `tokens:avg:P` drop their P prefix tokens (class, distillation and register
tokens; none where the layer holds patch tokens only) and lay the patch tokens out as their square grid;
`flat` (B,C) has no map. A map covers the network's input, which is a region of the image the
preprocessing chose (`crop_box`); the overlay is drawn on that region.

Maps are kept during the probe pass that collects the pooled activations, only for each unit's most
active images, in two steps that give the same maps whichever engine or device runs the pass:

1. Where the images are forwarded (this process, or a Ray worker), `RunningTop` keeps each unit's
   `keep` most active images seen so far, in neuron_summaries' order (activation descending, then
   image id ascending). Each image's maps are sent back only for the units it entered that list for
   (`pack`): every image of a unit's final top `keep` is among them, since it enters when it is seen.
2. Where the results are gathered, `KeptMaps` merges those candidates in the same order and keeps the
   top `keep` per unit.

Maps are shrunk by max-pooling to at most MAP_SIDE x MAP_SIDE cells (the peak keeps its value) and
stored as uint8 with their own min/max: a few hundred bytes per image (7x7 = 49 B, 24x24 = 576 B).
"""

from __future__ import annotations

import io
import json
import math
import struct

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

# Imported inside the functions that use them: Pillow and the image decoder, only where an overlay is drawn
# (the probe pass does not draw).

MAP_SIDE = 24
MAPS_VERSION = 1  # bump when the kept maps change for the same settings (keys their cache entries)


def token_prefix(layout: str) -> int:
    """Prefix tokens (class, distillation, register tokens) before the patch tokens of a token layer, as its
    layout says (`tokens:cls:P`, `tokens:avg:P`; a bare `tokens:cls` has the class token only)."""
    parts = layout.split(":")
    return int(parts[2]) if len(parts) > 2 else 1


def has_map(layout: str) -> bool:
    """Whether a layer of this layout can have a spatial map (token layers only when their patch tokens
    form a square grid, which is known at the first forward)."""
    return layout.split(":")[0] in ("nchw", "nhwc", "tokens")


def spatial(output: torch.Tensor, layout: str, n_prefix: int = 1) -> torch.Tensor | None:
    """(B, C, h, w) per-unit maps of a layer output of `layout`, or None where it has no spatial layout
    (flat, or patch tokens that do not form a square grid)."""
    if not torch.is_tensor(output):
        return None
    kind = layout.split(":")[0]
    if kind == "nchw" and output.dim() == 4:
        return output
    if kind == "nhwc" and output.dim() == 4:
        return output.permute(0, 3, 1, 2)
    if kind == "tokens" and output.dim() == 3:
        b, t, c = output.shape
        side = math.isqrt(max(t - n_prefix, 0))
        if side >= 1 and side * side == t - n_prefix:
            return output[:, n_prefix:].reshape(b, side, side, c).permute(0, 3, 1, 2)
    return None


def shrink(maps: torch.Tensor, side: int = MAP_SIDE) -> torch.Tensor:
    """Max-pool maps larger than side x side down to at most that size (the peak cell keeps its value)."""
    h, w = maps.shape[-2:]
    if h <= side and w <= side:
        return maps
    return F.adaptive_max_pool2d(maps, (min(h, side), min(w, side)))


def map_of(output: torch.Tensor, layout: str, n_prefix: int = 1) -> torch.Tensor | None:
    """What a hook keeps of a layer output: the shrunk maps as a float32 copy (a later in-place op must
    not change them), on the output's device; None for a layer without a map."""
    sp = spatial(output, layout, n_prefix)
    return None if sp is None else shrink(sp.detach()).to(torch.float32, copy=True)


def _order(vals: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Row order per column by value descending, then id ascending (neuron_summaries' stable argsort)."""
    by_id = ids.argsort(dim=0, stable=True)
    by_val = (-vals.gather(0, by_id)).argsort(dim=0, stable=True)
    return by_id.gather(0, by_val)


class RunningTop:
    """Each unit's `keep` most active images seen so far (values and image ids only), on the device the
    activations are on."""

    def __init__(self, keep: int):
        self.keep = int(keep)
        self.vals: torch.Tensor | None = None  # (<= keep, C)
        self.ids: torch.Tensor | None = None  # (<= keep, C) int64

    def propose(self, pooled: torch.Tensor, image_ids: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        """Merge a batch (pooled (n, C), image ids (n,)): the (n, C) mask of the batch's images that enter
        their unit's list, and the new lists, which `accept` keeps (so a batch retried after a CUDA
        out-of-memory error is not counted twice)."""
        n, c = pooled.shape
        ids = image_ids.to(pooled.device, torch.int64).view(n, 1).expand(n, c)
        vals, all_ids = pooled, ids
        if self.vals is not None:
            vals, all_ids = torch.cat([self.vals, pooled]), torch.cat([self.ids, ids])
        keep = _order(vals, all_ids)[: self.keep]
        new = vals.gather(0, keep), all_ids.gather(0, keep)
        return (new[1][None, :, :] == ids[:, None, :]).any(dim=1), new

    def accept(self, new: tuple) -> None:
        self.vals, self.ids = new

    def update(self, pooled: torch.Tensor, image_ids: torch.Tensor) -> torch.Tensor:
        entered, new = self.propose(pooled, image_ids)
        self.accept(new)
        return entered


_HEAD = struct.Struct("<3i")  # units, h, w


def pack(entered: torch.Tensor, pooled: torch.Tensor, maps: torch.Tensor) -> list[bytes]:
    """Per image of a batch, the units it entered (`entered` (n, C)), their activations and maps, as bytes
    (small and picklable: they travel back from a Ray worker like the thumbnails)."""
    n, _, h, w = maps.shape
    rows, units = entered.nonzero(as_tuple=True)
    vals = pooled[rows, units].float().cpu().numpy()
    sel = maps[rows, units].float().cpu().numpy()
    rows, units = rows.cpu().numpy(), units.cpu().numpy().astype(np.int32)
    bounds = np.searchsorted(rows, np.arange(n + 1))  # nonzero() is row-major: each image's units are contiguous
    out = []
    for i in range(n):
        a, b = bounds[i], bounds[i + 1]
        out.append(
            _HEAD.pack(b - a, h, w)
            + units[a:b].tobytes()
            + vals[a:b].astype(np.float32).tobytes()
            + sel[a:b].astype(np.float32).tobytes()
        )
    return out


def unpack(blob: bytes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(units (m,) int32, activations (m,) float32, maps (m, h, w) float32) of one image's `pack` bytes."""
    m, h, w = _HEAD.unpack_from(blob)
    o = _HEAD.size
    units = np.frombuffer(blob, np.int32, m, o)
    vals = np.frombuffer(blob, np.float32, m, o + 4 * m)
    maps = np.frombuffer(blob, np.float32, m * h * w, o + 8 * m).reshape(m, h, w)
    return units, vals, maps


class KeptMaps:
    """Each unit's `keep` most active images with their maps, merged from the candidates `pack` sends
    (sparse rows of (unit, image id, activation, map), pruned to `keep` per unit as they grow)."""

    def __init__(self, keep: int):
        self.keep = int(keep)
        self._rows: tuple | None = None  # (units, ids, vals, maps (m, h, w)), pruned
        self._pending: list = []
        self._n_pending = 0

    def add(self, image_ids, blobs) -> None:
        """The `pack` bytes of some images (their probe ids in `image_ids`)."""
        for image_id, blob in zip(image_ids, blobs):
            if not len(blob):  # an image that did not decode (the Ray pass sends b'' for it)
                continue
            units, vals, maps = unpack(bytes(blob))
            if len(units):
                self._pending.append((units.astype(np.int64), np.full(len(units), int(image_id), np.int64), vals, maps))
                self._n_pending += len(units)
        if self._n_pending > 4 * max(len(self._rows[0]) if self._rows else 0, 1024):
            self._prune()

    @classmethod
    def from_arrays(cls, keep: int, index: np.ndarray, maps: np.ndarray) -> "KeptMaps":
        """From the cached arrays: index (m, 3) [unit, image id, activation] (ids exact below 2**24), maps."""
        out = cls(keep)
        out._rows = (
            index[:, 0].astype(np.int64),
            index[:, 1].astype(np.int64),
            index[:, 2].astype(np.float32),
            maps.astype(np.float32),
        )
        return out

    def _prune(self) -> tuple:
        if self._pending:
            parts = ([self._rows] if self._rows else []) + self._pending
            units, ids, vals, maps = (np.concatenate([p[j] for p in parts]) for j in range(4))
            order = np.lexsort((ids, -vals, units))  # per unit: activation descending, image id ascending
            u = units[order]
            keep = order[np.arange(len(u)) - np.searchsorted(u, u, side="left") < self.keep]
            self._rows = (units[keep], ids[keep], vals[keep], maps[keep])
            self._pending, self._n_pending = [], 0
        return self._rows or (
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            np.zeros((0, 1, 1), np.float32),
        )

    def renumber(self, keep: np.ndarray) -> None:
        """Image ids after images were left out: the image with old id keep[j] gets id j (ids not in `keep`
        have no map: left-out images never reached the network)."""
        units, ids, vals, maps = self._prune()
        new = np.searchsorted(keep, ids)
        ok = (new < len(keep)) & (keep[np.minimum(new, len(keep) - 1)] == ids)
        self._rows = (units[ok], new[ok].astype(np.int64), vals[ok], maps[ok])

    @property
    def units(self) -> np.ndarray:
        return self._prune()[0]

    @property
    def ids(self) -> np.ndarray:
        return self._prune()[1]

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(index (m, 3) [unit, image id, activation], maps (m, h, w)) for the cache."""
        units, ids, vals, maps = self._prune()
        return np.stack([units, ids, vals.astype(np.float64)], 1), maps

    def lookup(self) -> dict[tuple[int, int], np.ndarray]:
        """(unit, image id) -> map."""
        units, ids, _, maps = self._prune()
        return {(int(u), int(i)): maps[j] for j, (u, i) in enumerate(zip(units, ids))}

    def get(self, unit: int, image_id: int) -> np.ndarray | None:
        return self.lookup().get((int(unit), int(image_id)))


def encode(m: np.ndarray) -> tuple[float, float, bytes]:
    """A float map -> (lo, hi, uint8 bytes row-major); a flat map encodes as zeros."""
    lo, hi = float(m.min()), float(m.max())
    q = np.zeros(m.shape, np.uint8) if hi <= lo else np.round((m - lo) / (hi - lo) * 255).astype(np.uint8)
    return lo, hi, q.tobytes()


def decode(h: int, w: int, lo: float, hi: float, data: bytes) -> np.ndarray:
    q = np.frombuffer(bytes(data), np.uint8).reshape(int(h), int(w)).astype(np.float32)
    return lo + q / 255.0 * (hi - lo)


def map_rows(layer: str, top: pd.DataFrame, kept: KeptMaps) -> pd.DataFrame:
    """Rows (layer, unit, image_id, h, w, lo, hi, map) for the top images `top` (one layer's 'top'
    rows of neuron_summaries) whose map was kept."""
    lookup = kept.lookup()
    rows = []
    for unit, image_id in zip(top["unit"].to_numpy(), top["image_id"].to_numpy()):
        m = lookup.get((int(unit), int(image_id)))
        if m is None:
            continue
        lo, hi, data = encode(m)
        rows.append((layer, int(unit), int(image_id), m.shape[0], m.shape[1], lo, hi, data))
    return pd.DataFrame(rows, columns=["layer", "unit", "image_id", "h", "w", "lo", "hi", "map"])


# Runs stored before the preprocessing's geometry was recorded (models.target.view) were all drawn as if
# the network saw the centre square of 87.5% of the short side (Resize(256) + CenterCrop(224)).
ASSUMED_VIEW = {
    "input": [224, 224],
    "ops": [{"op": "resize_short", "size": 256}, {"op": "center_crop", "size": [224, 224]}],
    "text": "assumed: Resize(short side 256) + CenterCrop(224x224), the centre 87.5% square",
}


def run_view(run: dict) -> tuple[dict | None, str]:
    """The geometry of a run's preprocessing (clipeval.models.targets.preprocess_view) from its stored
    metadata, and a sentence saying where the map is drawn: the recorded one; for a run stored before it was
    recorded the 87.5% centre crop, said to be assumed; None where the preprocessing has a step of unknown
    geometry (the map then covers the whole image, and the sentence says so)."""

    target = (json.loads(run.get("models_json") or "{}") or {}).get("target") or {}
    if "view" not in target:
        return ASSUMED_VIEW, (
            "over the region an 87.5% centre crop keeps (assumed: this run was stored before its "
            "preprocessing's crop was recorded)"
        )
    return view_note(target["view"])


def view_note(view: dict | None) -> tuple[dict | None, str]:
    if view is None:
        return None, "over the whole image (the target's preprocessing has a step whose geometry is not known)"
    return view, f"over the region the network saw ({view['text']})"


def _resized(w: int, h: int, op: dict) -> tuple[int, int]:
    """The size an image of w x h has after a resize step, rounded as torchvision and timm round it."""
    if op["op"] == "resize_short":  # torchvision Resize(int): the short side to size, the long one truncated
        short, long = min(w, h), max(w, h)
        new_short, new_long = op["size"], int(op["size"] * long / short)
        if op.get("max_size") and new_long > op["max_size"]:
            new_short, new_long = int(op["max_size"] * new_short / new_long), op["max_size"]
        return (new_short, new_long) if w <= h else (new_long, new_short)
    if op["op"] == "resize":  # torchvision Resize((h, w))
        return op["size"][1], op["size"][0]
    # timm ResizeKeepRatio: one ratio between the short-side and long-side fits, rounded per side
    ratio_h, ratio_w = h / op["size"][0], w / op["size"][1]
    ratio = max(ratio_h, ratio_w) * op["longest"] + min(ratio_h, ratio_w) * (1.0 - op["longest"])
    return round(w / ratio), round(h / ratio)


def crop_box(view: dict, width: int, height: int) -> tuple[float, float, float, float]:
    """Where the network's input lies on an image of width x height: (x0, y0, x1, y1), pixel edges in the
    image's coordinates, found by replaying the preprocessing's resize, crop and pad steps with their own
    rounding; it reaches past the image where the preprocessing pads."""
    w, h = int(width), int(height)
    x0, y0, sx, sy = 0.0, 0.0, 1.0, 1.0  # the current image's pixel (0, 0) and pixel size, in the image's
    for op in view["ops"]:
        if op["op"] == "trim":  # timm TrimBorder
            b = op["border"]
            x0, y0 = x0 + min(b, h) * sx, y0 + min(b, h) * sy  # timm clamps the left border by the height too
            w, h = max(0, w - 2 * b), max(0, h - 2 * b)
        elif op["op"] == "center_crop":  # torchvision CenterCrop, timm CenterCropOrPad: pad if smaller, then crop
            ch, cw = op["size"]
            if cw > w or ch > h:
                left, top = max(0, (cw - w) // 2), max(0, (ch - h) // 2)
                x0, y0 = x0 - left * sx, y0 - top * sy
                w, h = w + max(0, cw - w), h + max(0, ch - h)
            x0, y0 = x0 + int(round((w - cw) / 2.0)) * sx, y0 + int(round((h - ch) / 2.0)) * sy
            w, h = cw, ch
        else:
            nw, nh = _resized(w, h, op)
            sx, sy = sx * w / nw, sy * h / nh
            w, h = nw, nh
    return x0, y0, x0 + w * sx, y0 + h * sy


# viridis (perceptually uniform, readable in grey and by colour-blind readers) at nine stops, from matplotlib's
VIRIDIS = (
    (68, 1, 84),
    (71, 44, 122),
    (59, 81, 139),
    (44, 113, 142),
    (33, 144, 141),
    (39, 173, 129),
    (92, 200, 99),
    (170, 220, 50),
    (253, 231, 37),
)


def colormap(v: np.ndarray) -> np.ndarray:
    """RGB (float, 0-255) of values in [0, 1] on the VIRIDIS scale, interpolated between its stops."""
    stops = np.linspace(0.0, 1.0, len(VIRIDIS))
    v = np.clip(np.asarray(v, np.float32), 0, 1)
    return np.stack([np.interp(v, stops, [c[i] for c in VIRIDIS]) for i in range(3)], -1).astype(np.float32)


def overlay(
    jpeg: bytes,
    m: np.ndarray,
    opacity: float = 0.5,
    relative_to: tuple[float, float] | None = None,
    view: dict | None = ASSUMED_VIEW,
) -> bytes:
    """The thumbnail with the map upsampled (bilinear) over the region the network saw (`view`: the
    target's preprocessing, see crop_box; None: the whole image), coloured on the VIRIDIS scale over the
    image turned grey where the unit fires: `opacity` at the map's peak, clear where the unit is silent.
    `relative_to` (lo, hi): scale the colours to this range (e.g. the unit's strongest top-image activation),
    else to the map's own. The thumbnail stands for the image: its aspect ratio is the image's up to the
    thumbnail's rounding."""
    from PIL import Image

    from clipeval.datasets.probe import load_rgb

    img = load_rgb(io.BytesIO(jpeg))
    lo, hi = relative_to if relative_to else (float(m.min()), float(m.max()))
    v = np.clip((m - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(m)
    bx0, by0, bx1, by1 = crop_box(view, img.width, img.height) if view else (0, 0, img.width, img.height)
    x0, y0, x1, y1 = (int(round(c)) for c in (bx0, by0, bx1, by1))
    a = np.zeros((img.height, img.width), np.float32)
    if x1 > x0 and y1 > y0:
        heat = (
            np.asarray(
                Image.fromarray((v * 255).astype(np.uint8)).resize((x1 - x0, y1 - y0), Image.BILINEAR), np.float32
            )
            / 255.0
        )
        # the part of the region inside the image (a padding preprocessing reaches past it)
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, img.width), min(y1, img.height)
        a[cy0:cy1, cx0:cx1] = heat[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    rgb = colormap(a)
    alpha = (opacity * a)[..., None]
    # the image turns grey where the unit fires (fully from a quarter of the scale up): the colour scale then
    # reads on any image (yellow to red vanished on a red image), the image's shapes stay visible, and where
    # the unit is silent the image keeps its colours
    colour = np.asarray(img, np.float32)
    grey = np.repeat(np.asarray(img.convert("L"), np.float32)[..., None], 3, -1)
    g = np.clip(4 * a, 0, 1)[..., None]
    base = colour * (1 - g) + grey * g
    out = Image.fromarray(np.clip(base * (1 - alpha) + rgb * alpha, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    out.save(buf, "JPEG", quality=90)
    return buf.getvalue()
