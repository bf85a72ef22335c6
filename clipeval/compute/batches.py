"""Per-image work as plain maps over batches of image references, with the models loaded once.

Three kinds of work, each a class built around already-loaded models on one Placement:

- ProbeBatch: decode + target forward (pooled activations of some layers) + image embeddings of the
  labelling model(s) + thumbnails, every image decoded once for all of them.
- ImageEmbedder: image embeddings of one evaluator model.
- YesNoBatch: P(yes) of a VQA model per (image, question).

Each splits into `decode(path)` (CPU work: read, convert, preprocess; runs in DataLoader workers) and
`forward(tensors, ...)` (the models, on the placement's device, batch halved on CUDA out-of-memory), and
has `__call__(batch: dict) -> dict` taking a batch of image paths and returning numpy arrays, the
shape a Ray Data `map_batches` callable class takes; `from_config`/`from_name` load the models once,
as an actor's constructor would. Locally `iterate()` drives them with a DataLoader:
decoding in worker processes, pinned memory and non-blocking copies on CUDA, so that decoding the next
batch overlaps the forward pass of this one.
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from clipeval.compute.device import CPU, DTYPES, OomHalving, Placement, resolve_device
from clipeval.compute.progress import bar
from clipeval.datasets.probe import load_rgb, thumbnail_jpeg
from clipeval.dissect.maps import RunningTop, has_map, map_of, pack, token_prefix
from clipeval.dissect.pooling import pooling_hook
from clipeval.errors import ClipevalError
from clipeval.models.vqa import Blip2Vqa

# Imported inside the functions that use them: the model loaders (they import timm, open_clip and
# transformers lazily themselves), only when a batch needs one.

ACT = "activations/"  # output keys: ACT + layer name, EMB + model name, MAPS + layer name
EMB = "embeddings/"
MAPS = "maps/"
THUMB = "thumbnail"  # output key of the thumbnails (JPEG bytes per image)


# ------------------------------------------------------------------------------------------ loading
# what PIL and load_rgb raise for an image that passed the header check but does not decode
DECODE_ERRORS = (ClipevalError, OSError, ValueError, SyntaxError)


class _Decoded(Dataset):
    def __init__(self, items: Sequence, decode: Callable, skip_bad: bool = False):
        self.items, self.decode, self.skip_bad = items, decode, skip_bad

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        """(i, tensors, extra), or with skip_bad (i, None, why) for an item that does not decode."""
        if not self.skip_bad:
            tensors, extra = self.decode(self.items[i])
            return i, tensors, extra
        try:
            tensors, extra = self.decode(self.items[i])
        except DECODE_ERRORS as e:
            return i, None, str(e) or type(e).__name__
        return i, tensors, extra


def _collate(batch):
    good = [b for b in batch if b[1] is not None]
    failed = [(b[0], b[2]) for b in batch if b[1] is None]
    idx = torch.tensor([b[0] for b in good], dtype=torch.long)
    tensors = [torch.stack([b[1][j] for b in good]) for j in range(len(good[0][1]) if good else 0)]
    return idx, tensors, [b[2] for b in good], failed


def iterate(
    items: Sequence,
    decode: Callable,
    placement: Placement = CPU,
    batch_size: int | None = None,
    num_workers: int | None = None,
    *,
    progress: bool = True,
    desc: str = "images",
    failed: list | None = None,
) -> Iterator[tuple[np.ndarray, list[torch.Tensor], list]]:
    """(row indices, stacked tensors, extras) per batch of `items`, decoded by `decode(item) ->
    (list of tensors, extra)` in `num_workers` processes (the placement's default where None). On CUDA
    the batches come in pinned memory, so Placement.inputs copies them without blocking.

    With a `failed` list, an item that does not decode is left out of its batch and (index, why) is
    appended to the list, counted on the bar; without, its error stops the pass."""
    workers = placement.workers(num_workers)
    loader = DataLoader(
        _Decoded(items, decode, skip_bad=failed is not None),
        batch_size=placement.batch_size(batch_size),
        num_workers=workers,
        collate_fn=_collate,
        pin_memory=placement.is_cuda,
        persistent_workers=False,
        prefetch_factor=4 if workers else None,
    )
    shown = bar(loader, desc=desc, disable=not progress, unit="batch")
    for idx, tensors, extras, batch_failed in shown:
        if batch_failed:
            failed.extend(batch_failed)
            shown.set_postfix(skipped=len(failed))
        if len(idx):
            yield idx.numpy(), tensors, extras


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.float().cpu().numpy()


def channels_last(batch: torch.Tensor) -> torch.Tensor:
    """Images in channels-last memory order: CPU convolutions (oneDNN) run faster on it (EfficientNet-Lite0
    forward 1.46x, bench/bench_dissect.py), and so do cuDNN's in half precision; values equal up to float
    rounding, and the model's weights are left as they are."""
    return batch.contiguous(memory_format=torch.channels_last) if batch.dim() == 4 else batch


def place_image_text(model, placement: Placement):
    """Move an image-text model to the placement (models without `to_placement` must already be there)."""
    if hasattr(model, "to_placement"):
        model.to_placement(placement)
    return model


# ------------------------------------------------------------------------------------ probe images
class DecodeProbe:
    """One decode per image for the target, every labelling model and the thumbnail (picklable: it runs
    in DataLoader workers and Ray tasks)."""

    def __init__(self, transforms: Sequence[Callable], thumb_size: int | None):
        self.transforms, self.thumb_size = list(transforms), thumb_size

    def __call__(self, path: str) -> tuple[list[torch.Tensor], bytes]:
        img = load_rgb(path)
        thumb = thumbnail_jpeg(img, self.thumb_size) if self.thumb_size else b""
        return [t(img) for t in self.transforms], thumb


class ProbeBatch:
    """Decode + target forward + image embeddings for batches of probe images.

    `forward` returns {ACT + layer: (n, units) float32 pooled activations, EMB + name: (n, dim) float32
    L2-normalised embeddings}, and with `maps_keep` {MAPS + layer: (n,) bytes}: per image, the maps of
    the units for which it is among the `maps_keep` most active images seen so far (clipeval.dissect.maps;
    layers with a spatial layout only). Hooks on the target's layers stay registered until `close()`."""

    def __init__(
        self,
        target=None,
        layers: Sequence[str] = (),
        pooling: str = "mean",
        image_models: dict | None = None,
        thumb_size: int | None = None,
        placement: Placement = CPU,
        batch_size: int | None = None,
        log: Callable[[str], None] | None = None,
        layouts: dict[str, str] | None = None,
        maps_keep: int = 0,
    ):
        from clipeval.models.targets import layer_layouts

        self.placement = placement
        self.target = target if (target is not None and layers) else None
        self.layers = list(layers) if self.target is not None else []
        self.pooling = pooling
        self.image_models = {n: place_image_text(m, placement) for n, m in (image_models or {}).items()}
        self.thumb_size = thumb_size
        transforms = ([self.target.preprocess] if self.target is not None else []) + [
            m.preprocess for m in self.image_models.values()
        ]
        self.decode = DecodeProbe(transforms, thumb_size)
        self.oom = OomHalving(placement.batch_size(batch_size), "images", log)
        self._current: dict[str, torch.Tensor] = {}
        self._maps: dict[str, torch.Tensor | None] = {}
        self._tops: dict[str, RunningTop] = {}
        self._hooks = []
        if self.target is not None:
            # where each layer's channels are, found on a CPU dummy forward before the model is placed
            layouts = layouts or layer_layouts(self.target, self.layers)
            placement.module(self.target.module)
            modules = self.target.modules()
            for layer in self.layers:
                self._hooks.append(
                    modules[layer].register_forward_hook(pooling_hook(self._current, layer, pooling, layouts[layer]))
                )
                if maps_keep and has_map(layouts[layer]):
                    self._tops[layer] = RunningTop(maps_keep)
                    self._hooks.append(
                        modules[layer].register_forward_hook(
                            _map_hook(self._maps, layer, layouts[layer], token_prefix(layouts[layer]))
                        )
                    )

    @classmethod
    def from_config(
        cls,
        config,
        device="cpu",
        *,
        layers: Sequence[str] | None = None,
        labeller: bool = True,
        thumb_size: int | None = None,
        batch_size: int | None = None,
    ) -> "ProbeBatch":
        """Load a DissectConfig's target (and labelling model) once, on `device` in config.dtype: what a
        worker process or a Ray actor builds before its first batch."""
        from clipeval.models import targets as targets_mod
        from clipeval.models.image_text import load_image_text

        placement = Placement(resolve_device(device), DTYPES[config.dtype])
        target = targets_mod.load_target(config.target.name, config.target.weights)
        layers = tuple(config.layers if layers is None else layers)
        targets_mod.check_layers(target, layers)
        models = {"labelling": load_image_text(config.image_text, placement)} if labeller else {}
        return cls(target, layers, config.pooling, models, thumb_size, placement, batch_size)

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @torch.no_grad()
    def forward(self, tensors: Sequence[torch.Tensor], rows: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """The models on one batch of decoded images (tensors as DecodeProbe makes them, stacked); `rows`:
        the images' ids in the probe (needed to keep maps: ties go to the lower id, as in the top-k)."""

        n = len(tensors[0]) if len(tensors) else 0
        if self._tops and (rows is None or len(rows) != n):
            raise ValueError("keeping activation maps needs the images' row ids")
        ids = torch.as_tensor(np.asarray(rows if rows is not None else [], dtype=np.int64))

        def part(a: int, b: int) -> dict[str, np.ndarray]:
            out: dict[str, np.ndarray] = {}
            accepted = []
            j = 0
            if self.target is not None:
                self._current.clear()
                self._maps.clear()
                self.target.module(channels_last(self.placement.inputs(tensors[0][a:b])))
                for layer in self.layers:
                    out[ACT + layer] = _to_numpy(self._current[layer])
                for layer, top in self._tops.items():
                    maps = self._maps.get(layer)
                    if maps is not None:  # None: tokens that do not form a square grid (no map)
                        entered, new = top.propose(self._current[layer], ids[a:b])
                        blobs = pack(entered, self._current[layer], maps)
                        out[MAPS + layer] = np.empty(len(blobs), dtype=object)
                        out[MAPS + layer][:] = blobs
                        accepted.append((top, new))
                self._current.clear()
                self._maps.clear()
                j = 1
            for name, model in self.image_models.items():
                out[EMB + name] = _to_numpy(model.encode_images(self.placement.inputs(tensors[j][a:b])))
                j += 1
            for top, new in accepted:  # only once the part is through: an out-of-memory error retries it
                top.accept(new)
            return out

        parts = self.oom.run(part, n)
        if not parts:
            return {}
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def __call__(self, batch: dict) -> dict:
        """{'path': image files, 'row': their ids in the probe} -> the forward outputs plus 'thumbnail' (JPEG
        bytes, where thumb_size) and 'decode_error' ('' or why the image did not decode), a row per image.
        An image that does not decode never reaches the models: its rows are zeros (maps: none, thumbnail:
        b''), for the caller to leave out as the local pass does."""
        paths = list(batch["path"])
        decoded, errors = [], np.full(len(paths), "", dtype=object)
        for i, p in enumerate(paths):
            try:
                decoded.append(self.decode(str(p)))
            except DECODE_ERRORS as e:
                decoded.append(None)
                errors[i] = str(e) or type(e).__name__
        good = np.array([i for i, d in enumerate(decoded) if d is not None], dtype=np.int64)
        rows = batch.get("row")
        out: dict[str, np.ndarray] = {}
        if len(good):
            n_t = len(decoded[good[0]][0])
            got = self.forward(
                [torch.stack([decoded[i][0][j] for i in good]) for j in range(n_t)],
                None if rows is None else np.asarray(rows)[good],
            )
            for k, v in got.items():
                out[k] = (
                    np.full(len(paths), b"", dtype=object)
                    if v.dtype == object
                    else np.zeros((len(paths), *v.shape[1:]), dtype=v.dtype)
                )
                out[k][good] = v
        if self.thumb_size:
            out[THUMB] = np.array([d[1] if d is not None else b"" for d in decoded], dtype=object)
        out["decode_error"] = errors
        return out


def _map_hook(maps: dict, layer: str, layout: str, n_prefix: int) -> Callable:
    """A forward hook that puts `layer`'s shrunk spatial maps (a float32 copy, or None) into maps[layer]."""

    def hook(_module, _inputs, output):
        maps[layer] = map_of(output, layout, n_prefix)

    return hook


# ------------------------------------------------------------------------ evaluator image embeddings
class DecodeOne:
    """Read an image and apply one preprocess (picklable)."""

    def __init__(self, preprocess: Callable):
        self.preprocess = preprocess

    def __call__(self, path: str) -> tuple[list[torch.Tensor], None]:
        return [self.preprocess(load_rgb(path))], None


class ImageEmbedder:
    """Image embeddings of one image-text model: (n, dim) float32, L2-normalised."""

    def __init__(
        self, model, placement: Placement = CPU, batch_size: int | None = None, log: Callable[[str], None] | None = None
    ):
        self.model = place_image_text(model, placement)
        self.placement = placement
        self.batch_size = placement.batch_size(batch_size)
        self.decode = DecodeOne(model.preprocess)
        self.oom = OomHalving(self.batch_size, "images", log)

    @classmethod
    def from_config(cls, cfg, placement: Placement = CPU, batch_size: int | None = None) -> "ImageEmbedder":
        """Load an ImageTextConfig's model once on `placement`."""
        from clipeval.models.image_text import load_image_text

        return cls(load_image_text(cfg, placement), placement, batch_size)

    @torch.no_grad()
    def forward(self, tensors: Sequence[torch.Tensor]) -> np.ndarray:
        batch = tensors[0]
        parts = self.oom.run(
            lambda a, b: _to_numpy(self.model.encode_images(self.placement.inputs(batch[a:b]))), len(batch)
        )
        return np.concatenate(parts)

    def __call__(self, batch: dict) -> dict:
        return {"embedding": self.forward([torch.stack([self.decode(str(p))[0][0] for p in batch["path"]])])}

    def embed(
        self,
        paths: Sequence[str],
        *,
        num_workers: int | None = None,
        progress: bool = True,
        desc: str = "encoding images",
    ) -> np.ndarray:
        rows = [
            self.forward(t)
            for _, t, _ in iterate(
                paths, self.decode, self.placement, self.batch_size, num_workers, progress=progress, desc=desc
            )
        ]
        return np.concatenate(rows)


# -------------------------------------------------------------------------------------------- VQA
class DecodeVqa:
    """Read an image, show it at image_size x image_size (the paper's 128), and run the VQA model's
    image processor on it (picklable: runs in workers, so it overlaps the model)."""

    def __init__(self, image_processor, image_size: int | None):
        self.image_processor, self.image_size = image_processor, image_size

    def image(self, path: str) -> Image.Image:
        img = load_rgb(path)
        return img.resize((self.image_size, self.image_size), Image.BICUBIC) if self.image_size else img

    def __call__(self, path: str) -> tuple[list[torch.Tensor], None]:
        pixels = self.image_processor([self.image(path)], return_tensors="pt")["pixel_values"][0]
        return [pixels], None


class YesNoBatch:
    """P(yes) per (image, question) from a Blip2Vqa, images given as paths, each image's questions asked
    together (its vision features and prompt prefix computed once)."""

    def __init__(
        self,
        vqa,
        image_size: int | None = 128,
        placement: Placement | None = None,
        batch_size: int | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self.vqa = vqa
        self.placement = placement or Placement(vqa.device, vqa.model.language_model.dtype)
        # images per call = (image, question) rows per language-model call, as yes_probability batches
        self.batch_size = self.placement.vqa_batch_size(batch_size)
        self.decode = DecodeVqa(vqa.processor.image_processor, image_size)
        self.oom = OomHalving(self.batch_size, "images (VQA)", log)

    @classmethod
    def from_name(
        cls, name_or_path: str, placement: Placement = CPU, image_size: int | None = 128, batch_size: int | None = None
    ) -> "YesNoBatch":
        """Load a BLIP-2 (local cache or folder) once on `placement`."""

        vqa = Blip2Vqa.load(name_or_path, device=placement.device, dtype=placement.dtype)
        return cls(vqa, image_size, placement, batch_size)

    def forward(self, pixels: torch.Tensor, questions: Sequence[Sequence[str]]) -> list[np.ndarray]:
        parts = self.oom.run(
            lambda a, b: self.vqa.yes_probability(pixels[a:b], questions[a:b], batch_size=self.oom.size), len(pixels)
        )
        return [p for part in parts for p in part]

    def __call__(self, batch: dict) -> dict:
        """{'path': image files, 'questions': a list of questions per image} -> {'p_yes': an array per image}."""
        pixels = torch.stack([self.decode(str(p))[0][0] for p in batch["path"]])
        out = np.empty(len(pixels), dtype=object)
        for i, p in enumerate(self.forward(pixels, [list(q) for q in batch["questions"]])):
            out[i] = p
        return {"p_yes": out}

    def score(
        self,
        paths: Sequence[str],
        questions: Sequence[Sequence[str]],
        *,
        num_workers: int | None = None,
        progress: bool = True,
        desc: str = "VQA",
    ) -> list[np.ndarray]:
        out: list[np.ndarray] = [None] * len(paths)  # type: ignore[list-item]
        for idx, tensors, _ in iterate(
            paths, self.decode, self.placement, self.batch_size, num_workers, progress=progress, desc=desc
        ):
            for i, p in zip(idx, self.forward(tensors[0], [questions[i] for i in idx])):
                out[int(i)] = p
        return out
