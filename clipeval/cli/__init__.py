"""`clipeval ...` / `python -m clipeval ...`: dissect, evaluate, inspect, import and export runs.

Each subcommand's parser sits beside its command, one module per concern: dissect (dissect,
import-descriptions), evaluate (evaluate, calibrate), report, sources, humans, runs (layers, runs, rm,
export), app (demo, app); options holds what they share."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from clipeval.cli import app, dissect, evaluate, humans, report, runs, sources
from clipeval.cli.options import int_in
from clipeval.cli.report import print_report
from clipeval.errors import ClipevalError

# Imported inside the functions that use them: torch (for --threads) and the store's default path:
# `clipeval runs` or `--help` must answer in a second, not load torch.

__all__ = ["build_parser", "main", "print_report"]
COMMAND_MODULES = (dissect, runs, evaluate, report, humans, sources, app)  # the order `--help` lists them in


def build_parser() -> argparse.ArgumentParser:
    from clipeval.store import DEFAULT_DB

    p = argparse.ArgumentParser(prog="clipeval", description=__doc__.split("\n\n")[0])

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
            type=int_in(1, 4096),
            default=None if default else argparse.SUPPRESS,
            help="torch threads (default: one per core; on a busy machine 1 can be faster)",
        )

    common_options(p, default=True)
    shared = argparse.ArgumentParser(add_help=False)
    common_options(shared, default=False)
    sub = p.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(lambda name, **kw: sub.add_parser(name, parents=[shared], **kw))
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
