"""Probe a unit live: run a run's target network on one new image and read one unit.

The target is loaded once (the app caches a LiveProbe per run) with the run's own settings (network,
weights, pooling) and preprocessing, so the activation is on the same scale as the run's: it is placed
among the probe's activations of the unit (exactly, from the run's cached activation array when this
machine has it, else from the stored 24-bin histogram), and its spatial map is returned for an overlay.
Where the target cannot be loaded here (weights not on this machine, an imported run without a
target), `TargetUnavailable` says why.
"""

from __future__ import annotations

import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch

from clipeval.compute.device import DTYPES, Placement, resolve_device
from clipeval.config import TargetConfig
from clipeval.dissect.maps import spatial, token_prefix
from clipeval.dissect.pooling import pool
from clipeval.errors import ClipevalError
from clipeval.store import Store

# Imported inside the functions that use them: torch-side code (batches, the target loader, the pipeline's
# cache), only when a live reading runs, so the app's pages stay light.


class TargetUnavailable(ClipevalError):
    pass


READINGS_KEPT = 64  # forward results kept per run: one per (image, layer); a few MB on the demo's layers


@dataclass
class Reading:
    activation: float
    percentile: float  # share of probe images with a lower activation, in percent
    percentile_how: str  # 'exact over N probe images' or 'from the stored histogram (±1 bin)'
    map: np.ndarray | None  # (h, w) at the layer's resolution, or None for a vector layer
    seconds: float  # preprocessing + forward pass


def run_target(run: dict) -> tuple[str, str | None, str]:
    """(target name, weights, pooling) of a run, or TargetUnavailable when it has none."""
    cfg = json.loads(run.get("config_json") or "{}")
    target = cfg.get("target")
    if isinstance(target, dict):
        return target.get("name"), target.get("weights"), cfg.get("pooling", "mean")
    if isinstance(target, str) and target:  # an imported run with its activations collected
        return target, cfg.get("weights"), cfg.get("pooling", "mean")
    raise TargetUnavailable(
        "this run's labels were imported without a target network (import them again with "
        "--target and --probe to probe its units)"
    )


def run_placement(run: dict, device: str | None = None):
    """Where to probe a run's target here: the run's own device and dtype when this machine has that
    device, else the CPU in float32 (half precision on a CPU is slow and no closer to anything); and a
    note saying which, when it differs from the run's."""

    compute = (json.loads(run.get("models_json") or "{}") or {}).get("compute") or {}
    run_device = str(compute.get("device") or "cpu")
    run_dtype = str(compute.get("dtype") or json.loads(run.get("config_json") or "{}").get("dtype") or "float32")
    wanted = device or ("cuda" if "cuda" in run_device or "GPU" in run_device else "cpu")
    if wanted.startswith("cuda") and not torch.cuda.is_available():
        return Placement(), (
            f"the run ran on {run_device} in {run_dtype}; this machine has no GPU, so the CPU in float32"
        )
    dev = resolve_device(wanted)
    dtype = DTYPES.get(run_dtype, torch.float32) if dev.type == "cuda" else torch.float32
    note = "" if dtype == DTYPES.get(run_dtype) else f"the run used {run_dtype}; here float32 on the CPU"
    return Placement(dev, dtype), note


class LiveProbe:
    """One run's target network, ready to read any unit on a new image."""

    def __init__(self, store: Store, run_id: str, device: str | None = None, threads: int | None = 1):
        from clipeval.models import targets as targets_mod

        self.run = store.complete_run(run_id)
        self.run_id = self.run["run_id"]
        name, weights, self.pooling = run_target(self.run)
        start = time.perf_counter()
        try:
            self.target = targets_mod.load_target(name, weights)
        except ClipevalError as e:
            raise TargetUnavailable(f"the run's target {name} cannot be loaded here: {e}") from e
        layers = list(store.layers(self.run_id)["layer"])
        try:
            # the run's layouts (issue 12): pooled and mapped exactly as its probe pass did
            self.layouts = targets_mod.layer_layouts(self.target, layers)
        except ClipevalError as e:
            raise TargetUnavailable(f"the run's layers cannot be read from {name} here: {e}") from e
        stored = ((json.loads(self.run.get("models_json") or "{}") or {}).get("target") or {}).get("layouts") or {}
        changed = {layer: (stored[layer], now) for layer, now in self.layouts.items() if stored.get(layer, now) != now}
        if changed:
            raise TargetUnavailable(
                "; ".join(
                    f"the run pooled {layer} as {was}, this version pools it as {now}"
                    for layer, (was, now) in changed.items()
                )
                + ": a live reading would not compare with the run's (run dissect again with --force)"
            )
        # the region of an image the network sees, for the overlay (maps.crop_box)
        self.view = self.target.info.get("view")
        self.placement, self.device_note = run_placement(self.run, device)
        self.placement.module(self.target.module)
        self.device = str(self.placement.device)
        # One image on the CPU runs on one torch thread: on a busy machine (the app beside other work)
        # two threads wait for each other and one reading took 0.1-2.3 s instead of 40 ms
        # (bench/bench_live_probe.py); None keeps torch's setting.
        self.threads = threads if self.placement.device.type == "cpu" else None
        self._warm_up()
        self.load_seconds = time.perf_counter() - start
        self.target_name = name
        self.weights = weights
        self._store = store
        self._acts: dict[str, np.ndarray | None] = {}
        # (image key, layer) -> forward result; shared by the app's sessions (the probe is a cached resource)
        self._readings: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    @torch.no_grad()
    def _warm_up(self) -> None:
        """One forward pass of a blank image as the readings run it (placement, channels-last, threads), as
        part of the load: the first pass builds the backend's kernels (oneDNN, cuDNN) and would otherwise
        make the first reading several times slower than the next ones."""
        from clipeval.compute.batches import channels_last as channels_last

        threads = torch.get_num_threads()
        try:
            if self.threads:
                torch.set_num_threads(self.threads)
            x = torch.zeros(1, 3, self.target.input_size, self.target.input_size)
            self.target.module(channels_last(self.placement.inputs(x)))
        finally:
            torch.set_num_threads(threads)

    def probe_activations(self, layer: str) -> np.ndarray | None:
        """The run's activations of `layer` over the probe (images x units) from this machine's cache,
        or None (then percentiles come from the stored histogram)."""
        if layer not in self._acts:
            from clipeval.dissect.pipeline import ArrayCache
            from clipeval.dissect.pipeline import layer_key as layer_key

            dtype = json.loads(self.run.get("config_json") or "{}").get("dtype", "float32")
            key = layer_key(
                TargetConfig(self.target_name, self.weights),
                self.target,
                layer,
                self.pooling,
                SimpleNamespace(fingerprint=self.run["probe_fingerprint"]),
                dtype,
                self.layouts[layer],
            )
            acts = ArrayCache(self._store.path.parent / "cache").get("activations", key)
            n = int(self.run.get("n_images") or 0)
            self._acts[layer] = acts if acts is not None and acts.shape[0] == n else None
        return self._acts[layer]

    @torch.no_grad()
    def forward(self, image, layer: str) -> tuple[torch.Tensor, torch.Tensor | None, float]:
        """Pooled activations (units,) and spatial maps (units, h, w) or None of `layer` on one PIL image,
        converted, pooled and laid out as the run's probe pass did (clipeval.compute.batches.ProbeBatch)."""
        from clipeval.compute.batches import channels_last as channels_last
        from clipeval.datasets.probe import to_rgb

        if layer not in self.layouts:
            raise ClipevalError(f"the run has no layer {layer!r} (its layers: {', '.join(self.layouts)})")
        layout = self.layouts[layer]
        n_prefix = token_prefix(layout)
        got = {}

        def hook(_m, _i, out):
            got["pooled"] = pool(out, self.pooling, layer, layout)
            sp = spatial(out, layout, n_prefix)  # at the layer's own resolution (not shrunk: one image)
            got["map"] = None if sp is None else sp.detach().to(torch.float32, copy=True)

        start = time.perf_counter()
        handle = self.target.modules()[layer].register_forward_hook(hook)
        threads = torch.get_num_threads()
        try:
            if self.threads:
                torch.set_num_threads(self.threads)
            x = self.target.preprocess(to_rgb(image)).unsqueeze(0)
            self.target.module(channels_last(self.placement.inputs(x)))
        finally:
            handle.remove()
            torch.set_num_threads(threads)
        seconds = time.perf_counter() - start
        return got["pooled"][0].cpu(), None if got["map"] is None else got["map"][0].cpu(), seconds

    def read(self, image, layer: str, unit: int, key=None) -> Reading:
        """The unit's activation, percentile and map on `image`. With `key` (what names the image: a probe
        image id, an upload's digest) the layer's forward result is kept for the next readings of the same
        image and layer (the page reruns on every slider step and unit change); `seconds` is then the
        time of the pass that made it."""
        if key is None:
            pooled, maps, seconds = self.forward(image, layer)
        else:
            with self._lock:
                hit = self._readings.get((key, layer))
                if hit is not None:
                    self._readings.move_to_end((key, layer))
            if hit is None:
                hit = self.forward(image, layer)
                with self._lock:
                    self._readings[(key, layer)] = hit
                    while len(self._readings) > READINGS_KEPT:
                        self._readings.popitem(last=False)
            pooled, maps, seconds = hit
        if not 0 <= unit < pooled.shape[0]:
            raise ClipevalError(f"{layer} has units 0..{pooled.shape[0] - 1}, not {unit}")
        a = float(pooled[unit])
        acts = self.probe_activations(layer)
        if acts is not None:
            col = acts[:, unit]
            pct = 100.0 * (float((col < a).sum()) + 0.5 * float((col == a).sum())) / len(col)
            how = f"exact, among the run's {len(col):,} probe images"
        else:
            hist = self._store.histogram(self.run_id, layer, unit)
            pct, how = histogram_percentile(hist, a), f"from the stored {len(hist)}-bin histogram (±1 bin)"
        return Reading(a, pct, how, None if maps is None else maps[unit].numpy(), seconds)


def histogram_percentile(hist, a: float) -> float:
    """Percent of the histogram's images below `a`, the bin holding `a` split linearly."""
    if hist is None or hist.empty:
        return float("nan")
    total = float(hist["count"].sum())
    below = float(hist.loc[hist["hi"] <= a, "count"].sum())
    inside = hist[(hist["lo"] <= a) & (hist["hi"] > a)]
    if len(inside):
        r = inside.iloc[0]
        below += float(r["count"]) * (a - r["lo"]) / (r["hi"] - r["lo"]) if r["hi"] > r["lo"] else 0.0
    return 100.0 * below / total if total else float("nan")
