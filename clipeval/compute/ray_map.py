"""The per-image work on Ray Data: image references -> `map_batches` with an actor class that builds its
models once per worker -> numpy batches back to this process, keyed by row, put in input order.

The work itself is clipeval.compute.batches (ProbeBatch, ImageEmbedder, YesNoBatch): the same code the local
engine runs, so a Ray run gives the local answers. What the actors get is a small picklable *work*
object whose `build(placement)` makes the batch callable on the worker:

- ProbeWork / EmbedWork carry the models the driver has already loaded (the target, the labelling or
  evaluator image-text model): they travel once through Ray's object store, so every worker runs
  exactly the weights the run's hash and caches were keyed by (a node with other files on disk could
  not slip in other answers), and the driver needs them anyway (shapes, text embeddings).
- VqaWork carries a BLIP-2 *name* and each worker loads it from its own disk: the driver never needs
  BLIP-2, and shipping 4-15 GB from the driver to every worker would cost more than loading it there.

Workers never touch the store; Ray retries a batch whose actor died on a restarted actor (Ray Data's
default for actor pools: max_restarts=-1, max_task_retries=-1).
"""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np

from clipeval.compute.engine import Engine, ray_session, worker_count
from clipeval.compute.progress import bar as progress_bar
from clipeval.config import DEFAULT_BATCH, DEFAULT_VQA_BATCH
from clipeval.errors import ClipevalError, WeightsUnavailable

# Imported inside the functions that use them: ray, pyarrow and what a Ray worker runs (torch, the models),
# so that a driver without --engine ray never loads them.


class ProbeWork:
    """Decode + target forward + labelling image embeddings + thumbnails (clipeval.compute.batches.ProbeBatch)."""

    def __init__(
        self,
        target,
        layers: Sequence[str],
        pooling: str,
        image_models: dict,
        thumb_size: int | None,
        batch_size: int | None,
        dtype: str,
        layouts: dict | None = None,
        maps_keep: int = 0,
        sinks: dict | None = None,
        check: tuple[str, str] | None = None,
        thumbs: str | None = None,
    ):
        self.target, self.layers, self.pooling, self.layouts = target, list(layers), pooling, layouts
        self.image_models, self.thumb_size, self.batch_size, self.dtype = image_models, thumb_size, batch_size, dtype
        self.maps_keep = maps_keep
        self.sinks = sinks or {}  # output key -> (cache file, rows, keep): written by the workers (WorkerRows)
        self.check = check  # (file, text) a worker must read to write the sinks where the driver reads them
        self.thumbs = thumbs  # a ThumbFile's folder: the workers write the thumbnails there (WorkerRows)

    def build(self, placement):
        from clipeval.compute.batches import ProbeBatch
        from clipeval.dissect.activations import WorkerRows

        probe = ProbeBatch(
            self.target,
            self.layers,
            self.pooling,
            self.image_models,
            self.thumb_size,
            placement,
            self.batch_size,
            layouts=self.layouts,
            maps_keep=self.maps_keep,
        )
        if not self.sinks and not self.thumbs:
            return probe
        rows_out = WorkerRows(self.sinks, self.check, self.thumbs)

        def call(batch: dict) -> dict:
            out = probe(batch)
            decoded = np.array([not why for why in out["decode_error"]], dtype=bool)
            return rows_out(out, np.asarray(batch["row"], dtype=np.int64), decoded)

        return call


class EmbedWork:
    """Image embeddings of one image-text model (clipeval.compute.batches.ImageEmbedder)."""

    def __init__(self, model, batch_size: int | None, dtype: str):
        self.model, self.batch_size, self.dtype = model, batch_size, dtype

    def build(self, placement):
        from clipeval.compute.batches import ImageEmbedder

        return ImageEmbedder(self.model, placement, self.batch_size)


class VqaWork:
    """P(yes) per (image, question) (clipeval.compute.batches.YesNoBatch) from a BLIP-2 each worker loads by
    name; `backend`: a ready Blip2Vqa shipped instead (small test models built in memory)."""

    def __init__(self, name: str, image_size: int | None, batch_size: int | None, dtype: str, backend=None):
        self.name, self.image_size, self.batch_size, self.dtype, self.backend = (
            name,
            image_size,
            batch_size,
            dtype,
            backend,
        )

    def build(self, placement):
        from clipeval.compute.batches import YesNoBatch
        from clipeval.models.vqa import Blip2Vqa

        vqa = self.backend
        if vqa is None:
            vqa = Blip2Vqa.load(self.name, device=str(placement.device), dtype=placement.dtype)
        else:
            vqa.model.to(placement.device)
            vqa.device = placement.device
        work = YesNoBatch(vqa, self.image_size, placement, self.batch_size)
        info = json.dumps(vqa.info())

        def call(batch: dict) -> dict:
            out = work(batch)
            out["model_info"] = np.array([info] * len(out["p_yes"]), dtype=object)
            return out

        return call


class _Worker:
    """The Ray Data actor: builds the work's models once, then maps batches of {'row', 'path', ...}."""

    def __init__(self, shipped: dict, use_gpu: bool):
        import ray
        import torch

        from clipeval.compute.device import DTYPES, Placement

        work = ray.get(shipped["work"])  # fetched once per actor (and again by a restarted one)
        device = torch.device("cuda") if use_gpu else torch.device("cpu")  # Ray set CUDA_VISIBLE_DEVICES
        self.placement = Placement(device, DTYPES[work.dtype])
        self.fn = work.build(self.placement)

    def __call__(self, batch: dict) -> dict:
        rows = batch["row"]  # left in: ProbeBatch keeps activation maps by image id
        out = self.fn(batch)
        out["row"] = rows
        return out


def _blocks(columns: dict, n: int, batch_size: int):
    """One Arrow table per batch: a task per batch, so the actors share the work evenly and a dead actor
    costs one batch. No read task: on a cluster whose CPUs the actors hold, a read task would wait forever."""
    import pyarrow as pa

    out = []
    for a in range(0, n, batch_size):
        b = min(n, a + batch_size)
        data = {"row": pa.array(np.arange(a, b, dtype=np.int64))}
        for k, v in columns.items():
            data[k] = pa.array([list(x) for x in v[a:b]] if k == "questions" else list(v[a:b]))
        out.append(pa.table(data))
    return out


def map_images(
    engine: Engine,
    work,
    columns: dict,
    *,
    batch_size: int,
    progress: bool = True,
    desc: str = "images",
    on_rows=None,
    consume=None,
) -> dict[str, np.ndarray]:
    """Run `work` over the rows of `columns` ('path': image files, plus any per-image column the work
    takes) on `engine.workers` Ray actors; the outputs stacked in row order. Starts Ray if this process
    has none (and stops it after). `on_rows(n)` is called as each batch of n rows arrives;
    `consume(rows, batch)` sees each batch first and may pop outputs it folds in itself (they are
    then not stacked)."""
    import ray
    from ray.data import ActorPoolStrategy

    n = len(columns["path"])
    if n == 0:
        return {}
    with ray_session(engine, progress) as resources:
        workers = worker_count(engine, resources)
        # once into the object store, not once per actor. This function holds the reference until the
        # map ends, so a restarted actor can still fetch it (Ray's core worker logs a line about actor
        # arguments in the object store, ray-project/ray#53727: Ray Data passes its own that way too).
        ref = ray.put(work)
        remote = {"num_cpus": 1}
        if engine.gpus_per_worker > 0:
            remote["num_gpus"] = engine.gpus_per_worker
        ds = ray.data.from_arrow(_blocks(columns, n, batch_size)).map_batches(
            _Worker,
            fn_constructor_args=({"work": ref}, engine.gpus_per_worker > 0),
            batch_size=batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=workers),
            zero_copy_batch=True,
            **remote,
        )
        out: dict[str, np.ndarray] = {}
        done = 0
        with progress_bar(
            total=n, desc=f"{desc} on {workers} Ray worker(s)", disable=not progress, unit="img", file=sys.stderr
        ) as bar:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                rows = np.asarray(batch.pop("row"))
                if consume is not None:
                    consume(rows, batch)
                for k, v in batch.items():
                    if k not in out:
                        ragged = (
                            v.dtype == object or v.ndim == 1 and k != "row" and not np.issubdtype(v.dtype, np.number)
                        )
                        out[k] = np.empty(n, dtype=object) if ragged else np.empty((n, *v.shape[1:]), dtype=v.dtype)
                    if out[k].dtype == object:
                        for r, x in zip(rows, v):
                            out[k][r] = x
                    else:
                        out[k][rows] = v
                done += len(rows)
                bar.update(len(rows))
                if on_rows is not None:
                    on_rows(len(rows))
        if done != n:
            raise ClipevalError(f"Ray returned {done} of {n} images")
    return out


def default_batch_size(engine: Engine, given: int | None) -> int:
    return given or DEFAULT_BATCH["cuda" if engine.gpus_per_worker > 0 else "cpu"]


def collect(
    engine: Engine,
    images,
    *,
    target=None,
    layers: Sequence[str] = (),
    pooling: str = "mean",
    image_models: dict | None = None,
    thumb_size: int | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    desc: str = "images",
    dtype: str = "float32",
    layouts: dict | None = None,
    maps_keep: int = 0,
    on_bad_image: str = "skip",
    sinks: dict | None = None,
):
    """clipeval.dissect.activations on Ray workers: the same Collected, from the same ProbeBatch (each worker
    sends back the activation maps of its own running top images; they are merged here as they come).
    An image that does not decode is skipped and counted ('skip') or stops the pass ('fail'), as there.
    An output in `sinks` (pipeline.LayerSink: a cache file and, for a layer, its LayerStream) is not sent
    back: the workers write its rows to the sink's file themselves (so the file must be where they can write
    it: this machine, or a file system shared at the same path) and send, per batch, only what the sink's
    stream needs of it (activations.batch_part), merged here as it arrives. The thumbnails (with
    `thumb_size`) go to sinks[THUMB], an activations.ThumbFile that the workers append them to themselves:
    nothing per image comes back for them."""
    from clipeval.compute.batches import ACT, EMB, MAPS, THUMB
    from clipeval.dissect.activations import STREAM, Collected, bad_image_error, without_failed
    from clipeval.dissect.maps import KeptMaps

    sinks = dict(sinks or {})
    thumbs = sinks.pop(THUMB, None)
    if thumb_size and thumbs is None:
        raise ValueError("thumbnails go to a sink (sinks[THUMB], a ThumbFile the workers write to)")
    if thumbs is not None:
        thumbs.path.mkdir(parents=True, exist_ok=True)
    shared = [*sinks.values(), *([thumbs] if thumbs is not None else [])]
    check = Path(shared[0].path).with_name(f"ray-check-{uuid.uuid4().hex}") if shared else None
    work = ProbeWork(
        target if layers else None,
        layers,
        pooling,
        image_models or {},
        thumb_size,
        default_batch_size(engine, batch_size),
        dtype,
        layouts,
        maps_keep,
        {key: (str(s.path), s.n_rows, s.stream.keep if s.stream else 0) for key, s in sinks.items()},
        (str(check), check.name) if check else None,
        str(thumbs.path) if thumb_size else None,
    )
    maps: dict[str, KeptMaps] = {}
    failed: list[tuple[int, str]] = []

    def fold(rows, batch):
        errors = batch.pop("decode_error")
        failed.extend((int(r), str(why)) for r, why in zip(rows, errors) if why)
        if failed and on_bad_image == "fail":
            raise bad_image_error(images, failed)
        for k in [k for k in batch if k.startswith(MAPS)]:
            maps.setdefault(k[len(MAPS) :], KeptMaps(maps_keep)).add(rows, batch.pop(k))
        for key in [key for key in batch if key.startswith(STREAM)]:
            for blob in batch.pop(key):
                if blob:
                    sinks[key[len(STREAM) :]].merge(blob)

    if check:
        check.write_text(check.name)
    try:
        out = map_images(
            engine,
            work,
            {"path": [im.path for im in images]},
            batch_size=work.batch_size,
            progress=progress,
            desc=desc,
            consume=fold,
        )
    finally:
        if check:
            check.unlink(missing_ok=True)
    acts = {k[len(ACT) :]: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items() if k.startswith(ACT)}
    embs = {k[len(EMB) :]: np.ascontiguousarray(v, dtype=np.float32) for k, v in out.items() if k.startswith(EMB)}
    return without_failed(images, Collected(acts, embs, failed, maps), on_bad_image)


def embed(
    engine: Engine,
    model,
    paths: Sequence[str],
    *,
    batch_size: int | None = None,
    dtype: str = "float32",
    progress: bool = True,
    desc: str = "encoding images",
) -> np.ndarray:
    """ImageEmbedder.embed on Ray workers: (len(paths), dim) float32 rows in order."""
    work = EmbedWork(model, default_batch_size(engine, batch_size), dtype)
    out = map_images(engine, work, {"path": list(paths)}, batch_size=work.batch_size, progress=progress, desc=desc)
    return np.ascontiguousarray(out["embedding"], dtype=np.float32)


def _vqa_missing(name: str) -> str | None:
    """On a worker: None if BLIP-2 `name` is on this node's disk, else why not (the message Blip2Vqa.load
    gives). Reads the processor and config only, not the weights."""
    from transformers import Blip2Config, Blip2Processor

    from clipeval.models.vqa import Blip2Vqa

    try:
        Blip2Processor.from_pretrained(name, local_files_only=True)
        Blip2Config.from_pretrained(name, local_files_only=True)
        return None
    except (OSError, ValueError):
        try:
            Blip2Vqa.load(name)  # fails at once at the same missing file, with the full explanation
        except WeightsUnavailable as e:
            return str(e)
        return None


def yes_probability(
    engine: Engine,
    work: VqaWork,
    paths: Sequence[str],
    questions: Sequence[Sequence[str]],
    *,
    progress: bool = True,
    desc: str = "VQA",
) -> tuple[list[np.ndarray], dict]:
    """YesNoBatch.score on Ray workers: P(yes) per question per image, and the answering model's info.
    A BLIP-2 the workers do not have raises WeightsUnavailable before any actor starts (checked by one
    small task where a worker would run, so Ray does not print the actors' failing constructors)."""
    import ray

    work.batch_size = work.batch_size or DEFAULT_VQA_BATCH["cuda" if engine.gpus_per_worker > 0 else "cpu"]
    if work.backend is None:
        with ray_session(engine, progress):
            check = ray.remote(_vqa_missing).options(num_cpus=1, num_gpus=engine.gpus_per_worker or 0)
            missing = ray.get(check.remote(work.name))
        if missing:
            raise WeightsUnavailable(missing)
    out = map_images(
        engine,
        work,
        {"path": list(paths), "questions": [list(q) for q in questions]},
        batch_size=work.batch_size,
        progress=progress,
        desc=desc,
    )
    return [np.asarray(p, dtype=np.float64) for p in out["p_yes"]], json.loads(out["model_info"][0])


def weights_unavailable_message(error: BaseException) -> str | None:
    """The message of a WeightsUnavailable raised on a worker, from the error Ray hands back (Ray wraps
    a worker's exception, keeping its type as the cause where it can and its text always)."""

    seen = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, WeightsUnavailable):
            return str(e)
        e = getattr(e, "cause", None) or e.__cause__
    text = str(error)
    marker = "WeightsUnavailable: "
    if marker in text:
        return text[text.index(marker) + len(marker) :].strip()
    return None
