"""Labelling many units: similarity.label_units (blocks of units, two passes for soft_wpmi's prior)
against the whole score matrix (compute + top_concepts), as the number of units grows.

    python bench/bench_similarity_scale.py [--quick] [--units 2500,25000,100000] [--concepts 20000]
        [--images 5000] [--function soft_wpmi] [--whole-max 25000] [--device cpu] [--backend numpy]
        [--from-files]

Issue 27's target: 100k units x 20k concepts soft_wpmi labels in under 10 minutes on this 2-core CPU,
peak RSS under 6 GB. Inputs are synthetic, seeded, of the real shapes: P (images x concepts) uniform in
[0.15, 0.35] like CLIP cosines, A (images x units) standard normal. Every point runs in a fresh process
that builds its inputs and then labels them (n_runner_ups = 5), so its peak RSS (VmHWM: inputs
included, as in a dissection) is its own; its CPU time (all threads) is printed beside the wall time,
since on a shared machine the wall time is mostly waiting for a core. The whole matrix runs only up to --whole-max units (100k x 20k
float32 scores alone are 8 GB); where both run, their labels are compared.

--from-files measures what a dissection runs instead (pipeline.layer_top_concepts, any function): the
activations (images x units, standard normal) and 512-d image embeddings are written to .npy files a
batch at a time, as the probe pass writes its cache, and P is embeddings @ text embeddings.T (random unit
vectors); peak RSS then counts no input matrix. The labels' SHA-1 is printed, so that two versions of the
code can be compared on the same inputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    fmt_mb,
    fmt_s,
    met,
    parser,
    peak_rss_bytes,
    print_machine,
    rss_bytes,
    run_worker,
    set_threads,
    table,
    write_json,
)

N_KEEP = 5
TIME_TARGET_S = 600
RSS_TARGET = 6 * 2**30


def _cpu_seconds() -> float:
    """CPU time of this process, all threads (on a busy machine the wall time is mostly waiting)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def worker(argv: list[str]) -> None:
    fn, way, n_units, n_concepts, n_images, device, backend, threads, out_file = argv
    import torch

    from clipeval.dissect import similarity

    if int(threads):
        torch.set_num_threads(int(threads))
    rng = np.random.default_rng(0)
    if way == "files":
        layer_files = _write_inputs(rng, int(n_images), int(n_units), int(n_concepts), fn, Path(out_file).parent)
        P = torch.from_numpy(rng.random((300, 50), dtype=np.float32))  # the warm-up's
        A = torch.from_numpy(rng.standard_normal((300, 8), dtype=np.float32))
    else:
        P = torch.from_numpy((0.15 + 0.2 * rng.random((int(n_images), int(n_concepts)), dtype=np.float32)))
        A = torch.from_numpy(rng.standard_normal((int(n_images), int(n_units)), dtype=np.float32))
    inputs = rss_bytes()
    where = dict(device=device, backend=None if backend == "auto" else backend)
    with torch.no_grad():
        similarity.label_units(fn, P[:300, :50], A[:300, :8], N_KEEP, **where)  # warm-up, not timed
        start, cpu0 = time.perf_counter(), _cpu_seconds()
        if way == "blocks":
            top = similarity.label_units(fn, P, A, N_KEEP, **where)
        elif way == "files":
            from clipeval.dissect.pipeline import layer_top_concepts

            top = layer_top_concepts(fn, {}, *layer_files, N_KEEP, None if device == "cpu" else device)
        else:
            top = similarity.top_concepts(similarity.compute(fn, P, A, **where), N_KEEP)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu0
    np.save(out_file, top.indices.numpy())
    print(
        json.dumps(
            {
                "labels_sha1": hashlib.sha1(top.indices.numpy().tobytes()).hexdigest(),
                "seconds": seconds,
                "cpu_seconds": cpu,
                "peak_rss": peak_rss_bytes(),
                "inputs_rss": inputs,
                "threads": torch.get_num_threads(),
                "load_after": os.getloadavg()[0],
            }
        )
    )


def _write_inputs(rng, n_images: int, n_units: int, n_concepts: int, fn: str, folder: Path, dim: int = 512):
    """layer_top_concepts' inputs as a dissection leaves them: the layer's cache entry and LayerStream, the
    image embeddings' cache entry, the text embeddings; every live unit."""
    from clipeval.dissect.activations import LayerStream, RowFile
    from clipeval.dissect.pipeline import StreamedLayer, stream_keep

    T = rng.standard_normal((n_concepts, dim), dtype=np.float32)
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    acts, images = RowFile(folder / "acts.npy", (n_images, n_units)), RowFile(folder / "emb.npy", (n_images, dim))
    stream = LayerStream(stream_keep(fn, {}, N_KEEP))
    for a in range(0, n_images, 256):
        rows = np.arange(a, min(n_images, a + 256))
        block = rng.standard_normal((len(rows), n_units), dtype=np.float32)
        emb = rng.standard_normal((len(rows), dim), dtype=np.float32)
        acts.write_rows(rows, block)
        images.write_rows(rows, emb / np.linalg.norm(emb, axis=1, keepdims=True))
        stream.add(rows, block)
    return StreamedLayer(acts.path, stream), np.arange(n_units), images, T


def main() -> None:
    ap = parser(__doc__.split("\n")[0])
    ap.add_argument("--function", default="soft_wpmi")
    ap.add_argument("--units", help="comma-separated unit counts (default 2500,25000,100000; --quick 2500,10000)")
    ap.add_argument("--concepts", type=int, help="default 20000 (--quick 5000)")
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--whole-max", type=int, default=25000, help="run the whole-matrix way up to this many units")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--backend", default="auto", choices=("auto", "numpy", "torch"))
    ap.add_argument("--from-files", action="store_true", help="pipeline.layer_top_concepts from .npy files")
    ap.add_argument("--worker", nargs=9, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker)
        return
    set_threads(args.threads)
    info = print_machine()
    units = [int(u) for u in (args.units or ("2500,10000" if args.quick else "2500,25000,100000")).split(",")]
    n_con = args.concepts or (5000 if args.quick else 20000)
    print(f"{args.function}: {n_con} concepts x {args.images} images; units {units}; device {args.device}")
    rows, records = [], []
    with tempfile.TemporaryDirectory(prefix="clipeval-bench-simscale-") as tmp:
        for n in units:
            res = {}
            ways = ("blocks", "whole") if n <= args.whole_max else ("blocks",)
            for way in ("files",) if args.from_files else ways:
                out = Path(tmp) / f"{n}-{way}.npy"
                load = os.getloadavg()[0]
                res[way] = run_worker(
                    __file__,
                    [
                        "--worker",
                        args.function,
                        way,
                        str(n),
                        str(n_con),
                        str(args.images),
                        args.device,
                        args.backend,
                        str(args.threads or 0),
                        str(out),
                    ],
                )
                res[way]["load_before"] = load
                r = res[way]
                print(
                    f"  {n:>7d} units {way:6s} {fmt_s(r['seconds']):>10s}  peak RSS {fmt_mb(r['peak_rss'])}"
                    f" (inputs {fmt_mb(r['inputs_rss'])}); load {load:.2f} -> {r['load_after']:.2f}",
                    flush=True,
                )
            same = None  # share of units whose label and runner-ups (in order) are the same both ways
            if "whole" in res:
                a, w = (np.load(Path(tmp) / f"{n}-{way}.npy") for way in ("blocks", "whole"))
                same = float((a == w).all(axis=1).mean())
            b = res["files" if args.from_files else "blocks"]
            rows.append(
                {
                    "units": f"{n:,}",
                    "layer_top_concepts" if args.from_files else "label_units": fmt_s(b["seconds"]),
                    "its CPU time": fmt_s(b["cpu_seconds"]),
                    "peak RSS": fmt_mb(b["peak_rss"]),
                    "of it inputs": fmt_mb(b["inputs_rss"]),
                    "whole matrix": fmt_s(res["whole"]["seconds"]) if "whole" in res else "-",
                    "its peak RSS": fmt_mb(res["whole"]["peak_rss"]) if "whole" in res else "-",
                    "same labels + runner-ups": "-" if same is None else f"{same:.3%}",
                    "labels SHA-1": b["labels_sha1"][:12],
                    "load (1 min) before -> after": f"{b['load_before']:.2f} -> {b['load_after']:.2f}",
                    "target (< 10 min, < 6 GB)": met(b["seconds"] < TIME_TARGET_S and b["peak_rss"] < RSS_TARGET),
                }
            )
            records.append({"units": n, **res, "same_labels": same})
    print()
    print(table(rows, list(rows[0])))
    write_json(
        args.json,
        {
            "machine": info,
            "function": args.function,
            "from_files": args.from_files,
            "sizes": {"concepts": n_con, "images": args.images, "units": units},
            "device": args.device,
            "backend": args.backend,
            "results": records,
        },
    )


if __name__ == "__main__":
    main()
