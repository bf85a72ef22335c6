"""Look at and manage the store's runs: `layers`, `runs`, `rm`, `export`."""

from __future__ import annotations

import sys

from clipeval.cli.options import open_store, out_file
from clipeval.errors import ClipevalError

# Imported inside the functions that use them: the target models (torch) and the descriptions exporter: `clipeval runs` or `--help` must answer in a second, not load torch.


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
    store = open_store(args, read_only=True)
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
    store = open_store(args)
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

    out = out_file(args.out)
    store = open_store(args, read_only=True)
    path = export_descriptions(store, args.run, out)
    print(path)
    return 0


def register(add) -> None:
    """Add this module's subcommands (`add(name, **kw)` makes a subparser with the shared options)."""
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
