"""Judge a run's labels: `evaluate` (every evaluator on each unit's top-k images) and `calibrate` (fit a
judge's threshold to a rater)."""

from __future__ import annotations

import json

from clipeval.cli.options import (
    device_options,
    engine_of,
    engine_options,
    fraction,
    image_text_config,
    image_text_options,
    int_in,
    open_store,
    placement_of,
    threshold_options,
    thresholds_given,
)
from clipeval.cli.report import print_report
from clipeval.config import DEFAULT_PROMPT

# Imported inside the functions that use them: the evaluators and their models: `clipeval runs` or `--help` must answer in a second, not load torch.


def cmd_evaluate(args) -> int:
    from clipeval.evaluators.run import evaluate

    thresholds = thresholds_given(args)  # a bad threshold is refused before anything is computed
    placement = placement_of(args)
    engine = engine_of(args)
    store = open_store(args)
    outcomes = evaluate(
        store,
        args.run,
        args.evaluators,
        eval_model=image_text_config(args, "eval"),
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


def cmd_calibrate(args) -> int:
    from clipeval.analysis.runview import calibrate_threshold

    store = open_store(args, read_only=True)
    res = calibrate_threshold(
        store, args.run, args.evaluator, args.rater, fit_fraction=args.fit_fraction, seed=args.seed
    )
    print(json.dumps(res, indent=2))
    return 0


def register(add) -> None:
    """Add this module's subcommands (`add(name, **kw)` makes a subparser with the shared options)."""
    ev = add("evaluate", help="judge every label from its neuron's top-k images")
    ev.add_argument("run")
    ev.add_argument("--evaluators", default="cp,es,contrast", help="comma-separated: cp,es,vqa,contrast")
    image_text_options(ev, "eval", "CP/ES/contrast")
    ev.add_argument(
        "--eval-image-size",
        type=int_in(16, 4096),
        default=128,
        help="images are shown at this size first (paper: 128)",
    )
    ev.add_argument("--vqa-model", default="Salesforce/blip2-opt-2.7b", help="BLIP-2 hub id (local cache) or folder")
    ev.add_argument("--prompt", default=DEFAULT_PROMPT, help="the VQA question; must contain {label}")
    ev.add_argument("--k", type=int_in(1, 1000), default=5)
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
    threshold_options(ev)

    c = add("calibrate", help="fit an evaluator's threshold to a rater on part of the neurons")
    c.add_argument("run")
    c.add_argument("--evaluator", required=True, choices=["cp", "es", "vqa", "contrast"])
    c.add_argument("--rater", required=True)
    c.add_argument("--fit-fraction", type=fraction, default=0.5)
    c.add_argument("--seed", type=int_in(0, 2**32 - 1), default=0, help="seed of the random splits")
    c.set_defaults(func=cmd_calibrate)
