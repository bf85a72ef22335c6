"""Scale: what grows with the probe and the neurons (issue 27; the store and the app: bench/bench_scale_store.py).

    python bench/bench_scale.py [--quick] [--sizes 3000,30000,300000] [--json FILE]

Sections (each its own function below; run one with --section NAME, all by default):

aggregation  The dissection's driver-side aggregation on synthetic inputs of the real shapes, fed through
             the real code (clipeval.dissect.pipeline.LayerSink, activations.stream_summaries,
             pipeline.layer_top_concepts), not the model: ResNet-50's layer1-4 + fc pooled (256 + 512 + 1,024 +
             2,048 + 1,000 = 4,840 units), 512-d image embeddings, 20,000 concepts, soft_wpmi with top_k 100,
             k 5, 20 contrast negatives. The activations are non-negative (gamma-distributed, like pooled
             ReLU outputs; fc normal), made batch by batch (256 images) from a seeded generator. Each size
             runs in a fresh process, so its peak resident memory (VmHWM after the inputs' set-up) is its
             own; the time to make the synthetic batches is left out of the feed time. Targets (issue 27):
             peak memory at most 1.2x from 30k to 1M images and under 6 GB at 1M; time linear in images.
             --thumbs none,file,memory runs each size once per mode: 'file' also pushes a 5 KB blob per
             image (a thumbnail's size) through the real thumbnail sink (activations.ThumbFile, what the
             probe pass writes them to) and reads back those of the images the summaries keep, as
             pipeline.store_thumbnails does; 'memory' keeps the blobs in a list, as the pass did before;
             'none' (the default) makes none. The peak RSS right after the feed is reported beside the
             run's.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    fmt_mb,
    fmt_s,
    met,
    parser,
    peak_rss_bytes,
    print_machine,
    reset_peak_rss,
    rss_bytes,
    run_worker,
    set_threads,
    table,
    write_json,
)

# ----------------------------------------------------------------------------------------- aggregation
LAYERS = {"layer1": 256, "layer2": 512, "layer3": 1024, "layer4": 2048, "fc": 1000}  # ResNet-50, 4,840 units
N_CONCEPTS, DIM, BATCH = 20_000, 512, 256
SIMILARITY = ("soft_wpmi", {"top_k": 100})
K, N_CONTRAST, SEED = 5, 20, 0
SIZES, QUICK_SIZES = (3_000, 30_000, 300_000), (3_000, 30_000)
THUMB_BYTES = 5_000  # a 128-pixel JPEG thumbnail of a probe image is about 5 KB
THUMB_MODES = ("none", "file", "memory")


def _aggregation_worker(n_images: int, folder: Path, thumbs: str = "none") -> dict:
    """One size in this (fresh) process: the probe pass's sinks, the summaries, the similarity; with
    `thumbs` 'file' or 'memory', a THUMB_BYTES blob per image into a ThumbFile or a list."""
    import numpy as np

    from clipeval.dissect.activations import RowFile, ThumbFile, stream_summaries
    from clipeval.dissect.pipeline import LayerSink, StreamedLayer, layer_top_concepts, stream_keep

    rng = np.random.default_rng(SEED)
    T = rng.normal(size=(N_CONCEPTS, DIM)).astype(np.float32)
    T /= np.linalg.norm(T, axis=1, keepdims=True)
    fn, params = SIMILARITY
    keep = stream_keep(fn, params, K)
    reset_peak_rss()
    base = rss_bytes()
    times = {"feed": 0.0, "summaries": 0.0, "similarity": 0.0}

    sinks = {layer: LayerSink(folder / f"{layer}.npy", n_images, keep) for layer in LAYERS}
    images = LayerSink(folder / "embeddings.npy", n_images, 0)
    blobs = np.random.default_rng(SEED + 1)  # its own stream: the activations are the same in every mode
    thumb_file = ThumbFile(folder / "thumbnails")
    kept: list[bytes] = []  # 'memory': what the pass held before
    for a in range(0, n_images, BATCH):
        rows = np.arange(a, min(n_images, a + BATCH))
        batch = {
            layer: (
                rng.normal(size=(len(rows), u)) if layer == "fc" else rng.gamma(0.5, 1.0, size=(len(rows), u))
            ).astype(np.float32)
            for layer, u in LAYERS.items()
        }
        emb = rng.normal(size=(len(rows), DIM)).astype(np.float32)
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        thumbs_batch = [b"\xff\xd8" + blobs.bytes(THUMB_BYTES - 2) for _ in rows] if thumbs != "none" else []
        start = time.perf_counter()
        for layer, block in batch.items():
            sinks[layer](rows, block)
        images(rows, emb)
        if thumbs == "file":
            thumb_file(rows, thumbs_batch)
        elif thumbs == "memory":
            kept.extend(thumbs_batch)
        times["feed"] += time.perf_counter() - start
        del thumbs_batch
    feed_peak = peak_rss_bytes()

    frames = 0
    labels = {}
    shown = set()
    for layer in LAYERS:
        start = time.perf_counter()
        summaries = stream_summaries(layer, sinks[layer].path, sinks[layer].stream, K, N_CONTRAST, SEED, folder)
        times["summaries"] += time.perf_counter() - start
        frames += sum(len(f) for f in summaries)
        shown.update(summaries[0]["image_id"].tolist())
        live = np.flatnonzero(~summaries[2]["dead"].to_numpy())
        start = time.perf_counter()
        top = layer_top_concepts(
            fn, params, StreamedLayer(sinks[layer].path, sinks[layer].stream), live, RowFile(images.path), T, 5
        )
        times["similarity"] += time.perf_counter() - start
        labels[layer] = int(top.indices[0, 0])
    read = {"thumbs_read_s": None, "thumbs_read": 0}
    if thumbs == "file":  # what store_thumbnails reads back: the images some unit keeps, a chunk at a time
        start = time.perf_counter()
        for _, got in thumb_file.read(sorted(shown)):
            read["thumbs_read"] += len(got)
        read["thumbs_read_s"] = round(time.perf_counter() - start, 3)
    disk = sum(p.stat().st_size for p in folder.glob("*.npy"))
    thumb_disk = sum(p.stat().st_size for p in thumb_file.path.glob("*")) if thumb_file.path.is_dir() else 0
    return {
        "images": n_images,
        "units": sum(LAYERS.values()),
        "concepts": N_CONCEPTS,
        **{f"{k}_s": round(v, 2) for k, v in times.items()},
        "total_s": round(sum(times.values()), 2),
        "peak_rss_bytes": peak_rss_bytes(),
        "feed_peak_rss_bytes": feed_peak,
        "rss_before_bytes": base,
        "cache_bytes": disk,
        "summary_rows": frames,
        "thumbs": thumbs,
        "thumbs_in_memory_bytes": sum(len(b) for b in kept),
        "thumbs_on_disk_bytes": thumb_disk,
        "shown_images": len(shown),
        **read,
    }


def aggregation(args) -> dict:
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(QUICK_SIZES if args.quick else SIZES)
    modes = args.thumbs.split(",")
    print(
        f"aggregation: {sum(LAYERS.values())} units in {len(LAYERS)} layers, {N_CONCEPTS} concepts, {DIM}-d "
        f"embeddings, {SIMILARITY[0]} top_k {SIMILARITY[1]['top_k']}, k {K}, {N_CONTRAST} negatives; "
        f"sizes {sizes} images, thumbnails {modes} ({THUMB_BYTES:,} bytes each), each in a fresh process"
    )
    rows = []
    for n in sizes:
        for mode in modes:
            scratch = Path(tempfile.mkdtemp(prefix=f"bench-scale-{n}-", dir=args.scratch))
            try:
                r = run_worker(__file__, ["--worker", str(n), str(scratch), str(args.threads or 0), mode])
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
            rows.append(r)
            print(
                f"  {n:>9,} images, thumbnails {mode}: feed {fmt_s(r['feed_s'])}, summaries "
                f"{fmt_s(r['summaries_s'])}, similarity {fmt_s(r['similarity_s'])}; peak memory "
                f"{fmt_mb(r['peak_rss_bytes'])} (after the feed: {fmt_mb(r['feed_peak_rss_bytes'])}; before: "
                f"{fmt_mb(r['rss_before_bytes'])}); cache on disk {fmt_mb(r['cache_bytes'])}"
                + (
                    f"; thumbnails on disk {fmt_mb(r['thumbs_on_disk_bytes'])}, {r['thumbs_read']:,} of the "
                    f"{r['shown_images']:,} shown read back in {fmt_s(r['thumbs_read_s'])}"
                    if mode == "file"
                    else ""
                )
            )
    by = {r["images"]: r for r in rows if r["thumbs"] == modes[0]}
    out = {"rows": rows}
    columns = [
        "images",
        "thumbnails",
        "feed",
        "summaries",
        "similarity",
        "total",
        "s per 1k images",
        "peak memory after the feed",
        "peak memory",
        "cache on disk",
    ]
    print(
        table(
            [
                {
                    "images": f"{r['images']:,}",
                    "thumbnails": r["thumbs"],
                    "peak memory after the feed": fmt_mb(r["feed_peak_rss_bytes"]),
                    "feed": fmt_s(r["feed_s"]),
                    "summaries": fmt_s(r["summaries_s"]),
                    "similarity": fmt_s(r["similarity_s"]),
                    "total": fmt_s(r["total_s"]),
                    "s per 1k images": f"{1000 * r['total_s'] / r['images']:.2f}",
                    "peak memory": fmt_mb(r["peak_rss_bytes"]),
                    "cache on disk": fmt_mb(r["cache_bytes"]),
                }
                for r in rows
            ],
            columns,
        )
    )
    if 30_000 in by:
        largest = max(by)
        growth = by[largest]["peak_rss_bytes"] / by[30_000]["peak_rss_bytes"]
        time_ratio = by[largest]["total_s"] / by[30_000]["total_s"]
        scale = largest / 30_000
        print(
            f"peak memory {largest:,} / 30,000 images: {growth:.2f}x (target at most 1.2x: {met(growth <= 1.2)}); "
            f"time {time_ratio:.1f}x for {scale:.0f}x the images (linear within 1.3x: {met(time_ratio <= 1.3 * scale)})"
        )
        out.update(memory_growth_vs_30k=round(growth, 3), time_ratio_vs_30k=round(time_ratio, 2), size_ratio=scale)
    return out


# ----------------------------------------------------------------------------------------------- main
SECTIONS = {"aggregation": aggregation}


def main() -> None:
    ap: argparse.ArgumentParser = parser(__doc__.split("\n\n")[0])
    ap.add_argument("--section", choices=sorted(SECTIONS), action="append", help="run only these (default: all)")
    ap.add_argument("--sizes", help="aggregation: numbers of images, comma-separated")
    ap.add_argument("--scratch", default=None, help="aggregation: folder for the activation files (default: /tmp)")
    ap.add_argument(
        "--thumbs",
        default="none",
        help=f"aggregation: thumbnail modes, comma-separated, of {', '.join(THUMB_MODES)} (default: none)",
    )
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        import json

        n, folder, threads, thumbs = args.worker
        set_threads(int(threads) or None)
        print(json.dumps(_aggregation_worker(int(n), Path(folder), thumbs)))
        return
    bad = [m for m in args.thumbs.split(",") if m not in THUMB_MODES]
    if bad:
        ap.error(f"--thumbs: unknown mode(s) {', '.join(bad)}; choose from {', '.join(THUMB_MODES)}")
    set_threads(args.threads)
    info = print_machine()
    results = {name: SECTIONS[name](args) for name in (args.section or SECTIONS)}
    write_json(args.json, {"machine": info, "results": results})


if __name__ == "__main__":
    main()
