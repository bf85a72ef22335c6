"""Agreement between raters and evaluators: Cohen's kappa over all pairs (the paper's Table 4),
agreement per layer and pooled against a reference (Table 1), Jaccard, confusion matrices, F1."""

import pandas as pd
import streamlit as st

from clipeval.analysis import intervals, metrics
from clipeval.render import charts
from clipeval.render import tables as tables_mod
from clipeval.ui import data, widgets

ctx = widgets.run_page("Agreement")

view = data.run_view(ctx.run_id)
k = min(ctx.k, view.kmax) if view.available else ctx.k
raters = (
    view.rater_verdicts(ctx.thresholds, k)
    if view.available
    else {view.rater_label(r): v for r, v in view.humans.items()}
)
for e in widgets.EVALUATOR_ORDER:
    if e not in view.available:
        st.caption(f":orange[{widgets.evaluator_note(ctx, e)}]")
st.info(
    '**On names.** The paper reports an "IoU" between evaluator and human, but its published values match '
    "plain **agreement**: the share of neurons on which two raters give the same verdict. That is what this "
    'page calls agreement. The Jaccard index of the two raters\' "correct" sets (|A ∩ B| / |A ∪ B|) is shown '
    "separately under its own name.",
    icon=":material/info:",
)
if len(raters) < 2:
    st.warning(
        "Agreement needs at least two raters (evaluators or humans) on this run. Judge neurons on the "
        "Annotate page, or run more evaluators."
    )
    st.stop()
if not view.humans:
    st.caption(
        "No reference rater for this run yet: only the evaluators are compared with each other. Add human "
        "verdicts on the Annotate page or with `clipeval humans import`."
    )
elif not view.human_labels:
    st.caption(
        "No human verdicts for this run yet: the only reference here is automatic ("
        + ", ".join(view.automatic_labels)
        + "), computed from ground truth, not by a person."
    )

# ---------------------------------------------------------------- kappa matrix
st.subheader("Cohen's kappa between every pair")
matrix = data.kappa_intervals(ctx.run_id, ctx.thresholds, k)
widgets.chart(
    charts.kappa_heatmap(matrix["kappa"], matrix["n"], matrix["lo"], matrix["hi"], intervals.MIN_N),
    pd.concat({m: matrix[m].rename_axis("rater A").stack() for m in ("kappa", "lo", "hi", "n")}, axis=1)
    .rename_axis(["rater A", "rater B"])
    .reset_index(),
    "kappa_pairs",
)
st.caption(
    f"Each cell: kappa, its 95% interval (bootstrap over neurons) and n, the neurons both raters judged. "
    f"Grey cells: fewer than {intervals.MIN_N} neurons, too few to read. Evaluator verdicts at the sidebar's "
    f"thresholds ({widgets.thresholds_caption(ctx)}). Kappa is n/a where it is undefined (e.g. both raters "
    "say 'correct' for every neuron). " + widgets.glossary_link("kappa") + " · " + widgets.glossary_link("intervals")
)

# ---------------------------------------------------------------- per layer against a reference
st.subheader("Against a reference, per layer and pooled")
names = list(raters)
# the reference rater who judged the most neurons (people first among equals), as the Thresholds page and the report
default_ref = view.reference_rater() if view.reference_rater() in names else names[0]
c = st.columns([1, 1.6])
reference = c[0].selectbox(
    "Reference rater",
    names,
    index=names.index(default_ref),
    key="agree_ref",
    help="Usually a reference rater (a person, or an automatic reference marked as such); "
    "every other rater is compared with it. " + widgets.glossary_link("reference"),
)
others = [n for n in names if n != reference]
tables = data.pairwise_intervals(ctx.run_id, ctx.thresholds, k, reference)
measure = (
    c[1].segmented_control("Measure per layer", list(intervals.MEASURES), default="agreement", key="agree_measure")
    or "agreement"
)
layer_order = [*data.layers(ctx.run_id)["layer"], "overall"]
text, small = tables_mod.measure_by_layer_ci(tables, measure, layer_order)
shown = text.rename_axis(f"{measure} vs {reference}").reset_index()
# a row per rater, a column per layer: a static table shows every layer (and loads no grid into the first view)
widgets.table(shown, muted=small.reset_index(drop=True))
st.caption(
    f"Each cell: the {measure}, its 95% interval (bootstrap over neurons) and n, the neurons both judged; "
    f"grey: fewer than {intervals.MIN_N} neurons, too few to read. 'overall' pools all compared neurons (not "
    "the mean of the layers). Precision, recall and F1 treat the reference as the truth and 'correct' as the "
    "positive class. " + widgets.glossary_link("intervals")
)
every = st.expander("Every measure, every layer", key="agree_every", on_change="rerun")
if every.open:  # drawn when opened: the page's only grid
    long = tables_mod.stack_pairwise(tables)
    every.dataframe(
        long[["rater", "layer", "n", *[c for m in intervals.MEASURES for c in (m, f"{m} lo", f"{m} hi")]]],
        hide_index=True,
        width="stretch",
        column_config={
            **{
                c: st.column_config.NumberColumn(format="%.3f")
                for c in long.columns
                if c.split(" ")[0] in intervals.MEASURES
            },
            "rater": st.column_config.TextColumn("rater", pinned=True),
            "layer": st.column_config.TextColumn("layer", pinned=True),
        },
    )

# ---------------------------------------------------------------- one pair in detail
st.subheader("One pair in detail")
rater = st.columns([1, 1.6])[0].selectbox("Rater", others, key="agree_rater")
pair = metrics.align({"a": raters[rater], "b": raters[reference]})
c = widgets.side_by_side("agreement")
with c[0]:
    conf = metrics.confusion(pair["a"], pair["b"]).rename(
        index={"evaluator yes": "correct", "evaluator no": "not correct"},
        columns={"reference yes": "correct", "reference no": "not correct"},
    )
    st.markdown(f"**Confusion matrix**: rows {rater}, columns {reference}")
    widgets.chart(
        charts.confusion_heatmap(conf, rater, reference),
        conf.rename_axis(rater).reset_index(),
        "confusion",
    )
with c[1]:
    overall = tables[rater].set_index("layer").loc["overall"]
    for row_measures in (("agreement", "kappa", "jaccard"), ("precision", "recall", "f1")):
        m = st.columns(3)
        for col, name in zip(m, row_measures):
            f = intervals.figure(overall, name)
            col.metric(
                name.capitalize() if name != "kappa" else "Cohen's kappa",
                widgets.fmt_pct(f.value) if f.percent else widgets.fmt_num(f.value),
                f"95% {f.fmt(f.lo)} to {f.fmt(f.hi)}" if pd.notna(f.lo) else "interval n/a",
                delta_color="off",
                delta_arrow="off",
            )
    n = int(overall["n"])
    if n < intervals.MIN_N:
        st.warning(
            f"Only {n} neurons judged by both: fewer than {intervals.MIN_N}, so these figures can move a lot "
            "with a few more verdicts."
        )
    else:
        st.caption(f"{n} neurons judged by both; 95% intervals from a bootstrap over them.")
