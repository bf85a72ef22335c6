"""`clipeval ...` / `python -m clipeval ...`: dissect, evaluate, inspect, import and export runs."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from clipeval.errors import ClipevalError, check_path

# Imported inside the functions that use them: every command's own modules (torch, the models, the store):
# `clipeval runs` or `--help` must answer in a second, not load torch.


def _int_in(lo: int, hi: int):
    """An argparse type: an integer in lo..hi (argparse then exits 2 naming the option, before any work)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside {lo}..{hi}")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _out_file(path: str) -> Path:
    """An output file path that can be written (before any work); missing folders are made, as the
    exports always did."""
    return check_path(path, "output file", "write", new_folders=True)


def _store(args, read_only: bool = False, create: bool = False):
    """The run store of --db; a writer's is first checked to be writable where it lies (the store's
    folder too: DuckDB writes its log beside the file). Only commands that make runs (`create`) may make
    a new store file, and then only at their first store access, after their own checks."""
    from clipeval.store import Store

    if not read_only:
        check_path(args.db, "run store", "write", new_folders=True)
    return Store(args.db, read_only=read_only, create=create)


def _image_text_config(args, prefix: str):
    """An ImageTextConfig from --{prefix}-backend/-arch/-pretrained, or None where none was given."""
    from clipeval.config import ImageTextConfig

    backend = getattr(args, f"{prefix}_backend")
    if backend is None:
        return None
    arch = getattr(args, f"{prefix}_arch") or ("ViT-B-32" if backend == "open_clip" else "efficientnet_lite1")
    return ImageTextConfig(
        backend=backend,
        arch=arch,
        pretrained=getattr(args, f"{prefix}_pretrained") or "",
        image_size=getattr(args, f"{prefix}_image_size", None),
    )


def _params(pairs: list[str]) -> tuple:
    out = []
    for p in pairs or []:
        if "=" not in p:
            raise ClipevalError(f"--sim-param takes NAME=VALUE, not {p!r}")
        k, v = p.split("=", 1)
        try:
            out.append((k.strip(), float(v)))
        except ValueError as e:
            raise ClipevalError(f"--sim-param {k}: {v!r} is not a number") from e
    return tuple(sorted(out))


def _placement(args):
    """The command's one device decision (checked before any work): --device and --dtype resolved
    (with --engine ray: this process's, on its CPU; the workers' device comes from --gpus-per-worker)."""
    from clipeval.compute.device import Placement
    from clipeval.compute.engine import driver_device_and_dtype

    engine = _engine(args) if hasattr(args, "engine") else None
    device, dtype = driver_device_and_dtype(engine, args.device, args.dtype) if engine else (args.device, args.dtype)
    return Placement.resolve(device, dtype)


def _engine(args):
    """--engine and its options, checked before any work."""
    from clipeval.compute.engine import engine_from_args

    return engine_from_args(args)


def cmd_dissect(args) -> int:
    from clipeval.config import (
        ConceptConfig,
        DissectConfig,
        ImageTextConfig,
        ProbeConfig,
        SimilarityConfig,
        TargetConfig,
    )
    from clipeval.dissect import pipeline

    placement = _placement(args)
    engine = _engine(args)
    config = DissectConfig(
        target=TargetConfig(args.target, args.weights),
        layers=tuple(l.strip() for l in args.layers.split(",") if l.strip()),
        pooling=args.pooling,
        probe=ProbeConfig(tuple(args.probe), args.on_bad_image),
        concepts=ConceptConfig(args.concepts),
        image_text=_image_text_config(args, "clip") or ImageTextConfig(),
        similarity=SimilarityConfig(args.similarity, _params(args.sim_param)),
        k=args.k,
        dtype=placement.dtype_name,
    )
    store = _store(args, create=True)
    run_id = pipeline.dissect(
        config,
        store,
        name=args.name or "",
        force=args.force,
        batch_size=args.batch_size,
        num_workers=None if engine.is_ray else args.workers,
        device=placement.device,
        engine=engine,
    )
    print(run_id)
    return 0


def cmd_layers(args) -> int:
    from clipeval.models.targets import dissectable, layer_shapes, load_target

    target = load_target(args.target, args.weights)
    shapes = layer_shapes(target)
    print(f"{target.name}: weights {target.weights}")
    for name, shape in shapes.items():
        if not args.all and (name.count(".") > 1 or not dissectable(shape)):
            continue
        units = (
            shape[0]
            if isinstance(shape, tuple) and len(shape) != 2
            else (shape[-1] if isinstance(shape, tuple) else "-")
        )
        note = "" if dissectable(shape) else "  (not dissectable)"
        print(f"  {name:<32} {str(shape):<22} units={units}{note}")
    if not args.all:
        print("(top two levels shown; --all lists every submodule)")
    return 0


def cmd_runs(args) -> int:
    store = _store(args, read_only=True)
    runs = store.runs()
    if runs.empty:
        print(f"no runs in {store.path}; make one with `clipeval demo` or `clipeval dissect`")
        return 0
    evals = store.evaluations()
    for r in runs.itertuples():
        done = evals[(evals["run_id"] == r.run_id) & (evals["status"] == "complete")]["evaluator"].unique()
        print(
            f"{r.run_id}  {r.status:<11} {int(r.n_neurons):>6} neurons  {str(r.created_at)[:19]}  {r.name}"
            f"  evaluators: {', '.join(sorted(done)) or '-'}"
        )
    return 0


def cmd_rm(args) -> int:
    store = _store(args)
    run = store.run(args.run)
    if not args.yes:
        if not sys.stdin.isatty():
            raise ClipevalError(
                f"rm asks before removing run {run['run_id']}, but there is no terminal to ask on; "
                "pass --yes to remove it without asking"
            )
        answer = input(f"remove run {run['run_id']} ({run['name']}) with its evaluations and human verdicts? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("kept")
            return 1
    store.delete_run(run["run_id"])
    print(f"removed {run['run_id']}")
    return 0


def cmd_export(args) -> int:
    from clipeval.dissect.descriptions import export_descriptions

    out = _out_file(args.out)
    store = _store(args, read_only=True)
    path = export_descriptions(store, args.run, out)
    print(path)
    return 0


def cmd_import(args) -> int:
    from clipeval.dissect.descriptions import import_descriptions

    placement = _placement(args) if args.target else None  # models run only to collect activations
    engine = _engine(args)
    if engine.is_ray and not args.target:
        raise ClipevalError("--engine ray runs the activation pass, which needs --target and --probe")
    store = _store(args, create=True)
    run_id = import_descriptions(
        store,
        args.file,
        name=args.name,
        target=args.target,
        weights=args.weights,
        probe=args.probe,
        pooling=args.pooling,
        concepts=args.concepts,
        on_bad_image=args.on_bad_image,
        placement=placement,
        batch_size=args.batch_size,
        num_workers=None if engine.is_ray else args.workers,
        engine=engine,
    )
    print(run_id)
    return 0


def cmd_evaluate(args) -> int:
    from clipeval.evaluators.run import evaluate

    thresholds = _thresholds(args)  # a bad threshold is refused before anything is computed
    placement = _placement(args)
    engine = _engine(args)
    store = _store(args)
    outcomes = evaluate(
        store,
        args.run,
        args.evaluators,
        eval_model=_image_text_config(args, "eval"),
        vqa_model=args.vqa_model,
        prompt=args.prompt,
        k=args.k,
        baselines=not args.no_baselines,
        constant_label=args.constant_label or "",
        force=args.force,
        device=placement.device,
        dtype=placement.dtype,
        batch_size=args.batch_size,
        num_workers=None if engine.is_ray else args.workers,
        engine=engine,
    )
    print(f"{'evaluator':<10} {'status':<12} {'wall time':>10}  evaluation")
    for o in outcomes:
        print(f"{o.evaluator:<10} {o.status:<12} {o.wall_s:>9.1f}s  {o.eval_id}")
        if o.message and o.status != "cached":
            print("    " + o.message.replace("\n", "\n    "))
    if any(o.status in ("complete", "cached") for o in outcomes):
        print_report(store, args.run, thresholds, args.k)
    return 1 if any(o.status == "unavailable" for o in outcomes) else 0


def _thresholds(args) -> dict[str, float]:
    """The thresholds given on the command line; the others come from each evaluator model's defaults."""
    from clipeval.evaluators.rules import RULES

    return {
        e: rule.check(getattr(args, rule.param))
        for e, rule in RULES.items()
        if getattr(args, rule.param, None) is not None
    }


def print_report(store, run_id: str, thresholds: dict[str, float] | None = None, k: int | None = None) -> None:
    """Per layer, each evaluator's share judged correct beside its baselines; evaluators that barely
    beat a baseline; agreement with every rater; evaluators the run lacks, with the reason. Thresholds
    not given are the defaults of the model that made each evaluator's scores (clipeval.evaluators.judges)."""
    from clipeval.analysis.headlines import weak_evaluators
    from clipeval.analysis.runview import EVALUATOR_TITLES, RunView

    view = RunView(store, run_id)
    thresholds = view.thresholds(thresholds)
    print(f"\nrun {view.run_id}  {view.run.get('name') or ''}")
    available = view.available
    for e, state in view.evaluators.items():
        if e not in available:
            print(f"  {EVALUATOR_TITLES[e]}: {state.status}: {state.reason.splitlines()[0] if state.reason else ''}")
    if not available:
        return
    if k is not None and not 1 <= k <= view.kmax:
        raise ClipevalError(f"--k {k} is outside 1..{view.kmax}, the top images stored per neuron of run {view.run_id}")
    k = k or view.kmax
    print(f"thresholds: {view.thresholds_text(thresholds)}; a label is correct if any of its top-{k} images matches")
    for line in view.default_notes(thresholds):
        print(f"  {line}")
    for e in available:
        if view.shared_note(e):
            print(f"  {EVALUATOR_TITLES[e]} model {view.shared_note(e)}")
    if view.dead_note():
        print("  " + view.dead_note())
    summary = view.layer_summary(thresholds, k)
    titles = [EVALUATOR_TITLES[e] for e in available]
    print("share judged correct, %: real labels / shuffled across neurons / one constant label")
    print(f"{'layer':<16}{'neurons':>8}  " + "".join(f"{t:<22}" for t in titles))
    for layer, g in summary.groupby("layer", sort=False):
        cells = []
        for t in titles:
            share = dict(zip(g.loc[g["evaluator"] == t, "variant"], g.loc[g["evaluator"] == t, "share_correct"]))
            cells.append(
                " / ".join(f"{100 * share[v]:.1f}" if v in share else "-" for v in ("real", "shuffled", "constant"))
            )
        print(f"{layer:<16}{int(g['n'].iloc[0]):>8}  " + "".join(f"{c:<22}" for c in cells))
    for w in weak_evaluators(summary):
        print(
            f"warning: {w['evaluator']} judges {100 * w['baseline_share']:.1f}% of {w['baseline']} labels correct "
            f"against {100 * w['real']:.1f}% of the real ones: at this threshold it barely tells right labels from "
            f"wrong; calibrate it (clipeval calibrate, or the Thresholds page)"
        )
    agree = view.rater_agreement(thresholds, k)
    if len(agree):
        print("agreement with raters, pooled over the neurons both judged:")
        for r in agree.itertuples():
            print(f"  {r.evaluator:<9} vs {r.rater:<28} n={r.n:<6} agreement {r.agreement:.3f}  kappa {r.kappa:.3f}")


def cmd_report(args) -> int:
    if args.html:
        from clipeval.render.report import check_output, write_report

        check_output(args.html)
        thresholds = _thresholds(args)
        store = _store(args, read_only=True)
        path = write_report(store, args.run, args.html, thresholds, args.k, args.units)
        print(f"{path}  ({path.stat().st_size / 1e6:.1f} MB, self-contained: open it in any browser, offline)")
        return 0
    thresholds = _thresholds(args)  # refused before the store is opened
    print_report(_store(args, read_only=True), args.run, thresholds, args.k)
    return 0


def cmd_sources(args) -> int:
    """Other labellers' labels on a run's units: add (and judge), list, evaluate, remove."""
    from clipeval.evaluators import sources

    store = _store(args, read_only=args.action == "list")
    run = store.complete_run(args.run)
    if args.action == "add":
        given = [
            (k, v)
            for k, v in (
                ("clip-dissect", args.clip_dissect),
                ("milan", args.milan),
                ("netdissect", args.netdissect),
                ("run", args.from_run),
            )
            if v
        ]
        if len(given) != 1:
            raise ClipevalError(
                "give exactly one of --clip-dissect FILE, --milan FILE, --netdissect FILE, --from-run RUN"
            )
        kind, origin = given[0]
        if not args.no_evaluate:
            sources.run_evaluations(store, run["run_id"])  # refused before anything is stored
        sid = sources.add_source(
            store,
            run["run_id"],
            kind,
            origin,
            name=args.name or "",
            layer_map=args.layer_map,
            netdissect_layer=args.netdissect_layer,
            replace=args.force,
        )
        _print_sources(store, run["run_id"], only=sid)
        if not args.no_evaluate:
            print("judging its labels on the run's stored images with the run's evaluators:")
            sources.print_outcomes(sources.evaluate_source(store, run["run_id"], sid))
        print(sid)
    elif args.action == "evaluate":
        ids = [args.source] if args.source else list(store.label_sources(run["run_id"])["source_id"])
        if not ids:
            raise ClipevalError(f"run {run['run_id']} has no label sources; add one with `clipeval sources add`")
        for sid in ids:
            print(sid)
            sources.print_outcomes(sources.evaluate_source(store, run["run_id"], sid, force=args.force))
    elif args.action == "rm":
        if not args.source:
            raise ClipevalError("name the source to remove (see `clipeval sources list RUN`)")
        known = store.label_sources(run["run_id"])
        if args.source not in set(known["source_id"]):
            raise ClipevalError(f"run {run['run_id']} has no label source {args.source!r}")
        store.delete_label_source(args.source)
        print(f"removed {args.source}")
    else:
        _print_sources(store, run["run_id"])
    return 0


def _print_sources(store, run_id: str, only: str | None = None) -> None:
    from clipeval.evaluators.sources import KIND_TITLES, describe_coverage

    cov = describe_coverage(store, run_id)
    if cov.empty:
        print(f"run {run_id} has no label sources")
        return
    per_layer = store.source_coverage(run_id)
    for r in cov.itertuples():
        if only and r.source_id != only:
            continue
        print(f"{r.source_id}  {KIND_TITLES.get(r.kind, r.kind)}: {r.name}")
        dead = f"; {r.n_on_dead:,} fall on dead units (no images: not judged)" if r.n_on_dead else ""
        print(
            f"    {r.n_matched:,} of its {r.n_labels:,} labels fall on live units of the run; they label "
            f"{r.n_matched:,} of the run's {r.n_units:,} live units ({r.coverage:.1%}){dead}"
        )
        g = per_layer[per_layer["source_id"] == r.source_id]
        print(
            "    per layer (labelled / live units): "
            + ", ".join(f"{x.layer} {x.matched}/{x.units}" for x in g.itertuples())
        )


def cmd_humans(args) -> int:
    from clipeval.analysis.humans import export_human, import_human

    if args.action == "export":
        _out_file(args.file)
    else:
        check_path(args.file, "verdicts file", "read")
    store = _store(args, read_only=args.action == "export")
    if args.action == "import":
        n = import_human(store, args.run, args.file, rater=args.rater, replace=args.replace)
        print(f"stored {n} verdicts")
    else:
        print(export_human(store, args.run, args.file))
    return 0


def cmd_calibrate(args) -> int:
    from clipeval.analysis.runview import calibrate_threshold

    store = _store(args, read_only=True)
    res = calibrate_threshold(
        store, args.run, args.evaluator, args.rater, fit_fraction=args.fit_fraction, seed=args.seed
    )
    print(json.dumps(res, indent=2))
    return 0


def cmd_demo(args) -> int:
    from clipeval.demo.build import build_demo, start_in_background

    placement = _placement(args)
    check_path(args.db, "run store", "write", new_folders=True)
    if args.background:
        print(start_in_background(args.db, args.size, args.device, args.dtype), file=sys.stderr)
        return 0
    build_demo(db=args.db, size=args.size, device=placement.device, dtype=placement.dtype_name, status=args.status)
    return 0


def _die_with_parent() -> None:
    """In the Streamlit child (Linux): get SIGTERM when `clipeval app` dies, even by SIGKILL."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def cmd_app(args) -> int:
    """Run Streamlit as a child and stop it with us: SIGTERM / SIGINT / SIGHUP to `clipeval app` are
    passed on and waited for, so no orphaned server is left behind."""
    import signal
    import subprocess

    env = dict(os.environ, CLIPEVAL_DB=str(Path(args.db).resolve()))
    app = Path(__file__).resolve().parents[1] / "app.py"
    child = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(args.port)],
        env=env,
        preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
    )

    def stop(signum, _frame):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        raise SystemExit(128 + signum)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return child.wait()
    except (KeyboardInterrupt, SystemExit) as e:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        return e.code if isinstance(e, SystemExit) and isinstance(e.code, int) else 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def build_parser() -> argparse.ArgumentParser:
    from clipeval.config import DEFAULT_PROMPT, SIMILARITY_DEFAULTS
    from clipeval.store import DEFAULT_DB

    p = argparse.ArgumentParser(prog="clipeval", description=__doc__)

    def common_options(q, default):
        """--db and --threads, on the main parser and on every subcommand: `clipeval --db X runs` and
        `clipeval runs --db X` both work (a subcommand's copy only counts when it is given)."""
        q.add_argument(
            "--db",
            default=str(DEFAULT_DB) if default else argparse.SUPPRESS,
            help=f"run store (DuckDB file); env CLIPEVAL_DB (default {DEFAULT_DB})",
        )
        q.add_argument(
            "--threads",
            type=_int_in(1, 4096),
            default=None if default else argparse.SUPPRESS,
            help="torch threads (default: one per core; on a busy machine 1 can be faster)",
        )

    common_options(p, default=True)
    shared = argparse.ArgumentParser(add_help=False)
    common_options(shared, default=False)
    sub = p.add_subparsers(dest="command", required=True)

    def add(name, **kw):
        return sub.add_parser(name, parents=[shared], **kw)

    def device_options(sp, batch_help: str = "images per forward pass"):
        from clipeval.compute.device import DEFAULT_BATCH, DEVICE_CHOICES, DTYPE_CHOICES

        sp.add_argument(
            "--device",
            default="auto",
            metavar="DEVICE",
            help=f"{DEVICE_CHOICES} (default auto: a CUDA GPU when one is visible, else the CPU)",
        )
        sp.add_argument(
            "--dtype",
            default="auto",
            choices=DTYPE_CHOICES,
            help="model precision (default auto: float32 on the CPU, bfloat16 on GPUs that support "
            "it, else float16); part of the settings, stored with the results",
        )
        sp.add_argument(
            "--batch-size",
            type=_int_in(1, 65536),
            default=None,
            help=f"{batch_help} (default per device: CPU {DEFAULT_BATCH['cpu']}, the fastest on 2 cores "
            f"in bench/bench_dissect.py; CUDA {DEFAULT_BATCH['cuda']}, halved on out-of-memory)",
        )
        sp.add_argument(
            "--workers",
            type=_int_in(0, 4096),
            default=None,
            help="local engine: image decoding processes (default: 0 on the CPU, up to 8 with a GPU so "
            "decoding overlaps the forward pass); --engine ray: Ray workers, each with its own copy "
            "of the models (default: the cluster's GPUs / --gpus-per-worker, or its CPUs)",
        )

    def engine_options(sp):
        sp.add_argument(
            "--engine",
            choices=["local", "ray"],
            default="local",
            help="where the per-image work runs: here (local), or on Ray workers (ray); text "
            "embeddings, similarity, rules and the store always stay in this process",
        )
        sp.add_argument(
            "--ray-address",
            default=None,
            metavar="ADDRESS",
            help="with --engine ray: 'local' (default: start a Ray on this machine for the command), "
            "'auto' (join the cluster this machine is part of) or HOST:PORT / ray://HOST:PORT",
        )
        sp.add_argument(
            "--gpus-per-worker",
            type=float,
            default=None,
            metavar="G",
            help="with --engine ray: GPUs per worker, fractions below 1 share a GPU (default 0: CPU workers)",
        )

    def image_text_options(sp, prefix, what):
        sp.add_argument(
            f"--{prefix}-backend", choices=["open_clip", "conse"], default=None, help=f"{what} model backend"
        )
        sp.add_argument(
            f"--{prefix}-arch", help="open_clip architecture (ViT-B-16) or ConSE classifier (efficientnet_lite1)"
        )
        sp.add_argument(f"--{prefix}-pretrained", help="open_clip pretrained tag or local checkpoint path")

    d = add("dissect", help="label every neuron of some layers with CLIP-Dissect")
    d.add_argument("--target", default="efficientnet_lite0", help="efficientnet_lite0/1/2, torchvision:NAME, timm:NAME")
    d.add_argument("--weights", help="local checkpoint for the target")
    d.add_argument("--layers", required=True, help="comma-separated layer names (see `clipeval layers`)")
    d.add_argument("--probe", nargs="+", required=True, help="image folder(s), merged in order")
    d.add_argument("--on-bad-image", choices=["skip", "fail"], default="skip")
    d.add_argument("--concepts", default="common-10k", help="common-3k/10k/20k, imagenet, or a text file")
    d.add_argument("--pooling", choices=["mean", "max"], default="mean")
    d.add_argument("--similarity", choices=list(SIMILARITY_DEFAULTS), default="soft_wpmi")
    d.add_argument("--sim-param", action="append", metavar="NAME=VALUE", help="override a similarity parameter")
    image_text_options(d, "clip", "labelling image-text")
    d.add_argument("--k", type=_int_in(1, 1000), default=5, help="top-k activating images stored per neuron")
    d.add_argument("--name", help="a readable name for the run")
    d.add_argument("--force", action="store_true", help="recompute even if a complete run has these settings")
    device_options(d)
    engine_options(d)
    d.set_defaults(func=cmd_dissect)

    l = add("layers", help="list a target's layers with their output shapes")
    l.add_argument("--target", default="efficientnet_lite0")
    l.add_argument("--weights")
    l.add_argument("--all", action="store_true")
    l.set_defaults(func=cmd_layers)

    r = add("runs", help="list the runs in the store")
    r.set_defaults(func=cmd_runs)

    rm = add("rm", help="remove a run (asks first)")
    rm.add_argument("run")
    rm.add_argument("--yes", action="store_true")
    rm.set_defaults(func=cmd_rm)

    e = add("export", help="write a run's labels as CSV (layer,unit,description,similarity) or Parquet")
    e.add_argument("run")
    e.add_argument("--out", required=True, help="FILE.csv or FILE.parquet")
    e.set_defaults(func=cmd_export)

    i = add("import-descriptions", help="import a descriptions.csv made by the original CLIP-Dissect")
    i.add_argument("file")
    i.add_argument("--name")
    i.add_argument("--target", help="with --probe: collect activations so the labels can be evaluated")
    i.add_argument("--weights")
    i.add_argument("--probe", nargs="+")
    i.add_argument("--pooling", choices=["mean", "max"], default="mean")
    i.add_argument("--concepts", help="the concept set the labels came from (CP needs it)")
    i.add_argument("--on-bad-image", choices=["skip", "fail"], default="skip")
    device_options(i)
    engine_options(i)
    i.set_defaults(func=cmd_import)

    ev = add("evaluate", help="judge every label from its neuron's top-k images")
    ev.add_argument("run")
    ev.add_argument("--evaluators", default="cp,es,contrast", help="comma-separated: cp,es,vqa,contrast")
    image_text_options(ev, "eval", "CP/ES/contrast")
    ev.add_argument(
        "--eval-image-size",
        type=_int_in(16, 4096),
        default=128,
        help="images are shown at this size first (paper: 128)",
    )
    ev.add_argument("--vqa-model", default="Salesforce/blip2-opt-2.7b", help="BLIP-2 hub id (local cache) or folder")
    ev.add_argument("--prompt", default=DEFAULT_PROMPT, help="the VQA question; must contain {label}")
    ev.add_argument("--k", type=_int_in(1, 1000), default=5)
    ev.add_argument("--no-baselines", action="store_true", help="skip the shuffled and constant-label baselines")
    ev.add_argument("--constant-label", help="label of the constant baseline (default: the run's most frequent)")
    ev.add_argument("--force", action="store_true")
    device_options(
        ev,
        "images per forward pass; for VQA also (image, question) rows per language-model call "
        "(VQA default: CPU 8, CUDA 256)",
    )
    engine_options(ev)
    ev.set_defaults(func=cmd_evaluate)

    def threshold_options(q):
        from clipeval.evaluators.rules import RULES

        for rule in RULES.values():
            q.add_argument(
                f"--{rule.param}",
                type=float,
                help=f"{rule.title} (default: the evaluator model's own; the paper's CLIP value is {rule.default:g})",
            )

    threshold_options(ev)
    rp = add("report", help="share judged correct per layer beside the baselines, and agreement with raters")
    rp.add_argument("run")
    rp.add_argument("--k", type=_int_in(1, 1000), help="top images judged (default: all stored)")
    rp.add_argument(
        "--html",
        metavar="OUT.html",
        help="write one self-contained HTML report (images, plotly.js and the charts inside; opens offline) instead of printing",
    )
    rp.add_argument(
        "--units",
        type=_int_in(1, 1_000_000),
        metavar="N",
        help="HTML: show the first N units of each layer (default all)",
    )
    threshold_options(rp)
    rp.set_defaults(func=cmd_report)

    h = add("humans", help="import or export human yes/no verdicts (layer,unit,verdict[,rater])")
    h.add_argument("action", choices=["import", "export"])
    h.add_argument("run")
    h.add_argument("file")
    h.add_argument("--rater", help="rater name for a CSV without a rater column")
    h.add_argument("--replace", action="store_true", help="allow new verdicts that differ from a rater's earlier ones")
    h.set_defaults(func=cmd_humans)

    so = add(
        "sources",
        help="other labellers' labels on a run's units (runs, CLIP-Dissect, MILAN, "
        "NetDissect), judged by the run's evaluators",
    )
    so.add_argument("action", choices=["add", "list", "evaluate", "rm"])
    so.add_argument("run")
    so.add_argument("source", nargs="?", help="source id (evaluate, rm)")
    so.add_argument("--clip-dissect", metavar="FILE", help="descriptions.csv of the original CLIP-Dissect")
    so.add_argument("--milan", metavar="FILE", help="MILAN layer,unit,description CSV")
    so.add_argument("--netdissect", metavar="FILE", help="NetDissect tally CSV of one layer (units from 1)")
    so.add_argument("--netdissect-layer", help="its layer (default: the file name's last '_' part)")
    so.add_argument("--from-run", metavar="RUN", help="another CLIP-Dissect run's labels")
    so.add_argument(
        "--layer-map",
        action="append",
        metavar="SRC=DST",
        help="rename the source's layers to the run's (repeat, or comma-separate)",
    )
    so.add_argument("--name", help="a readable name for the source")
    so.add_argument("--no-evaluate", action="store_true", help="store the labels without judging them")
    so.add_argument(
        "--force",
        action="store_true",
        help="add: replace a source of the same name or id that has other labels (its evaluations "
        "are made again); evaluate: evaluate again even if done with these settings",
    )
    so.set_defaults(func=cmd_sources)

    c = add("calibrate", help="fit an evaluator's threshold to a rater on part of the neurons")
    c.add_argument("run")
    c.add_argument("--evaluator", required=True, choices=["cp", "es", "vqa", "contrast"])
    c.add_argument("--rater", required=True)
    c.add_argument("--fit-fraction", type=_fraction, default=0.5)
    c.add_argument("--seed", type=_int_in(0, 2**32 - 1), default=0, help="seed of the random splits")
    c.set_defaults(func=cmd_calibrate)

    dm = add("demo", help="build the offline demo runs (if missing)")
    dm.add_argument("--size", choices=["full", "small"], default="full")
    from clipeval.compute.device import DEVICE_CHOICES, DTYPE_CHOICES

    dm.add_argument("--device", default="auto", metavar="DEVICE", help=f"{DEVICE_CHOICES} (default auto)")
    dm.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="model precision (default auto)")
    dm.add_argument(
        "--background",
        action="store_true",
        help="start the build as a detached process and return at once (what ./run app does): it "
        "writes its progress to STORE.build.json, which the app's Overview shows, and its output "
        "to STORE.build.log; nothing starts when the demo is complete or a build is running",
    )
    dm.add_argument(
        "--status",
        action="store_true",
        help="also write the build's stage and progress to STORE.build.json (for the app)",
    )
    dm.set_defaults(func=cmd_demo)

    a = add("app", help="start the Streamlit explorer on the store")
    a.add_argument("--port", type=_int_in(1, 65535), default=8501)
    a.set_defaults(func=cmd_app)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        return args.func(args)
    except ClipevalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # the reader of our output left (`clipeval runs | head`): not an error; silence the final flush
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
