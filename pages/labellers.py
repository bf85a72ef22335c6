"""Labellers side by side: the run's CLIP-Dissect labels beside other label sources (other runs, the
original CLIP-Dissect, MILAN, NetDissect) on the same units, judged by the same evaluators on the same
images; agreement between the sources; one neuron's label from every source with its verdicts."""

import streamlit as st

from clipeval.render import charts
from clipeval.render.tables import neuron_link
from clipeval.ui import data, widgets
from clipeval.ui.sources import labeller_view, short_names

ctx = widgets.run_page("Labellers side by side")
lv = labeller_view(ctx.run_id)
view = lv.view
named = short_names(lv, data.runs())  # runs by their short labels, as in the run picker
k = min(ctx.k, view.kmax) if view.available else ctx.k

ADD_HELP = f"""Add label sources from the command line (each is judged at once by this run's evaluators, on
this run's stored images, with the same models and settings):

```bash
clipeval sources add {ctx.run_id} --from-run OTHER_RUN                 # another CLIP-Dissect configuration
clipeval sources add {ctx.run_id} --clip-dissect descriptions.csv      # the original CLIP-Dissect
clipeval sources add {ctx.run_id} --milan milan.csv                    # MILAN (label only)
clipeval sources add {ctx.run_id} --netdissect tally_layer4.csv --layer-map layer4=bn2   # NetDissect, with IoU
```"""

if len(lv.source_ids) == 1:
    st.info("This run has no other label source yet, so there is nothing to put side by side.")
    st.markdown(ADD_HELP)
    st.stop()

# ---------------------------------------------------------------- sources and coverage
st.subheader("Label sources and their coverage")
cov = lv.sources.copy()
per_layer = lv.coverage
cov["per layer (labelled / live units)"] = [
    ", ".join(f"{r.layer} {r.matched}/{r.units}" for r in per_layer[per_layer["source_id"] == s].itertuples())
    for s in cov["source_id"]
]
cov["kind"] = cov["source_id"].map(lv.kinds)
cov["name"] = cov["name"].replace(named)
shown = cov[
    [
        "name",
        "kind",
        "n_labels",
        "n_matched",
        "n_on_dead",
        "coverage",
        "per layer (labelled / live units)",
        "origin",
        "source_id",
    ]
].rename(
    columns={
        "n_labels": "labels in source",
        "n_matched": "on this run's live units",
        "n_on_dead": "on dead units (not judged)",
    }
)
# a row per source (per source and evaluator below): static tables show every column, where a grid cut
# the right ones off at 1440 px
widgets.table(shown, formats={"coverage": widgets.fmt_pct})
st.caption(
    f"Matched by (layer, unit) after the source's layer map; labels naming units this run lacks, or its dead "
    "units (constant over the probe: no images to judge a label on), are kept but not judged. Coverage = the "
    f"share of this run's {len(view.neurons):,} live units the source labels, the units every share below is "
    "over. "
    "A file made for another network (ResNet-50's layer4 mapped onto this run's layer) is matched by unit "
    "number only: its labels describe other units, and the evaluators should judge them like shuffled "
    "labels."
)
for note in lv.missing_evaluations():  # each begins with the labeller's name
    name = next((n for n in named if note.startswith(n)), "")
    st.caption(f":orange[{named.get(name, '') + note[len(name) :]}]")
# drawn when opened: its code block loads a 1.5 MB highlighter into the browser
how = st.expander("How to add a source", key="how_to_add", on_change="rerun")
if how.open:
    how.markdown(ADD_HELP)

if not lv.evaluators:
    st.warning("No evaluator has scored this run, so no source can be judged. Run `clipeval evaluate` first.")
    st.stop()

# ---------------------------------------------------------------- shares per layer
st.subheader("Share judged correct, per labeller")
layers = [*data.layers(ctx.run_id)["layer"], "overall"]
layer = st.selectbox(
    "Layer",
    layers,
    index=len(layers) - 1,
    key="lab_layer",
    help="'overall' pools every unit a source covers (not the mean of the layers).",
)
shares = lv.shares(ctx.thresholds, k).assign(labeller=lambda f: f["labeller"].replace(named))
part = shares[shares["layer"] == layer]
if part.empty:
    st.info(f"No source labels a unit of {layer}.")
else:
    widgets.chart(charts.labeller_shares(part), part, "labeller_shares")
    st.caption(
        "Bars: each labeller's labels; × the same labels shuffled across the labeller's units of each layer; "
        "| one constant label (the run's most frequent) on the same units. "
        f"Judged on this run's top-{k} images; {widgets.thresholds_caption(ctx)}."
    )
    table = part[
        ["labeller", "kind", "evaluator", "n", "correct", "shuffled", "run real", "run shuffled", "run constant"]
    ].rename(
        columns={
            "n": "units",
            "correct": "judged correct",
            "shuffled": "its labels shuffled",
            "run real": "this run's labels, same units",
            "run shuffled": "run's shuffled, same units",
            "run constant": "constant label, same units",
        }
    )
    widgets.table(
        table,
        formats={c: widgets.fmt_pct for c in table.columns if c not in ("labeller", "kind", "evaluator", "units")},
    )
    st.caption(
        "Every share is over the 'units' the labeller covers in this layer, so each labeller is compared "
        "with this run's labels and baselines on exactly the same units."
    )

# ---------------------------------------------------------------- agreement
st.subheader("Agreement between labellers")
agree = lv.agreement(ctx.thresholds, k, None if layer == "overall" else layer)
if not agree.empty:
    agree[["a", "b"]] = agree[["a", "b"]].replace(named)
if agree.empty:
    st.caption("Only one labeller covers these units.")
else:
    shares_fmt = {c: widgets.fmt_pct for c in agree.columns if c.endswith("agreement") or c == "same label"}
    widgets.table(
        agree.rename(columns={"a": "labeller A", "b": "labeller B", "n": "units both label"}),
        formats={**shares_fmt, **{c: widgets.fmt_num for c in agree.columns if c.endswith("kappa")}},
    )
    st.caption(
        "Over the units both label: 'same label' compares the words (case-insensitive); per evaluator, "
        "agreement is the share of units where both labels get the same verdict, and Cohen's kappa "
        "corrects it for chance (n/a where undefined)."
    )

# ---------------------------------------------------------------- one neuron
st.subheader("One neuron, every labeller")
c = st.columns([1, 1, 2])
one_layer = c[0].selectbox(
    "Layer", layers[:-1], index=layers.index(layer) if layer != "overall" else 0, key="lab_one_layer"
)
units = view.neurons[view.neurons["layer"] == one_layer]["unit"]
unit = int(
    c[1].number_input(
        "Unit", min_value=int(units.min()), max_value=int(units.max()), value=int(units.min()), key="lab_unit"
    )
)
c[2].markdown(
    f"[Open in the neuron explorer]({neuron_link(ctx.run_id, one_layer, unit, ctx.thresholds, k, view.kmax)})"
)
one = lv.neuron(one_layer, unit, ctx.thresholds, k).assign(labeller=lambda f: f["labeller"].replace(named))
widgets.table(one, formats={"CP score": widgets.fmt_rank})
st.caption(
    "A label is judged correct when any of the unit's top images matches it (the evaluator's score: CP the "
    "best rank, ES the best cosine, Contrast the ROC-AUC against inactive images). An empty label: the "
    "source does not cover this unit."
)
images = data.neuron_images(ctx.run_id, one_layer, unit)
top = images[(images["kind"] == "top") & (images["rank"] <= k)]
widgets.image_grid(
    top,
    data.thumbnails(ctx.run.get("probe_fingerprint"), top["image_id"]),
    ncols=max(k, 1),
    lines=lambda r: [f"#{int(r['rank'])} · activation {r['activation']:.3f}"],
)
