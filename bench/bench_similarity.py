"""Similarity functions: clipeval.dissect.similarity (batched) against the original's per-neuron loop.

    python bench/bench_similarity.py [--quick] [--functions soft_wpmi,wpmi,rank_reorder] [--torch]

Sizes: 2,048 neurons x 10,000 concepts x 5,000 images (--quick: 512 x 5,000 x 2,000).
Inputs: P (images x concepts) cosine-like values in [0.15, 0.35], each concept's column a permutation
of evenly spaced values (no two images tie for a concept, so rank orders are unambiguous and both
ways must give the same numbers); A (images x neurons) standard normal. Both are built once and
saved; every (function, way) then runs in a fresh process that loads them, so its peak memory
(ru_maxrss minus the resident size after loading the inputs) is its own.

The baseline is the original CLIP-Dissect loop written out again here (our own words): for each
neuron, gather the P (or softmax) rows of its top images and reduce them; for rank_reorder two argsorts
per neuron and 5 fresh random permutations for its baseline, drawn from the same seeded generator in the
same order as ours (the original used the global RNG), so the outputs must agree to float tolerance.
rank_reorder's loop takes about half a second per neuron here, so by default it runs on the first
--baseline-neurons neurons and its time is scaled linearly to all neurons (it is a plain loop over
neurons plus a negligible concatenation); --full-baseline runs all of them. --torch also times the
torch kernels (the ones a GPU runs) here on the CPU, beside the numpy ones ("ours").
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    fmt_mb,
    fmt_s,
    met,
    parser,
    peak_rss_bytes,
    print_machine,
    ratio,
    reset_peak_rss,
    rss_bytes,
    run_worker,  # noqa: E402
    set_threads,
    table,
    write_json,
)

FUNCTIONS = ("soft_wpmi", "wpmi", "rank_reorder")
MEMORY_TARGET = 2 * 2**30


# ---- the straightforward way: one neuron at a time, as the original's loops ------------------------


def loop_soft_wpmi(P, A, top_k=100, a=10.0, lam=1.0, min_prob=1e-7, p_start=0.998, p_end=0.97):
    import torch

    probs = torch.softmax(a * P, dim=1)
    top = torch.topk(A, k=top_k, dim=0).indices
    weights = (p_start - torch.arange(top_k) / top_k * (p_start - p_end)).unsqueeze(1)
    per_neuron = []
    for k in range(A.shape[1]):
        rows = probs.gather(0, top[:, k : k + 1].expand(-1, probs.shape[1]))
        per_neuron.append(torch.log(1 + weights * (rows - 1) + min_prob).sum(0, keepdim=True))
    cond = torch.cat(per_neuron)
    prior = torch.logsumexp(cond, dim=0, keepdim=True) - math.log(cond.shape[0])
    return cond - lam * prior


def loop_wpmi(P, A, top_k=28, a=2.0, lam=0.6, min_prob=1e-7):
    import torch

    probs = torch.softmax(a * P, dim=1)
    top = torch.topk(A, k=top_k, dim=0).indices
    per_neuron = []
    for k in range(A.shape[1]):
        rows = probs.gather(0, top[:, k : k + 1].expand(-1, probs.shape[1]))
        per_neuron.append(torch.log(rows + min_prob).sum(0, keepdim=True))
    cond = torch.cat(per_neuron)
    prior = torch.logsumexp(cond, dim=0, keepdim=True) - math.log(cond.shape[0])
    return cond - lam * prior


def loop_rank_reorder(P, A, p=3, top_fraction=0.05, scale_p=0.5, seed=0, n_neurons=None):
    """The original's rank_reorder loop; the 5 permutations of neuron k are drawn from a generator
    seeded like clipeval's (5 per neuron, neuron by neuron), so both use identical permutations."""
    import torch

    top_n = int(A.shape[0] * top_fraction)
    gen = torch.Generator().manual_seed(seed)
    values, top = torch.topk(A, k=top_n, dim=0)
    n_neurons = A.shape[1] if n_neurons is None else n_neurons
    batch = 1500
    errors = []
    for k in range(n_neurons):
        rows = P.gather(0, top[:, k : k + 1].expand(-1, P.shape[1]))
        mean_clip = rows.mean(0, keepdim=True)
        rank = torch.argsort(torch.argsort(rows, dim=0), dim=0)
        target = values[:, k : k + 1]
        ascending = torch.flip(target, dims=[0])
        shuffled = torch.cat([ascending[torch.randperm(top_n, generator=gen)] for _ in range(5)], dim=1)
        random_err = torch.mean(torch.abs(ascending - shuffled) ** p)
        parts = []
        for c in range(0, rank.shape[1], batch):
            idx = rank[:, c : c + batch]
            moved = ascending.expand(-1, idx.shape[1]).gather(0, idx)
            parts.append(torch.mean(torch.abs(target - moved) ** p, dim=0, keepdim=True) / random_err)
        errors.append(torch.cat(parts, dim=1) / mean_clip**scale_p)
    return -torch.cat(errors)


# ---- worker: one (function, way) in its own process ------------------------------------------------


def worker(argv: list[str]) -> None:
    fn, way, data_dir, out_file, threads, n_base = argv[0], argv[1], Path(argv[2]), argv[3], int(argv[4]), int(argv[5])
    import torch

    from clipeval.dissect import similarity

    if threads:
        torch.set_num_threads(threads)
    P = torch.from_numpy(np.load(data_dir / "P.npy"))
    A = torch.from_numpy(np.load(data_dir / "A.npy"))
    # One small call first so lazy initialisation (thread pools, kernels) is not timed or counted.
    if way == "before":  # clipeval/dissect/similarity.py as it was at the git ref given with --before
        import importlib.util

        spec = importlib.util.spec_from_file_location("similarity_before", data_dir / "similarity_before.py")
        similarity = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(similarity)

    def run(P, A, n=None):
        if way in ("ours", "before"):
            return getattr(similarity, fn)(P, A)
        if way == "torch":
            return getattr(similarity, fn)(P, A, backend="torch")
        if fn == "rank_reorder":
            return loop_rank_reorder(P, A, n_neurons=n)
        return {"soft_wpmi": loop_soft_wpmi, "wpmi": loop_wpmi}[fn](P, A)

    with torch.no_grad():
        run(P[:200, :50].contiguous(), A[:200, :8].contiguous())
        before = rss_bytes()
        reset_peak_rss()
        start = time.perf_counter()
        out = run(P, A, n_base or None)
        seconds = time.perf_counter() - start
    peak = peak_rss_bytes()
    np.save(out_file, out.numpy())
    print(
        json.dumps(
            {
                "seconds": seconds,
                "peak_increase": max(0, peak - before),
                "neurons_done": out.shape[0],
                "threads": torch.get_num_threads(),
            }
        )
    )


def main() -> None:
    ap = parser(__doc__.split("\n")[0])
    ap.add_argument("--functions", default=",".join(FUNCTIONS))
    ap.add_argument("--neurons", type=int)
    ap.add_argument("--concepts", type=int)
    ap.add_argument("--images", type=int)
    ap.add_argument(
        "--baseline-neurons",
        type=int,
        default=None,
        help="rank_reorder: time the loop on this many neurons and scale (default 32, --quick 64)",
    )
    ap.add_argument("--full-baseline", action="store_true", help="run rank_reorder's loop on every neuron")
    ap.add_argument(
        "--before",
        metavar="GIT_REF",
        help="also time clipeval/dissect/similarity.py as it was at this git commit (e.g. before a speed change)",
    )
    ap.add_argument("--torch", action="store_true", help="also time the torch kernels on the CPU")
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
        return
    set_threads(args.threads)
    info = print_machine()
    n_neu = args.neurons or (512 if args.quick else 2048)
    n_con = args.concepts or (5000 if args.quick else 10000)
    n_img = args.images or (2000 if args.quick else 5000)
    n_base = n_neu if args.full_baseline else min(n_neu, args.baseline_neurons or (64 if args.quick else 32))
    fns = [f.strip() for f in args.functions.split(",") if f.strip()]
    print(f"sizes: {n_neu} neurons x {n_con} concepts x {n_img} images; functions: {', '.join(fns)}")

    rows, records = [], []
    with tempfile.TemporaryDirectory(prefix="clipeval-bench-sim-") as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        ranks = rng.permuted(np.tile(np.arange(n_img, dtype=np.int32)[:, None], (1, n_con)), axis=0)
        np.save(tmp / "P.npy", (0.15 + 0.2 * (ranks + 0.5) / n_img).astype(np.float32))
        del ranks
        np.save(tmp / "A.npy", rng.standard_normal((n_img, n_neu), dtype=np.float32))
        ways = ("ours", "baseline") + (("torch",) if args.torch else ())
        if args.before:
            import subprocess

            old = subprocess.run(
                ["git", "show", f"{args.before}:clipeval/dissect/similarity.py"],
                capture_output=True,
                text=True,
                check=True,
                cwd=Path(__file__).resolve().parents[1],
            ).stdout
            (tmp / "similarity_before.py").write_text(old)
            ways += ("before",)
        for fn in fns:
            res = {}
            for way in ways:
                nb = n_base if (fn == "rank_reorder" and way == "baseline") else 0
                res[way] = run_worker(
                    __file__,
                    ["--worker", fn, way, str(tmp), str(tmp / f"{fn}-{way}.npy"), str(args.threads or 0), str(nb)],
                )
                print(
                    f"  {fn:13s} {way:8s} {fmt_s(res[way]['seconds']):>10s}  peak +{fmt_mb(res[way]['peak_increase'])}"
                    f"  ({res[way]['neurons_done']} neurons)",
                    flush=True,
                )
            ours = np.load(tmp / f"{fn}-ours.npy")
            base = np.load(tmp / f"{fn}-baseline.npy")
            done = base.shape[0]
            ours_part = ours[:done]
            diff = float(np.abs(ours_part - base).max())
            scale = float(np.abs(base).max())
            # soft_wpmi/wpmi sum 100/28 float32 logs of size ~5-10 and subtract a prior of similar size:
            # both ways carry ~1e-4 absolute rounding; rank_reorder values are O(1).
            atol = 2e-3 if fn != "rank_reorder" else 1e-5
            close = bool(np.allclose(ours_part, base, rtol=1e-4, atol=atol))
            la, lb = ours_part.argmax(1), base.argmax(1)
            same_label = float((la == lb).mean())
            # where the two ways pick different labels: how far apart the two concepts' scores are
            # (a near-tie within float rounding, or a real difference)
            k = np.nonzero(la != lb)[0]
            gap = float(np.abs(base[k, la[k]] - base[k, lb[k]]).max()) if len(k) else 0.0
            base_s = res["baseline"]["seconds"] * (n_neu / done)
            extrap = done < n_neu
            ok = close and res["ours"]["seconds"] < base_s and res["ours"]["peak_increase"] < MEMORY_TARGET
            before = {}
            if "before" in res:
                before = {
                    f"clipeval at {args.before}": fmt_s(res["before"]["seconds"]),
                    "ours vs it": ratio(res["before"]["seconds"], res["ours"]["seconds"]),
                    f"peak RSS + at {args.before}": fmt_mb(res["before"]["peak_increase"]),
                }
            torch_way = {}
            if "torch" in res:
                tw = np.load(tmp / f"{fn}-torch.npy")
                torch_way = {
                    "torch kernels": fmt_s(res["torch"]["seconds"]),
                    "numpy vs torch": ratio(res["torch"]["seconds"], res["ours"]["seconds"]),
                    "torch: same label": f"{float((tw.argmax(1) == ours.argmax(1)).mean()):.2%}",
                }
            rows.append(
                {
                    "function": fn,
                    **before,
                    **torch_way,
                    "ours": fmt_s(res["ours"]["seconds"]),
                    "baseline (per-neuron loop)": fmt_s(base_s)
                    + (f" (scaled from {done} neurons: {fmt_s(res['baseline']['seconds'])})" if extrap else ""),
                    "ratio": ratio(base_s, res["ours"]["seconds"]),
                    "peak RSS +ours": fmt_mb(res["ours"]["peak_increase"]),
                    "peak RSS +baseline": fmt_mb(res["baseline"]["peak_increase"])
                    + (f" ({done} neurons)" if extrap else ""),
                    "max |diff| (max |value|)": f"{diff:.2g} ({scale:.3g})",
                    "allclose": met(close),
                    "same label": f"{same_label:.2%}" + (f" (others: gap <= {gap:.1g})" if len(k) else ""),
                    "target met (faster, < 2 GB, equal)": met(ok),
                }
            )
            records.append(
                {
                    "function": fn,
                    "ours": res["ours"],
                    "baseline": res["baseline"],
                    "before": res.get("before"),
                    "torch": res.get("torch"),
                    "baseline_seconds_all_neurons": base_s,
                    "baseline_neurons_run": done,
                    "max_abs_diff": diff,
                    "max_abs_value": scale,
                    "allclose": close,
                    "same_label": same_label,
                    "label_differences": int(len(k)),
                    "max_score_gap_where_labels_differ": gap,
                    "target_met": ok,
                }
            )
    print()
    print(table(rows, list(rows[0])))
    write_json(
        args.json,
        {
            "machine": info,
            "sizes": {"neurons": n_neu, "concepts": n_con, "images": n_img},
            "before_ref": args.before,
            "results": records,
        },
    )


if __name__ == "__main__":
    main()
