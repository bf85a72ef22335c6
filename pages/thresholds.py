"""Thresholds: how the share judged correct, and agreement with a reference rater, move with each
evaluator's threshold, per layer (the paper's Figure 3); and calibrating a threshold to human labels."""

import pandas as pd
import streamlit as st

from clipeval.analysis import headlines, intervals, sweeps
from clipeval.errors import ClipevalError
from clipeval.evaluators import thresholds
from clipeval.evaluators.judges import PAPER_THRESHOLDS
from clipeval.evaluators.rules import RULES
from clipeval.formats import bracket, percent
from clipeval.render import charts
from clipeval.ui import data, widgets

ctx = widgets.run_page("Thresholds")

view = data.run_view(ctx.run_id)
available = [e for e in widgets.EVALUATOR_ORDER if e in view.available]
raters = view.rater_labels
st.markdown(
    "Move each threshold beside its chart (or in the sidebar): every page follows it, and the red line marks "
    "the current value. Everything here is recomputed from the stored raw scores; no model runs."
)
for e in widgets.EVALUATOR_ORDER:
    if e not in available:
        st.caption(f":orange[{widgets.evaluator_note(ctx, e)}]")
if not available:
    st.info(f"No evaluator has scored this run yet: `clipeval evaluate {ctx.run_id} --evaluators cp,es,contrast`.")
    st.stop()

c = st.columns([1.5, 1, 1])
reference = c[0].selectbox(
    "Reference rater for agreement",
    [*raters, "none"],
    index=raters.index(view.reference_rater()) if raters else 0,  # the one who judged the most neurons
    key="ref",
    bind="query-params",
    help="Agreement and Cohen's kappa of each evaluator's verdicts with this reference rater (a "
    "person, or an automatic reference marked 'automatic'), over the neurons it judged. "
    + widgets.glossary_link("reference"),
)
metric = (
    c[1].segmented_control("Agreement measure", ["kappa", "agreement"], default="kappa", key="sweep_metric") or "kappa"
)
baselines = c[2].toggle(
    "Draw the baselines",
    value=True,
    key="sweep_baselines",
    help="The same evaluator on shuffled labels (dashed) and on one constant label (dotted), pooled over all layers.",
)
if not raters:
    st.caption(
        "No reference rater for this run yet, so only the share judged correct is drawn. Add human "
        "verdicts on the Annotate page or with `clipeval humans import`."
    )
ref = None if reference == "none" else reference
k = min(ctx.k, view.kmax)

for e in available:
    rule = RULES[e]
    st.subheader(rule.title)
    lo, hi = sweeps.default_range(view, e, ctx.thresholds[e])
    bounds = sweeps.slider_bounds(e, lo, hi)
    chosen = st.session_state.get(f"range_{e}")
    if chosen is not None and tuple(chosen) != sweeps.clamp_range(chosen, bounds):
        st.session_state[f"range_{e}"] = sweeps.clamp_range(chosen, bounds)  # keep a zoom inside moved ends
    lo, hi = st.slider(
        f"{rule.param} range shown",
        *bounds,
        (lo, hi),
        rule.step,
        format=thresholds.printf(e),
        key=f"range_{e}",
        help="Zoom the x axis; the sweep covers this range in 101 steps.",
    )
    sweep = data.sweep(ctx.run_id, e, lo, hi, k, ref)
    if view.defaults[e].note:
        st.caption(f"Default: {view.defaults[e].note}. The dashed grey line marks the paper's value.")
    # two charts side by side when wide, stacked at 800 px; one alone takes the page's width
    cols = widgets.side_by_side(f"sweep-{e}") if ref else [st.container()]
    widgets.threshold_control(ctx, e, cols[0], mirror="page")  # the sidebar's threshold, beside its chart
    head = headlines.share_headline(view, e, ctx.thresholds[e], k)
    cols[0].markdown(
        f"**Share judged correct** at {thresholds.label(e, ctx.thresholds[e])}: "
        f"{percent(head.real)} of {head.n:,} neurons ({head.baseline_text()})"
    )
    if head.warning():
        cols[0].warning(head.warning(), icon=":material/warning:")
    widgets.chart(
        charts.sweep_figure(
            sweep,
            rule.param,
            ctx.thresholds[e],
            "share_correct",
            baselines,
            thresholds.fmt(e, ctx.thresholds[e]),
            paper=PAPER_THRESHOLDS[e],
            title=f"{widgets.title(e)}: share judged correct against {rule.param}, per layer",
        ),
        sweep.drop(columns=[c for c in ("agreement", "kappa") if c in sweep]),
        f"sweep_share_{e}",
        where=cols[0],
    )
    if ref:
        if metric in sweep and sweep[metric].notna().any():
            n_ref = int(sweep["n_reference"].dropna().max()) if "n_reference" in sweep else 0
            cols[1].markdown(f"**{metric.capitalize()} with {ref}** over the {n_ref} neurons they judged")
            if n_ref < intervals.MIN_N:
                cols[1].warning(
                    f"Only {n_ref} neurons: fewer than {intervals.MIN_N}, so this curve can move a lot with a few "
                    "more verdicts.",
                    icon=":material/warning:",
                )
            widgets.chart(
                charts.sweep_figure(
                    sweep,
                    rule.param,
                    ctx.thresholds[e],
                    metric,
                    False,
                    thresholds.fmt(e, ctx.thresholds[e]),
                    paper=PAPER_THRESHOLDS[e],
                    title=f"{widgets.title(e)}: {metric} with {ref} against {rule.param}, per layer",
                ),
                sweep,
                f"sweep_{metric}_{e}",
                where=cols[1],
            )
        else:
            cols[1].info(f"{ref} judged none of this run's neurons that {widgets.title(e)} scored.")

# ---------------------------------------------------------------- calibration
st.subheader("Calibrate a threshold to a reference rater")
st.markdown(
    "Fits the threshold that maximises Cohen's kappa with a reference rater on a random part of the "
    "neurons that rater judged, and reports agreement and kappa on the **held-out** rest."
)
if not raters:
    st.info(
        "Calibration needs a reference rater: judge some neurons on the Annotate page, or import a CSV with "
        "`clipeval humans import`."
    )
    st.stop()
c = st.columns(4)
cal_eval = c[0].selectbox("Evaluator", available, format_func=widgets.title, key="cal_evaluator")
cal_rater = c[1].selectbox(
    "Reference rater",
    raters,
    key="cal_rater",
    help="People are marked 'human', references computed from ground truth 'automatic'.",
)
fit_fraction = c[2].slider("Share of neurons used to fit", 0.2, 0.8, 0.5, 0.05, key="cal_fraction")
seed = c[3].number_input("Random split seed", 0, 10_000, 0, key="cal_seed")


def _apply(param: str, value: float) -> None:
    st.session_state[param] = value  # the sidebar widget of that threshold (and the URL) take it


def _calibrate(evaluator: str, rater: str, fraction: float, seed_: int, k_: int) -> None:
    try:
        result = view.calibrate(evaluator, rater, fraction, seed_, k_)
    except ClipevalError as err:
        st.session_state.pop("calibration", None)
        st.session_state["calibration_error"] = str(err)
    else:
        st.session_state.pop("calibration_error", None)
        st.session_state["calibration"] = {**result, "run_id": ctx.run_id, "k": k_}


st.button(
    "Calibrate",
    type="primary",
    icon=":material/auto_fix:",
    key="calibrate",
    on_click=_calibrate,
    args=(cal_eval, cal_rater, fit_fraction, int(seed), k),
)
if st.session_state.get("calibration_error"):
    st.error(st.session_state["calibration_error"])
result = st.session_state.get("calibration")
if result and result.get("run_id") == ctx.run_id:
    e, rule = result["evaluator"], RULES[result["evaluator"]]
    if view.is_automatic(result["rater"]):
        st.caption(f"{result['rater']} is an automatic reference computed from ground truth, not a person.")
    st.markdown(
        f"**{widgets.title(e)} calibrated to {view.rater_label(result['rater'])}** (k = {result['k']}, "
        f"fit on {result['n_fit']} neurons, tested on {result['n_test']} held-out neurons)"
    )
    m = st.columns(5)
    m[0].metric(
        f"Fitted {rule.param}",
        thresholds.fmt(e, result["threshold"]),
        f"current {thresholds.fmt(e, ctx.thresholds[e])}",
        delta_color="off",
        delta_arrow="off",
    )
    m[1].metric("Kappa on the fit part", widgets.fmt_num(result["fit_kappa"], 3))
    m[2].metric("Held-out agreement", widgets.fmt_pct(result["test_agreement"]))
    klo, khi = result["test_kappa_interval"]
    m[3].metric(
        "Held-out kappa",
        widgets.fmt_num(result["test_kappa"], 3),
        f"95% {bracket(klo, khi, '.3f')}, n = {result['n_test']}" if pd.notna(klo) else "interval n/a",
        delta_color="off",
        delta_arrow="off",
        help="Cohen's kappa on the held-out neurons, with its 95% bootstrap interval over them. "
        + widgets.glossary_link("kappa"),
    )
    fitted_head = headlines.share_headline(view, e, float(result["threshold"]), result["k"])
    m[4].metric(
        "Held-out share judged correct",
        widgets.fmt_pct(result["test_share_correct"]),
        f"all neurons at the fitted value: {fitted_head.baseline_text()}",
        delta_color="off",
        delta_arrow="off",
    )
    if intervals.near_chance(result["test_kappa"], klo):
        st.warning(
            f"Near chance: held-out kappa {widgets.fmt_num(result['test_kappa'], 3)} "
            f"{bracket(klo, khi, '.3f') if pd.notna(klo) else '(interval n/a)'} is below "
            f"{intervals.NEAR_CHANCE_KAPPA} or its interval reaches 0, so the fitted {rule.param} agrees with "
            f"{view.rater_label(result['rater'])} hardly better than chance. Do not read it as calibrated.",
            icon=":material/warning:",
        )
    if result["n_test"] < intervals.MIN_N:
        st.warning(
            f"Only {result['n_test']} held-out neurons: fewer than {intervals.MIN_N}, so these figures can move a "
            "lot with a few more verdicts.",
            icon=":material/warning:",
        )
    st.button(
        f"Apply {thresholds.label(e, result['threshold'])}",
        on_click=_apply,
        args=(rule.param, float(result["threshold"])),
        icon=":material/check:",
        key="apply_calibration",
        disabled=abs(ctx.thresholds[e] - result["threshold"]) < 1e-12,
        help="Sets the sidebar threshold (and so every page and the URL) to the fitted value.",
    )
