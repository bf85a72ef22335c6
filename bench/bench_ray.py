"""The Ray engine against the local engine on this machine: images/s of the dissection's probe pass
(decode + EfficientNet-Lite0 forward with 5 hooked layers + ConSE labelling image embeddings +
thumbnails, clipeval.compute.batches.ProbeBatch, as `clipeval dissect` runs it) with 1 and 2 Ray workers, and
where Ray's overhead goes: starting Ray, starting the actors (models through the object store), and
moving results back.

    python bench/bench_ray.py [--quick] [--images N]

local-2t  clipeval.dissect.activations in one process, torch's default threads (2 here), batch 16.
local-1t  the same with one torch thread: what one Ray worker gets (an actor holds 1 CPU, and Ray sets
          OMP_NUM_THREADS=1 in it), so local-1t vs ray-1 is Ray's overhead at equal compute.
ray-N     clipeval.compute.ray_map.collect on N actors of a local Ray (started here, 2 CPUs, no dashboard),
          batch 16: one task per batch. 'first batch' is from the map's start to the first batch back
          (actors starting: torch import, models unpickled from the object store); 'steady' is images/s
          from the first batch back to the last; 'total' includes both.
Each local mode runs in a fresh process; both Ray modes share one process and one Ray start.
"""

from __future__ import annotations

import json
import pickle
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt_s, parser, print_machine, probe_images, run_worker, table, write_json  # noqa: E402

LAYERS = ("blocks.1", "blocks.3", "blocks.5", "bn2", "classifier")


def _models():
    from clipeval.config import ImageTextConfig
    from clipeval.models.image_text import load_image_text
    from clipeval.models.targets import load_target

    return load_target("efficientnet_lite0"), {
        "labelling": load_image_text(ImageTextConfig("conse", "efficientnet_lite1"))
    }


def _images(n: int):
    from clipeval.datasets.probe import ProbeImage

    paths, source = probe_images(n, seed=3)
    return [ProbeImage(p, "bench", "", "") for p in paths], source


def worker_local(n: int, threads: int) -> dict:
    import tempfile

    import torch

    from clipeval.compute.batches import THUMB
    from clipeval.dissect.activations import ThumbFile, collect

    torch.set_num_threads(threads)
    target, models = _models()
    images, source = _images(n)
    thumbs = ThumbFile(Path(tempfile.mkdtemp(prefix="bench-ray-thumbs-")))  # where a dissection puts them
    try:
        kw = dict(
            target=target,
            layers=LAYERS,
            image_models=models,
            thumb_size=128,
            batch_size=16,
            num_workers=0,
            progress=False,
            sinks={THUMB: thumbs},
        )
        collect(images[:16], **kw)  # warm-up
        start = time.perf_counter()
        got = collect(images, **kw)
        wall = time.perf_counter() - start
    finally:
        thumbs.remove()
    return {
        "mode": f"local-{threads}t",
        "n": n,
        "wall_s": wall,
        "images_per_s": n / wall,
        "source": source,
        "shapes": {k: list(v.shape) for k, v in got.activations.items()},
    }


def worker_ray(n: int, worker_counts: list[int]) -> list[dict]:
    import logging

    import ray

    from clipeval.compute import ray_map
    from clipeval.compute.engine import Engine, ray_session

    target, models = _models()
    images, source = _images(n)
    work = ray_map.ProbeWork(target, LAYERS, "mean", models, 128, 16, "float32")
    work_bytes = len(pickle.dumps(work, protocol=5))
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    ray_start = time.perf_counter() - start
    out = []
    try:
        with ray_session(Engine("ray", workers=1)):  # quiet logs, progress bars off
            pass
        t = time.perf_counter()
        ref = ray.put(work)
        put_s = time.perf_counter() - t
        del ref
        for w in worker_counts:
            arrivals: list[tuple[float, int]] = []
            start = time.perf_counter()
            got = ray_map.map_images(
                Engine("ray", workers=w),
                work,
                {"path": [im.path for im in images]},
                batch_size=16,
                progress=False,
                on_rows=lambda k: arrivals.append((time.perf_counter(), k)),
            )
            total = time.perf_counter() - start
            first = arrivals[0][0] - start
            steady_n = sum(k for _, k in arrivals[1:])
            steady_s = arrivals[-1][0] - arrivals[0][0]
            out_bytes = sum(v.nbytes if v.dtype != object else sum(len(x) for x in v) for v in got.values())
            t = time.perf_counter()
            ray.get(ray.put(got))  # the results through the object store once more: the transfer cost
            roundtrip = time.perf_counter() - t
            out.append(
                {
                    "mode": f"ray-{w}",
                    "n": n,
                    "wall_s": total,
                    "images_per_s": n / total,
                    "first_batch_s": first,
                    "steady_images_per_s": steady_n / steady_s if steady_s > 0 else None,
                    "ray_start_s": ray_start,
                    "models_pickled_mb": work_bytes / 2**20,
                    "models_put_s": put_s,
                    "results_mb": out_bytes / 2**20,
                    "results_roundtrip_s": roundtrip,
                    "source": source,
                }
            )
    finally:
        ray.shutdown()
    return out


def main() -> None:
    p = parser(__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=None, help="probe images (default 256, --quick 96)")
    p.add_argument("--worker", nargs="*", help=argparse_hidden())
    args = p.parse_args()
    if args.worker is not None:
        kind, n = args.worker[0], int(args.worker[1])
        res = worker_local(n, int(args.worker[2])) if kind == "local" else worker_ray(n, [1, 2])
        print(json.dumps(res))
        return
    n = args.images or (96 if args.quick else 256)
    info = print_machine()
    script = str(Path(__file__).resolve())
    rows = [
        run_worker(script, ["--worker", "local", str(n), "2"]),
        run_worker(script, ["--worker", "local", str(n), "1"]),
    ]
    rows += run_worker(script, ["--worker", "ray", str(n)])
    print(
        f"probe pass of {n} images from {rows[0]['source']}: EfficientNet-Lite0 (5 layers) + ConSE labelling "
        f"model (EfficientNet-Lite1 + MiniLM) + 128 px thumbnails, batch 16"
    )
    base = rows[0]["images_per_s"]
    print(
        table(
            [
                {
                    "engine": r["mode"],
                    "images/s (total)": f"{r['images_per_s']:.2f}",
                    "vs local-2t": f"{r['images_per_s'] / base:.2f}x",
                    "first batch": fmt_s(r.get("first_batch_s")),
                    "steady images/s": f"{r['steady_images_per_s']:.2f}" if r.get("steady_images_per_s") else "-",
                    "wall": fmt_s(r["wall_s"]),
                }
                for r in rows
            ],
            ["engine", "images/s (total)", "vs local-2t", "first batch", "steady images/s", "wall"],
        )
    )
    r = rows[2]
    print(
        f"Ray start (ray.init, local, 2 CPUs): {fmt_s(r['ray_start_s'])}; models shipped to the workers: "
        f"{r['models_pickled_mb']:.0f} MB pickled, ray.put {fmt_s(r['models_put_s'])}; results "
        f"{r['results_mb']:.1f} MB for {n} images ({r['results_mb'] * 1024 / n:.0f} KB/image), one more trip "
        f"through the object store {fmt_s(r['results_roundtrip_s'])}"
    )
    write_json(args.json, {"machine": info, "rows": rows})


def argparse_hidden():
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    main()
