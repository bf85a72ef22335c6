"""CLIP-Dissect's five similarity functions between neurons and concepts.

Inputs everywhere: `P` (images x concepts) image-text cosines and `A` (images x neurons) activations.
Output: scores (neurons x concepts); a neuron's label is its argmax concept.

Each function follows the formulas of the original (method.md section 1) but works on batches of
neurons at once (one gather and one fused elementwise pass per batch instead of one Python
iteration per neuron), with the batch sized so that the working set stays under `mem_budget` bytes.
"""

from __future__ import annotations

import math
import warnings

import torch

from clipeval.config import SIMILARITY_DEFAULTS
from clipeval.errors import ClipevalError

MEM_BUDGET = 256 * 2**20


def _neuron_batches(n_neurons: int, bytes_per_neuron: int, mem_budget: int):
    step = max(1, min(n_neurons, mem_budget // max(1, bytes_per_neuron)))
    for start in range(0, n_neurons, step):
        yield slice(start, min(start + step, n_neurons))


def _clamp_top(top: int, n_images: int, name: str) -> int:
    if top > n_images:
        warnings.warn(f"{name}: top_k={top} is more than the {n_images} probe images; using {n_images}",
                      stacklevel=3)
        return n_images
    return top


def _pmi_from_conditional(log_cond: torch.Tensor, lam: float) -> torch.Tensor:
    """score = log p(t|k) - lam * log p(t), with p(t) the mean of p(t|k) over the layer's neurons."""
    log_prior = torch.logsumexp(log_cond, dim=0, keepdim=True) - math.log(log_cond.shape[0])
    return log_cond - lam * log_prior


def _top_image_rows(Q: torch.Tensor, top_idx: torch.Tensor, sl: slice) -> torch.Tensor:
    """Rows of Q for each neuron's top images: (top, batch, concepts)."""
    idx = top_idx[:, sl]
    return Q.index_select(0, idx.reshape(-1)).view(idx.shape[0], idx.shape[1], Q.shape[1])


def soft_wpmi(P, A, top_k=100, a=10.0, lam=1.0, min_prob=1e-7, p_start=0.998, p_end=0.97,
              mem_budget=MEM_BUDGET):
    P, A = P.float(), A.float()
    top_k = _clamp_top(int(top_k), A.shape[0], "soft_wpmi")
    Q = torch.softmax(a * P, dim=1)
    top_idx = torch.topk(A, k=top_k, dim=0).indices  # (top_k, neurons)
    p = p_start - torch.arange(top_k, dtype=torch.float32) / top_k * (p_start - p_end)
    # log(1 + p(Q - 1) + m) = log((1 - p + m) + p Q): one fused multiply-add, then the log.
    offset = (1 - p + min_prob).view(-1, 1, 1)
    weight = p.view(-1, 1, 1)
    out = torch.empty(A.shape[1], P.shape[1])
    for sl in _neuron_batches(A.shape[1], 2 * top_k * P.shape[1] * 4, mem_budget):
        rows = _top_image_rows(Q, top_idx, sl)
        out[sl] = torch.log(torch.addcmul(offset, weight, rows)).sum(0)
    return _pmi_from_conditional(out, lam)


def wpmi(P, A, top_k=28, a=2.0, lam=0.6, min_prob=1e-7, mem_budget=MEM_BUDGET):
    P, A = P.float(), A.float()
    top_k = _clamp_top(int(top_k), A.shape[0], "wpmi")
    Q = torch.softmax(a * P, dim=1)
    top_idx = torch.topk(A, k=top_k, dim=0).indices
    out = torch.empty(A.shape[1], P.shape[1])
    for sl in _neuron_batches(A.shape[1], 2 * top_k * P.shape[1] * 4, mem_budget):
        out[sl] = torch.log(_top_image_rows(Q, top_idx, sl) + min_prob).sum(0)
    return _pmi_from_conditional(out, lam)


def rank_reorder(P, A, p=3, top_fraction=0.05, scale_p=0.5, seed=0, mem_budget=MEM_BUDGET):
    """-error between each neuron's top activations and the same activations re-ordered by a
    concept's CLIP ranking of those images, over a random-permutation baseline and mean CLIP^scale_p.

    Differences from the original, both deliberate: the random baseline uses a seeded generator
    (the original's torch.randperm made labels change between runs), and the mean CLIP score is
    clamped at 1e-6 before the power (non-CLIP models can give negative mean cosines -> NaN).
    """
    P, A = P.float(), A.float()
    top_n = int(A.shape[0] * top_fraction)
    if top_n < 2:
        raise ClipevalError(f"rank_reorder needs at least 2 top images: {A.shape[0]} images x "
                            f"top_fraction {top_fraction} = {top_n}")
    gen = torch.Generator().manual_seed(int(seed))
    target, top_idx = torch.topk(A, k=top_n, dim=0)  # descending, (top_n, neurons)
    ascending = torch.flip(target, dims=[0])
    n_neurons, n_concepts = A.shape[1], P.shape[1]
    # Baseline: mean |sorted - shuffled|^p over 5 random permutations, per neuron.
    perms = torch.stack([torch.randperm(top_n, generator=gen) for _ in range(5 * n_neurons)])
    perms = perms.view(n_neurons, 5, top_n)
    shuffled = torch.gather(ascending.T.unsqueeze(1).expand(-1, 5, -1), 2, perms)
    baseline = (ascending.T.unsqueeze(1) - shuffled).abs().pow(p).mean(dim=(1, 2))  # (neurons,)

    out = torch.empty(n_neurons, n_concepts)
    positions = torch.arange(top_n).view(-1, 1, 1)
    for sl in _neuron_batches(n_neurons, 5 * top_n * n_concepts * 4, mem_budget):
        clip = _top_image_rows(P, top_idx, sl)  # (top_n, b, concepts)
        avg_clip = clip.mean(0)
        order = torch.argsort(clip, dim=0)
        # rank of each image under the concept (0 = lowest CLIP score): scatter instead of a 2nd argsort
        ranks = torch.empty_like(order).scatter_(0, order, positions.expand_as(order))
        asc = ascending[:, sl].unsqueeze(2).expand(-1, -1, n_concepts)
        reorg = torch.gather(asc, 0, ranks)
        err = (target[:, sl].unsqueeze(2) - reorg).abs().pow(p).mean(0)
        out[sl] = err / baseline[sl].unsqueeze(1) / avg_clip.clamp_min(1e-6).pow(scale_p)
    return -out


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
