"""Options and argument checks shared by the subcommands (argparse types exit 2 naming the option,
before any work)."""

from __future__ import annotations

import argparse
from pathlib import Path

from clipeval.config import DEFAULT_BATCH, DEVICE_CHOICES, DTYPE_CHOICES
from clipeval.errors import ClipevalError, check_path

# Imported inside the functions that use them: the store, the models' configs, the compute placement and the rules: `clipeval runs` or `--help` must answer in a second, not load torch.


def int_in(lo: int, hi: int):
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


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def out_file(path: str) -> Path:
    """An output file path that can be written (before any work); missing folders are made, as the
    exports always did."""
    return check_path(path, "output file", "write", new_folders=True)


def open_store(args, read_only: bool = False, create: bool = False):
    """The run store of --db; a writer's is first checked to be writable where it lies (the store's
    folder too: DuckDB writes its log beside the file). Only commands that make runs (`create`) may make
    a new store file, and then only at their first store access, after their own checks."""
    from clipeval.store import Store

    if not read_only:
        check_path(args.db, "run store", "write", new_folders=True)
    return Store(args.db, read_only=read_only, create=create)


def image_text_config(args, prefix: str):
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


def sim_params(pairs: list[str]) -> tuple:
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


def placement_of(args):
    """The command's one device decision (checked before any work): --device and --dtype resolved
    (with --engine ray: this process's, on its CPU; the workers' device comes from --gpus-per-worker)."""
    from clipeval.compute.device import Placement
    from clipeval.compute.engine import driver_device_and_dtype

    engine = engine_of(args) if hasattr(args, "engine") else None
    device, dtype = driver_device_and_dtype(engine, args.device, args.dtype) if engine else (args.device, args.dtype)
    return Placement.resolve(device, dtype)


def engine_of(args):
    """--engine and its options, checked before any work."""
    from clipeval.compute.engine import engine_from_args

    return engine_from_args(args)


def thresholds_given(args) -> dict[str, float]:
    """The thresholds given on the command line; the others come from each evaluator model's defaults."""
    from clipeval.evaluators.rules import RULES

    return {
        e: rule.check(getattr(args, rule.param))
        for e, rule in RULES.items()
        if getattr(args, rule.param, None) is not None
    }


def device_options(sp, batch_help: str = "images per forward pass"):
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
        type=int_in(1, 65536),
        default=None,
        help=f"{batch_help} (default per device: CPU {DEFAULT_BATCH['cpu']}, the fastest on 2 cores "
        f"in bench/bench_dissect.py; CUDA {DEFAULT_BATCH['cuda']}, halved on out-of-memory)",
    )
    sp.add_argument(
        "--workers",
        type=int_in(0, 4096),
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
    sp.add_argument(f"--{prefix}-backend", choices=["open_clip", "conse"], default=None, help=f"{what} model backend")
    sp.add_argument(
        f"--{prefix}-arch", help="open_clip architecture (ViT-B-16) or ConSE classifier (efficientnet_lite1)"
    )
    sp.add_argument(f"--{prefix}-pretrained", help="open_clip pretrained tag or local checkpoint path")


def threshold_options(q):
    from clipeval.evaluators.rules import RULES

    for rule in RULES.values():
        q.add_argument(
            f"--{rule.param}",
            type=float,
            help=f"{rule.title} (default: the evaluator model's own; the paper's CLIP value is {rule.default:g})",
        )
