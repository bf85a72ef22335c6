"""Overview: what is in the run store, which models made the selected run, and how to use the app."""

import streamlit as st

from clipeval.analysis import headlines, intervals
from clipeval.demo.probe import SOURCE_KINDS, probe_mix
from clipeval.formats import percent, text_cell
from clipeval.ui import data, widgets

ctx = widgets.context()
st.title("clipeval explorer")
st.markdown(
    "CLIP-Dissect gives every hidden neuron of a vision network a text label from its most activating "
    "probe images. This app shows how far each **automatic evaluator** (VQA, concept proportion CP, "
    "embedding similarity ES, and a contrast check against inactive images) judges those labels correct, how far they agree with **reference raters** (people, and automatic references "
    "computed from ground truth, always marked as such), and how often they pass wrong labels (the baselines)."
)

start = st.container(border=True)
start.markdown(
    "**Start here.** Open the **Neuron explorer**: one neuron's label, its top images and each judge's verdict "
    "on it; step through neurons with Next and Previous (keys N and P). Then the **Layer overview** for the "
    "share of labels each judge finds correct per layer, and **Thresholds** for how that share moves with a "
    "judge's threshold. Choose the run in the sidebar."
)
links = start.container(horizontal=True, gap="small")
links.page_link("pages/neuron.py", label="Neuron explorer", icon=":material/neurology:")
links.page_link("pages/layers.py", label="Layer overview", icon=":material/layers:")
links.page_link("pages/thresholds.py", label="Thresholds", icon=":material/tune:")

overview = data.store().store_overview()
cols = st.columns(6)
cols[0].metric("Runs", overview["runs"], help=f"{overview['complete_runs']} complete")
cols[1].metric("Neurons labelled", f"{overview['neurons']:,}")
cols[2].metric(
    "Evaluations",
    overview["evaluations"],
    help=f"{overview['evaluations_not_complete']} more are unavailable or failed (see Runs)",
)
cols[3].metric(
    "Human verdicts",
    f"{overview['human_verdicts'] - overview['automatic_verdicts']:,}",
    help="Current yes/no verdicts by people (Annotate page, CSV import), one per rater and neuron, from "
    f"{overview['raters'] - overview['automatic_raters']} rater(s).",
)
cols[4].metric(
    "Automatic verdicts",
    f"{overview['automatic_verdicts']:,}",
    help="Verdicts computed from ground truth, not by a person, such as the demo's ImageNet-class "
    f"reference, from {overview['automatic_raters']} automatic rater(s). " + widgets.glossary_link("reference"),
)
cols[5].metric("Probe images stored", f"{overview['probe_images']:,}")
st.caption(f"Run store: `{data.db_path()}`")

if ctx.run_id is None:
    widgets.how_to_make_a_run()
    st.stop()

st.subheader(f"Selected run: {ctx.run['name']}")
widgets.stand_in_notice(ctx.run, ctx.latest)
for role, text in widgets.model_lines(ctx.run, ctx.latest).items():
    st.markdown(f"- **{role}:** {text}")
mix = probe_mix(data.probe_sources(ctx.run_id, text_cell(ctx.run.get("probe_fingerprint"), "")).itertuples(index=False))
if mix:
    n_images = sum(n for _, n in mix)
    not_photos = [(kind, n) for kind, n in mix if kind in (SOURCE_KINDS["openclipart"], SOURCE_KINDS["procedural"])]
    drawn = sum(n for _, n in not_photos)
    st.markdown(
        f"- **Probe images:** {n_images:,}: "
        + ", ".join(f"{n:,} {kind}" for kind, n in mix)
        + (
            f". Mostly {' and '.join(kind for kind, _ in not_photos)} ({drawn / n_images:.0%}), not photos like the "
            "paper's ImageNet and Broden images: a label says what the unit responds to among these."
            if drawn > n_images / 2
            else "."
        )
    )
view = data.run_view(ctx.run_id)
k = min(ctx.k, view.kmax)
heads = headlines.headlines(view.layer_summary(ctx.thresholds, k)) if view.available else {}
cols = st.columns(len(widgets.EVALUATOR_ORDER))
for col, e in zip(cols, widgets.EVALUATOR_ORDER):
    h = heads.get(widgets.title(e))
    if h is not None:
        share = intervals.share_interval(h.real, h.n)
        col.metric(
            f"{h.evaluator}: labels judged correct",
            percent(h.real),
            f"95% {share.interval() or 'interval n/a'}, n = {h.n:,}" + (" ⚠ few" if share.small else ""),
            delta_color="off",
            delta_arrow="off",
            help=f"Over all {h.n:,} neurons of the run at the sidebar's thresholds, with its 95% Wilson interval "
            "(the HTML report's). Below it, the same "
            "evaluator on labels shuffled across neurons and on one constant label for every neuron: a "
            "good evaluator rejects most of those. " + widgets.glossary_link("baselines"),
        )
        col.caption(("⚠ " if h.weak else "") + h.baseline_text().replace(" · ", "  \n"))
    else:
        col.metric(
            f"{widgets.title(e)}: labels judged correct",
            "n/a",
            ctx.evaluator_status(e)[0],
            delta_color="off",
            delta_arrow="off",
            help=widgets.evaluator_note(ctx, e),
        )
for h in heads.values():
    if h.warning():
        st.warning(h.warning(), icon=":material/warning:")
few = [h.evaluator for h in heads.values() if intervals.share_interval(h.real, h.n).small]
if few:
    st.warning(
        f"{', '.join(few)}: fewer than {intervals.MIN_N} neurons judged, so the share can move a lot with a few "
        "more neurons; read its interval.",
        icon=":material/warning:",
    )
st.caption(
    f"At {widgets.thresholds_caption(ctx)}. Choose another run, the number k of top images judged and the "
    "thresholds in the sidebar; they apply to every page and are kept in the URL, so a copied link shows a "
    "collaborator the same view."
)

st.subheader("Pages")
PAGES = [
    (
        "pages/neuron.py",
        "Neuron explorer",
        "one neuron: its label, runner-up concepts, top images with each "
        "evaluator's score and verdict, images across activation levels, inactive images, histogram.",
    ),
    (
        "pages/layers.py",
        "Layer overview",
        "per layer, the share of labels judged correct by each evaluator beside "
        "its shuffled and constant-label baselines; the interpretable units; a sortable unit grid; frequent labels.",
    ),
    (
        "pages/thresholds.py",
        "Thresholds",
        "how the verdicts move with each threshold, per layer, and calibrating a threshold to a reference rater.",
    ),
    (
        "pages/agreement.py",
        "Agreement",
        "Cohen's kappa between all raters and evaluators, agreement per layer, Jaccard, confusion matrices, F1.",
    ),
    (
        "pages/labellers.py",
        "Labellers",
        "several labellers on the same units (other runs, the original "
        "CLIP-Dissect, MILAN, NetDissect), each judged by this run's evaluators beside the baselines.",
    ),
    (
        "pages/runs.py",
        "Runs",
        "every run with its settings and models, a comparison of configurations, timings, and deleting a run.",
    ),
    (
        "pages/report.py",
        "Report",
        "one self-contained HTML file of the run to send: models, shares with baselines, "
        "sensitivity plots, agreement, units per layer.",
    ),
    ("pages/annotate.py", "Annotate", "judge labels yourself, neuron by neuron; every answer is saved at once."),
    ("pages/sql.py", "SQL", "a read-only SQL console over the run store."),
    ("pages/glossary.py", "Glossary", "what soft-WPMI, CP, ES, contrast AUC, kappa, ConSE and the baselines mean."),
]
for path, name, text in PAGES:
    c = st.columns([1.3, 5], vertical_alignment="center")
    c[0].page_link(path, label=name)
    c[1].markdown(text)
