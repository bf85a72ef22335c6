"""Neuron explorer: one neuron's label, runner-up concepts, top activating images with every
evaluator's raw score and verdict, more images across activation levels, and its histogram."""

import random

import pandas as pd
import streamlit as st

from clipeval.analysis.imagenet import unit_imagenet_class
from clipeval.evaluators import thresholds
from clipeval.render import charts
from clipeval.ui import data, widgets
from clipeval.ui.live import probe_section
from clipeval.ui.maps import where_it_fires
from clipeval.ui.neuron import image_lines, image_table, verdict_summary, verdict_table

ctx = widgets.run_page("Neuron explorer")
UNIT_BOUND = 2**31 - 1  # the unit box's bounds: any unit number a link or the keyboard gives reaches the check below
UNIT_FIX = "_neuron_unit_fix"

layers = data.layers(ctx.run_id)
spans = data.layer_units(ctx.run_id).set_index("layer")  # per layer: neurons, first and last unit
layer_names = list(spans.index)
if not layer_names:
    st.warning("This run has no labelled neurons.")
    st.stop()

# ---------------------------------------------------------------- choosing the neuron (kept in the URL)
if "layer" in st.session_state and st.session_state["layer"] not in layer_names:  # another run was chosen
    st.session_state["layer"] = layer_names[0]


def _go(layer: str, unit: int) -> None:
    st.session_state["layer"], st.session_state["unit"] = layer, int(unit)


def _step(delta: int) -> None:
    target = data.neuron_step(ctx.run_id, st.session_state["layer"], int(st.session_state.get("unit", 0)), delta)
    if target:
        _go(*target)


def _random() -> None:
    _go(*data.neuron_at(ctx.run_id, random.randrange(int(spans["neurons"].sum()))))


def _found() -> None:
    hit = st.session_state.get("search_hit")
    if hit:
        layer, unit = hit.rsplit("/", 1)
        _go(layer, int(unit))


pick = st.columns([1.5, 1.1, 3, 2.4], vertical_alignment="bottom")
wanted_layer = None if "layer" in st.session_state else st.query_params.get("layer")  # a link, at the session's start
if wanted_layer is not None and wanted_layer not in layer_names:
    widgets.link_problem(
        "layer",
        f"The link's layer `{wanted_layer}` is not a layer of this run ({', '.join(layer_names)}): showing "
        f"{layer_names[0]} instead.",
        layer_names[0],
    )
layer = pick[0].selectbox("Layer", layer_names, key="layer", bind="query-params")
first, last = int(spans.loc[layer, "first"]), int(spans.loc[layer, "last"])
widgets.drop_infinite_url_number("unit")
if UNIT_FIX in st.session_state:  # set by the check below in the previous script run
    st.session_state["unit"] = st.session_state.pop(UNIT_FIX)
unit = int(
    pick[1].number_input(
        f"Unit ({first}-{last})",
        min_value=-UNIT_BOUND,
        max_value=UNIT_BOUND,
        value=0,
        step=1,
        key="unit",
        bind="query-params",
    )
)
# A unit the layer lacks (typed, or a link's) is replaced in the box as well as on the page, and said. The box's
# own bounds are wide: Streamlit drops a link's value outside them silently, and the browser keeps a typed one in
# the box unused. The box cannot change once drawn: the next script run sets it.
if not first <= unit <= last:
    nearest = last if unit > last else first
    widgets.link_problem(
        "unit",
        f"{layer} has no unit {unit} (its units are {first}-{last}): showing unit {nearest}.",
        nearest,
    )
    st.session_state[UNIT_FIX] = nearest
    st.rerun()
for message in widgets.link_problems({"layer": layer, "unit": unit}):
    st.warning(message, icon=":material/link_off:")
with pick[2]:
    nav = st.container(horizontal=True, gap="small", wrap=False)
    nav.button(
        "Previous",
        on_click=_step,
        args=(-1,),
        icon=":material/arrow_back:",
        key="prev",
        shortcut="P",
        disabled=data.neuron_step(ctx.run_id, layer, unit, -1) is None,
        help="The previous unit (none before the first unit of the first layer). Key: P",
    )
    nav.button(
        "Next",
        on_click=_step,
        args=(1,),
        icon=":material/arrow_forward:",
        key="next",
        shortcut="N",
        disabled=data.neuron_step(ctx.run_id, layer, unit, 1) is None,
        help="The next unit. Key: N",
    )
    nav.button("Random", on_click=_random, icon=":material/casino:", key="random")
with pick[3]:
    query = st.text_input("Search labels and runner-up concepts", key="search_text", placeholder="e.g. dog, stripes")
if query.strip():
    hits = data.search_neurons(ctx.run_id, query.strip())
    if hits.empty:
        st.caption(f"No label or runner-up concept contains {query.strip()!r}.")
    else:
        options = [f"{r.layer}/{r.unit}" for r in hits.itertuples()]
        text = {
            f"{r.layer}/{r.unit}": (
                f"{r.layer} / {r.unit}: {r.label}"
                + ("" if r.match_rank == 1 else f"  (runner-up #{r.match_rank}: {r.matched})")
            )
            for r in hits.itertuples()
        }
        st.selectbox(
            f"{len(hits)} matching neuron(s){' (first 200)' if len(hits) >= 200 else ''}",
            options,
            index=None,
            format_func=text.get,
            key="search_hit",
            on_change=_found,
            placeholder="Pick one to show it",
        )

label_row = data.neuron(ctx.run_id, layer, unit)
if label_row is None:
    st.warning(f"{layer} has no labelled unit {unit}.")
    st.stop()
if bool(label_row.get("dead", False)):
    st.subheader(f"{layer} / unit {unit}")
    st.warning(widgets.DEAD_TEXT)
    hist = data.histogram(ctx.run_id, layer, unit)
    if not hist.empty:
        st.caption(f"Its activation is {hist['lo'].iloc[0]:.4g} on all {int(hist['count'].sum())} probe images.")
    st.stop()

# ---------------------------------------------------------------- label, top images, verdicts
# The first screen (1440 x 900) holds what browsing is for: the label, a one-line verdict summary and the top
# images with their verdicts, right under Next. Details (similarity, runner-ups, the verdict table with its
# baselines, the map's controls) come below the images.
view = data.neuron_view(ctx.run_id, layer, unit)  # this neuron's scores, not the run's 10M image scores
images = image_table(ctx, view, layer, unit)
fingerprint = ctx.run.get("probe_fingerprint")
thumbs = data.thumbnails(fingerprint, images["image_id"]) if len(images) else {}
st.markdown(f"### {layer} / unit {unit}: “{label_row['label']}”")
summary_line = st.empty()
top_box = st.container()  # filled once the toggles below have said what to show under each image
details = st.container()
with details:
    st.markdown("**What to show under each image**")
    toggles = st.container(horizontal=True, wrap=True, gap="medium")
shown = []
# the evaluators shown are pinned in the link as the sidebar's thresholds are (widgets.pin_in_url): one left at
# its default was left out of the link, which then showed another set once an evaluation finished
for e in widgets.EVALUATOR_ORDER:
    state = view.evaluators[e]
    ok = state.table is not None
    on = toggles.toggle(
        widgets.title(e),
        value=widgets.url_flag(f"show_{e}", f"{widgets.title(e)} switch", ok),
        key=f"show_{e}",
        disabled=not ok,
        help=(widgets.RULES_HELP[e] if ok else widgets.evaluator_note(ctx, e)) + " " + widgets.glossary_link(e),
    )
    widgets.pin_in_url(f"show_{e}", bool(on))
    if on and ok:
        shown.append(e)
for message in widgets.link_problems({f"show_{e}": st.session_state.get(f"show_{e}") for e in widgets.EVALUATOR_ORDER}):
    st.warning(message, icon=":material/link_off:")
show_human = toggles.toggle(
    "Human raters",
    value=True,
    key="show_human",
    bind="query-params",
    disabled=not view.human_labels,
    help="People's yes/no verdicts on this neuron (from the Annotate page or "
    "`clipeval humans import`)." + ("" if view.human_labels else " None for this run yet."),
)
show_auto = toggles.toggle(
    "Automatic references",
    value=True,
    key="show_auto",
    bind="query-params",
    disabled=not view.automatic_labels,
    help="Reference verdicts computed from ground truth, not by a person (the demo's: does "
    "the label name the unit's ImageNet class?). "
    + widgets.glossary_link("reference")
    + ("" if view.automatic_labels else " None for this run."),
)
verdicts = verdict_table(ctx, view, layer, unit)
keep = (
    verdicts["rater"].isin([widgets.title(e) for e in shown])
    | (show_human & verdicts["rater"].isin(view.human_labels))
    | (show_auto & verdicts["rater"].isin(view.automatic_labels))
)
summary_line.markdown(
    verdict_summary(verdicts[keep])
    + f" · CLIP-Dissect similarity {widgets.fmt_num(label_row['similarity'])}"
    + ("" if images.empty else " · verdict details below the images")
)
with details:
    with st.expander("Verdict details: scores, thresholds and the baseline labels", key="verdict_details"):
        if keep.any():
            widgets.table(verdicts[keep])
        for e in widgets.EVALUATOR_ORDER:
            if view.evaluators[e].table is None:
                st.caption(widgets.evaluator_note(ctx, e))
        if show_human and not view.human_labels:
            st.caption("No human verdicts for this run yet: judge neurons on the Annotate page.")
        if view.available:
            if "contrast" in shown and pd.notna(label_row.get("n_negatives")):
                st.caption(
                    f"Contrast compared this neuron's top images with {int(label_row['n_negatives'])} inactive "
                    "ones (its least active images and random images below its 90th percentile)."
                )
            st.caption(
                f"A label is judged correct when ANY of the top-{ctx.k} images matches it. Neuron score: CP the "
                "best rank of the label, ES the highest cosine, VQA the highest P(yes), Contrast the ROC-AUC of "
                "the label's cosine on the top images against inactive ones. Baselines: the same evaluator on a "
                "label shuffled in from another neuron, and on one constant label for every neuron."
            )
        st.caption(
            f"CLIP-Dissect similarity of the label: {widgets.fmt_num(label_row['similarity'])}, the score of the "
            "chosen concept under the run's similarity function (soft-WPMI by default): comparable between "
            "neurons of one run, not a cosine."
        )
    ru = data.runner_ups(ctx.run_id, layer, unit)
    n_units = int(layers.set_index("layer").loc[layer, "n_units"])
    own = unit_imagenet_class(n_units, unit, label_row["label"], ru["concept"] if "concept" in ru else ())
    if own:
        found = (
            "the label names it"
            if own["label_matches"]
            else f"runner-up #{own['concept_rank']} names it"
            if own["concept_rank"]
            else "neither the label nor a runner-up names it"
        )
        (st.success if own["label_matches"] else st.warning)(
            f"**This unit's own ImageNet class: {own['class']}** ({found})", icon=":material/fact_check:"
        )
        st.caption(
            f"{layer} has {n_units:,} units, one per ImageNet class (a 1000-way classifier), so unit {unit} "
            "is known to mean this class: a sanity check of the label. " + widgets.glossary_link("imagenet-check")
        )
    if len(ru) > 1:
        with st.expander(f"Runner-up concepts ({len(ru) - 1})", key="runner_ups"):
            st.caption("Rank 1 is the label.")
            widgets.table(ru)


def image_grid(frame: pd.DataFrame, ncols: int, evaluators: list[str], note: str = "") -> None:
    def lines(row) -> list[str]:
        head_line = f"**#{int(row['rank'])}** activation {row['activation']:.3f}"
        if row["kind"] == "top" and not row["counted"]:
            head_line += f"  \n:gray[not judged: beyond k = {ctx.k}]"
        return [head_line, *image_lines(row, evaluators)]

    widgets.image_grid(frame, thumbs, ncols, lines)
    if note and not frame.empty:
        st.caption(note)


if images.empty:
    top_box.info(
        "No images are stored for this neuron: this run's labels were imported without activations. Import "
        "them again with `--target` and `--probe` to see (and judge) each neuron's top images."
    )
    st.stop()
with details:
    thumbs = where_it_fires(ctx.run_id, fingerprint, layer, unit, thumbs, ctx.run)
contrast_note = (
    "Contrast shows each image's cosine with the label judged by the ES rule (tau = "
    f"{thresholds.fmt('es', ctx.thresholds['es'])}); its neuron verdict is the AUC rule above."
    if "contrast" in shown
    else ""
)
with top_box:
    image_grid(images[images["kind"] == "top"], 5, shown, contrast_note)

st.subheader("Beyond the top images")
# only the open tab is drawn (each holds 5-10 images or a chart, all sent to the browser before): the
# page's first view had 30 images and a chart to load for one tab shown
tabs = st.tabs(
    ["Across activation levels", "Least active", "Random (not among the most active)", "Activation histogram"],
    key="beyond",
    on_change="rerun",
)
inactive_eval = [e for e in shown if e == "contrast"]
if tabs[0].open:
    with tabs[0]:
        st.caption("Images spread over the neuron's activation range, most active first.")
        image_grid(images[images["kind"] == "level"], 5, [])
if tabs[1].open:
    with tabs[1]:
        st.caption(
            "The neuron's least activating probe images"
            + ("; with Contrast on, a 'match' here counts AGAINST the label." if inactive_eval else ".")
        )
        image_grid(images[images["kind"] == "low"], 5, inactive_eval)
if tabs[2].open:
    with tabs[2]:
        st.caption(
            "Random probe images outside the neuron's most active ones"
            + ("; with Contrast on, a 'match' here counts AGAINST the label." if inactive_eval else ".")
        )
        image_grid(images[images["kind"] == "random"], 5, inactive_eval)
if tabs[3].open:
    with tabs[3]:
        hist = data.histogram(ctx.run_id, layer, unit)
        if hist.empty:
            st.caption("No histogram stored for this neuron.")
        else:
            top = images[images["kind"] == "top"]
            widgets.chart(
                charts.activation_histogram(hist, top["activation"].tolist(), ctx.k),
                hist,
                "histogram",
            )
            st.caption(
                f"Activation over all {int(hist['count'].sum())} probe images; red lines: the top images "
                f"(solid: the top {ctx.k} that are judged)."
            )

probe_section(ctx, layer, unit)
