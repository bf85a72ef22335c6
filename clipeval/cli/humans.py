"""`humans`: import or export human yes/no verdicts."""

from __future__ import annotations

from clipeval.cli.options import open_store, out_file
from clipeval.errors import check_path

# Imported inside the functions that use them: the verdicts' reader and writer: `clipeval runs` or `--help` must answer in a second, not load torch.


def cmd_humans(args) -> int:
    from clipeval.analysis.humans import export_human, import_human

    if args.action == "export":
        out_file(args.file)
    else:
        check_path(args.file, "verdicts file", "read")
    store = open_store(args, read_only=args.action == "export")
    if args.action == "import":
        n = import_human(store, args.run, args.file, rater=args.rater, replace=args.replace)
        print(f"stored {n} verdicts")
    else:
        print(export_human(store, args.run, args.file))
    return 0


def register(add) -> None:
    """Add this module's subcommands (`add(name, **kw)` makes a subparser with the shared options)."""
    h = add("humans", help="import or export human yes/no verdicts (layer,unit,verdict[,rater])")
    h.add_argument("action", choices=["import", "export"])
    h.add_argument("run")
    h.add_argument("file")
    h.add_argument("--rater", help="rater name for a CSV without a rater column")
    h.add_argument("--replace", action="store_true", help="allow new verdicts that differ from a rater's earlier ones")
    h.set_defaults(func=cmd_humans)
