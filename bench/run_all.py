"""Run every benchmark, one after the other, each in its own process.

    python bench/run_all.py [--quick] [--threads N] [--only similarity,vqa,...] [--out bench/results]

Each script's printed output is shown as it runs and saved to OUT/<name>.txt (with its JSON results in
OUT/<name>.json). The numbers in docs/performance.md come from these files.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("similarity", "interactive", "bootstrap", "dissect", "vqa", "cp_es")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads for every script (default: torch's)")
    ap.add_argument("--only", default=",".join(BENCHMARKS), help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(BENCHMARKS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    failed = []
    for name in names:
        cmd = [sys.executable, str(HERE / f"bench_{name}.py"), "--json", str(out / f"{name}{suffix}.json")]
        cmd += ["--quick"] if args.quick else []
        cmd += ["--threads", str(args.threads)] if args.threads else []
        print(f"\n=== bench_{name}.py {' '.join(cmd[2:])}", flush=True)
        start = time.perf_counter()
        lines = []
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            for line in proc.stdout:
                if "No pretrained weights loaded" in line:
                    continue  # open_clip's note about the random-weight model (said in the scripts' output)
                print(line, end="", flush=True)
                lines.append(line)
        (out / f"{name}{suffix}.txt").write_text("".join(lines))
        print(f"=== bench_{name}.py: exit {proc.returncode}, {time.perf_counter() - start:.0f} s", flush=True)
        if proc.returncode:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
