"""Dissection: activation collection of 5 layers in one pass (clipeval.dissect.activations) against one
pass per layer, where the time goes (decode / preprocess / forward), and the best batch size,
DataLoader workers and torch threads on this machine.

    python bench/bench_dissect.py [--quick] [--images N] [--no-grid]

Target: EfficientNet-Lite0 (clipeval.models.targets.load_target('efficientnet_lite0'), shipped ImageNet
weights), layers blocks.1, blocks.3, blocks.5, bn2, classifier (the demo's 5 layers), mean pooling.
Images: distinct files of the demo probe (/tmp/demo_probe_full if built, else the small demo probe
repeated), 384 (--quick 128).
ours      collect(images, target, 5 layers): every image decoded and preprocessed once, one forward
          pass with a hook per layer.
baseline  the naive loop: collect(images, target, [layer]) once per layer (decode, preprocess and
          forward 5 times). (The original CLIP-Dissect also hooked all layers in one pass.)
Each setting runs in a fresh process (torch threads are per process); numbers are images per second
over the whole pass, after a 1-batch warm-up.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_s, met, parser, print_machine, probe_images, ratio, run_worker, set_threads, table, write_json  # noqa: E402

LAYERS = ("blocks.1", "blocks.3", "blocks.5", "bn2", "classifier")


def _probe(n: int):
    from clipeval.datasets.probe import ProbeImage

    paths, source = probe_images(n, seed=2)
    return [ProbeImage(p, "bench", "", "") for p in paths], source


def worker(argv: list[str]) -> None:
    mode, n, batch, workers, threads = argv[0], int(argv[1]), int(argv[2]), int(argv[3]), int(argv[4])
    import torch

    from clipeval.dissect.activations import collect
    from clipeval.models.targets import load_target

    torch.set_num_threads(threads)
    target = load_target("efficientnet_lite0")
    images, _ = _probe(n)
    collect(images[:batch], target=target, layers=LAYERS, batch_size=batch, num_workers=0, progress=False)  # warm-up
    start = time.perf_counter()
    if mode == "one-pass":
        got = collect(images, target=target, layers=LAYERS, batch_size=batch, num_workers=workers, progress=False)
        shapes = {k: list(v.shape) for k, v in got.activations.items()}
    else:
        shapes = {}
        for layer in LAYERS:
            got = collect(images, target=target, layers=[layer], batch_size=batch, num_workers=workers, progress=False)
            shapes[layer] = list(got.activations[layer].shape)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "images_per_s": n / seconds, "shapes": shapes}))


def stages(n: int, batch: int) -> dict:
    """Decode, preprocess and forward timed apart, in this process, single-threaded data loading."""
    import torch

    from clipeval.datasets.probe import load_rgb
    from clipeval.dissect.pooling import pool
    from clipeval.models.targets import load_target

    target = load_target("efficientnet_lite0")
    images, _ = _probe(n)
    out = {}
    start = time.perf_counter()
    decoded = [load_rgb(im.path) for im in images]
    out["decode"] = time.perf_counter() - start
    start = time.perf_counter()
    tensors = [target.preprocess(im) for im in decoded]
    out["preprocess"] = time.perf_counter() - start
    modules = target.modules()
    current = {}
    hooks = [
        modules[l].register_forward_hook(lambda m, i, o, l=l: current.__setitem__(l, pool(o, "mean", l)))
        for l in LAYERS
    ]
    pooled = {}
    with torch.no_grad():
        for fmt in ("contiguous", "channels_last"):
            prep = (lambda x: x) if fmt == "contiguous" else (lambda x: x.contiguous(memory_format=torch.channels_last))
            target.module(prep(torch.stack(tensors[:batch])))  # warm-up
            acts = {l: [] for l in LAYERS}
            start = time.perf_counter()
            for i in range(0, n, batch):
                target.module(prep(torch.stack(tensors[i : i + batch])))
                for l in LAYERS:
                    acts[l].append(current[l])
            out[f"forward, 5 hooks + pooling ({fmt})"] = time.perf_counter() - start
            pooled[fmt] = {l: torch.cat(v) for l, v in acts.items()}
    for h in hooks:
        h.remove()
    diff = max(float((pooled["contiguous"][l] - pooled["channels_last"][l]).abs().max()) for l in LAYERS)
    scale = max(float(pooled["contiguous"][l].abs().max()) for l in LAYERS)
    return out, diff, scale


def profile_collect(n: int, batch: int) -> str:
    """cProfile of collect() with the data loading in-process (num_workers=0), top functions by own time."""
    import torch

    from clipeval.dissect.activations import collect
    from clipeval.models.targets import load_target

    target = load_target("efficientnet_lite0")
    images, _ = _probe(n)
    collect(images[:batch], target=target, layers=LAYERS, batch_size=batch, num_workers=0, progress=False)
    prof = cProfile.Profile()
    prof.enable()
    collect(images, target=target, layers=LAYERS, batch_size=batch, num_workers=0, progress=False)
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(12)
    lines = [l for l in buf.getvalue().splitlines() if l.strip()]
    start = next(i for i, l in enumerate(lines) if "ncalls" in l)
    return "\n".join(l.replace(str(Path(torch.__file__).parents[1]), "site-packages") for l in lines[start - 1 :])


def main() -> None:
    ap = parser(__doc__.split("\n")[0])
    ap.add_argument("--images", type=int)
    ap.add_argument("--no-grid", action="store_true", help="skip the batch size / workers / threads grid")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
        return
    set_threads(args.threads)
    import torch

    info = print_machine()
    n = args.images or (128 if args.quick else 384)
    _, source = _probe(n)
    default_threads = args.threads or torch.get_num_threads()
    print(f"target efficientnet_lite0, layers {', '.join(LAYERS)}; {n} images from {source}")

    # 1. one pass vs one pass per layer, at clipeval's defaults (batch 32, 1 worker)
    res = {}
    for mode in ("one-pass", "per-layer"):
        res[mode] = run_worker(__file__, ["--worker", mode, str(n), "32", "1", str(default_threads)])
        print(f"  {mode:10s} {fmt_s(res[mode]['seconds'])}  {res[mode]['images_per_s']:.1f} images/s", flush=True)
    rows = [
        {
            "way": "ours: collect(), 5 layers in one pass",
            "seconds": fmt_s(res["one-pass"]["seconds"]),
            "images/s": f"{res['one-pass']['images_per_s']:.1f}",
            "ratio": ratio(res["per-layer"]["seconds"], res["one-pass"]["seconds"]),
            "faster?": met(res["one-pass"]["seconds"] < res["per-layer"]["seconds"]),
        },
        {
            "way": "baseline: one collect() per layer (5 passes)",
            "seconds": fmt_s(res["per-layer"]["seconds"]),
            "images/s": f"{res['per-layer']['images_per_s']:.1f}",
        },
    ]
    print()
    print(table(rows, list(rows[0])))

    # 2. where the time goes
    st, diff, scale = stages(n, 32)
    total = st["decode"] + st["preprocess"] + st["forward, 5 hooks + pooling (channels_last)"]
    print(
        f"\nwhere the time goes (one process, {default_threads} torch threads, no DataLoader workers, batch 32; "
        f"share of decode + preprocess + channels-last forward, as collect() now does):"
    )
    print(
        table(
            [
                {
                    "stage": k,
                    "seconds": fmt_s(v),
                    "share": f"{v / total:.0%}" if "contiguous" not in k else "-",
                    "images/s": f"{n / v:.0f}",
                }
                for k, v in st.items()
            ],
            ["stage", "seconds", "share", "images/s"],
        )
    )
    print(f"pooled activations, channels-last vs contiguous forward: max |diff| {diff:.1g} (max |value| {scale:.3g})")
    prof = profile_collect(min(n, 128), 32)
    print(f"\ncProfile of collect() on {min(n, 128)} images, num_workers=0, by own time:\n{prof}")

    # 3. settings
    grid = []
    if not args.no_grid:
        batches = (16, 64) if args.quick else (16, 32, 64)
        workers_ = (0, 1) if args.quick else (0, 1, 2)
        threads_ = (1, 2)
        n_grid = min(n, 96 if args.quick else 256)
        print(f"\nsettings (one pass, 5 layers, {n_grid} images):", flush=True)
        for th in threads_:
            for w in workers_:
                for b in batches:
                    r = run_worker(__file__, ["--worker", "one-pass", str(n_grid), str(b), str(w), str(th)])
                    grid.append(
                        {"torch threads": th, "workers": w, "batch": b, "images/s": round(r["images_per_s"], 1)}
                    )
                    print(f"  threads {th} workers {w} batch {b:3d}: {r['images_per_s']:.1f} images/s", flush=True)
        best = max(grid, key=lambda r: r["images/s"])
        print()
        print(table(sorted(grid, key=lambda r: -r["images/s"]), ["torch threads", "workers", "batch", "images/s"]))
        print(
            f"\nbest: torch threads {best['torch threads']}, {best['workers']} DataLoader worker(s), batch "
            f"{best['batch']}: {best['images/s']} images/s (clipeval default: batch 32, 1 worker, torch threads "
            f"{default_threads}: {res['one-pass']['images_per_s']:.1f} images/s)"
        )
    write_json(
        args.json,
        {
            "machine": info,
            "results": {
                "images": n,
                "one_pass": res["one-pass"],
                "per_layer": res["per-layer"],
                "stages": st,
                "channels_last_max_diff": diff,
                "grid": grid,
            },
        },
    )


if __name__ == "__main__":
    main()
