"""What the driver receives per probe-pass batch from a Ray worker: activations.batch_part (the entries
that entered the worker's running top, and the batch's range and sum per unit) against the batch's rows.

    python bench/bench_ray_parts.py [--quick] [--units 4840] [--keep 100] [--batch 256] [--workers 2]
        [--images 102400]

The real worker code (activations.WorkerRows, which also writes the rows to the cache file) on synthetic
seeded activations (gamma(0.5), like pooled ReLU features; a fresh sort order per batch), batches dealt to
the workers in turn, no Ray: the bytes do not depend on Ray, only on how many images each worker has seen.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import parser, print_machine, table, write_json  # noqa: E402


def main() -> None:
    ap = parser(__doc__.split("\n")[0])
    ap.add_argument("--units", type=int, default=4840, help="ResNet-50 layer1-4 + fc (default)")
    ap.add_argument("--keep", type=int, default=100, help="top images per unit (soft_wpmi's top_k)")
    ap.add_argument("--batch", type=int, default=256, help="images per batch (a GPU worker's default)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--images", type=int, help="default 102400 (--quick 10240)")
    args = ap.parse_args()
    from clipeval.dissect.activations import STREAM, WorkerRows

    info = print_machine()
    n = args.images or (10240 if args.quick else 102400)
    rng = np.random.default_rng(0)
    raw = 4 * args.batch * args.units
    marks = [m for m in (1024, 4096, 10240, 30720, 102400, 1024000) if m <= n]
    rows_out, sent = [], []
    with tempfile.TemporaryDirectory(prefix="clipeval-bench-parts-") as tmp:
        workers = [WorkerRows({"a": (f"{tmp}/a.npy", n, args.keep)}) for _ in range(args.workers)]
        for i, a in enumerate(range(0, n, args.batch)):
            rows = np.arange(a, min(n, a + args.batch))
            block = rng.gamma(0.5, 1.0, size=(len(rows), args.units)).astype(np.float32)
            out = workers[i % args.workers]({"a": block}, rows, np.ones(len(rows), bool))
            sent.append(len(out[STREAM + "a"][0]))
            if a + len(rows) in marks:
                rows_out.append(
                    {
                        "images so far": f"{a + len(rows):,}",
                        "this batch's part": f"{sent[-1] / 1e3:,.1f} KB",
                        "its rows": f"{raw / 1e3:,.1f} KB",
                        "part / rows": f"{sent[-1] / raw:.1%}",
                        "all parts so far / all rows": f"{sum(sent) / (raw * len(sent)):.1%}",
                    }
                )
    print(
        f"{args.units} units, keep {args.keep}, batch {args.batch}, {args.workers} workers, {n:,} images: "
        f"floor (range + sum, no entry) {20 * args.units / 1e3:.1f} KB per batch"
    )
    print(table(rows_out, list(rows_out[0])))
    write_json(args.json, {"machine": info, "args": vars(args), "bytes_per_batch": sent, "rows_bytes": raw})


if __name__ == "__main__":
    main()
