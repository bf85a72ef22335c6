"""The probe pass's thumbnails (issue 27, point 2): they go to a file in the cache folder a batch at a
time (by this process or by the Ray workers), never all into the driver's memory; store_thumbnails reads
back only those of the images a page shows, by probe row, and the file goes when the run ends or fails."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import small_config
from PIL import Image

from clipeval.compute.batches import ACT, THUMB
from clipeval.datasets.probe import ProbeImage, load_rgb, thumbnail_jpeg
from clipeval.dissect import pipeline
from clipeval.dissect.activations import Collected, ThumbFile, WorkerRows, collect
from clipeval.store import Store
from tests.test_bad_images import short_png, truncated_jpeg


def _blob(i: int) -> bytes:
    return f"thumbnail of row {i}".encode() * (1 + i % 3)


def test_thumb_file_reads_back_by_row_what_several_writers_appended(tmp_path):
    """Two writers (two Ray workers) append interleaved batches to one folder, each to its own part; a
    retried batch writes its rows again; a record cut short by a crash is ignored; rows are read back by
    id in chunks, and after keep_only by the ids counted among the kept rows."""
    a, b = ThumbFile(tmp_path / "t"), ThumbFile(tmp_path / "t")
    a([0, 1, 2], [_blob(i) for i in (0, 1, 2)])
    b([5, 6], [_blob(i) for i in (5, 6)])
    a([3, 4], [_blob(i) for i in (3, 4)])
    b([3, 4], [_blob(i) for i in (3, 4)])  # the batch again, on another worker
    assert {a.part, b.part} == {0, 1}
    with open(tmp_path / "t" / f"{b.part}.idx", "ab") as f:
        f.write(np.array([7, 0], dtype=np.int64).tobytes())  # a record cut short
    reader = ThumbFile(tmp_path / "t")
    got = list(reader.read([0, 2, 3, 6, 7, 9], chunk=4))
    assert [list(ids) for ids, _ in got] == [[0, 2, 3, 6], [7, 9]]
    assert got[0][1] == {i: _blob(i) for i in (0, 2, 3, 6)} and got[1][1] == {}  # 7 and 9: never written
    reader.keep_only(np.array([0, 2, 4, 5, 6]))  # rows 1 and 3 did not decode
    (ids, thumbs), *_ = reader.read([0, 1, 2, 3, 4])
    assert thumbs == {0: _blob(0), 1: _blob(2), 2: _blob(4), 3: _blob(5), 4: _blob(6)}
    reader.remove()
    assert not (tmp_path / "t").exists() and list(reader.read([0]))[0][1] == {}


def _images(folder: Path, n: int) -> list[ProbeImage]:
    folder.mkdir()
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)).save(p)
        out.append(ProbeImage(str(p), "t", "CC0", ""))
    return out


def test_the_pass_hands_its_thumbnails_to_a_sink_a_batch_at_a_time(tmp_path):
    """No list of every image's thumbnail: collect's result has none, and its sink gets one batch at a time."""
    assert "thumbnails" not in {f.name for f in dataclasses.fields(Collected)}
    images = _images(tmp_path / "probe", 7)
    batches = []

    def sink(rows, blobs):
        batches.append((list(rows), list(blobs)))

    collect(images, thumb_size=16, batch_size=3, num_workers=0, progress=False, sinks={THUMB: sink})
    assert [rows for rows, _ in batches] == [[0, 1, 2], [3, 4, 5], [6]]
    assert [t for _, blobs in batches for t in blobs] == [thumbnail_jpeg(load_rgb(im.path), 16) for im in images]
    with pytest.raises(ValueError, match="sink"):
        collect(images, thumb_size=16, progress=False)


def test_a_ray_worker_writes_its_thumbnails_and_sends_none_back(tmp_path):
    """WorkerRows (what a Ray worker runs after each batch) appends the decoded images' thumbnails to the
    ThumbFile's folder and drops them from what goes back to the driver."""
    worker = WorkerRows({}, None, str(tmp_path / "t"))
    rows = np.array([10, 11, 12])
    out = {
        THUMB: np.array([b"ten", b"", b"twelve"], dtype=object),
        ACT + "l": np.zeros((3, 2), dtype=np.float32),
    }
    back = worker(out, rows, np.array([True, False, True]))
    assert THUMB not in back and ACT + "l" in back  # activations without a sink come back as before
    (_, got), *_ = ThumbFile(tmp_path / "t").read([10, 11, 12])
    assert got == {10: b"ten", 12: b"twelve"}


def _dissect(cfg, store, cache, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return pipeline.dissect(cfg, store, cache_dir=cache, progress=False, **kw)


def _spy_on_store_thumbnails(monkeypatch) -> dict:
    """What store_thumbnails saw: the pass's folder's files, and how many thumbnails it had to decode."""
    seen = {"files": [], "decoded": 0}
    store_thumbnails, decode = pipeline.store_thumbnails, pipeline.thumbnail_jpeg

    def spy(store, probe, neuron_images, made):
        seen["files"] = sorted(p.name for p in made.path.iterdir()) if made is not None else []
        return store_thumbnails(store, probe, neuron_images, made)

    def counted(*a, **kw):
        seen["decoded"] += 1
        return decode(*a, **kw)

    monkeypatch.setattr(pipeline, "store_thumbnails", spy)
    monkeypatch.setattr(pipeline, "thumbnail_jpeg", counted)
    return seen


def _assert_stored_thumbnails_are_their_images(store: Store, run_id: str) -> int:
    """Every stored thumbnail is, byte for byte, the one made from the file of the probe row it is stored
    under (what a pass that kept them in memory stored); the number of them."""
    fp = store.complete_run(run_id)["probe_fingerprint"]
    paths = store.probe_images(fp).set_index("image_id")["path"]
    stored = store.thumbnails(fp, paths.index)
    shown = set(store.neuron_images(run_id, kinds=("top", "level", "low", "random"))["image_id"].astype(int))
    assert set(stored) == shown
    for i, t in stored.items():
        assert t == thumbnail_jpeg(load_rgb(paths[i]), pipeline.THUMB_SIZE), (i, paths[i])
    return len(stored)


def test_a_run_stores_the_thumbnails_its_pass_wrote_to_the_cache_and_removes_them(probe_dir, tmp_path, monkeypatch):
    seen = _spy_on_store_thumbnails(monkeypatch)
    cache = tmp_path / "cache"
    store = Store(tmp_path / "s.duckdb")
    cfg = dataclasses.replace(small_config(probe_dir), layers=("classifier",))
    run_id = _dissect(cfg, store, cache, batch_size=16)
    assert "0.jpg" in seen["files"] and "0.idx" in seen["files"]  # the pass's thumbnails, on disk
    assert seen["decoded"] == 0  # every one read back from there
    assert _assert_stored_thumbnails_are_their_images(store, run_id) > 10
    assert not any((cache / "thumbnails").iterdir())  # used, then removed
    store.close()


@pytest.mark.parametrize("where", ["during the pass", "after the pass"])
def test_the_thumbnail_file_is_removed_when_the_run_fails(probe_dir, tmp_path, monkeypatch, where):
    cache = tmp_path / "cache"
    written = []
    if where == "during the pass":
        append = ThumbFile.__call__

        def failing(self, rows, blobs):
            append(self, rows, blobs)
            written.extend(self.path.iterdir())
            if len(written) > 2:  # the second batch is on disk
                raise RuntimeError("the pass fail here")

        monkeypatch.setattr(ThumbFile, "__call__", failing)
    else:

        def failing(*a, **kw):
            written.extend((cache / "thumbnails").glob("*/*"))
            raise RuntimeError("the summaries fail here")

        monkeypatch.setattr(pipeline, "stream_summaries", failing)
    store = Store(tmp_path / "s.duckdb")
    cfg = dataclasses.replace(small_config(probe_dir), layers=("classifier",))
    with pytest.raises(RuntimeError, match="fail here"):
        _dissect(cfg, store, cache, batch_size=16)
    assert written  # there was a file
    assert not any((cache / "thumbnails").iterdir())
    store.close()


@pytest.fixture
def probe_with_bad_images(probe_dir, tmp_path) -> Path:
    """Ten good images with two that do not decode among them (the first and the sixth): the rows after
    each are counted again when they are left out."""
    folder = tmp_path / "probe"
    folder.mkdir()
    good = sorted(p for p in probe_dir.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:10]
    for i, p in enumerate(good):
        Image.open(p).convert("RGB").save(folder / f"img{i:02d}b.png")
    truncated_jpeg(good[0], folder / "img00a_truncated.jpg")
    short_png(folder / "img05a_short.png")
    return folder


def test_images_after_one_that_does_not_decode_get_their_own_thumbnails(probe_with_bad_images, tmp_path, monkeypatch):
    seen = _spy_on_store_thumbnails(monkeypatch)
    store = Store(tmp_path / "s.duckdb")
    cfg = dataclasses.replace(
        small_config(probe_with_bad_images), layers=("classifier",), k=3, n_contrast=3
    )  # 3 + 3 + 3 + 8 levels: most of the 10 images shown
    run_id = _dissect(cfg, store, tmp_path / "cache", batch_size=4)
    run = store.complete_run(run_id)
    assert (run["n_images"], run["n_skipped_images"]) == (10, 2)
    assert _assert_stored_thumbnails_are_their_images(store, run_id) >= 8
    assert seen["decoded"] == 0  # every one read from the pass's file
    store.close()
