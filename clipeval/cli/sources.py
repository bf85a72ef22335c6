"""`sources`: other labellers' labels on a run's units (runs, CLIP-Dissect, MILAN, NetDissect), added,
listed, judged by the run's evaluators, or removed."""

from __future__ import annotations

from clipeval.cli.options import open_store
from clipeval.errors import ClipevalError

# Imported inside the functions that use them: the label sources and their evaluators: `clipeval runs` or `--help` must answer in a second, not load torch.


def cmd_sources(args) -> int:
    """Other labellers' labels on a run's units: add (and judge), list, evaluate, remove."""
    from clipeval.evaluators import sources

    store = open_store(args, read_only=args.action == "list")
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


def register(add) -> None:
    """Add this module's subcommands (`add(name, **kw)` makes a subparser with the shared options)."""
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
