"""Shared helpers of the benchmark scripts: machine description, timing, peak memory, result tables.

Not a test module: each bench_*.py is a plain script (python bench/bench_NAME.py [--quick]).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from anywhere without installing the package
    sys.path.insert(0, str(ROOT))


def parser(description: str) -> argparse.ArgumentParser:
    try:  # show progress lines as they come, also when the output goes to a file or a pipe
        sys.stdout.reconfigure(line_buffering=True)
    except AttributeError:
        pass
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smaller sizes (a minute or so)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON to FILE")
    return p


def set_threads(n: int | None) -> None:
    import torch

    if n:
        torch.set_num_threads(int(n))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for mod in ("torch", "numpy", "pandas", "open_clip", "transformers", "timm", "PIL"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # not installed or no version: leave it out
            pass
    return out


def machine() -> dict:
    import torch

    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU only)",
        "os": platform.platform(terse=True),
        "load_avg_1m_5m": " ".join(f"{x:.2f}" for x in os.getloadavg()[:2]),
    }
    info.update(_versions())
    return info


def print_machine(info: dict | None = None) -> dict:
    info = info or machine()
    v = " ".join(
        f"{k} {info[k]}"
        for k in ("python", "torch", "numpy", "pandas", "open_clip", "transformers", "timm")
        if k in info
    )
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gb']} GB RAM, GPU: {info['gpu']}")
    print(f"         torch threads {info['torch_threads']}; load average (1m 5m) at start: {info['load_avg_1m_5m']}")
    print(f"         {v}")
    return info


def timed(fn, repeat: int = 1, warmup: int = 0):
    """(best seconds over `repeat` runs, last result)."""
    for _ in range(warmup):
        fn()
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def median_time(fn, repeat: int = 5, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def reset_peak_rss() -> bool:
    """Reset this process's peak resident size (Linux: write 5 to /proc/self/clear_refs), so that
    peak_rss_bytes() afterwards is the peak of what follows. False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident set size of this process (VmHWM; since reset_peak_rss() where it worked)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_worker(script: str, args: list[str], timeout: float | None = None) -> dict:
    """Run `python script --worker ...` in a fresh process (so its peak memory is its own); it prints
    one JSON line last."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


def fmt_mb(b: float | None) -> str:
    return "-" if b is None else f"{b / 2**20:.0f} MB"


def table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub-markdown table (prints readably in a terminal too)."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]

    def line(vals):
        return "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"

    out = [line(columns), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(row) for row in cells]
    return "\n".join(out)


def ratio(baseline: float, ours: float) -> str:
    return f"{baseline / ours:.1f}x" if ours > 0 else "-"


def met(ok: bool) -> str:
    return "yes" if ok else "NO"


def write_json(path: str | None, payload: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(payload, indent=2, default=str))


FULL_PROBE = Path("/tmp/demo_probe_full")


def probe_images(n: int, seed: int = 0, prefer_full: bool = True) -> tuple[list[str], str]:
    """`n` probe image paths (distinct files where the probe has enough) and where they came from:
    the full demo probe at /tmp/demo_probe_full if it is built, else the small demo probe (built into
    /tmp on first use, about 85 images) with its files repeated."""
    import numpy as np

    from clipeval.datasets.probe import load_probe
    from clipeval.demo.probe import build_demo_probe

    if prefer_full and (FULL_PROBE / "BUILD_INFO.json").exists():
        folder = FULL_PROBE
    else:
        folder = build_demo_probe(Path("/tmp/clipeval-bench-probe-small"), size="small", progress=False)
    paths = [im.path for im in load_probe([str(folder)]).images]
    rng = np.random.default_rng(seed)
    if n <= len(paths):
        chosen = [paths[i] for i in sorted(rng.choice(len(paths), n, replace=False))]
    else:
        chosen = [paths[i % len(paths)] for i in range(n)]
    return chosen, f"{folder} ({len(paths)} images{', repeated' if n > len(paths) else ''})"
