"""The cost of scale for the store and the app (issue 27, point 5; the dissection's side is bench/bench_scale.py):

    python bench/bench_scale_store.py store [--runs 10] [--neurons 100000] [--store FILE] [--repeat 3] [--json FILE]

1. Builds (once; an existing FILE is reused) a synthetic store of RUNS runs x NEURONS neurons through the
   store's real writers (Store.start_run / finish_run / put_probe / record_evaluation /
   add_human_verdicts): no model runs, but every table has the shape a real run of that size writes
   (per neuron: 5 runner-ups, 5 top + 8 level + 10 low + 10 random images, 24 histogram bins; CP and ES
   scores of the 5 top images and Contrast's of 25 images, each for the real, shuffled and constant
   label; VQA unavailable; 500 human verdicts per run). Activation maps are left out (one unit's maps
   are read per page, by key). Its size on disk is reported.
2. Starts `streamlit run app.py` on it, and times the first visit right after the start (the caches
   empty: "first visit after a restart").
3. Runs scripts/timing.py's measurement (every page's first visit, cached scripts, the repeated
   interactions) REPEAT times on that server: median, min and max.
4. Samples the server's resident memory (psutil RSS of the streamlit process and its children) every
   0.5 s throughout, and reports the peak.
Targets (issue 27): every first page under 3 s, every interaction under 1 s, server memory under
4 GB, first visit after a restart under 5 s.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from _common import parser  # noqa: E402

PROBE_FINGERPRINT = "synthetic-probe"
CONCEPT_HASH = "synthetic-20k"
N_CONCEPTS = 20_000
UNITS_CLASSIFIER = 1_000  # a 'classifier' layer: scripts/timing.py opens classifier / unit 207
PER_NEURON = {"top": 5, "level": 8, "low": 10, "random": 10}
N_BINS = 24
CLIP_MODELS = {
    "image_text": {
        "backend": "open_clip",
        "arch": "ViT-B-32",
        "pretrained": "laion2b_s34b_b79k",
        "is_clip": True,
        "description": "synthetic scores in the shape of OpenCLIP ViT-B-32's (no model ran)",
    }
}


def _layers(n_neurons: int) -> list[tuple[str, int]]:
    """24 blocks and a 1,000-unit classifier, n_neurons units in all (a ViT-L's blocks are 24 x 5,120)."""
    rest = n_neurons - UNITS_CLASSIFIER
    per, extra = divmod(rest, 24)
    return [(f"blocks.{i}", per + (1 if i < extra else 0)) for i in range(24)] + [("classifier", UNITS_CLASSIFIER)]


def _thumbs(n: int = 16) -> list[bytes]:
    from PIL import Image

    out = []
    for i in range(n):
        img = Image.new("RGB", (128, 96), ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _cat(values, categories) -> pd.Categorical:
    return pd.Categorical.from_codes(np.asarray(values), categories=list(categories))


def _run_frames(rng: np.random.Generator, layers: list[tuple[str, int]], n_images: int, concepts: np.ndarray):
    names = [l for l, _ in layers]
    layer_code = np.concatenate([np.full(n, i) for i, (_, n) in enumerate(layers)])
    unit = np.concatenate([np.arange(n) for _, n in layers])
    n = len(unit)
    label_idx = rng.integers(0, len(concepts), n)
    neurons = pd.DataFrame(
        {
            "layer": _cat(layer_code, names),
            "unit": unit,
            "label": concepts[label_idx],
            "similarity": rng.normal(1.0, 0.3, n),
            "dead": False,
            "n_negatives": PER_NEURON["low"] + PER_NEURON["random"],
        }
    )
    r = 5
    runner_ups = pd.DataFrame(
        {
            "layer": _cat(np.repeat(layer_code, r), names),
            "unit": np.repeat(unit, r),
            "rank": np.tile(np.arange(1, r + 1), n),
            "concept": _cat(
                np.concatenate([label_idx[:, None], rng.integers(0, len(concepts), (n, r - 1))], 1).ravel(), concepts
            ),
            "score": np.sort(rng.normal(1.0, 0.3, (n, r)), axis=1)[:, ::-1].ravel(),
        }
    )
    parts = []
    for kind, m in PER_NEURON.items():
        parts.append(
            pd.DataFrame(
                {
                    "layer": _cat(np.repeat(layer_code, m), names),
                    "unit": np.repeat(unit, m),
                    "kind": kind,
                    "rank": np.tile(np.arange(1, m + 1), n),
                    "image_id": rng.integers(0, n_images, n * m),
                    "activation": rng.normal(0, 1, n * m),
                }
            )
        )
    images = pd.concat(parts, ignore_index=True)
    edges = np.linspace(-3, 3, N_BINS + 1)
    histograms = pd.DataFrame(
        {
            "layer": _cat(np.repeat(layer_code, N_BINS), names),
            "unit": np.repeat(unit, N_BINS),
            "bin": np.tile(np.arange(N_BINS), n),
            "lo": np.tile(edges[:-1], n),
            "hi": np.tile(edges[1:], n),
            "count": rng.integers(0, 5000, n * N_BINS),
        }
    )
    layers_df = pd.DataFrame(
        {
            "layer": names,
            "position": range(len(names)),
            "shape": [f"(N, {k})" for _, k in layers],
            "n_units": [k for _, k in layers],
        }
    )
    return layers_df, neurons, runner_ups, images, histograms, label_idx


def _scores(rng, evaluator: str, neurons: pd.DataFrame, images: pd.DataFrame, label_idx, concepts) -> pd.DataFrame:
    kinds = ["top"] if evaluator in ("cp", "es") else ["top", "low", "random"]
    img = images[images["kind"].isin(kinds)]
    shuffled = rng.permutation(label_idx)
    frames = []
    const = np.full(len(label_idx), len(concepts))  # the constant label, appended to the categories
    for variant, idx in (("real", label_idx), ("shuffled", shuffled), ("constant", const)):
        per = img.groupby(["layer", "unit"], sort=False, observed=True).ngroup().to_numpy()
        raw = (
            rng.integers(1, N_CONCEPTS + 1, len(img)).astype(float)
            if evaluator == "cp"
            else rng.normal(0.25 if variant == "real" else 0.2, 0.05, len(img))
        )
        frames.append(
            pd.DataFrame(
                {
                    "layer": img["layer"].to_numpy(),
                    "unit": img["unit"].to_numpy(),
                    "variant": variant,
                    "kind": img["kind"].to_numpy(),
                    "rank": img["rank"].to_numpy(),
                    "image_id": img["image_id"].to_numpy(),
                    "label": _cat(idx[per], [*concepts, "hook"]),
                    "raw": raw,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def build_store(path: Path, n_runs: int, n_neurons: int, n_images: int = 50_000, seed: int = 0) -> None:
    """The synthetic store (see the module docstring), written through the store's own writers."""
    from clipeval.store import Store

    rng = np.random.default_rng(seed)
    store = Store(path)
    concepts = np.array([f"concept {i:05d}" for i in range(N_CONCEPTS)], dtype=object)
    store.put_concepts(CONCEPT_HASH, "synthetic-20k", list(concepts))
    layers = _layers(n_neurons)
    thumbs = _thumbs()
    shown: set[int] = set()
    for r in range(n_runs):
        t0 = time.perf_counter()
        run_id = f"synth{r:02d}"
        config = {
            "concepts": {"source": "synthetic-20k"},
            "k": 5,
            "layers": [l for l, _ in layers],
            "n_contrast": 10,
            "n_runner_ups": 5,
            "pooling": "mean",
            "probe": {"on_bad_image": "skip", "paths": ["/synthetic/probe"]},
            "seed": r,
            "similarity": {"fn": "soft_wpmi", "params": []},
            "target": {"name": f"synthetic-vit-l-{r}", "weights": None},
        }
        store.start_run(run_id, f"synthetic run {r}", "dissect", json.dumps(config), run_id)
        layers_df, neurons, runner_ups, images, histograms, label_idx = _run_frames(rng, layers, n_images, concepts)
        shown |= set(np.unique(images["image_id"]).tolist())
        store.finish_run(
            run_id,
            layers=layers_df,
            neurons=neurons,
            runner_ups=runner_ups,
            neuron_images=images,
            histograms=histograms,
            meta={
                "probe_fingerprint": PROBE_FINGERPRINT,
                "concept_hash": CONCEPT_HASH,
                "n_images": n_images,
                "models": {"target": {"name": config["target"]["name"]}, **CLIP_MODELS},
                "timings": {"synthetic": 0.0},
            },
        )
        for e in ("cp", "es", "contrast", "vqa"):
            eval_id = f"{run_id}-{e}"
            cfg = json.dumps({"evaluator": e, "k": 5, "baselines": True, "constant_label": "hook"})
            store.start_evaluation(eval_id, run_id, e, cfg, "hook")
            if e == "vqa":
                store.record_evaluation(
                    eval_id, run_id, e, cfg, status="unavailable", error="synthetic store: no VQA model"
                )
                continue
            scores = _scores(rng, e, neurons, images, label_idx, concepts)
            store.record_evaluation(
                eval_id,
                run_id,
                e,
                cfg,
                status="complete",
                scores=scores,
                wall_s=1.0,
                models=CLIP_MODELS,
                n_concepts=N_CONCEPTS if e == "cp" else None,
                constant_label="hook",
            )
            del scores
        pick = rng.choice(len(neurons), 500, replace=False)
        store.add_human_verdicts(
            run_id,
            pd.DataFrame(
                {
                    "layer": neurons["layer"].astype(str).to_numpy()[pick],
                    "unit": neurons["unit"].to_numpy()[pick],
                    "rater": "synthetic",
                    "verdict": rng.random(500) < 0.5,
                }
            ),
            source="bench",
        )
        print(f"  run {r + 1}/{n_runs} written in {time.perf_counter() - t0:.0f} s", flush=True)
    ids = np.arange(n_images)
    store.put_probe(
        PROBE_FINGERPRINT,
        pd.DataFrame(
            {
                "image_id": ids,
                "path": [f"/synthetic/probe/{i:07d}.jpg" for i in ids],
                "source": "synthetic",
                "license": "none",
                "label": None,
                # thumbnails only for images some page shows, as a dissection stores them
                "thumbnail": [thumbs[i % len(thumbs)] if i in shown else None for i in ids],
            }
        ),
    )


class RssSampler:
    """Peak resident memory of a process and its children, sampled every `every_s` seconds."""

    def __init__(self, pid: int, every_s: float = 0.5):
        import psutil

        self.proc, self.every_s, self.peak, self._stop = psutil.Process(pid), every_s, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def rss(self) -> int:
        import psutil

        try:
            return sum(p.memory_info().rss for p in [self.proc, *self.proc.children(recursive=True)])
        except psutil.Error:
            return 0

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            time.sleep(self.every_s)

    def stop(self) -> int:
        self._stop.set()
        self.thread.join()
        return self.peak


def bench_store(store: Path, n_runs: int, n_neurons: int, repeat: int, width: int = 1440, height: int = 1000) -> dict:
    """Build (or reuse) the synthetic store, then time the app on it; returns every measurement."""
    import timing
    from screenshots import find_chromium, serve_app, stop

    out: dict = {"runs": n_runs, "neurons_per_run": n_neurons}
    if not store.exists():
        t0 = time.perf_counter()
        build_store(store, n_runs, n_neurons)
        out["build_s"] = time.perf_counter() - t0
    out["store_mb"] = store.stat().st_size / 2**20
    chromium = find_chromium()
    restarts, measured = [], []
    peak = 0
    for i in range(repeat):
        t0 = time.perf_counter()
        proc, base = serve_app(store)
        start_s = time.perf_counter() - t0
        sampler = RssSampler(proc.pid)
        try:
            b = timing.Browser(chromium, width, height)
            try:
                restarts.append({"server start": start_s, "first visit after a restart": b.open(base)})
            finally:
                b.close()
            if i == 0:  # the whole measurement on the first server, as scripts/timing.py does it
                for _ in range(repeat):
                    try:
                        measured.append(timing.measure(chromium, base, width, height))
                    except RuntimeError as e:  # a page that never settled leaves no button to click
                        out["timing_error"] = str(e)
        finally:
            peak = max(peak, sampler.stop())
            stop(proc)
    out["restart"] = restarts
    out["timing"] = measured
    out["server_peak_rss_mb"] = peak / 2**20
    out["load"] = os.getloadavg()
    return out


def print_store(res: dict) -> None:
    load = res["load"]
    print(
        f"\nstore: {res['runs']} runs x {res['neurons_per_run']:,} neurons, {res['store_mb']:,.0f} MB on disk"
        + (f", built in {res['build_s']:.0f} s" if "build_s" in res else "")
        + f"; server peak RSS {res['server_peak_rss_mb']:,.0f} MB; {os.cpu_count()} CPUs, load average "
        f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; median of {len(res['timing'])} (min-max), seconds\n"
    )
    print("| what | seconds | range | target |\n|---|---|---|---|")
    rows = {k: [r[k] for r in res["restart"]] for k in res["restart"][0]}
    rows.update({k: [r[k] for r in res["timing"]] for k in (res["timing"][0] if res["timing"] else {})})
    if res.get("timing_error"):
        print(f"(scripts/timing.py stopped: {res['timing_error'][:120]})\n")
    for key, vals in rows.items():
        target = (
            "< 5"
            if "restart" in key
            else ""
            if key == "server start"
            else "< 3"
            if "visit" in key or "cached" in key
            else "< 1"
        )
        print(f"| {key} | {statistics.median(vals):.2f} | {min(vals):.2f}-{max(vals):.2f} | {target} |")


def main(argv=None) -> int:
    p = parser(__doc__)
    p.add_argument("part", choices=["store"], help="store: the synthetic store and the app on it")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--neurons", type=int, default=100_000)
    p.add_argument("--store", type=Path, default=Path("/tmp/clipeval-bench-scale.duckdb"))
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)
    if args.runs < 1 or args.neurons < UNITS_CLASSIFIER + 24 or args.repeat < 1:
        p.error(f"--runs and --repeat must be at least 1 and --neurons at least {UNITS_CLASSIFIER + 24}")
    res = bench_store(args.store, args.runs, args.neurons, args.repeat)
    print_store(res)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
