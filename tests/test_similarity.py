"""The five similarity functions against values computed by hand and against a direct per-neuron
transcription of method.md section 1."""

import math
import os
import shutil

import numpy as np
import pytest
import torch

from clipeval.dissect import similarity
from clipeval.errors import ClipevalError


def softmax_rows(P, a):
    e = np.exp(a * (P - P.max(1, keepdims=True)))
    return e / e.sum(1, keepdims=True)


def reference_pmi(P, A, top_k, a, lam, min_prob, weights=None):
    """Direct loop over neurons, as method.md writes it."""
    Q = softmax_rows(P.astype(np.float64), a)
    n_neurons = A.shape[1]
    logc = np.zeros((n_neurons, P.shape[1]))
    for k in range(n_neurons):
        top = np.argsort(-A[:, k], kind="stable")[:top_k]
        for i, x in enumerate(top):
            if weights is None:
                logc[k] += np.log(Q[x] + min_prob)
            else:
                logc[k] += np.log(1 + weights[i] * (Q[x] - 1) + min_prob)
    m = logc.max(0)
    logp = m + np.log(np.exp(logc - m).sum(0)) - math.log(n_neurons)
    return logc - lam * logp


@pytest.fixture
def data():
    rng = np.random.default_rng(1)
    P = rng.uniform(0.1, 0.4, size=(40, 7)).astype(np.float32)
    A = rng.normal(size=(40, 6)).astype(np.float32)
    return P, A


def test_soft_wpmi_by_hand_two_images():
    # 2 images, 2 concepts, 1 neuron, top_k=2, a=1, lam=0 -> score = log p(t|k) only.
    P = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    A = torch.tensor([[2.0], [1.0]])  # image 0 is the most active
    q_hi = math.exp(1) / (math.exp(1) + 1)  # softmax([1, 0])[0]
    p0, p1 = 0.9, 0.9 - 0.5 * (0.9 - 0.5)  # p_i = p_start - (i/top_k)(p_start - p_end)
    want_c0 = math.log(1 + p0 * (q_hi - 1)) + math.log(1 + p1 * ((1 - q_hi) - 1))
    want_c1 = math.log(1 + p0 * ((1 - q_hi) - 1)) + math.log(1 + p1 * (q_hi - 1))
    got = similarity.soft_wpmi(P, A, top_k=2, a=1.0, lam=0.0, min_prob=0.0, p_start=0.9, p_end=0.5)
    assert got[0, 0].item() == pytest.approx(want_c0, rel=1e-5)
    assert got[0, 1].item() == pytest.approx(want_c1, rel=1e-5)
    assert got.argmax().item() == 0  # the concept of the most active image wins


def test_soft_wpmi_matches_direct_loop(data):
    P, A = data
    top_k, p_start, p_end = 10, 0.998, 0.97
    weights = p_start - np.arange(top_k) / top_k * (p_start - p_end)
    want = reference_pmi(P, A, top_k, a=10, lam=1, min_prob=1e-7, weights=weights)
    got = similarity.compute("soft_wpmi", torch.from_numpy(P), torch.from_numpy(A), top_k=top_k)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)


def test_wpmi_matches_direct_loop_and_batches(data):
    P, A = data
    want = reference_pmi(P, A, top_k=8, a=2, lam=0.6, min_prob=1e-7)
    got = similarity.compute("wpmi", torch.from_numpy(P), torch.from_numpy(A), top_k=8)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)
    # a memory budget of one neuron per batch must give the same numbers
    tiny = similarity.wpmi(torch.from_numpy(P), torch.from_numpy(A), top_k=8, mem_budget=1)
    np.testing.assert_allclose(tiny.numpy(), got.numpy(), rtol=1e-6)


def test_lambda_subtracts_the_layer_prior():
    P = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    A = torch.eye(3)
    s0 = similarity.wpmi(P, A, top_k=1, a=2.0, lam=0.0)
    s1 = similarity.wpmi(P, A, top_k=1, a=2.0, lam=1.0)
    prior = torch.logsumexp(s0, dim=0) - math.log(3)
    torch.testing.assert_close(s1, s0 - prior)


def test_cos_similarity_by_hand():
    P = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    A = torch.tensor([[3.0], [4.0]])
    got = similarity.cos_similarity(P, A)
    # columns of P: (1,0) and (0,1) after normalising; A: (0.6, 0.8)
    torch.testing.assert_close(got, torch.tensor([[0.6, 0.8]]))


def test_cos_similarity_cubed_by_hand():
    P = torch.tensor([[0.0], [1.0], [2.0]])  # centred: -1, 0, 1 -> cubed -1, 0, 1
    A = torch.tensor([[0.0, 2.0], [0.0, 1.0], [3.0, 0.0]])  # col0 centred -1,-1,2 -> -1,-1,8
    got = similarity.cos_similarity_cubed(P, A)
    c0 = np.array([-1, -1, 8.0])
    c0 /= np.linalg.norm(c0)
    p = np.array([-1, 0, 1.0]) / math.sqrt(2)
    assert got[0, 0].item() == pytest.approx(float(c0 @ p), rel=1e-5)
    assert got[1, 0].item() == pytest.approx(-1.0, rel=1e-5)  # col1 centred 1,0,-1: exactly opposite


def test_cos_similarity_cubed_clips_small_norms():
    P = torch.tensor([[0.1], [0.1], [0.1]])  # constant column: norm 0 -> divided by min_norm, no NaN
    A = torch.tensor([[1.0], [2.0], [3.0]])
    assert torch.isfinite(similarity.cos_similarity_cubed(P, A)).all()


def reference_rank_reorder(P, A, p, top_fraction, scale_p, seed):
    """Per neuron, as the original's loop (random baseline drawn in the same order)."""
    gen = torch.Generator().manual_seed(seed)
    top_n = int(A.shape[0] * top_fraction)
    target, idx = torch.topk(A, k=top_n, dim=0)
    perms = [[torch.randperm(top_n, generator=gen) for _ in range(5)] for _ in range(A.shape[1])]
    out = torch.empty(A.shape[1], P.shape[1])
    for k in range(A.shape[1]):
        clip = P[idx[:, k]]  # (top_n, concepts)
        avg = clip.mean(0)
        ranks = torch.argsort(torch.argsort(clip, dim=0), dim=0)
        asc = torch.flip(target[:, k], dims=[0])
        baseline = torch.mean(torch.abs(asc[:, None] - torch.stack([asc[pp] for pp in perms[k]], 1)) ** p)
        for c in range(P.shape[1]):
            reorg = asc[ranks[:, c]]
            err = torch.mean(torch.abs(target[:, k] - reorg) ** p) / baseline
            out[k, c] = -err / avg[c].clamp_min(1e-6) ** scale_p
    return out


def test_rank_reorder_matches_direct_loop(data):
    P, A = map(torch.from_numpy, data)
    got = similarity.compute("rank_reorder", P, A, top_fraction=0.25, seed=3)
    want = reference_rank_reorder(P, A, p=3, top_fraction=0.25, scale_p=0.5, seed=3)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_rank_reorder_prefers_the_concept_that_orders_images_like_the_neuron():
    A = torch.arange(20.0).unsqueeze(1)  # image i activates the neuron by i
    P = torch.stack(
        [torch.arange(20.0) / 40 + 0.1, torch.rand(20, generator=torch.Generator().manual_seed(0)) / 2 + 0.1], 1
    )
    scores = similarity.rank_reorder(P, A, top_fraction=0.5)
    assert scores[0, 0] > scores[0, 1]
    assert scores[0, 0] == pytest.approx(0.0, abs=1e-6)  # perfect reorder: zero error


def test_rank_reorder_is_deterministic_and_rejects_too_few_images(data):
    P, A = map(torch.from_numpy, data)
    torch.testing.assert_close(
        similarity.rank_reorder(P, A, top_fraction=0.2), similarity.rank_reorder(P, A, top_fraction=0.2)
    )
    with pytest.raises(ClipevalError, match="at least 2 top images"):
        similarity.rank_reorder(P, A, top_fraction=0.01)


def test_top_k_larger_than_probe_is_clamped_with_a_warning(data):
    P, A = map(torch.from_numpy, data)
    with pytest.warns(UserWarning, match="top_k=100"):
        got = similarity.compute("soft_wpmi", P, A)
    assert got.shape == (6, 7)


def test_compute_rejects_unknown_function_and_mismatched_shapes(data):
    P, A = map(torch.from_numpy, data)
    with pytest.raises(ClipevalError, match="unknown similarity"):
        similarity.compute("dot", P, A)
    with pytest.raises(ClipevalError, match="images"):
        similarity.compute("cos_similarity", P[:5], A)


# ---- label_units: the best concepts per unit, one block of units at a time (issue 27 point 3) ------------

PARAMS = {
    "soft_wpmi": dict(top_k=10),
    "wpmi": dict(top_k=8),
    "rank_reorder": dict(top_fraction=0.25, seed=3),
    "cos_similarity_cubed": {},
    "cos_similarity": {},
}


@pytest.fixture
def layer():
    """48 images x 29 concepts, 37 units; a third of the units ReLU-like (ties at 0 below their top)."""
    rng = np.random.default_rng(7)
    P = torch.from_numpy(rng.uniform(0.1, 0.4, size=(48, 29)).astype(np.float32))
    A = rng.normal(size=(48, 37)).astype(np.float32)
    A[:, ::3] = np.maximum(A[:, ::3], 0)
    return P, torch.from_numpy(A)


@pytest.mark.parametrize("fn", list(PARAMS))
def test_label_units_in_blocks_equals_the_whole_score_matrix(layer, fn, monkeypatch):
    P, A = layer
    want = similarity.top_concepts(similarity.compute(fn, P, A, **PARAMS[fn]), 5)
    blocks = []
    top_concepts = similarity.top_concepts
    monkeypatch.setattr(similarity, "top_concepts", lambda s, k: blocks.append(s.shape) or top_concepts(s, k))
    budget = 2 * 4 * P.shape[1] * 6  # 6 units' scores and temporaries
    got = similarity.label_units(fn, P, A, 5, mem_budget=budget, **PARAMS[fn])
    assert max(rows for rows, _ in blocks) == 6 and sum(rows for rows, _ in blocks) == A.shape[1]
    assert torch.equal(got.indices, want.indices)
    torch.testing.assert_close(got.values, want.values, rtol=1e-5, atol=1e-5)
    assert got.values.shape == (37, 5) and got.n_nan == 0


@pytest.mark.parametrize("fn", list(PARAMS))
def test_torch_kernels_give_the_numpy_kernels_labels(layer, fn):
    P, A = layer
    # rounded CLIP scores: images tie under a concept, which both ways must order by image index
    P = torch.round(P * 50) / 50
    numpy_way = similarity.label_units(fn, P, A, 5, backend="numpy", **PARAMS[fn])
    torch_way = similarity.label_units(fn, P, A, 5, backend="torch", mem_budget=4096, **PARAMS[fn])
    assert torch.equal(torch_way.indices, numpy_way.indices)
    torch.testing.assert_close(torch_way.values, numpy_way.values, rtol=1e-5, atol=1e-5)
    whole = similarity.compute(fn, P, A, backend="torch", **PARAMS[fn])
    torch.testing.assert_close(whole, similarity.compute(fn, P, A, **PARAMS[fn]), rtol=1e-5, atol=1e-5)


def test_label_units_ranks_nan_last_and_checks_its_inputs(layer):
    P, A = layer
    P = P.clone()
    P[:, 0] = float("nan")  # cos_similarity's concept 0 is NaN for every unit
    got = similarity.label_units("cos_similarity", P, A, 29)
    assert got.n_nan == 37 and (got.indices[:, -1] == 0).all()
    with pytest.raises(ClipevalError, match="unknown similarity backend"):
        similarity.label_units("wpmi", P, A, 3, backend="jax")
    with pytest.raises(ClipevalError, match="numpy similarity kernels run on the CPU"):
        similarity.label_units("wpmi", P, A, 3, device="meta", backend="numpy")
    with pytest.raises(ClipevalError, match="images"):
        similarity.label_units("wpmi", P[:5], A, 3)


@pytest.mark.parametrize("threads", [1, 3])
def test_soft_wpmi_from_top_images_splits_units_over_threads_with_bitwise_equal_sums(monkeypatch, threads):
    """label_units_from_top's soft_wpmi runs a block's units on torch's threads, each range in cache-sized
    sub-blocks (17 units: neither divides them); every sum is bitwise that of one rank-by-rank loop."""
    rng = np.random.default_rng(5)
    n_images, n_concepts, n_units, top_k = 30, 11, 17, 6
    P = torch.from_numpy(rng.uniform(0.1, 0.4, size=(n_images, n_concepts)).astype(np.float32))
    top = np.stack([rng.permutation(n_images)[:top_k] for _ in range(n_units)])
    kw = dict(top_k=top_k, a=10.0, min_prob=1e-7, p_start=0.998, p_end=0.97)
    p = kw["p_start"] - torch.arange(top_k, dtype=torch.float32) / top_k * (kw["p_start"] - kw["p_end"])
    weight, offset = p.numpy(), (1 - p + kw["min_prob"]).numpy()
    Q = torch.softmax(kw["a"] * P, dim=1).numpy()
    want = np.zeros((n_units, n_concepts), dtype=np.float32)
    for i in range(top_k):
        want += np.log(Q[top[:, i]] * weight[i] + offset[i])
    pools = []

    class Pool(similarity.ThreadPoolExecutor):
        def __init__(self, workers):
            pools.append(workers)
            super().__init__(workers)

    monkeypatch.setattr(similarity, "ThreadPoolExecutor", Pool)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setattr(similarity, "CACHE_BYTES", 2 * 4 * n_concepts * 2)  # sub-blocks of 2 units
    # lam = 0: the scores are the sums themselves; all concepts kept, so every sum comes back
    got = similarity.label_units_from_top(
        "soft_wpmi", top, lambda ids: P[ids], n_concepts, n_images, n_concepts, lam=0.0, **kw
    )
    assert pools == ([threads] if threads > 1 else [])  # one block of units: computed once
    sums = np.empty_like(want)
    np.put_along_axis(sums, got.indices.numpy(), got.values.numpy(), axis=1)
    assert np.array_equal(sums, want)


@pytest.mark.parametrize("fn", list(similarity.TOP_IMAGE_FUNCTIONS))
def test_label_units_from_top_reads_the_first_pass_back_from_spill_dir(tmp_path, monkeypatch, fn):
    """With a spill_dir, the second pass reads each block's log p(concept|unit) back instead of making its
    P rows and sums again: every block made once, the same scores bitwise, nothing left behind; without
    twice the room on disk, it computes them again."""
    rng = np.random.default_rng(9)
    n_images, n_concepts, n_units, top_k = 40, 11, 23, 5
    P = torch.from_numpy(rng.uniform(0.1, 0.4, size=(n_images, n_concepts)).astype(np.float32))
    top = np.stack([rng.permutation(n_images)[:top_k] for _ in range(n_units)])
    made = []

    def rows_of(ids):
        made.append(len(ids))
        return P[ids]

    def label(spill_dir):
        made.clear()
        return similarity.label_units_from_top(
            fn,
            top,
            rows_of,
            n_concepts,
            n_images,
            4,
            mem_budget=2 * 4 * n_concepts * 12,
            spill_dir=spill_dir,
            top_k=top_k,
        )

    want = label(None)
    n_blocks = (len(made) + 1) // 2  # the last block is kept from the first pass
    assert n_blocks > 2
    got = label(tmp_path)
    assert len(made) == n_blocks and list(tmp_path.iterdir()) == []
    assert torch.equal(got.indices, want.indices) and torch.equal(got.values, want.values)
    short = shutil.disk_usage(tmp_path)._replace(free=4 * n_concepts * n_units)  # room for the blocks, once
    monkeypatch.setattr(shutil, "disk_usage", lambda path: short)
    assert torch.equal(label(tmp_path).values, want.values) and len(made) == 2 * n_blocks - 1


def test_a_killed_dissections_spill_folder_is_removed_and_a_running_ones_kept(tmp_path):
    """kill -9 during labelling skips the finally that removes the spill folder (up to 8 GB): the next labelling
    with that cache removes it, but not the folder of a dissection still running."""
    import subprocess
    import sys

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan = tmp_path / f"{similarity.SPILL_PREFIX}{dead.pid}-abc"
    live = tmp_path / f"{similarity.SPILL_PREFIX}{os.getpid()}-def"
    for folder in (orphan, live):
        folder.mkdir()
        (folder / "0.f32").write_bytes(b"\0" * 16)
    rng = np.random.default_rng(3)
    P = torch.from_numpy(rng.uniform(0.1, 0.4, size=(30, 7)).astype(np.float32))
    top = np.stack([rng.permutation(30)[:4] for _ in range(20)])
    similarity.label_units_from_top(
        "soft_wpmi", top, lambda ids: P[ids], 7, 30, 3, mem_budget=2 * 4 * 7 * 10, spill_dir=tmp_path, top_k=4
    )
    assert not orphan.exists() and live.exists()
