"""CLIP-Dissect's five similarity functions between neurons and concepts.

Inputs everywhere: `P` (images x concepts) image-text cosines and `A` (images x neurons) activations.
Output: scores (neurons x concepts); a neuron's label is its argmax concept.

Each function follows the formulas of the original (method.md section 1) but not its loop over
neurons (timings against that loop: bench/bench_similarity.py, docs/performance.md):
- wpmi takes log(Q + min_prob) once per (image, concept) and sums table rows per neuron;
- soft_wpmi accumulates rank by rank over cache-sized blocks of neurons with reused buffers;
- rank_reorder ranks all images once per concept, then orders each neuron's top images per concept
  with one vectorised integer sort (no per-neuron double argsort).
The numpy loops run on torch.get_num_threads() Python threads over disjoint ranges (numpy releases
the GIL); working sets stay within `mem_budget` bytes. Inputs are used on the CPU; outputs are CPU tensors.
"""

from __future__ import annotations

import math
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torch.nn.functional as F

from clipeval.config import SIMILARITY_DEFAULTS
from clipeval.errors import ClipevalError

MEM_BUDGET = 256 * 2**20
CACHE_BYTES = 1 * 2**20  # soft_wpmi's working block: stays in a core's L2 cache
REORDER_BLOCK = 2**16  # rank_reorder: (neuron, top image) keys sorted per concept and block


def _neuron_batches(n_neurons: int, bytes_per_neuron: int, mem_budget: int):
    step = max(1, min(n_neurons, mem_budget // max(1, bytes_per_neuron)))
    for start in range(0, n_neurons, step):
        yield slice(start, min(start + step, n_neurons))


def _cpu(x: torch.Tensor) -> torch.Tensor:
    return x.detach().to("cpu", torch.float32)


def _clamp_top(top: int, n_images: int, name: str) -> int:
    if top > n_images:
        warnings.warn(f"{name}: top_k={top} is more than the {n_images} probe images; using {n_images}", stacklevel=3)
        return n_images
    return top


def _pmi_from_conditional(log_cond: torch.Tensor, lam: float) -> torch.Tensor:
    """score = log p(t|k) - lam * log p(t), with p(t) the mean of p(t|k) over the layer's neurons."""
    log_prior = torch.logsumexp(log_cond, dim=0, keepdim=True) - math.log(log_cond.shape[0])
    return log_cond - lam * log_prior


def soft_wpmi(P, A, top_k=100, a=10.0, lam=1.0, min_prob=1e-7, p_start=0.998, p_end=0.97, mem_budget=MEM_BUDGET):
    P, A = _cpu(P), _cpu(A)
    top_k = _clamp_top(int(top_k), A.shape[0], "soft_wpmi")
    Q = torch.softmax(a * P, dim=1)
    top_idx = torch.topk(A, k=top_k, dim=0).indices  # (top_k, neurons)
    p = p_start - torch.arange(top_k, dtype=torch.float32) / top_k * (p_start - p_end)
    # log(1 + p(Q - 1) + m) = log((1 - p + m) + p Q). The term depends on the image's rank i, so it
    # cannot be tabulated per image: accumulate rank by rank into a block of neurons small enough
    # for the CPU cache (a few rows x |S|), reusing one buffer (no large temporaries to page in).
    # numpy loops, one thread per range of neurons: many small torch ops would each be a parallel
    # region, which costs more than the op itself on a small or busy machine.
    offset, weight = (1 - p + min_prob).numpy(), p.numpy()
    n_neurons, n_concepts = A.shape[1], P.shape[1]
    out = torch.zeros(n_neurons, n_concepts)
    Qn, acc_all, idx_all = Q.numpy(), out.numpy(), top_idx.numpy().astype(np.intp)
    block = max(1, min(CACHE_BYTES, mem_budget) // (2 * 4 * n_concepts))

    def work(lo, hi):
        rows = np.empty((min(block, hi - lo), n_concepts), dtype=np.float32)
        for k0 in range(lo, hi, block):
            k1 = min(hi, k0 + block)
            acc, buf = acc_all[k0:k1], rows[: k1 - k0]
            for i in range(top_k):
                np.take(Qn, idx_all[i, k0:k1], axis=0, out=buf, mode="clip")
                buf *= weight[i]
                buf += offset[i]
                acc += np.log(buf, out=buf)

    _parallel(work, n_neurons, torch.get_num_threads())
    return _pmi_from_conditional(out, lam)


def wpmi(P, A, top_k=28, a=2.0, lam=0.6, min_prob=1e-7, mem_budget=MEM_BUDGET):
    P, A = _cpu(P), _cpu(A)
    top_k = _clamp_top(int(top_k), A.shape[0], "wpmi")
    # log(Q[x, t] + m) depends on the image only: take the log once per (image, concept), in place,
    # then each neuron's log p(t|k) is a sum of rows of that table (an embedding-bag sum).
    L = torch.softmax(a * P, dim=1).add_(min_prob).log_()
    top_idx = torch.topk(A, k=top_k, dim=0).indices  # (top_k, neurons)
    out = torch.empty(A.shape[1], P.shape[1])
    for sl in _neuron_batches(A.shape[1], 4 * P.shape[1], mem_budget):
        out[sl] = F.embedding_bag(top_idx[:, sl].T.contiguous(), L, mode="sum")
    return _pmi_from_conditional(out, lam)


def pmi_from_top(fn, top, rows_of, n_concepts, n_images, mem_budget=MEM_BUDGET, **params):
    """soft_wpmi or wpmi scores (units x concepts) from each unit's top images alone, never from the
    whole P and A: `top` (units, >= top_k) image ids, most active first (ties: the lower id), and
    `rows_of(ids)` -> the P rows (image-concept cosines) of those images. The same sums as soft_wpmi /
    wpmi, term by term in the same order; P rows are made for a block of units at a time (the images
    some unit of the block keeps), so memory stays within `mem_budget` for any number of images."""
    if fn not in ("soft_wpmi", "wpmi"):
        raise ClipevalError(f"{fn} needs every image's activation, not only each unit's top images")
    kw = {**SIMILARITY_DEFAULTS[fn], **params}
    top_k = _clamp_top(int(kw.pop("top_k")), n_images, fn)
    lam = kw.pop("lam")
    top = np.asarray(top)[:, :top_k]
    out = torch.empty(len(top), n_concepts)
    max_rows = max(top_k, mem_budget // (2 * 4 * n_concepts))  # P and Q rows; as many units' sums and buffers
    conditional = _soft_wpmi_conditional if fn == "soft_wpmi" else _wpmi_conditional
    for u0, u1 in _blocks_of_images(top, max_rows):
        ids, local = np.unique(top[u0:u1], return_inverse=True)
        P_rows = _cpu(torch.as_tensor(rows_of(ids)))
        out[u0:u1] = conditional(P_rows, local.reshape(-1, top_k), **kw)
    return _pmi_from_conditional(out, lam)


def _blocks_of_images(top: np.ndarray, max_rows: int):
    """(start, end) ranges of at most max_rows units whose top images together are at most max_rows images:
    units that share images share their P rows, so a small probe makes each row once."""
    start, seen = 0, set()
    for u, row in enumerate(top.tolist()):
        new = set(row).difference(seen)
        if u > start and (len(seen) + len(new) > max_rows or u - start >= max_rows):
            yield start, u
            start, seen = u, set(row)
        else:
            seen |= new
    if len(top):
        yield start, len(top)


def _soft_wpmi_conditional(P_rows, local, a, min_prob, p_start, p_end):
    """soft_wpmi's log p(t|k) for the units whose top images are rows `local` (units, top_k) of P_rows."""
    top_k = local.shape[1]
    Qn = torch.softmax(a * P_rows, dim=1).numpy()
    p = p_start - torch.arange(top_k, dtype=torch.float32) / top_k * (p_start - p_end)
    offset, weight = (1 - p + min_prob).numpy(), p.numpy()
    acc = np.zeros((len(local), Qn.shape[1]), dtype=np.float32)
    buf = np.empty_like(acc)
    idx = local.astype(np.intp)
    for i in range(top_k):  # rank by rank, as soft_wpmi adds them
        np.take(Qn, idx[:, i], axis=0, out=buf)
        buf *= weight[i]
        buf += offset[i]
        acc += np.log(buf, out=buf)
    return torch.from_numpy(acc)


def _wpmi_conditional(P_rows, local, a, min_prob):
    L = torch.softmax(a * P_rows, dim=1).add_(min_prob).log_()
    return F.embedding_bag(torch.as_tensor(local, dtype=torch.long), L, mode="sum")


def rank_reorder(P, A, p=3, top_fraction=0.05, scale_p=0.5, seed=0, mem_budget=MEM_BUDGET, threads=None):
    """-error between each neuron's top activations and the same activations re-ordered by a
    concept's CLIP ranking of those images, over a random-permutation baseline and mean CLIP^scale_p.

    Differences from the original, both deliberate: the random baseline uses a seeded generator
    (the original's torch.randperm made labels change between runs), and the mean CLIP score is
    clamped at 1e-6 before the power (non-CLIP models can give negative mean cosines -> NaN).
    Images with exactly equal CLIP scores for a concept are ordered by image index (the original's
    unstable argsort left their order unspecified).

    How it is computed (same numbers as the per-neuron double argsort, see _reorder_errors): every
    image's rank among ALL probe images is found once per concept; a neuron's top images are then
    ordered per concept by sorting small integer keys (global rank, position) with numpy's
    vectorised integer sort, in cache-sized blocks, on `threads` threads (default: torch's count).
    """
    P, A = _cpu(P), _cpu(A)
    top_n = int(A.shape[0] * top_fraction)
    if top_n < 2:
        raise ClipevalError(
            f"rank_reorder needs at least 2 top images: {A.shape[0]} images x top_fraction {top_fraction} = {top_n}"
        )
    gen = torch.Generator().manual_seed(int(seed))
    target, top_idx = torch.topk(A, k=top_n, dim=0)  # descending, (top_n, neurons)
    ascending = torch.flip(target, dims=[0])
    n_neurons = A.shape[1]
    # Baseline: mean |sorted - shuffled|^p over 5 random permutations, per neuron.
    perms = torch.stack([torch.randperm(top_n, generator=gen) for _ in range(5 * n_neurons)])
    perms = perms.view(n_neurons, 5, top_n)
    shuffled = torch.gather(ascending.T.unsqueeze(1).expand(-1, 5, -1), 2, perms)
    baseline = (ascending.T.unsqueeze(1) - shuffled).abs().pow(p).mean(dim=(1, 2))  # (neurons,)

    err = torch.from_numpy(_reorder_errors(P, top_idx, target, p, threads)).div_(top_n)  # mean over images
    avg_clip = torch.empty_like(err)
    for sl in _neuron_batches(n_neurons, 4 * P.shape[1], mem_budget):
        avg_clip[sl] = F.embedding_bag(top_idx[:, sl].T.contiguous(), P, mode="mean")
    return -(err / baseline.unsqueeze(1) / avg_clip.clamp_min(1e-6).pow(scale_p))


def _concept_ranks(P: np.ndarray, threads: int, dtype, block: int = 256) -> np.ndarray:
    """(concepts, images): the rank of every image under every concept (0 = lowest score, equal
    scores by image index), from one sort of (score, image) keys packed in int64 per concept."""
    n_images, n_concepts = P.shape
    ranks = np.empty((n_concepts, n_images), dtype=dtype)
    image = np.arange(n_images, dtype=np.int64)
    values = np.tile(np.arange(n_images, dtype=dtype), block)

    def work(lo, hi):
        for c0 in range(lo, hi, block):
            c1 = min(hi, c0 + block)
            bits = np.ascontiguousarray(P[:, c0:c1].T).view(np.int32)
            # float32 bits -> int32 that orders like the float: flip the magnitude bits of negatives
            key = (bits ^ ((bits >> 31) & 0x7FFFFFFF)).astype(np.int64)
            key <<= 32
            key |= image
            key.sort(axis=1)
            key &= 0xFFFFFFFF  # -> the image index at each sorted position
            key += (np.arange(c1 - c0, dtype=np.int64) * n_images)[:, None]
            np.put(ranks[c0:c1], key, values[: key.size])

    _parallel(work, n_concepts, threads)
    return ranks


def _reorder_errors(P: torch.Tensor, top_idx: torch.Tensor, target: torch.Tensor, p, threads) -> np.ndarray:
    """err[k, t] = sum_j |target[j, k] - asc[rank_t(j), k]|^p, float32 (neurons, concepts), where
    target[:, k] are neuron k's top activations (descending), asc the same ascending, and rank_t(j) the
    position of its j-th top image when those images are sorted by P[:, t] (the original's
    argsort(argsort(.))). Summed over positions r instead of images j: with order_t = that sort,
    err = sum_r |target[order_t[r]] - asc[r]|^p -- the same terms, so no second argsort is needed.
    """
    top_n, n_neurons = top_idx.shape
    n_images, n_concepts = P.shape
    threads = max(1, int(threads or torch.get_num_threads()))
    shift = max(1, (top_n - 1).bit_length())
    key_type = np.int32 if (n_images - 1).bit_length() + shift <= 31 else np.int64
    ranks = _concept_ranks(np.ascontiguousarray(P.numpy()), threads, key_type)
    mask = (1 << shift) - 1
    block = max(1, min(n_neurons, REORDER_BLOCK // top_n))  # neurons per block: keys stay in cache
    images = np.ascontiguousarray(top_idx.numpy().T).astype(np.intp)  # (neurons, top_n)
    tgt = np.ascontiguousarray(target.numpy().T)  # (neurons, top_n), descending
    asc = np.ascontiguousarray(tgt[:, ::-1])
    err = np.empty((n_neurons, n_concepts), dtype=np.float32)
    cube = float(p) == 3.0

    def work(lo, hi):
        n = block * top_n
        keys, pos = np.empty(n, key_type), np.empty(n, np.intp)
        val, tmp = np.empty(n, np.float32), np.empty(n, np.float32)
        slot = np.tile(np.arange(top_n, dtype=key_type), block)
        for k0 in range(0, n_neurons, block):
            k1 = min(n_neurons, k0 + block)
            m = (k1 - k0) * top_n
            kk, pp, vv, ww = keys[:m], pos[:m], val[:m], tmp[:m]
            idx = images[k0:k1].ravel()
            base = np.repeat(np.arange(k1 - k0, dtype=np.intp) * top_n, top_n)
            t_flat, a_flat = tgt[k0:k1].ravel(), asc[k0:k1].ravel()
            for t in range(lo, hi):
                np.take(ranks[t], idx, out=kk, mode="clip")  # global rank of each top image under concept t
                kk <<= shift
                kk |= slot[:m]  # low bits: the image's position j in the neuron's top list
                kk.reshape(k1 - k0, top_n).sort(axis=1)
                np.bitwise_and(kk, mask, out=pp)  # order_t: j at each ascending-score position r
                pp += base
                np.take(t_flat, pp, out=vv, mode="clip")
                vv -= a_flat
                np.abs(vv, out=vv)
                if cube:  # torch's pow(x, 3) is x * x * x as well
                    np.multiply(vv, vv, out=ww)
                    vv *= ww
                else:
                    np.power(vv, p, out=vv)
                err[k0:k1, t] = vv.reshape(k1 - k0, top_n).sum(1)

    _parallel(work, n_concepts, threads)
    return err


def _parallel(work, n: int, threads: int) -> None:
    """work(lo, hi) over `threads` contiguous ranges of range(n) (numpy releases the GIL in its loops)."""
    threads = max(1, min(threads, n))
    bounds = np.linspace(0, n, threads + 1).astype(int)
    if threads == 1:
        work(0, n)
        return
    with ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(work, lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:])]:
            f.result()


def cos_similarity_cubed(P, A, min_norm=1e-3):
    P, A = P.float(), A.float()
    Pc = (P - P.mean(0, keepdim=True)) ** 3
    Ac = (A - A.mean(0, keepdim=True)) ** 3
    Pc = Pc / Pc.norm(dim=0, keepdim=True).clamp_min(min_norm)
    Ac = Ac / Ac.norm(dim=0, keepdim=True).clamp_min(min_norm)
    return Ac.T @ Pc


def cos_similarity(P, A):
    P, A = P.float(), A.float()
    return (A / A.norm(dim=0, keepdim=True)).T @ (P / P.norm(dim=0, keepdim=True))


FUNCTIONS = {
    "soft_wpmi": soft_wpmi,
    "wpmi": wpmi,
    "rank_reorder": rank_reorder,
    "cos_similarity_cubed": cos_similarity_cubed,
    "cos_similarity": cos_similarity,
}
assert set(FUNCTIONS) == set(SIMILARITY_DEFAULTS)


def compute(fn: str, P: torch.Tensor, A: torch.Tensor, **params) -> torch.Tensor:
    """Scores (neurons x concepts) with the original defaults, overridden by `params`."""
    if fn not in FUNCTIONS:
        raise ClipevalError(f"unknown similarity function {fn!r}; choose one of {', '.join(FUNCTIONS)}")
    if P.shape[0] != A.shape[0]:
        raise ClipevalError(f"P has {P.shape[0]} images but A has {A.shape[0]}")
    kwargs = dict(SIMILARITY_DEFAULTS[fn])
    kwargs.update(params)
    return FUNCTIONS[fn](P, A, **kwargs)
