"""Layer overview: per layer, the share of labels each evaluator judges correct beside its baselines,
the interpretable units, a sortable and filterable unit grid, and the most frequent labels."""

import streamlit as st

from clipeval.analysis import headlines, intervals
from clipeval.render import charts, tables
from clipeval.ui import data, widgets

ctx = widgets.run_page("Layer overview")

view = data.run_view(ctx.run_id)
layers = data.layers(ctx.run_id)
layer_names = list(layers["layer"])
available = [e for e in widgets.EVALUATOR_ORDER if e in view.available]
k = min(ctx.k, view.kmax) if available else ctx.k

# ---------------------------------------------------------------- shares beside baselines
st.subheader("Share of labels judged correct, per layer")
if not available:
    st.info(
        "No evaluator has scored this run yet, so there are no verdicts to summarise. Run "
        f"`clipeval evaluate {ctx.run_id} --evaluators cp,es,contrast`."
    )
else:
    summary = view.layer_summary(ctx.thresholds, k)
    widgets.chart(charts.layer_shares(summary, layer_names), summary, "layer_shares")
    st.caption(
        f"Bars: the run's real labels; grey markers: the same evaluator on labels shuffled across neurons "
        f"(×) and on one constant label for every neuron (–). An evaluator that passes shuffled or constant "
        f"labels nearly as often as real ones tells real labels from wrong ones poorly. "
        f"'overall' pools all neurons (not the mean of the layers). {widgets.thresholds_caption(ctx)}."
    )
    widgets.caveats(
        [widgets.evaluator_note(ctx, e) for e in widgets.EVALUATOR_ORDER if e not in available]
        + widgets.judge_caveats(view)
    )
    table = tables.summary_table(summary, layer_names)
    # a row per layer: a static table shows every evaluator's column; the unit grid below is the page's grid
    real = [c for c in table.columns if c in set(summary["evaluator"])]
    text, small = tables.share_texts(table, dict.fromkeys(real, table["neurons"]))
    widgets.table(text, muted=small)
    st.caption(
        "Each evaluator's share of the real labels with its 95% Wilson interval over the layer's neurons (as the "
        f"HTML report gives it); grey: fewer than {intervals.MIN_N} neurons, too few to read."
    )
    few = table.loc[table["neurons"] < intervals.MIN_N, "layer"].tolist()
    if few:
        st.warning(
            f"{', '.join(few)}: fewer than {intervals.MIN_N} neurons, so the share can move a lot with a few more "
            "neurons; read its interval.",
            icon=":material/warning:",
        )
    for h in headlines.headlines(summary).values():
        if h.warning():
            st.warning(h.warning(), icon=":material/warning:")

# ---------------------------------------------------------------- interpretable units
st.subheader("Interpretable units")
chosen = st.multiselect(
    "Evaluators that must all agree",
    available,
    default=available,
    format_func=widgets.title,
    key="interp_evaluators",
    help="Only evaluators that scored this run can be chosen.",
)
st.markdown(
    "**Definition used here:** a unit is *interpretable* when **every chosen evaluator** judges its CLIP-Dissect "
    f"label correct (any of its top-{k} images matches the label at the current thresholds). Reference "
    "raters are not part of it; their verdicts (human or automatic, as marked) appear as columns in the grid below."
)
if available and chosen:
    per_layer = headlines.interpretable_shares(view, ctx.thresholds, k, chosen, layer_names)
    cols = st.columns(min(len(per_layer), 6))
    for col, row in zip(cols * (len(per_layer) // len(cols) + 1), per_layer.to_dict("records")):
        col.metric(
            row["layer"],
            widgets.fmt_pct(row["share"]),
            help="Below the share: the share of units whose shuffled (or constant) label every chosen "
            "evaluator also judges correct. " + widgets.glossary_link("interpretable"),
        )
        col.caption(
            f"{row['interpretable']:,} of {row['neurons']:,} units  \n"
            + headlines.baseline_delta(row).replace(" · ", "  \n")
        )
elif available:
    st.info("Choose at least one evaluator.")

# ---------------------------------------------------------------- unit grid
# one layer at a time: the run's every unit (100k rows at scale) took seconds to build and send on each rerun;
# the browser still sorts the whole layer
st.subheader("Unit grid")
f = st.columns([1.2, 1.6, 2])
grid_layer = f[0].selectbox("Layer", layer_names, key="grid_layer", bind="query-params")
if available:
    grid = tables.unit_grid(view, ctx.thresholds, k, chosen, grid_layer)
else:
    grid = data.neurons(ctx.run_id, grid_layer).assign(**{tables.INTERPRETABLE: False})
text = f[1].text_input("Label contains", key="grid_text")
show = (
    f[2].segmented_control("Show units", ["all", "interpretable", "not interpretable"], default="all", key="grid_show")
    or "all"
)
shown = tables.filter_grid(grid, None, text, show)
kmax = data.top_k(ctx.run_id)
shown = shown.assign(open=tables.neuron_links(ctx.run_id, shown["layer"], shown["unit"], ctx.thresholds, ctx.k, kmax))
# the unit's identity stays in view while a narrow window scrolls the verdict columns sideways
config = {
    "open": st.column_config.LinkColumn(
        "neuron",
        display_text="open",
        width="small",
        pinned=True,
        help="Open this neuron in the neuron explorer (new tab)",
    ),
    "layer": st.column_config.TextColumn("layer", pinned=True),
    "unit": st.column_config.NumberColumn("unit", pinned=True),
    "similarity": st.column_config.NumberColumn(format="%.3f"),
    tables.INTERPRETABLE: st.column_config.TextColumn(
        tables.INTERPRETABLE, width="small", help="✓: every chosen evaluator judges the label correct"
    ),
}
for e in available:
    t = widgets.title(e)
    config[f"{t} score"] = st.column_config.NumberColumn(
        f"{t} score",
        format="%d" if e == "cp" else "%.3f",
        help=f"{t}: "
        + {"cp": "best rank of the label", "es": "highest cosine", "vqa": "highest P(yes)", "contrast": "ROC-AUC"}[e],
    )
    config[t] = st.column_config.TextColumn(t, width="small", help=f"✓: {t} judges the label correct, ✗: not")
st.caption(
    f"{len(shown):,} of {len(grid):,} units of {grid_layer} (one layer at a time: choose it above). Click a "
    "column header to sort; 'open' shows the unit in the neuron explorer."
)
first = ["open", "layer", "unit", "label", "similarity", tables.INTERPRETABLE]
marks = [tables.INTERPRETABLE, *[widgets.title(e) for e in available], *view.rater_labels]
for r in view.rater_labels:
    config[r] = st.column_config.TextColumn(r, width="small", help=f"{r}: ✓ correct, ✗ not, empty: not judged")
# n_negatives (how many inactive images Contrast compared) is on the neuron explorer: here it was an internal
# name that pushed the verdict columns out of view at 1440 px
shown = shown.drop(columns=["n_negatives"], errors="ignore")
st.dataframe(
    tables.verdict_marks(shown, marks),
    hide_index=True,
    width="stretch",
    height=420,
    column_config=config,
    column_order=[*first, *[c for c in shown.columns if c not in first]],
)

# ---------------------------------------------------------------- frequent labels
st.subheader("Most frequent labels")
counts = data.label_counts(ctx.run_id, grid_layer, 20)
left, right = widgets.side_by_side("labels")
widgets.chart(charts.label_bars(counts), counts, "label_counts", where=left)
with right:
    st.caption(
        f"{grid_layer} (follows the grid's layer). "
        "A label carried by many units is often vague; a top-k-only check tends to pass vague labels."
    )
    widgets.table(counts, formats={"share": widgets.fmt_pct})
