"""How soon the app shows what a CLI command wrote to the same store (issue 11, point 1).

    python bench/bench_app_freshness.py [--quick] [--json FILE]

Builds a small real run (EfficientNet-Lite0, the small offline probe, ConSE), opens the app on its
store in-process (streamlit.testing AppTest, the Runs page), then repeatedly:
  1. `clipeval dissect` in a subprocess finishes a new run on the same store (the cache is warm, so it
     only recomputes similarity; the app holds nothing meanwhile),
  2. the app reruns once (what a click does); measured: from the CLI's exit to the end of that rerun,
     and whether the new run is on the page.
Baseline, side by side: a rerun of the same page with nothing new in the store. The ratio says what a
write costs the next rerun (its cached reads are asked again once).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, fmt_s, parser, print_machine, ratio, table, write_json  # noqa: E402


def build(root: Path):
    from clipeval.config import ConceptConfig, DissectConfig, ProbeConfig, SimilarityConfig, TargetConfig
    from clipeval.demo.probe import build_demo_probe
    from clipeval.dissect import pipeline
    from clipeval.store import Store

    probe = build_demo_probe(root / "probe", size="small", progress=False)
    cfg = DissectConfig(
        target=TargetConfig("efficientnet_lite0"),
        layers=("classifier",),
        probe=ProbeConfig((str(probe),)),
        concepts=ConceptConfig("imagenet"),
        similarity=SimilarityConfig("soft_wpmi", (("top_k", 20.0),)),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipeline.dissect(cfg, Store(root / "runs.duckdb"), cache_dir=root / "cache", progress=False)
    return root / "runs.duckdb", probe


def page_text(at) -> str:
    return "\n".join(str(d.value) for d in at.dataframe) + "\n".join(m.value for m in at.markdown)


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--rounds", type=int, default=None, help="CLI runs finished while the app is open (default 5)")
    args = p.parse_args()
    rounds = args.rounds or (2 if args.quick else 5)
    print_machine()
    root = Path(tempfile.mkdtemp(prefix="freshness-"))
    try:
        db, probe = build(root)
        os.environ["CLIPEVAL_DB"] = str(db)
        from streamlit.testing.v1 import AppTest

        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
        at.run()
        at.switch_page("pages/runs.py").run()
        assert not at.exception, at.exception
        idle, fresh, cli_s = [], [], []
        for i in range(rounds):
            t = time.perf_counter()
            at.run()  # nothing new: the baseline rerun
            idle.append(time.perf_counter() - t)
            name = f"fresh{i}"
            cmd = [
                sys.executable,
                "-m",
                "clipeval",
                "dissect",
                "--db",
                str(db),
                "--layers",
                "classifier",
                "--probe",
                str(probe),
                "--concepts",
                "imagenet",
                "--sim-param",
                f"top_k={21 + i}",
                "--name",
                name,
            ]  # the cache beside the store: the probe pass is cached
            t = time.perf_counter()
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
            exited = time.perf_counter()
            cli_s.append(exited - t)
            if done.returncode:
                raise SystemExit(done.stderr)
            at.run()  # the next rerun after the CLI finished
            fresh.append(time.perf_counter() - exited)
            if name not in page_text(at):
                raise SystemExit(f"run {name} not on the Runs page after the rerun")
            print(
                f"round {i + 1}: CLI {fmt_s(cli_s[-1])}; idle rerun {fmt_s(idle[-1])}; "
                f"CLI exit -> new run shown {fmt_s(fresh[-1])}"
            )
        med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        rows = [
            {"what": "rerun, nothing new (baseline)", "median": fmt_s(med(idle)), "max": fmt_s(max(idle)), "n": rounds},
            {
                "what": "CLI exit -> new run on the page",
                "median": fmt_s(med(fresh)),
                "max": fmt_s(max(fresh)),
                "n": rounds,
                "x the idle rerun": ratio(med(fresh), med(idle)),
            },
        ]
        print(table(rows, ["what", "median", "max", "n", "x the idle rerun"]))
        if args.json:
            write_json(
                args.json, {"rounds": rounds, "idle_rerun_s": idle, "cli_exit_to_shown_s": fresh, "cli_s": cli_s}
            )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
