"""One CLIP-Dissect run: config -> probe + concepts -> activations and image embeddings (one pass)
-> text embeddings -> similarity -> labels, runner-ups -> per-neuron image summaries -> store.

Intermediate arrays are cached on disk under keys that hash every setting they depend on plus
fingerprints of the files behind them, so a rerun (or an interrupted run resumed) recomputes only
what changed, and a changed setting can never pick up a stale array.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch

from clipeval.compute import ray_map
from clipeval.compute.batches import ACT, EMB, THUMB
from clipeval.compute.device import CPU, DTYPES, Placement, resolve_device
from clipeval.compute.engine import LOCAL, Engine, ray_session
from clipeval.compute.progress import bar as progress_bar
from clipeval.config import SIMILARITY_DEFAULTS, DissectConfig, TargetConfig, stable_hash
from clipeval.datasets.concepts import ConceptSet, load_concepts
from clipeval.datasets.probe import ProbeSet, load_probe, load_rgb, thumbnail_jpeg
from clipeval.dissect import similarity
from clipeval.dissect.activations import (
    SUMMARY_BUDGET,
    THUMB_CHUNK,
    LayerStream,
    RowFile,
    ThumbFile,
    collect,
    merge_part,
    stream_file,
    stream_summaries,
)
from clipeval.dissect.maps import MAP_SIDE, MAPS_VERSION, KeptMaps, has_map, map_rows
from clipeval.errors import ClipevalError
from clipeval.models import targets as targets_mod
from clipeval.models.image_text import load_image_text
from clipeval.store import Store

THUMB_SIZE = 128


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class ArrayCache:
    """float32 arrays on disk, written atomically (tmp file + rename) so a crash leaves no partial entry."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def path(self, kind: str, key: str) -> Path:
        return self.folder / kind / f"{key}.npy"

    def get(self, kind: str, key: str) -> np.ndarray | None:
        p = self.path(kind, key)
        return np.load(p) if p.exists() else None

    def open(self, kind: str, key: str) -> np.ndarray | None:
        """The entry as a read-only memory map (nothing read until used)."""
        p = self.path(kind, key)
        return np.load(p, mmap_mode="r") if p.exists() else None

    def scratch(self, kind: str, key: str) -> Path:
        """Where an entry is written before it is committed (renamed into place)."""
        p = self.path(kind, key)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p.with_suffix(f".tmp{os.getpid()}.npy")

    def commit(self, kind: str, key: str, written: Path) -> None:
        os.replace(written, self.path(kind, key))

    def put(self, kind: str, key: str, array: np.ndarray) -> None:
        p = self.path(kind, key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_suffix(f".tmp{os.getpid()}.npy")
        np.save(tmp, np.ascontiguousarray(array, dtype=np.float32))
        os.replace(tmp, p)


@dataclass
class Stages:
    """Wall time per stage, printed as the run goes."""

    verbose: bool = True
    timings: dict = field(default_factory=dict)

    @contextmanager
    def __call__(self, name: str):
        if self.verbose:
            print(f"[{name}] ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 3)
        if self.verbose:
            print(
                f"[{name}] done in {self.timings[name]:.1f} s (peak memory {peak_rss_mb():.0f} MB)",
                file=sys.stderr,
                flush=True,
            )


@dataclass
class Resolved:
    """Inputs of a run, loaded and checked before anything is written."""

    config: DissectConfig
    probe: ProbeSet
    concepts: ConceptSet
    target: targets_mod.Target
    layer_shapes: dict
    image_text: object
    run_id: str
    placement: Placement = CPU


def resolve(config: DissectConfig, device: str | torch.device | None = "cpu") -> Resolved:
    """Load and check every input; the models go to `device` in config.dtype."""
    placement = Placement(resolve_device(device), DTYPES[config.dtype])
    probe = load_probe(config.probe.paths, config.probe.on_bad_image)
    if config.k > len(probe):
        raise ClipevalError(f"k={config.k} is more than the {len(probe)} readable probe images")
    concepts = load_concepts(config.concepts.source)
    target = targets_mod.load_target(config.target.name, config.target.weights)
    shapes = targets_mod.check_layers(target, config.layers)
    targets_mod.layer_layouts(
        target, config.layers, shapes
    )  # a layer that cannot be pooled stops here, before any work
    placement.module(target.module)
    image_text = load_image_text(config.image_text, placement)
    run_id = stable_hash(
        config,
        probe.fingerprint,
        concepts.content_hash,
        targets_mod.weights_fingerprint(target),
        image_text.info().get("fingerprint", ""),
    )
    return Resolved(config, probe, concepts, target, shapes, image_text, run_id, placement)


# bump when the recorded values of a layer change for the same settings (2: copied inside the hook,
# so a later in-place op cannot change them; pooled by the detected layout)
ACTIVATIONS_VERSION = 2


def layer_key(
    target_cfg,
    target: targets_mod.Target,
    layer: str,
    pooling: str,
    probe: ProbeSet,
    dtype: str = "float32",
    layout: str = "",
) -> str:
    return stable_hash(
        "activations",
        ACTIVATIONS_VERSION,
        target_cfg,
        targets_mod.weights_fingerprint(target),
        layer,
        pooling,
        layout,
        probe.fingerprint,
        dtype,
    )


def _image_key(r: Resolved) -> str:
    return stable_hash(
        "image-embeddings",
        r.config.image_text,
        r.image_text.info().get("fingerprint", ""),
        r.probe.fingerprint,
        r.placement.dtype_name,
    )


def _model_dtype(model) -> str:
    placement = getattr(model, "placement", None)
    return placement.dtype_name if placement is not None else "float32"


# Texts per encode_texts call when a bar is shown: a multiple of OpenCLIP's text batch (256), so its
# batches, and its results, are the same as in one call.
TEXT_CHUNK = 2048


def encode_texts(model, texts: list[str], progress: bool = True, desc: str = "text embeddings") -> np.ndarray:
    """model.encode_texts over `texts`; a set larger than TEXT_CHUNK goes in chunks under a progress bar
    (concepts per second and time left), as 200k concepts take minutes."""
    with torch.no_grad():
        if len(texts) <= TEXT_CHUNK:
            return model.encode_texts(texts).float().cpu().numpy()

        parts = []
        with progress_bar(total=len(texts), desc=desc, unit="concept", disable=not progress) as bar:
            for i in range(0, len(texts), TEXT_CHUNK):
                chunk = texts[i : i + TEXT_CHUNK]
                parts.append(model.encode_texts(chunk).float().cpu().numpy())
                bar.update(len(chunk))
        return np.concatenate(parts)


def encode_texts_cached(model, texts, cache: "ArrayCache", progress: bool = True) -> np.ndarray:
    """Text embeddings keyed by the model's text side and dtype, cached per text: the labelling run and the
    evaluators share entries when their text encoders are the same (e.g. both ConSE on one sentence
    encoder), and a concept set that contains another (common-20k holds common-10k) encodes only the
    texts not seen before."""
    texts = list(texts)
    key = stable_hash("text-vocabulary", model.info().get("text_fingerprint", ""), _model_dtype(model))
    vocab_file = cache.path("text_vocabulary", key).with_suffix(".json")
    table = cache.get("text_vocabulary", key)
    known: list[str] = json.loads(vocab_file.read_text()) if table is not None and vocab_file.exists() else []
    if len(known) != (0 if table is None else len(table)):
        known, table = [], None  # the two files of an entry disagree (written by two processes): start over
    index = {t: i for i, t in enumerate(known)}
    missing = list(dict.fromkeys(t for t in texts if t not in index))
    if missing:
        new = encode_texts(model, missing, progress)
        table = new if table is None else np.concatenate([table, new])
        known = known + missing
        index = {t: i for i, t in enumerate(known)}
        cache.put("text_vocabulary", key, table)
        tmp = vocab_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, vocab_file)
    return table[[index[t] for t in texts]]


@dataclass(frozen=True)
class PassSettings:
    """How a probe pass runs: where (placement, engine), in what batches, with how many decoding workers,
    what an image that does not decode does ('skip' or 'fail'), and whether it shows progress."""

    placement: Placement = CPU
    engine: Engine = LOCAL
    batch_size: int | None = None
    num_workers: int | None = None
    on_bad_image: str = "skip"
    progress: bool = True


@dataclass(frozen=True)
class LayerRequest:
    """What a probe pass reads from the target: its config (for cache keys), the loaded target, the layers
    and how they are pooled."""

    target_cfg: TargetConfig
    target: targets_mod.Target
    layers: Sequence[str]
    pooling: str


def probe_pass(
    store: Store,
    cache: ArrayCache,
    probe: ProbeSet,
    request: LayerRequest,
    image_model=None,
    image_key: str = "",
    *,
    settings: PassSettings = PassSettings(),
    maps_keep: int = 0,
    maps_out: dict | None = None,
    thumbs_out: ThumbFile | None = None,
    streams: dict | None = None,
    stream_keep: int = 0,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Activations of `layers` and (optionally) image embeddings, from the cache where present, else
    from ONE pass over the probe that also stores the probe's images (without thumbnails) if the store
    lacks them; that pass runs here or on Ray workers (`engine`), and either way fills the same cache
    entries. With `maps_keep` and a dict `maps_out`, also each unit's activation maps on its `maps_keep`
    most active images, from the same pass: maps_out[layer] = maps.KeptMaps (layers without a spatial
    layout are left out). The thumbnails that pass makes go to `thumbs_out` (a ThumbFile: a batch at a
    time, by this process or the Ray workers, never all in memory) for `store_thumbnails`, which stores
    only those of the images a page shows; the file is removed if the pass fails.

    An image that passed the header check but does not decode is skipped and counted during the pass
    ('skip'; 'fail' stops): it leaves `probe` (its list and `skipped` are updated in place) and is
    remembered in the cache beside the arrays, so later runs on the same files leave it out before
    reading the cached arrays. The fingerprint stays: it names the files, and which of them decode
    is fixed by the files.

    A layer's activations go to its cache entry a batch at a time as the pass makes them, and come back
    as a read-only memory map of that entry: the pass never holds a layer's (images x units) matrix. On
    Ray the workers write the entries themselves (the cache folder must be theirs too: this machine or a
    shared file system) and this process receives per batch only what the LayerStreams need.
    With a dict `streams`, streams[layer] = StreamedLayer: the entry's path and a LayerStream of its
    rows keeping each unit's `stream_keep` most active images, fed during the pass (or read from the
    cached entry)."""
    target_cfg, target, layers, pooling = request.target_cfg, request.target, request.layers, request.pooling
    placement, engine, progress = settings.placement, settings.engine, settings.progress
    _drop_images(probe, _known_bad(cache, probe.fingerprint))
    layouts = targets_mod.layer_layouts(target, layers) if layers else {}
    keys = {
        layer: layer_key(target_cfg, target, layer, pooling, probe, placement.dtype_name, layouts[layer])
        for layer in layers
    }
    acts = {layer: _rows_or_none(cache.open("activations", key), len(probe)) for layer, key in keys.items()}
    want_maps = [layer for layer in layers if maps_keep and maps_out is not None and has_map(layouts[layer])]
    map_keys = {
        layer: stable_hash("activation-maps", MAPS_VERSION, keys[layer], maps_keep, MAP_SIDE) for layer in want_maps
    }
    for layer in want_maps:
        index, maps = cache.get("map_index", map_keys[layer]), cache.get("maps", map_keys[layer])
        if acts[layer] is None or index is None or maps is None:
            acts[layer] = None  # the maps come from the pass that makes the activations: run it for this layer
        elif len(index):  # an empty entry: tokens that do not form a square grid, no map
            maps_out[layer] = KeptMaps.from_arrays(maps_keep, index, maps)
    missing = [layer for layer, a in acts.items() if a is None]
    emb = _rows_or_none(cache.open("image_embeddings", image_key), len(probe)) if image_model is not None else None
    need_emb = image_model is not None and emb is None
    need_thumbs = not store.has_probe(probe.fingerprint)
    # where each array the pass makes goes, a batch at a time: output key -> (cache kind, key, sink)
    entries = {ACT + layer: ("activations", keys[layer]) for layer in missing}
    if need_emb:
        entries[EMB + "labelling"] = ("image_embeddings", image_key)
    sinks = {
        out: LayerSink(cache.scratch(kind, key), len(probe), stream_keep if out.startswith(ACT) else 0)
        for out, (kind, key) in entries.items()
    }
    if missing or need_emb or need_thumbs:
        kw = dict(
            sinks=sinks,
            target=target if missing else None,
            layers=missing,
            pooling=pooling,
            image_models={"labelling": image_model} if need_emb else {},
            thumb_size=THUMB_SIZE if need_thumbs and thumbs_out is not None else None,
            batch_size=settings.batch_size,
            progress=progress,
            desc="probe pass",
            layouts={layer: layouts[layer] for layer in missing},
            maps_keep=maps_keep if any(layer in map_keys for layer in missing) else 0,
        )
        if kw["thumb_size"]:
            thumbs_out.remove()  # what is there (another pass's) would be read as this pass's
            kw["sinks"] = {**sinks, THUMB: thumbs_out}
        try:
            if engine.is_ray:
                got = ray_map.collect(
                    engine, probe.images, dtype=placement.dtype_name, on_bad_image=settings.on_bad_image, **kw
                )
            else:
                got = collect(
                    probe.images,
                    num_workers=settings.num_workers,
                    placement=placement,
                    on_bad_image=settings.on_bad_image,
                    **kw,
                )
        except BaseException:
            for sink in sinks.values():
                sink.path.unlink(missing_ok=True)
            if thumbs_out is not None:
                thumbs_out.remove()
            raise
        if got.failed:
            n_before = len(probe)
            bad = {probe.images[i].path: why for i, why in got.failed}
            _remember_bad(cache, probe.fingerprint, bad)
            keep = np.array([i for i in range(n_before) if probe.images[i].path not in bad])
            # entries cached for images of which some do not decode now lose them
            cached = [("activations", keys[layer]) for layer, a in acts.items() if a is not None]
            for kind, key in cached + ([("image_embeddings", image_key)] if emb is not None else []):
                written = cache.scratch(kind, key)
                _keep_rows(RowFile(cache.path(kind, key)), written, keep)
                cache.commit(kind, key, written)
            acts = {layer: a if a is None else cache.open("activations", keys[layer]) for layer, a in acts.items()}
            emb = emb if emb is None else cache.open("image_embeddings", image_key)
            for sink in sinks.values():
                sink.keep_only(keep)
            if kw["thumb_size"]:
                thumbs_out.keep_only(keep)
            for kept in list(maps_out.values()) if maps_out is not None else []:
                kept.renumber(keep)  # maps read from the cache count the images before these were left out
            _drop_images(probe, bad)
            warnings.warn(
                f"skipped {len(bad)} probe image(s) that did not decode: "
                + "; ".join(f"{p} ({w})" for p, w in list(bad.items())[:5])
                + (" ..." if len(bad) > 5 else ""),
                stacklevel=2,
            )
        for out, (kind, key) in entries.items():
            cache.commit(kind, key, sinks[out].path)
        for layer in missing:
            acts[layer] = cache.open("activations", keys[layer])
            if layer in map_keys:
                kept = got.maps.get(layer) or KeptMaps(maps_keep)
                index, maps = kept.arrays()
                cache.put("map_index", map_keys[layer], index)
                cache.put("maps", map_keys[layer], maps)
                if len(index):
                    maps_out[layer] = kept
        if need_emb:
            emb = cache.open("image_embeddings", image_key)
        if need_thumbs:
            store.put_probe(
                probe.fingerprint,
                pd.DataFrame(
                    {
                        "image_id": np.arange(len(probe)),
                        "path": [i.path for i in probe.images],
                        "source": [i.source for i in probe.images],
                        "license": [i.license for i in probe.images],
                        "label": [i.label for i in probe.images],
                        "thumbnail": None,
                    }
                ),
            )
    if streams is not None:
        for layer in layers:
            path = cache.path("activations", keys[layer])
            stream = sinks[ACT + layer].stream if layer in missing else stream_file(path, stream_keep)
            streams[layer] = StreamedLayer(path, stream)
    return acts, emb


def thumb_file(cache: ArrayCache, probe: ProbeSet) -> ThumbFile:
    """Where this process's probe pass puts its thumbnails until store_thumbnails has used them."""
    return ThumbFile(cache.folder / "thumbnails" / f"{probe.fingerprint}.tmp{os.getpid()}")


def store_thumbnails(store: Store, probe: ProbeSet, neuron_images: pd.DataFrame, made: ThumbFile | None) -> int:
    """Store the thumbnails of exactly the images some page shows: every image a unit keeps (top, level,
    low, random: the neuron, annotate and labellers pages, the report, the activation maps over the top
    images, the evaluators' images). Each one the store lacks is read from the probe pass's file (`made`)
    or, when this run made none (the probe's rows came from an earlier run), decoded from its file, a
    chunk at a time. The other probe images get none: a thumbnail of every image would be about 5 GB of
    blobs at 1M images. Returns how many were added."""
    shown = np.unique(neuron_images["image_id"].to_numpy()) if len(neuron_images) else np.array([], dtype=np.int64)
    missing = np.array(store.images_without_thumbnail(probe.fingerprint, shown), dtype=np.int64)
    chunks = (
        made.read(missing)
        if made is not None
        else ((missing[a : a + THUMB_CHUNK], {}) for a in range(0, len(missing), THUMB_CHUNK))
    )
    for ids, got in chunks:
        thumbs = {int(i): got.get(int(i)) or thumbnail_jpeg(load_rgb(probe.images[i].path), THUMB_SIZE) for i in ids}
        store.put_thumbnails(probe.fingerprint, thumbs)
    return len(missing)


@dataclass
class StreamedLayer:
    """A layer's activations as the probe pass left them: its cache entry and a LayerStream of its rows
    (each unit's top images at least as many as the pass was asked to keep)."""

    path: Path
    stream: LayerStream


class LayerSink:
    """Where the probe pass puts a layer's batches: rows of a file (created at the first batch, when the
    number of units is known) and a LayerStream."""

    def __init__(self, path: Path, n_rows: int, keep: int):
        self.path, self.n_rows, self.file = path, n_rows, None
        self.stream = LayerStream(keep) if keep else None  # None: rows only (image embeddings)

    def __call__(self, rows, block) -> None:
        if self.file is None:
            self.file = RowFile(self.path, (self.n_rows, block.shape[1]))
        self.file.write_rows(rows, block)
        if self.stream is not None:
            self.stream.add(rows, block)

    def merge(self, part: bytes) -> None:
        """A batch's summary (activations.batch_part) from a Ray worker that wrote its rows to the file."""
        merge_part(self.stream, part)

    def keep_only(self, keep: np.ndarray) -> None:
        """The images `keep` only (the others did not decode, and were never fed), counted again."""
        written = self.path.with_name("kept-" + self.path.name)
        _keep_rows(self.file or RowFile(self.path), written, keep)
        os.replace(written, self.path)
        self.file = RowFile(self.path)
        if self.stream is not None:
            self.stream.renumber(keep)


def _keep_rows(source: RowFile, path: Path, keep: np.ndarray, budget: int = SUMMARY_BUDGET) -> None:
    """The rows `keep` (sorted) of `source` into a new file at `path`, a block of rows at a time."""
    out = RowFile(path, (len(keep), source.shape[1]))
    done = 0
    for a, block in source.row_blocks(budget):
        mine = keep[(keep >= a) & (keep < a + len(block))]
        out.write_rows(np.arange(done, done + len(mine)), block[mine - a])
        done += len(mine)


def _known_bad(cache: ArrayCache, fingerprint: str) -> dict[str, str]:
    p = cache.folder / "bad_images" / f"{fingerprint}.json"
    return json.loads(p.read_text()) if p.exists() else {}


def _remember_bad(cache: ArrayCache, fingerprint: str, bad: dict[str, str]) -> None:
    p = cache.folder / "bad_images" / f"{fingerprint}.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({**_known_bad(cache, fingerprint), **bad}, indent=1))
    os.replace(tmp, p)


def _drop_images(probe: ProbeSet, bad: dict[str, str]) -> None:
    if bad and any(i.path in bad for i in probe.images):
        probe.skipped = [*probe.skipped, *((i.path, bad[i.path]) for i in probe.images if i.path in bad)]
        probe.images = [i for i in probe.images if i.path not in bad]


def _rows_or_none(array: np.ndarray | None, n: int) -> np.ndarray | None:
    """A cached array only if it has one row per probe image (else it is recomputed)."""
    return array if array is not None and array.shape[0] == n else None


def dissect(
    config: DissectConfig,
    store: Store,
    *,
    name: str = "",
    cache_dir: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = True,
    batch_size: int | None = None,
    num_workers: int | None = None,
    resolved: Resolved | None = None,
    device: str | torch.device | None = "cpu",
    engine: Engine = LOCAL,
) -> str:
    """Run CLIP-Dissect and store the result; returns the run id (the settings' hash).

    Models run on `device` in config.dtype; batch size and decoding workers default per device. With a
    Ray `engine` the probe pass runs on its workers (Ray is up before the run is recorded, so a cluster
    that cannot serve the request leaves nothing behind); everything else runs here.
    A complete run with the same settings is returned as it is unless `force`; an interrupted one is
    resumed (its cached arrays are reused)."""
    stages = Stages(verbose=progress)
    with stages("load"):
        r = resolved or resolve(config, device)
    existing = store.runs()
    same = existing[existing["run_id"] == r.run_id]
    if len(same) and same.iloc[0]["status"] == "complete" and not force:
        if progress:
            print(
                f"run {r.run_id} with these settings is already complete; use --force to recompute it", file=sys.stderr
            )
        return r.run_id
    if len(same) and same.iloc[0]["status"] == "running":
        raise ClipevalError(f"run {r.run_id} is being computed by another process (pid {same.iloc[0]['pid']})")

    cache = ArrayCache(cache_dir or store.path.parent / "cache")
    with _engine_up(engine, progress, stages):
        store.start_run(r.run_id, name or default_name(config), "dissect", config.to_json(), r.run_id)
        thumbs = thumb_file(cache, r.probe)
        try:
            meta = _compute(r, store, cache, stages, progress, batch_size, num_workers, engine, thumbs)
            with stages("store"):
                store.finish_run(r.run_id, **meta)
            store.set_run_timings(r.run_id, stages.timings)
        except KeyboardInterrupt:
            store.fail_run(r.run_id, "interrupted", "interrupted by the user")
            raise
        except Exception as e:
            store.fail_run(r.run_id, "failed", f"{type(e).__name__}: {e}")
            raise
        finally:
            thumbs.remove()  # a failure between the pass and store_thumbnails would leave it
    if progress:
        total = sum(stages.timings.values())
        print(
            f"run {r.run_id} complete: {int(meta['layers']['n_units'].sum())} neurons in "
            f"{len(config.layers)} layer(s), {len(r.probe)} images, {len(r.concepts)} concepts, "
            f"{total:.1f} s, peak memory {peak_rss_mb():.0f} MB",
            file=sys.stderr,
        )
    return r.run_id


def compute_info(placement: Placement, engine: Engine) -> dict:
    """Where the models ran, stored with the run: the device and dtype, and the Ray engine when it was used
    (the probe pass then ran on its workers, in this dtype)."""
    info = placement.info()
    if engine.is_ray:
        info = {
            **info,
            "device": f"Ray workers ({'GPU' if engine.gpus_per_worker > 0 else 'CPU'})",
            "engine": engine.describe(),
        }
    return info


@contextmanager
def _engine_up(engine: Engine, progress: bool, stages: Stages):
    if not engine.is_ray:
        yield
        return
    timer = stages("ray start")  # timed on its own (about 20 s for a local Ray on 2 busy cores)
    timer.__enter__()
    with ray_session(engine, progress):
        timer.__exit__(None, None, None)
        yield


def _compute(
    r: Resolved,
    store: Store,
    cache: ArrayCache,
    stages: Stages,
    progress: bool,
    batch_size: int,
    num_workers: int,
    engine: Engine,
    thumbs: ThumbFile,
) -> dict:
    c = r.config
    fn, params = c.similarity.fn, c.similarity.kwargs()
    with stages("activations + image embeddings"):
        maps: dict = {}
        streamed: dict[str, StreamedLayer] = {}
        _, embeddings = probe_pass(
            store,
            cache,
            r.probe,
            LayerRequest(c.target, r.target, c.layers, c.pooling),
            r.image_text,
            _image_key(r),
            maps_keep=c.k,
            maps_out=maps,
            thumbs_out=thumbs,
            settings=PassSettings(r.placement, engine, batch_size, num_workers, c.probe.on_bad_image, progress),
            streams=streamed,
            stream_keep=stream_keep(fn, params, c.k),
        )

    with stages("text embeddings"):
        T = encode_texts_cached(r.image_text, r.concepts.concepts, cache, progress)
        store.put_concepts(r.concepts.content_hash, r.concepts.name, r.concepts.concepts)

    images = RowFile(embeddings.filename)  # read a block of rows at a time, not mapped whole
    del embeddings
    with stages("top-k + summaries"):
        scratch = cache.folder / "scratch"
        scratch.mkdir(parents=True, exist_ok=True)
        parts = [
            stream_summaries(layer, streamed[layer].path, streamed[layer].stream, c.k, c.n_contrast, c.seed, scratch)
            for layer in c.layers
        ]
        map_frames = [
            map_rows(layer, p[0][p[0]["kind"] == "top"], maps[layer])
            for layer, p in zip(c.layers, parts)
            if layer in maps
        ]
        store_thumbnails(store, r.probe, pd.concat([p[0] for p in parts], ignore_index=True), thumbs)
        thumbs.remove()
    dead = {layer: p[2]["dead"].to_numpy() for layer, p in zip(c.layers, parts)}

    labelled = []
    with stages("similarity"):
        for layer in c.layers:
            # dead units are left out: they have nothing to label, and in soft_wpmi/wpmi they would
            # still enter every other unit's score through the layer's log p(concept)
            live = np.flatnonzero(~dead[layer])
            if dead[layer].any():
                warnings.warn(
                    f"layer {layer}: {int(dead[layer].sum())} of {len(live) + int(dead[layer].sum())} units "
                    "have a constant activation over the probe (dead); they are stored without a label",
                    stacklevel=2,
                )
            # each unit's best concepts, a block of units at a time (never the whole score matrix)
            top = (
                layer_top_concepts(fn, params, streamed[layer], live, images, T, c.n_runner_ups, r.placement.device)
                if len(live)
                else None
            )
            labelled.append(
                (
                    layer,
                    *label_from_scores(layer, top, r.concepts.concepts, units=live, n_units=len(dead[layer])),
                )
            )

    layers_df = pd.DataFrame(
        {
            "layer": list(c.layers),
            "position": range(len(c.layers)),
            "shape": [str(tuple(r.layer_shapes[l])) for l in c.layers],
            "n_units": [streamed[l].stream.n_units for l in c.layers],
        }
    )
    return dict(
        layers=layers_df,
        neurons=pd.concat([n for _, n, _ in labelled], ignore_index=True).merge(
            pd.concat([p[2] for p in parts], ignore_index=True), on=["layer", "unit"]
        ),
        runner_ups=pd.concat([u for _, _, u in labelled], ignore_index=True),
        neuron_images=pd.concat([p[0] for p in parts], ignore_index=True),
        histograms=pd.concat([p[1] for p in parts], ignore_index=True),
        activation_maps=pd.concat(map_frames, ignore_index=True) if map_frames else None,
        meta={
            "run_id": r.run_id,
            "probe_fingerprint": r.probe.fingerprint,
            "concept_hash": r.concepts.content_hash,
            "n_images": len(r.probe),
            "n_skipped_images": len(r.probe.skipped),
            "models": {
                "target": {
                    "name": r.target.name,
                    **r.target.info,
                    "layouts": targets_mod.layer_layouts(r.target, c.layers, r.layer_shapes),
                },
                "image_text": r.image_text.info(),
                "compute": compute_info(r.placement, engine),
            },
            "timings": stages.timings,
            "peak_rss_mb": peak_rss_mb(),
        },
    )


# bytes of P rows (and activations) made at a time: a probe whose kept images' P rows fit makes each row once
SCORE_BUDGET = 1 * 2**30


def stream_keep(fn: str, params: dict, k: int) -> int:
    """How many top images per unit the probe pass keeps: the similarity's top_k, and the summaries' k."""
    top_k = {**SIMILARITY_DEFAULTS[fn], **params}.get("top_k", 0) if fn in similarity.TOP_IMAGE_FUNCTIONS else 0
    return max(int(k), int(top_k))


def layer_top_concepts(
    fn: str,
    params: dict,
    layer: StreamedLayer,
    live: np.ndarray,
    images: RowFile,
    T: np.ndarray,
    n_keep: int,
    device=None,
    budget: int = SCORE_BUDGET,
) -> similarity.TopConcepts:
    """Each live unit's n_keep best concepts under `fn`, the same as similarity.top_concepts(
    similarity.compute(fn, P, A[:, live]), n_keep) to float32 rounding, with P = image embeddings (`images`,
    a row per probe image) @ text embeddings T.T, A the layer's activations (its cache entry), and neither P,
    A nor the score matrix ever whole: a block of units at a time, reduced to its best concepts before the
    next (on `device`), each block's work within about `budget` bytes. soft_wpmi / wpmi get the P rows of
    the images the block's units keep among their top images; the functions that need every image read
    their activations from the cache entry and make P per block of image rows (cosine functions) or of
    concepts (rank_reorder)."""
    Tt = torch.from_numpy(T)
    if fn in similarity.TOP_IMAGE_FUNCTIONS:
        top, _ = layer.stream.top(layer.stream.keep)

        def rows_of(ids):
            return torch.from_numpy(images.read_at(ids)) @ Tt.T

        return similarity.label_units_from_top(
            fn,
            top[live],
            rows_of,
            len(T),
            layer.stream.n,
            n_keep,
            mem_budget=budget,
            device=device,
            spill_dir=layer.path.parent,  # the cache folder: on disk, beside the layer's activations
            **params,
        )
    acts = RowFile(layer.path)

    def activations(u0, u1, r0=0, r1=None):  # live units u0:u1 of images r0:r1
        cols = live[u0:u1]
        return acts.read_columns(int(cols[0]), int(cols[-1]) + 1, r0, r1)[:, cols - cols[0]]

    if fn == "rank_reorder":

        def columns(c0, c1):  # P[:, c0:c1], a block of image rows at a time
            out = np.empty((images.shape[0], c1 - c0), dtype=np.float32)
            for a, block in images.row_blocks(budget // 4):
                out[a : a + len(block)] = (torch.from_numpy(block) @ Tt[c0:c1].T).numpy()
            return out

        shape = (images.shape[0], len(live), len(T))
        return similarity.rank_reorder_top(columns, activations, shape, n_keep, device, mem_budget=budget, **params)
    return _cosine_top(
        fn, params, layer.stream.mean()[live], activations, images, Tt, len(live), n_keep, device, budget
    )


def _cosine_top(fn, params, mean_A, activations, images, Tt, n_units, n_keep, device, budget):
    """cos_similarity / cos_similarity_cubed (clipeval.dissect.similarity) a block of units at a time: its
    sums with every concept over blocks of image rows (P rows made per block, `activations`(u0, u1, r0, r1)
    read per block), reduced to its n_keep best concepts before the next block."""
    if fn not in ("cos_similarity", "cos_similarity_cubed"):
        raise ClipevalError(f"unknown similarity function {fn!r}")
    cubed = fn == "cos_similarity_cubed"
    kw = {**SIMILARITY_DEFAULTS[fn], **params}
    dev = torch.device(device or "cpu")
    Tt = Tt.to(dev)
    n_images, n_concepts = images.shape[0], Tt.shape[0]
    if cubed:  # centred on the means over all images: P's is the mean image embedding's cosines
        total = sum(block.sum(0, dtype=np.float64) for _, block in images.row_blocks(budget))
        mean_P = torch.from_numpy((total / n_images).astype(np.float32)).to(dev) @ Tt.T
        mean_A = torch.from_numpy(np.asarray(mean_A, dtype=np.float32)).to(dev)
    # per unit: its float64 sums with every concept and a float32 block product; per image row: its P
    # row, activations and their cubed and float64 temporaries
    step_u = max(1, budget // (2 * 12 * n_concepts))
    step_i = max(1, budget // (2 * 4 * 3 * (n_concepts + min(step_u, n_units))))
    sq_P = torch.zeros(n_concepts, dtype=torch.float64, device=dev)  # summed with the first block of units
    parts = []
    for u0 in range(0, n_units, step_u):
        u1 = min(n_units, u0 + step_u)
        cross = torch.zeros(u1 - u0, n_concepts, dtype=torch.float64, device=dev)
        sq_A = torch.zeros(u1 - u0, dtype=torch.float64, device=dev)
        for a in range(0, n_images, step_i):
            b = min(n_images, a + step_i)
            A = torch.from_numpy(activations(u0, u1, a, b)).to(dev)
            P = torch.from_numpy(images.read_rows(a, b)).to(dev) @ Tt.T
            if cubed:
                A, P = (A - mean_A[u0:u1]) ** 3, (P - mean_P) ** 3
            cross += A.T @ P
            sq_A += (A.double() ** 2).sum(0)
            if u0 == 0:
                sq_P += (P.double() ** 2).sum(0)
        norm_A, norm_P = sq_A.sqrt(), sq_P.sqrt()
        if cubed:
            norm_A, norm_P = norm_A.clamp_min(kw["min_norm"]), norm_P.clamp_min(kw["min_norm"])
        parts.append(similarity.top_concepts(cross.div_(norm_A[:, None]).div_(norm_P[None, :]).float(), n_keep))
        del cross
    return similarity.join_tops(parts)


def label_from_scores(
    layer: str,
    top: similarity.TopConcepts | None,
    concepts,
    units: np.ndarray | None = None,
    n_units: int | None = None,
):
    """The label (argmax concept + similarity) and runner-ups (the best concepts, label first) per neuron,
    from `top` (similarity.label_units or top_concepts). Its rows belong to `units` (default: all); the
    other units of the layer's `n_units` are dead and get no label (NULL) and no runner-ups."""
    n_rows = 0 if top is None else top.indices.shape[0]
    units = np.arange(n_rows) if units is None else np.asarray(units, dtype=np.int64)
    n_units = len(units) if n_units is None else int(n_units)
    labels = np.full(n_units, None, dtype=object)
    sims = np.full(n_units, np.nan)
    if top is None or not len(units):
        empty = pd.DataFrame(
            {
                "layer": pd.Series(dtype=object),
                "unit": pd.Series(dtype=np.int64),
                "rank": pd.Series(dtype=np.int64),
                "concept": pd.Series(dtype=object),
                "score": pd.Series(dtype=float),
            }
        )
        return pd.DataFrame({"layer": layer, "unit": np.arange(n_units), "label": labels, "similarity": sims}), empty
    if top.n_nan:
        warnings.warn(f"layer {layer}: similarity has NaN scores; they rank last", stacklevel=2)
    vals, idx = top.values.numpy(), top.indices.numpy()
    names = np.asarray(concepts, dtype=object)
    labels[units], sims[units] = names[idx[:, 0]], vals[:, 0]
    neurons = pd.DataFrame({"layer": layer, "unit": np.arange(n_units), "label": labels, "similarity": sims})
    r, u = np.meshgrid(np.arange(idx.shape[1]), units, indexing="xy")
    runner = pd.DataFrame(
        {"layer": layer, "unit": u.ravel(), "rank": r.ravel() + 1, "concept": names[idx].ravel(), "score": vals.ravel()}
    )
    return neurons, runner


def default_name(config: DissectConfig) -> str:
    probe = "+".join(Path(p).name for p in config.probe.paths)
    return f"{config.target.name} | {probe} | {Path(config.concepts.source).name} | {config.similarity.fn}"
