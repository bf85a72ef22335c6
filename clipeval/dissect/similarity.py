"""CLIP-Dissect's five similarity functions between neurons and concepts.

Inputs everywhere: `P` (images x concepts) image-text cosines and `A` (images x neurons) activations.
`compute` and the five functions return the whole score matrix (neurons x concepts); a neuron's label
is its argmax concept. `label_units` returns only each unit's best concepts, computing the scores one
block of units at a time, so its memory does not grow with the number of units (100k units x 20k
concepts would be an 8 GB score matrix).

Each function follows the formulas of the original (method.md section 1) but not its loop over
neurons (timings against that loop: bench/bench_similarity.py, docs/performance.md):
- wpmi takes log(Q + min_prob) once per (image, concept) and sums table rows per neuron;
- soft_wpmi accumulates rank by rank over cache-sized blocks of neurons with reused buffers;
- rank_reorder ranks all images once per concept, then orders each neuron's top images per concept
  with one vectorised integer sort (no per-neuron double argsort).
Two sets of kernels compute the same numbers (to float32 rounding): `numpy` on the CPU, where the loops
run on torch.get_num_threads() Python threads over disjoint ranges (numpy releases the GIL), and `torch`
on any device, used where the inputs or `device` are not the CPU (a GPU); wpmi and the cos variants are
torch ops in both. Working sets stay within `mem_budget` bytes. Outputs lie on the device that ran them.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from clipeval.config import SIMILARITY_DEFAULTS
from clipeval.errors import ClipevalError

MEM_BUDGET = 256 * 2**20
DEVICE_BUDGET = 2 * 2**30  # a GPU's working set per block: larger blocks, fewer kernel launches
CACHE_BYTES = 1 * 2**20  # soft_wpmi's working block: stays in a core's L2 cache
REORDER_BLOCK = 2**16  # rank_reorder: (neuron, top image) keys sorted per concept and block
BACKENDS = ("numpy", "torch")
TOP_IMAGE_FUNCTIONS = ("soft_wpmi", "wpmi")  # need each unit's top images only


class TopConcepts(NamedTuple):
    """Each unit's `k` best concepts, best first: what a label and its runner-ups need."""

    values: torch.Tensor  # (units, k) float32 scores, on the CPU
    indices: torch.Tensor  # (units, k) int64 concept indices, on the CPU
    n_nan: int  # units with a NaN score; NaN ranks last


class _Plan(NamedTuple):
    """A function prepared for one layer: `block(sl)` gives the scores of units `sl` (consecutive
    slices, in order: rank_reorder draws its random baseline unit by unit); for soft_wpmi/wpmi it
    gives log p(concept|unit), and the score subtracts `lam` x the layer's log p(concept)."""

    block: Callable[[slice], torch.Tensor]
    lam: float | None
    n_units: int
    n_concepts: int
    device: torch.device


def _placement(P: torch.Tensor, A: torch.Tensor, device, backend: str | None) -> tuple[torch.device, str]:
    """Where the kernels run: `device`, else where P or A lies; numpy on the CPU, torch elsewhere."""
    if device is not None:
        dev = torch.device(device)
    else:
        dev = P.device if P.device.type != "cpu" else A.device
    backend = backend or ("numpy" if dev.type == "cpu" else "torch")
    if backend not in BACKENDS:
        raise ClipevalError(f"unknown similarity backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "numpy" and dev.type != "cpu":
        raise ClipevalError(f"the numpy similarity kernels run on the CPU, not on {dev}; use backend='torch'")
    return dev, backend


def _units(A: torch.Tensor, sl: slice, dev: torch.device) -> torch.Tensor:
    """Activations (images x units in sl), float32, contiguous, on `dev` (a block at a time: A may be large)."""
    return A[:, sl].detach().to(dev, torch.float32).contiguous()


def _unit_blocks(n_units: int, bytes_per_unit: int, mem_budget: int):
    step = max(1, min(n_units, mem_budget // max(1, bytes_per_unit)))
    for start in range(0, n_units, step):
        yield slice(start, min(start + step, n_units))


def _clamp_top(top: int, n_images: int, name: str) -> int:
    if top > n_images:
        warnings.warn(f"{name}: top_k={top} is more than the {n_images} probe images; using {n_images}", stacklevel=4)
        return n_images
    return top


def _pmi_from_conditional(log_cond: torch.Tensor, lam: float) -> torch.Tensor:
    """score = log p(t|k) - lam * log p(t), with p(t) the mean of p(t|k) over the layer's neurons."""
    log_prior = torch.logsumexp(log_cond, dim=0, keepdim=True) - math.log(log_cond.shape[0])
    return log_cond - lam * log_prior


def _whole(plan: _Plan, mem_budget: int) -> torch.Tensor:
    out = torch.empty(plan.n_units, plan.n_concepts, device=plan.device)
    for sl in _unit_blocks(plan.n_units, 4 * plan.n_concepts, mem_budget):
        out[sl] = plan.block(sl)
    return out if plan.lam is None else _pmi_from_conditional(out, plan.lam)


def _log_prior(plan: _Plan, slices: list[slice], spill: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(concept): logsumexp over all units of log p(concept|unit), minus log(units), one block at
    a time (per-block logsumexp in float32, merged in float64); and the last block's log p(concept|unit).
    With `spill`, every other block's log p(concept|unit) is written there (_spilled reads it back)."""
    total = None
    for i, sl in enumerate(slices):
        cond = plan.block(sl)
        if spill is not None and i < len(slices) - 1:
            cond.numpy().tofile(spill / f"{i}.f32")
        part = torch.logsumexp(cond, dim=0).double()
        total = part if total is None else torch.logaddexp(total, part)
    return (total - math.log(plan.n_units)).float(), cond


SPILL_PREFIX = "clipeval-conditionals-"  # + the writing process's pid


def _spill_folder(plan: _Plan, slices: list[slice], spill_dir) -> Path | None:
    """A new folder in spill_dir for the first pass's blocks, where they can be kept: CPU blocks (a GPU
    computes a block again faster than a disk gives it back), more than one, and twice their size free."""
    if spill_dir is None or plan.device.type != "cpu" or len(slices) < 2:
        return None
    size = 4 * plan.n_concepts * (slices[-1].start - slices[0].start)
    _remove_orphaned_spills(Path(spill_dir))
    if shutil.disk_usage(spill_dir).free < 2 * size:
        return None
    return Path(tempfile.mkdtemp(prefix=f"{SPILL_PREFIX}{os.getpid()}-", dir=spill_dir))


def _remove_orphaned_spills(spill_dir: Path) -> None:
    """Spill folders of processes that no longer run (a killed dissection's finally never ran): up to 8 GB
    each. Folders of running processes (another dissection on the same cache) stay."""
    for folder in spill_dir.glob(f"{SPILL_PREFIX}*-*"):
        pid = folder.name[len(SPILL_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _spilled(spill: Path, i: int, n_concepts: int) -> torch.Tensor:
    return torch.from_numpy(np.fromfile(spill / f"{i}.f32", dtype=np.float32).reshape(-1, n_concepts))


def top_concepts(scores: torch.Tensor, k: int) -> TopConcepts:
    """The `k` best concepts of each row of `scores` (units x concepts), NaN ranked last."""
    nan = torch.isnan(scores)
    n_nan = int(nan.any(dim=1).sum())
    if n_nan:
        scores = scores.masked_fill(nan, -float("inf"))
    values, indices = torch.topk(scores, k=min(int(k), scores.shape[1]), dim=1)
    return TopConcepts(values.cpu(), indices.cpu(), n_nan)


def label_units(
    fn: str, P, A, n_keep: int, device=None, backend: str | None = None, mem_budget: int | None = None, **params
) -> TopConcepts:
    """Each unit's `n_keep` best concepts under similarity `fn` (the original defaults, overridden by
    `params`): the same as top_concepts(compute(fn, P, A), n_keep) to float32 rounding, without the whole
    score matrix. Scores are made and reduced one block of units at a time (`mem_budget` bytes of scores,
    default MEM_BUDGET on the CPU and DEVICE_BUDGET on a GPU); soft_wpmi/wpmi first pass over the blocks
    for the layer's log p(concept), then over them again for the scores."""
    plan = _prepare(fn, P, A, device, backend, params, mem_budget)
    budget = mem_budget or (MEM_BUDGET if plan.device.type == "cpu" else DEVICE_BUDGET)
    # a block's scores plus the kernels' temporaries of the same size (soft_wpmi's rows, rank_reorder's mean)
    return _label(plan, list(_unit_blocks(plan.n_units, 2 * 4 * plan.n_concepts, budget)), n_keep)


def _label(plan: _Plan, slices: list[slice], n_keep: int, spill_dir=None) -> TopConcepts:
    """Each unit's n_keep best concepts, scoring and reducing one block of units (`slices`) at a time.
    soft_wpmi / wpmi pass twice; the second reads the first's blocks back from a folder in `spill_dir`
    where _spill_folder finds room, else computes them again."""
    if plan.lam is None:
        return join_tops([top_concepts(plan.block(sl), n_keep) for sl in slices])
    parts: list = [None] * len(slices)
    spill = _spill_folder(plan, slices, spill_dir)
    try:
        log_prior, last = _log_prior(plan, slices, spill)
        prior = log_prior * plan.lam
        # the first pass's last block is still at hand (for a layer of one block, all of it): score it
        # now rather than compute it again
        parts[-1] = top_concepts(last.sub_(prior), n_keep)
        del last
        for i in range(len(slices) - 1):
            scores = plan.block(slices[i]) if spill is None else _spilled(spill, i, plan.n_concepts)
            parts[i] = top_concepts(scores.sub_(prior), n_keep)
            del scores
    finally:
        if spill is not None:
            shutil.rmtree(spill, ignore_errors=True)
    return join_tops(parts)


def join_tops(parts: list[TopConcepts]) -> TopConcepts:
    """The TopConcepts of consecutive blocks of units, as one."""
    return TopConcepts(
        torch.cat([p.values for p in parts]),
        torch.cat([p.indices for p in parts]),
        sum(p.n_nan for p in parts),
    )


def _prepare(fn: str, P, A, device, backend, params: dict, mem_budget: int | None) -> _Plan:
    if fn not in FUNCTIONS:
        raise ClipevalError(f"unknown similarity function {fn!r}; choose one of {', '.join(FUNCTIONS)}")
    if P.shape[0] != A.shape[0]:
        raise ClipevalError(f"P has {P.shape[0]} images but A has {A.shape[0]}")
    dev, backend = _placement(P, A, device, backend)
    kwargs = dict(SIMILARITY_DEFAULTS[fn])
    kwargs.update(params)
    budget = mem_budget or (MEM_BUDGET if dev.type == "cpu" else DEVICE_BUDGET)
    return PLANS[fn](P.detach().to(dev, torch.float32), A, dev, backend, budget, **kwargs)


def _soft_wpmi_plan(
    P, A, dev, backend, mem_budget, top_k=100, a=10.0, lam=1.0, min_prob=1e-7, p_start=0.998, p_end=0.97
):
    top_k = _clamp_top(int(top_k), A.shape[0], "soft_wpmi")
    Q = torch.softmax(a * P, dim=1)
    p = p_start - torch.arange(top_k, dtype=torch.float32) / top_k * (p_start - p_end)
    # log(1 + p(Q - 1) + m) = log((1 - p + m) + p Q). The term depends on the image's rank i, so it
    # cannot be tabulated per image: it is accumulated rank by rank.
    offset, weight = 1 - p + min_prob, p

    def block(sl):
        top_idx = torch.topk(_units(A, sl, dev), k=top_k, dim=0).indices  # (top_k, units)
        if backend == "numpy":
            return _soft_wpmi_numpy(Q.numpy(), top_idx.numpy(), offset.numpy(), weight.numpy(), mem_budget)
        return _soft_wpmi_torch(Q, top_idx, offset.tolist(), weight.tolist())

    return _Plan(block, float(lam), A.shape[1], P.shape[1], dev)


def _soft_wpmi_numpy(Qn, top_idx, offset, weight, mem_budget) -> torch.Tensor:
    # Into a block of neurons small enough for the CPU cache (a few rows x |S|), reusing one buffer (no
    # large temporaries to page in). numpy loops, one thread per range of neurons: many small torch ops
    # would each be a parallel region, which costs more than the op itself on a small or busy machine.
    top_k, n_neurons = top_idx.shape
    n_concepts = Qn.shape[1]
    out = torch.zeros(n_neurons, n_concepts)
    acc_all, idx_all = out.numpy(), np.ascontiguousarray(top_idx, dtype=np.intp)  # a rank's units contiguous
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
    return out


def _soft_wpmi_torch(Q: torch.Tensor, top_idx: torch.Tensor, offset: list, weight: list) -> torch.Tensor:
    """The same sums in torch ops on Q's device (top_idx on that device too)."""
    acc = torch.zeros(top_idx.shape[1], Q.shape[1], device=Q.device)
    rows = torch.empty_like(acc)
    for i in range(top_idx.shape[0]):
        torch.index_select(Q, 0, top_idx[i], out=rows)
        rows.mul_(weight[i]).add_(offset[i])
        acc.add_(rows.log_())
    return acc


def _wpmi_plan(P, A, dev, backend, mem_budget, top_k=28, a=2.0, lam=0.6, min_prob=1e-7):
    top_k = _clamp_top(int(top_k), A.shape[0], "wpmi")
    # log(Q[x, t] + m) depends on the image only: take the log once per (image, concept), in place,
    # then each neuron's log p(t|k) is a sum of rows of that table (an embedding-bag sum).
    L = torch.softmax(a * P, dim=1).add_(min_prob).log_()

    def block(sl):
        top_idx = torch.topk(_units(A, sl, dev), k=top_k, dim=0).indices  # (top_k, units)
        return F.embedding_bag(top_idx.T.contiguous(), L, mode="sum")

    return _Plan(block, float(lam), A.shape[1], P.shape[1], dev)


def _reorder_top_n(n_images: int, top_fraction: float) -> int:
    top_n = int(n_images * top_fraction)
    if top_n < 2:
        raise ClipevalError(
            f"rank_reorder needs at least 2 top images: {n_images} images x top_fraction {top_fraction} = {top_n}"
        )
    return top_n


def _reorder_ranks(P: torch.Tensor, top_n: int, backend: str, threads: int):
    """_concept_ranks of P (images x concepts) for the kernels of `backend`."""
    if backend == "numpy":
        n_images = P.shape[0]
        shift = max(1, (top_n - 1).bit_length())
        key_type = np.int32 if (n_images - 1).bit_length() + shift <= 31 else np.int64
        return _concept_ranks(np.ascontiguousarray(P.numpy()), threads, key_type)
    return _concept_ranks_torch(P)


def _reorder_units(a: torch.Tensor, top_n: int, p, gen: torch.Generator):
    """What rank_reorder needs of a block of units (activations `a`, images x units): their top_n
    activations (descending), those images, and the random baseline, drawn from `gen` unit by unit."""
    n = a.shape[1]
    target, top_idx = torch.topk(a, k=top_n, dim=0)  # descending, (top_n, units)
    ascending = torch.flip(target, dims=[0])
    # Baseline: mean |sorted - shuffled|^p over 5 random permutations, per neuron.
    perms = torch.stack([torch.randperm(top_n, generator=gen) for _ in range(5 * n)]).view(n, 5, top_n)
    shuffled = torch.gather(ascending.T.unsqueeze(1).expand(-1, 5, -1), 2, perms.to(a.device))
    baseline = (ascending.T.unsqueeze(1) - shuffled).abs().pow(p).mean(dim=(1, 2))  # (neurons,)
    return target, top_idx, baseline


def _reorder_scores(P, ranks, units, p, scale_p, backend, threads, mem_budget) -> torch.Tensor:
    """rank_reorder's scores (units x concepts of P) of the units `units` (_reorder_units), with `ranks`
    the _reorder_ranks of P."""
    target, top_idx, baseline = units
    if backend == "numpy":
        err = torch.from_numpy(_reorder_errors(ranks, top_idx, target, p, threads))
    else:
        err = _reorder_errors_torch(ranks, top_idx, target, p, mem_budget)
    err.div_(top_idx.shape[0])  # mean over images
    avg_clip = F.embedding_bag(top_idx.T.contiguous(), P, mode="mean")
    return err.div_(baseline.unsqueeze(1)).div_(avg_clip.clamp_min_(1e-6).pow_(scale_p)).neg_()


def _rank_reorder_plan(P, A, dev, backend, mem_budget, p=3, top_fraction=0.05, scale_p=0.5, seed=0, threads=None):
    top_n = _reorder_top_n(A.shape[0], top_fraction)
    gen = torch.Generator().manual_seed(int(seed))  # on the CPU: the same draws on every device
    threads = max(1, int(threads or torch.get_num_threads()))
    ranks = _reorder_ranks(P, top_n, backend, threads)

    def block(sl):
        units = _reorder_units(_units(A, sl, dev), top_n, p, gen)
        return _reorder_scores(P, ranks, units, p, scale_p, backend, threads, mem_budget)

    return _Plan(block, None, A.shape[1], P.shape[1], dev)


def rank_reorder_top(
    P_of,
    A_of,
    shape: tuple[int, int, int],
    n_keep: int,
    device=None,
    backend: str | None = None,
    mem_budget: int = MEM_BUDGET,
    p=3,
    top_fraction=0.05,
    scale_p=0.5,
    seed=0,
    threads=None,
) -> TopConcepts:
    """label_units for rank_reorder with neither P nor A whole: `shape` = (images, units, concepts),
    P_of(c0, c1) gives P's columns c0:c1 (every image) and A_of(u0, u1) A's columns u0:u1. A block of
    units at a time, in order (the baseline is drawn unit by unit, as rank_reorder draws it); a block's
    scores are made a block of concepts at a time (each concept's image ranks made again for every block
    of units, unless all concepts fit at once) and reduced to its n_keep best before the next block.
    Blocks are sized so that they take about `mem_budget` bytes."""
    n_images, n_units, n_concepts = shape
    top_n = _reorder_top_n(n_images, top_fraction)
    dev = torch.device(device or "cpu")
    backend = backend or ("numpy" if dev.type == "cpu" else "torch")
    gen = torch.Generator().manual_seed(int(seed))
    threads = max(1, int(threads or torch.get_num_threads()))
    # per unit: its scores, activations, top images and baseline draws; per concept: a P column, its ranks
    # and two (units,) columns of the errors
    step_u = max(1, mem_budget // (2 * (4 * n_concepts + 4 * n_images + 80 * top_n)))
    step_c = max(1, mem_budget // (2 * (12 * n_images + 8 * min(step_u, n_units))))
    concept_blocks = [(c0, min(n_concepts, c0 + step_c)) for c0 in range(0, n_concepts, step_c)]

    def columns(c0, c1):
        P = torch.as_tensor(P_of(c0, c1)).to(dev, torch.float32)
        return P, _reorder_ranks(P, top_n, backend, threads)

    whole = columns(0, n_concepts) if len(concept_blocks) == 1 else None
    parts = []
    for u0 in range(0, n_units, step_u):
        units = _reorder_units(
            torch.as_tensor(A_of(u0, min(n_units, u0 + step_u))).to(dev, torch.float32), top_n, p, gen
        )
        scores = torch.empty(units[1].shape[1], n_concepts, device=dev)
        for c0, c1 in concept_blocks:
            P, ranks = whole or columns(c0, c1)
            scores[:, c0:c1] = _reorder_scores(P, ranks, units, p, scale_p, backend, threads, mem_budget)
        parts.append(top_concepts(scores, n_keep))
        del scores
    return join_tops(parts)


def _cos_similarity_cubed_plan(P, A, dev, backend, mem_budget, min_norm=1e-3):
    Pc = (P - P.mean(0, keepdim=True)) ** 3
    Pc = Pc / Pc.norm(dim=0, keepdim=True).clamp_min(min_norm)

    def block(sl):
        a = _units(A, sl, dev)
        Ac = (a - a.mean(0, keepdim=True)) ** 3
        Ac = Ac / Ac.norm(dim=0, keepdim=True).clamp_min(min_norm)
        return Ac.T @ Pc

    return _Plan(block, None, A.shape[1], P.shape[1], dev)


def _cos_similarity_plan(P, A, dev, backend, mem_budget):
    Pn = P / P.norm(dim=0, keepdim=True)

    def block(sl):
        a = _units(A, sl, dev)
        return (a / a.norm(dim=0, keepdim=True)).T @ Pn

    return _Plan(block, None, A.shape[1], P.shape[1], dev)


def soft_wpmi(
    P,
    A,
    top_k=100,
    a=10.0,
    lam=1.0,
    min_prob=1e-7,
    p_start=0.998,
    p_end=0.97,
    mem_budget=MEM_BUDGET,
    device=None,
    backend=None,
):
    params = dict(top_k=top_k, a=a, lam=lam, min_prob=min_prob, p_start=p_start, p_end=p_end)
    return _whole(_prepare("soft_wpmi", P, A, device, backend, params, mem_budget), mem_budget)


def wpmi(P, A, top_k=28, a=2.0, lam=0.6, min_prob=1e-7, mem_budget=MEM_BUDGET, device=None, backend=None):
    params = dict(top_k=top_k, a=a, lam=lam, min_prob=min_prob)
    return _whole(_prepare("wpmi", P, A, device, backend, params, mem_budget), mem_budget)


def rank_reorder(
    P, A, p=3, top_fraction=0.05, scale_p=0.5, seed=0, mem_budget=MEM_BUDGET, threads=None, device=None, backend=None
):
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
    params = dict(p=p, top_fraction=top_fraction, scale_p=scale_p, seed=seed, threads=threads)
    plan = _prepare("rank_reorder", P, A, device, backend, params, mem_budget)
    return _whole(plan, mem_budget)


def _top_image_plan(fn, top, rows_of, n_concepts, n_images, mem_budget, device, params) -> tuple[_Plan, list[slice]]:
    """soft_wpmi / wpmi from each unit's top images alone (never the whole P and A): `top` (units, >= top_k)
    image ids, most active first (ties: the lower id), and `rows_of(ids)` -> the P rows (image-concept
    cosines) of those images. The same sums as soft_wpmi / wpmi, term by term in the same order; P rows
    are made for a block of units at a time (the images some unit of the block keeps), so memory stays
    within `mem_budget` for any number of images. Returns the plan and its blocks of units."""
    if fn not in TOP_IMAGE_FUNCTIONS:
        raise ClipevalError(f"{fn} needs every image's activation, not only each unit's top images")
    kw = {**SIMILARITY_DEFAULTS[fn], **params}
    top_k = _clamp_top(int(kw.pop("top_k")), n_images, fn)
    lam = kw.pop("lam")
    top = np.asarray(top)[:, :top_k]
    dev = torch.device(device or "cpu")
    max_rows = max(top_k, mem_budget // (2 * 4 * n_concepts))  # P and Q rows; as many units' sums and buffers
    conditional = _soft_wpmi_conditional if fn == "soft_wpmi" else _wpmi_conditional

    def block(sl):
        ids, local = np.unique(top[sl], return_inverse=True)
        P_rows = torch.as_tensor(rows_of(ids)).to(dev, torch.float32)
        return conditional(P_rows, local.reshape(-1, top_k), **kw)

    slices = [slice(u0, u1) for u0, u1 in _blocks_of_images(top, max_rows)]
    return _Plan(block, float(lam), len(top), n_concepts, dev), slices


def label_units_from_top(
    fn, top, rows_of, n_concepts, n_images, n_keep, mem_budget=MEM_BUDGET, device=None, spill_dir=None, **params
) -> TopConcepts:
    """label_units from each unit's top images alone (_top_image_plan): the streaming dissection's path.
    With `spill_dir` (a folder on disk, not in memory), the first pass's log p(concept|unit) is kept
    there for the second pass instead of being computed again (_label)."""
    plan, slices = _top_image_plan(fn, top, rows_of, n_concepts, n_images, mem_budget, device, params)
    return _label(plan, slices, n_keep, spill_dir)


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
    p = p_start - torch.arange(top_k, dtype=torch.float32) / top_k * (p_start - p_end)
    if P_rows.device.type != "cpu":  # a GPU: the torch kernel, rank by rank as well
        Q = torch.softmax(a * P_rows, dim=1)
        idx = torch.as_tensor(local.T.copy(), dtype=torch.long, device=P_rows.device)
        return _soft_wpmi_torch(Q, idx, (1 - p + min_prob).tolist(), p.tolist())
    Qn = torch.softmax(a * P_rows, dim=1).numpy()
    # the block's units in cache-sized sub-blocks on torch's threads, rank by rank as soft_wpmi adds them
    return _soft_wpmi_numpy(Qn, local.T, (1 - p + min_prob).numpy(), p.numpy(), CACHE_BYTES)


def _wpmi_conditional(P_rows, local, a, min_prob):
    L = torch.softmax(a * P_rows, dim=1).add_(min_prob).log_()
    return F.embedding_bag(torch.as_tensor(local, dtype=torch.long, device=L.device), L, mode="sum")


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


def _reorder_errors(ranks: np.ndarray, top_idx: torch.Tensor, target: torch.Tensor, p, threads: int) -> np.ndarray:
    """err[k, t] = sum_j |target[j, k] - asc[rank_t(j), k]|^p, float32 (neurons, concepts), where
    target[:, k] are neuron k's top activations (descending), asc the same ascending, and rank_t(j) the
    position of its j-th top image when those images are sorted by P[:, t] (the original's
    argsort(argsort(.))). Summed over positions r instead of images j: with order_t = that sort,
    err = sum_r |target[order_t[r]] - asc[r]|^p -- the same terms, so no second argsort is needed.
    `ranks` are _concept_ranks of P, in the key type that fits (rank, position) keys.
    """
    top_n, n_neurons = top_idx.shape
    n_concepts = ranks.shape[0]
    shift = max(1, (top_n - 1).bit_length())
    key_type = ranks.dtype.type
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


def _concept_ranks_torch(P: torch.Tensor) -> torch.Tensor:
    """_concept_ranks in torch on P's device: (concepts, images) int64, equal scores by image index
    (a stable sort keeps them in index order)."""
    order = torch.sort(P.T, dim=1, stable=True).indices
    positions = torch.arange(P.shape[0], device=P.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def _reorder_errors_torch(ranks: torch.Tensor, top_idx: torch.Tensor, target: torch.Tensor, p, mem_budget: int):
    """_reorder_errors in torch on the device of its inputs, a range of concepts at a time: a unit's top
    images have distinct ranks under a concept, so argsort of the ranks is order_t (no ties)."""
    top_n, n_units = top_idx.shape
    n_concepts = ranks.shape[0]
    tgt = target.T.contiguous()  # (units, top_n), descending
    asc = tgt.flip(1)
    images = top_idx.T.reshape(-1)
    err = torch.empty(n_units, n_concepts, device=target.device)
    # per (concept, unit, image): an int64 key, its int64 argsort and a float32 term, with sort scratch
    step = max(1, mem_budget // (4 * 8 * n_units * top_n))
    for c0 in range(0, n_concepts, step):
        c1 = min(n_concepts, c0 + step)
        order = ranks[c0:c1].index_select(1, images).view(c1 - c0, n_units, top_n).argsort(dim=2)
        terms = torch.gather(tgt.expand(c1 - c0, -1, -1), 2, order).sub_(asc).abs_()
        terms = terms * terms * terms if float(p) == 3.0 else terms.pow_(p)
        err[:, c0:c1] = terms.sum(dim=2).T
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


def cos_similarity_cubed(P, A, min_norm=1e-3, device=None, backend=None):
    return _whole(_prepare("cos_similarity_cubed", P, A, device, backend, dict(min_norm=min_norm), None), MEM_BUDGET)


def cos_similarity(P, A, device=None, backend=None):
    return _whole(_prepare("cos_similarity", P, A, device, backend, {}, None), MEM_BUDGET)


FUNCTIONS = {
    "soft_wpmi": soft_wpmi,
    "wpmi": wpmi,
    "rank_reorder": rank_reorder,
    "cos_similarity_cubed": cos_similarity_cubed,
    "cos_similarity": cos_similarity,
}
PLANS = {
    "soft_wpmi": _soft_wpmi_plan,
    "wpmi": _wpmi_plan,
    "rank_reorder": _rank_reorder_plan,
    "cos_similarity_cubed": _cos_similarity_cubed_plan,
    "cos_similarity": _cos_similarity_plan,
}
assert set(FUNCTIONS) == set(SIMILARITY_DEFAULTS) == set(PLANS)


def compute(fn: str, P: torch.Tensor, A: torch.Tensor, device=None, backend=None, mem_budget=None, **params):
    """Scores (neurons x concepts) with the original defaults, overridden by `params`."""
    budget = mem_budget or MEM_BUDGET
    return _whole(_prepare(fn, P, A, device, backend, params, mem_budget), budget)
