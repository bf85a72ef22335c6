"""Where it fires: what keeping each unit's top-k activation maps costs the probe pass.

    python bench/bench_maps.py [--images 96] [--quick]

Target: EfficientNet-Lite0 (shipped weights), the demo's 5 layers (blocks.1 56x56 shrunk to 24x24,
blocks.3 14x14, blocks.5 and bn2 7x7, classifier without a map), mean pooling,
batch 16, decoding in this process. Images: the demo probe (see _common.probe_images).
ours      collect(..., maps_keep=5): the same pass also copies each layer's shrunk maps in the hook,
          keeps a running top-5 per unit and packs the maps of the images that enter it.
baseline  collect(...) without maps: the probe pass as it was before maps were kept.
The two run alternately in one process (same threads, same load), median over the repeats.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_s, median_time, parser, print_machine, probe_images, ratio, set_threads, table, write_json  # noqa: E402

LAYERS = ("blocks.1", "blocks.3", "blocks.5", "bn2", "classifier")


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--images", type=int, default=96)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    set_threads(args.threads)
    from clipeval.datasets.probe import ProbeImage
    from clipeval.dissect.activations import collect
    from clipeval.models.targets import layer_layouts, load_target

    info = print_machine()
    n = 32 if args.quick else args.images
    paths, where = probe_images(n, seed=3)
    images = [ProbeImage(p, "bench", "", "") for p in paths]
    target = load_target("efficientnet_lite0")
    layouts = layer_layouts(target, LAYERS)
    print(f"{n} images from {where}; layers {', '.join(LAYERS)}")

    def run(keep: int):
        return collect(
            images,
            target=target,
            layers=LAYERS,
            batch_size=16,
            num_workers=0,
            progress=False,
            layouts=layouts,
            maps_keep=keep,
        )

    times = {"ours": [], "baseline": []}
    run(5)  # warm-up
    for _ in range(1 if args.quick else args.repeat):
        times["baseline"].append(median_time(lambda: run(0), repeat=1, warmup=0))
        times["ours"].append(median_time(lambda: run(5), repeat=1, warmup=0))
    ours, base = sorted(times["ours"])[len(times["ours"]) // 2], sorted(times["baseline"])[len(times["baseline"]) // 2]
    kept = run(5).maps
    stored = {layer: int(kept[layer].arrays()[1][0].size) for layer in kept}
    rows = [
        {
            "": "probe pass",
            "ours (with maps)": fmt_s(ours),
            "baseline (no maps)": fmt_s(base),
            "overhead": f"{100 * (ours / base - 1):+.0f}%",
            "speed ratio": ratio(base, ours),
        }
    ]
    print(table(rows, list(rows[0])))
    print("map cells per stored image: " + ", ".join(f"{l} {c}" for l, c in stored.items()))
    write_json(
        args.json,
        {"machine": info, "images": n, "ours_s": times["ours"], "baseline_s": times["baseline"], "cells": stored},
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
