"""`report`: a run's share judged correct per layer beside its baselines, and agreement with raters;
printed, or one self-contained HTML file."""

from __future__ import annotations

from clipeval.cli.options import int_in, open_store, threshold_options, thresholds_given
from clipeval.errors import ClipevalError

# Imported inside the functions that use them: the run view and the HTML report: `clipeval runs` or `--help` must answer in a second, not load torch.


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
        thresholds = thresholds_given(args)
        store = open_store(args, read_only=True)
        path = write_report(store, args.run, args.html, thresholds, args.k, args.units)
        print(f"{path}  ({path.stat().st_size / 1e6:.1f} MB, self-contained: open it in any browser, offline)")
        return 0
    thresholds = thresholds_given(args)  # refused before the store is opened
    print_report(open_store(args, read_only=True), args.run, thresholds, args.k)
    return 0


def register(add) -> None:
    """Add this module's subcommands (`add(name, **kw)` makes a subparser with the shared options)."""
    rp = add("report", help="share judged correct per layer beside the baselines, and agreement with raters")
    rp.add_argument("run")
    rp.add_argument("--k", type=int_in(1, 1000), help="top images judged (default: all stored)")
    rp.add_argument(
        "--html",
        metavar="OUT.html",
        help="write one self-contained HTML report (images, plotly.js and the charts inside; opens offline) instead of printing",
    )
    rp.add_argument(
        "--units",
        type=int_in(1, 1_000_000),
        metavar="N",
        help="HTML: show the first N units of each layer (default all)",
    )
    threshold_options(rp)
    rp.set_defaults(func=cmd_report)
