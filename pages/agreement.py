"""Agreement between raters and evaluators: Cohen's kappa over all pairs (the paper's Table 4),
agreement per layer and pooled against a reference (Table 1), Jaccard, confusion matrices, F1."""

import streamlit as st

from clipeval import metrics
from clipeval.ui import charts, data, widgets
from clipeval.ui import tables as tables_mod

ctx = widgets.run_page("Agreement")

view = data.run_view(ctx.run_id)
k = min(ctx.k, view.kmax) if view.available else ctx.k
raters = view.rater_verdicts(ctx.thresholds, k) if view.available else \
    {view.rater_label(r): v for r, v in view.humans.items()}
for e in widgets.EVALUATOR_ORDER:
    if e not in view.available:
        st.caption(f":orange[{widgets.evaluator_note(ctx, e)}]")
st.info("**On names.** The paper reports an \"IoU\" between evaluator and human, but its published values match "
        "plain **agreement**: the share of neurons on which two raters give the same verdict. That is what this "
        "page calls agreement. The Jaccard index of the two raters' \"correct\" sets (|A ∩ B| / |A ∪ B|) is shown "
        "separately under its own name.", icon=":material/info:")
if len(raters) < 2:
    st.warning("Agreement needs at least two raters (evaluators or humans) on this run. Judge neurons on the "
               "Annotate page, or run more evaluators.")
    st.stop()
if not view.humans:
    st.caption("No human verdicts for this run yet: only the evaluators are compared with each other. Add human "
               "verdicts on the Annotate page or with `clipeval humans import`.")

# ---------------------------------------------------------------- kappa matrix
st.subheader("Cohen's kappa between every pair")
st.plotly_chart(charts.kappa_heatmap(metrics.kappa_matrix(raters)), width="stretch", key="kappa")
st.caption(f"Each pair over the neurons both judged; evaluator verdicts at the sidebar's thresholds "
           f"({widgets.thresholds_caption(ctx)}). Kappa is n/a where it is undefined (e.g. both raters say "
           "'correct' for every neuron).")

# ---------------------------------------------------------------- per layer against a reference
st.subheader("Against a reference, per layer and pooled")
names = list(raters)
default_ref = next((n for n in names if n in view.rater_labels), names[0])
c = st.columns([1, 1.6])
reference = c[0].selectbox("Reference rater", names, index=names.index(default_ref), key="agree_ref",
                           help="Usually a human rater; every other rater is compared with it.")
others = [n for n in names if n != reference]
tables = {o: metrics.pairwise_table(raters[o], raters[reference]) for o in others}
measure = c[1].segmented_control("Measure per layer", ["agreement", "kappa", "jaccard", "f1", "precision", "recall"],
                               default="agreement", key="agree_measure") or "agreement"
layer_order = [*data.layers(ctx.run_id)["layer"], "overall"]
by_layer = tables_mod.measure_by_layer(tables, measure, layer_order)
shown = by_layer.rename_axis(f"vs {reference}").reset_index()
value_cols = [c for c in by_layer.columns if c != "neurons compared"]
if measure in ("agreement", "jaccard", "precision", "recall"):
    shown, config = widgets.as_percent(shown, value_cols)
else:
    config = {c: st.column_config.NumberColumn(format="%.3f") for c in value_cols}
st.dataframe(shown, hide_index=True, width="stretch", column_config=config)
st.caption("'overall' pools all compared neurons (not the mean of the layers). Precision, recall and F1 treat "
           "the reference as the truth and 'correct' as the positive class.")
with st.expander("Every measure, every layer"):
    long = tables_mod.stack_pairwise(tables)
    st.dataframe(long[["rater", "layer", "n", "agreement", "jaccard", "kappa", "precision", "recall", "f1"]],
                 hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.3f")
                                for c in ("agreement", "jaccard", "kappa", "precision", "recall", "f1")})

# ---------------------------------------------------------------- one pair in detail
st.subheader("One pair in detail")
rater = st.columns([1, 1.6])[0].selectbox("Rater", others, key="agree_rater")
pair = metrics.align({"a": raters[rater], "b": raters[reference]})
c = st.columns([1.2, 1])
with c[0]:
    conf = metrics.confusion(pair["a"], pair["b"]).rename(
        index={"evaluator yes": "correct", "evaluator no": "not correct"},
        columns={"reference yes": "correct", "reference no": "not correct"})
    st.markdown(f"**Confusion matrix**: rows {rater}, columns {reference}")
    st.plotly_chart(charts.confusion_heatmap(conf, rater, reference), width="stretch", key="confusion")
with c[1]:
    overall = tables[rater].set_index("layer").loc["overall"]
    m = st.columns(3)
    m[0].metric("Agreement", widgets.fmt_pct(overall["agreement"]))
    m[1].metric("Cohen's kappa", widgets.fmt_num(overall["kappa"]))
    m[2].metric("Jaccard", widgets.fmt_num(overall["jaccard"]))
    m = st.columns(3)
    m[0].metric("Precision", widgets.fmt_num(overall["precision"]))
    m[1].metric("Recall", widgets.fmt_num(overall["recall"]))
    m[2].metric("F1", widgets.fmt_num(overall["f1"]))
    st.caption(f"{int(overall['n'])} neurons judged by both.")
