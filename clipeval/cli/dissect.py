"""Make a run: `dissect` (CLIP-Dissect on a target's layers) and `import-descriptions` (labels made by
the original CLIP-Dissect, with activations collected when a probe is given)."""

from __future__ import annotations

from clipeval.cli.options import (
    device_options,
    engine_of,
    engine_options,
    image_text_config,
    image_text_options,
    int_in,
    open_store,
    placement_of,
    sim_params,
)
from clipeval.config import SIMILARITY_DEFAULTS
from clipeval.errors import ClipevalError

# Imported inside the functions that use them: the configs, the pipeline and the models: `clipeval runs` or `--help` must answer in a second, not load torch.


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

    placement = placement_of(args)
    engine = engine_of(args)
    config = DissectConfig(
        target=TargetConfig(args.target, args.weights),
        layers=tuple(l.strip() for l in args.layers.split(",") if l.strip()),
        pooling=args.pooling,
        probe=ProbeConfig(tuple(args.probe), args.on_bad_image),
        concepts=ConceptConfig(args.concepts),
        image_text=image_text_config(args, "clip") or ImageTextConfig(),
        similarity=SimilarityConfig(args.similarity, sim_params(args.sim_param)),
        k=args.k,
        dtype=placement.dtype_name,
    )
    store = open_store(args, create=True)
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


def cmd_import(args) -> int:
    from clipeval.dissect.descriptions import import_descriptions

    placement = placement_of(args) if args.target else None  # models run only to collect activations
    engine = engine_of(args)
    if engine.is_ray and not args.target:
        raise ClipevalError("--engine ray runs the activation pass, which needs --target and --probe")
    store = open_store(args, create=True)
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


def register(add) -> None:
    """Add this module's subcommands (`add(name, **kw)` makes a subparser with the shared options)."""
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
    d.add_argument("--k", type=int_in(1, 1000), default=5, help="top-k activating images stored per neuron")
    d.add_argument("--name", help="a readable name for the run")
    d.add_argument("--force", action="store_true", help="recompute even if a complete run has these settings")
    device_options(d)
    engine_options(d)
    d.set_defaults(func=cmd_dissect)

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
