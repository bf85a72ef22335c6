"""Streaming aggregation: a layer's activations written to disk a batch at a time and summarised on the way
(LayerStream), the summaries finished from the file in bounded memory (stream_summaries), and the similarity
from each unit's top images or from blocks of units (pipeline.layer_top_concepts) give what the whole-matrix functions
give (activations.neuron_summaries, similarity.compute)."""

import numpy as np
import pandas as pd
import pytest
import torch

from clipeval.config import SIMILARITY_DEFAULTS
from clipeval.dissect import similarity
from clipeval.dissect.activations import (
    STREAM,
    LayerStream,
    RowFile,
    WorkerRows,
    neuron_summaries,
    stream_file,
    stream_summaries,
)
from clipeval.dissect.pipeline import LayerSink, StreamedLayer, layer_top_concepts, stream_keep
from clipeval.errors import ClipevalError


def _activations(n=997, units=13, seed=1):
    """Normal activations with the awkward cases: ReLU zeros (ties at the bottom), rounded values (ties in
    the top), a dead unit, and -0.0 beside 0.0."""
    rng = np.random.default_rng(seed)
    A = rng.normal(size=(n, units)).astype(np.float32)
    A[:, 3] = np.maximum(A[:, 3], 0)
    A[:, 4] = 0.5
    A[:, 5] = np.round(A[:, 5])
    A[: n // 2, 6] = -0.0
    A[n // 2 :, 6] = np.abs(A[n // 2 :, 6])
    return A


def _stream_to_file(A, path, keep, batch=64, seed=0):
    """What the probe pass does: batches in a shuffled order (as Ray workers deliver them) into a file
    and a LayerStream."""
    rows_file, stream = RowFile(path, A.shape), LayerStream(keep)
    perm = np.random.default_rng(seed).permutation(len(A))
    for i in range(0, len(A), batch):
        rows = np.sort(perm[i : i + batch])
        rows_file.write_rows(rows, A[rows])
        stream.add(rows, A[rows])
    return stream


@pytest.mark.parametrize("budget", [10**9, 20_000, 3_000])  # one block; transposed copy and many unit blocks
def test_stream_summaries_equal_neuron_summaries(tmp_path, budget):
    A = _activations()
    stream = _stream_to_file(A, tmp_path / "a.npy", keep=40)
    assert np.array_equal(np.load(tmp_path / "a.npy"), A)  # the cache entry is an ordinary .npy
    want = neuron_summaries("l", A, 5, 10, 3)
    got = stream_summaries("l", tmp_path / "a.npy", stream, 5, 10, 3, tmp_path, budget)
    for w, g in zip(want, got):
        pd.testing.assert_frame_equal(w.reset_index(drop=True), g, check_dtype=False)
    assert [p.name for p in tmp_path.iterdir()] == ["a.npy"]  # the transposed scratch copy is gone


def test_layer_stream_keeps_the_top_images_in_neuron_summaries_order_and_merges(tmp_path):
    A = _activations()
    stream = _stream_to_file(A, tmp_path / "a.npy", keep=40)
    order = np.argsort(-A, axis=0, kind="stable")[:40].T  # ties: the lower image id first
    ids, values = stream.top(40)
    assert np.array_equal(ids, order) and np.array_equal(values, np.take_along_axis(A.T, order, 1) + 0)
    assert np.array_equal(stream.dead(), np.arange(13) == 4)
    np.testing.assert_allclose(stream.mean(), A.mean(0), rtol=1e-6, atol=1e-7)
    # two streams over disjoint halves merge into the stream over all (a Ray batch summary is one)
    a, b = LayerStream(40), LayerStream(40)
    a.add(np.arange(0, 500), A[:500])
    b.add(np.arange(500, len(A)), A[500:])
    a.merge(b)
    assert np.array_equal(a.top(40)[0], ids) and a.n == len(A)
    assert np.array_equal(stream_file(tmp_path / "a.npy", 40, budget=4096).top(40)[0], ids)
    # images left out (did not decode): the others' ids count again among those kept
    keep = np.setdiff1d(np.arange(len(A)), [0, 7, 500])
    part = LayerStream(40)
    part.add(keep, A[keep])
    part.renumber(keep)
    assert np.array_equal(part.top(40)[0], np.argsort(-A[keep], axis=0, kind="stable")[:40].T)


def test_a_sink_leaves_out_the_images_that_did_not_decode(tmp_path):
    """The probe pass's sink: rows written as batches come (with gaps where images did not decode), then the
    file and the stream renumbered to the decoded images only, as the whole-matrix pass left them out."""
    A = _activations(n=200)
    sink = LayerSink(tmp_path / "a.npy", 200, 30)
    good = np.setdiff1d(np.arange(200), [3, 64, 150])
    for i in range(0, 200, 32):
        rows = good[(good >= i) & (good < i + 32)]
        sink(rows, A[rows])
    sink.keep_only(good)
    assert np.array_equal(np.load(sink.path), A[good])
    assert np.array_equal(sink.stream.top(30)[0], np.argsort(-A[good], axis=0, kind="stable")[:30].T)


def test_random_negatives_come_from_the_same_random_numbers_in_row_blocks(tmp_path):
    """With many ties at the k-th activation (a unit at 0 on most images), candidates start after them."""
    rng = np.random.default_rng(5)
    A = np.where(rng.random((400, 6)) < 0.97, 0.0, rng.random((400, 6))).astype(np.float32)
    stream = _stream_to_file(A, tmp_path / "a.npy", keep=5)
    want = neuron_summaries("l", A, 5, 20, 11)
    got = stream_summaries("l", tmp_path / "a.npy", stream, 5, 20, 11, tmp_path, budget=2_000)
    for w, g in zip(want, got):
        pd.testing.assert_frame_equal(w.reset_index(drop=True), g, check_dtype=False)


@pytest.mark.parametrize("fn", list(SIMILARITY_DEFAULTS))
def test_layer_top_concepts_equal_the_whole_matrix_similarity(tmp_path, fn, monkeypatch):
    """Neither P = image embeddings @ text embeddings.T, the activations nor the scores are made whole: each
    unit's best concepts equal those of similarity.compute on the whole P and A (their scores within float32
    rounding: block sums, and soft_wpmi / wpmi's log p(concept) merged over blocks of units), whether the
    budget takes everything in one block or forces several blocks of units and, within each, several blocks
    of image rows (cosines) or concepts (rank_reorder), none of which divides its total."""
    rng = np.random.default_rng(0)
    n, units, concepts, dim = 300, 17, 50, 8
    A = rng.normal(size=(n, units)).astype(np.float32)  # no ties: torch.topk's order is then the only one
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    T = rng.normal(size=(concepts, dim)).astype(np.float32)
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    images = RowFile(tmp_path / "emb.npy", emb.shape)
    images.write_rows(np.arange(n), emb)
    params = {"top_k": 20} if fn == "soft_wpmi" else {}
    stream = _stream_to_file(A, tmp_path / "a.npy", keep=stream_keep(fn, params, 5))
    live = np.setdiff1d(np.arange(units), [4, 6])  # dead units are left out of every score
    P = torch.from_numpy(emb) @ torch.from_numpy(T).T
    want = similarity.top_concepts(similarity.compute(fn, P, torch.from_numpy(A[:, live]), **params), 7)
    blocks = {"units": 0, "image reads": 0}
    top_concepts, read_rows = similarity.top_concepts, RowFile.read_rows

    def counted_top(scores, k):
        blocks["units"] += 1
        return top_concepts(scores, k)

    def counted_read(self, a, b):
        blocks["image reads"] += self.path == images.path
        return read_rows(self, a, b)

    monkeypatch.setattr(similarity, "top_concepts", counted_top)
    monkeypatch.setattr(RowFile, "read_rows", counted_read)
    # one block; else 2 blocks of units (8 + 7) x 43 of image rows (42 x 7 + 6) for the cosines, 4 of units
    # (3 x 4 + 3) x 17 of concepts (16 x 3 + 2) for rank_reorder; soft_wpmi / wpmi: units whose top images fit
    small = 23_000 if fn == "rank_reorder" else 10_000
    for budget in (2**28, small):
        blocks.update({"units": 0, "image reads": 0})
        layer = StreamedLayer(tmp_path / "a.npy", stream)
        got = layer_top_concepts(fn, params, layer, live, images, T, 7, budget=budget)
        assert torch.equal(got.indices, want.indices)
        if fn in similarity.TOP_IMAGE_FUNCTIONS:  # differences of sums of logs near -60: a float32 step is 4e-6
            torch.testing.assert_close(got.values, want.values, rtol=1e-5, atol=1e-5)
        else:
            torch.testing.assert_close(got.values, want.values, rtol=1e-6, atol=1e-6 * float(want.values.abs().max()))
            if budget < 2**28:
                assert 1 < blocks["units"] < blocks["image reads"]  # several blocks of units, each of several reads


def test_ray_workers_write_their_rows_and_send_the_driver_only_what_its_stream_needs(tmp_path):
    """What the Ray probe pass does (compute.ray_map.collect): each worker (activations.WorkerRows) writes
    its decoded rows into the shared cache file and sends per batch only a batch_part, which the driver's
    LayerSink merges. The file and the stream equal the local pass's (LayerSink fed every decoded batch),
    images that did not decode left out; and once the workers' tops fill, a batch's part is a small fraction
    of the batch's rows."""
    A = _activations(n=3000, units=200, seed=3)
    fails = {5, 700, 2999}
    local = LayerSink(tmp_path / "local.npy", len(A), 30)
    driver = LayerSink(tmp_path / "ray.npy", len(A), 30)
    workers = [WorkerRows({"act": (str(driver.path), len(A), 30)}) for _ in range(2)]
    sent = []
    for i, a in enumerate(range(0, len(A), 64)):  # batches dealt to the two workers in turn
        rows = np.arange(a, min(len(A), a + 64))
        decoded = ~np.isin(rows, list(fails))
        out = {"act": np.where(decoded[:, None], A[rows], 0), "other": rows}
        out = workers[i % 2](out, rows, decoded)
        assert "act" not in out and list(out["other"]) == list(rows)  # the rows stay on the worker
        blob = out[STREAM + "act"]
        assert all(b == b"" for b in blob[1:])
        driver.merge(blob[0])
        local(rows[decoded], A[rows[decoded]])
        sent.append((len(blob[0]), A[rows].nbytes))
    good = np.setdiff1d(np.arange(len(A)), list(fails))
    for sink in (local, driver):
        sink.keep_only(good)
    assert np.array_equal(np.load(driver.path), np.load(local.path))
    assert np.array_equal(np.load(driver.path), A[good])
    for k in (5, 30):
        assert [np.array_equal(x, y) for x, y in zip(driver.stream.top(k), local.stream.top(k))] == [True, True]
    assert np.array_equal(driver.stream.dead(), local.stream.dead()) and driver.stream.n == local.stream.n
    np.testing.assert_allclose(driver.stream.mean(), local.stream.mean(), rtol=1e-12)
    late = sent[len(sent) // 2 :]
    assert sum(s for s, _ in late) < 0.25 * sum(r for _, r in late)


def test_a_ray_worker_that_does_not_see_the_drivers_cache_folder_stops_at_its_first_batch(tmp_path):
    """A worker on a node where the cache folder is another disk would write rows the driver never reads."""
    check = tmp_path / "ray-check-abc"
    check.write_text("abc")
    rows, block = np.arange(4), np.ones((4, 3), dtype=np.float32)
    specs = {"act": (str(tmp_path / "a.npy"), 4, 2)}
    WorkerRows(specs, (str(check), "abc"))({"act": block}, rows, np.ones(4, bool))  # sees it: writes
    for seen in ("another run's", None):
        if seen is None:
            check.unlink()
        else:
            check.write_text(seen)
        with pytest.raises(ClipevalError, match="does not see the driver's cache folder"):
            WorkerRows(specs, (str(check), "abc"))({"act": block}, rows, np.ones(4, bool))
