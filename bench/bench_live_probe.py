"""Live probing in the Neuron explorer: one new image through a run's target network, one unit read
(activation, percentile among the probe's activations, activation map), on CPU.

    python bench/bench_live_probe.py [--db STORE] [--run RUN] [--images 20] [--quick]

Store: the offline demo (data/clipeval.duckdb; EfficientNet-Lite0, 5 layers) unless --db/--run say
otherwise. Target: under 1 s per reading on CPU for the demo's EfficientNet-Lite0.

ours      clipeval.dissect.live.LiveProbe: the target loaded once (the app caches it per run; that load is
          reported separately), then LiveProbe.read(image, layer, unit) per image: the run's
          preprocessing, one forward pass with a hook on the layer on ONE torch thread, pooling, the
          unit's map, and the percentile (exact from the run's cached activations when present).
threads   the same cached LiveProbe, the forward pass on torch's threads (--threads, default torch's
          own: one per core): what one thread is chosen against.
baseline  the straightforward way without a cached model: load the target for every reading (torch's
          threads), then the same forward pass and read-out.
Images are decoded before timing (the app has the upload or the file in memory already).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    ROOT,
    fmt_s,
    median_time,
    met,
    parser,
    print_machine,
    probe_images,
    ratio,
    set_threads,
    table,
    write_json,
)  # noqa: E402


def main() -> int:
    p = parser(__doc__)
    p.add_argument("--db", default=str(ROOT / "data" / "clipeval.duckdb"))
    p.add_argument("--run", help="run id (default: the store's first complete run with a loadable target)")
    p.add_argument("--images", type=int, default=20)
    args = p.parse_args()
    set_threads(args.threads)
    import torch

    from clipeval.datasets.probe import load_rgb
    from clipeval.dissect.live import LiveProbe
    from clipeval.store import Store

    info = print_machine()
    if not Path(args.db).exists():
        print(f"no store at {args.db}: build the demo first (python -m clipeval demo)")
        return 2
    store = Store(args.db, read_only=True)
    runs = store.runs()
    run_id = args.run or runs[runs["status"] == "complete"]["run_id"].iloc[0]
    start = time.perf_counter()
    probe = LiveProbe(store, run_id)
    load_s = time.perf_counter() - start
    layers = list(store.layers(probe.run_id)["layer"])
    n = 5 if args.quick else args.images
    paths, where = probe_images(n)
    images = [load_rgb(p) for p in paths]
    print(f"run {probe.run_id}: {probe.target_name}, layers {', '.join(layers)}; {n} images from {where}")
    print(f"loading the target once (ours, cached by the app afterwards): {fmt_s(load_s)}")

    rows, payload = [], {"machine": info, "run": probe.run_id, "target": probe.target_name, "load_s": load_s}
    for layer in layers:
        i = iter(range(10**9))
        ours = median_time(lambda: probe.read(images[next(i) % n], layer, 0), repeat=n, warmup=1)
        how = probe.read(images[0], layer, 0).percentile_how
        probe.threads = None
        threaded = median_time(lambda: probe.read(images[next(i) % n], layer, 0), repeat=n, warmup=1)
        probe.threads = 1

        def uncached():
            fresh = LiveProbe(store, probe.run_id, threads=None)
            fresh.read(images[0], layer, 0)

        base = median_time(uncached, repeat=1 if args.quick else 3, warmup=0)
        rows.append(
            {
                "layer": layer,
                "ours (cached, 1 thread)": fmt_s(ours),
                f"cached, {torch.get_num_threads()} threads": fmt_s(threaded),
                "baseline (load per reading)": fmt_s(base),
                "speed-up": ratio(base, ours),
                "under 1 s": met(ours < 1.0),
                "percentile": how,
            }
        )
        payload[layer] = {"ours_s": ours, "threads_s": threaded, "baseline_s": base, "percentile": how}
    print(table(rows, list(rows[0])))
    print(f"load average (1m 5m) at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg()[:2])}")
    write_json(args.json, payload)
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
