"""Annotate: a person judges CLIP-Dissect labels neuron by neuron (top images + label: yes / no / skip).
Every answer is appended to the store at once (nothing is kept only in the browser), so a session can
stop and resume, and two tabs annotating at the same time lose nothing."""

import pandas as pd
import streamlit as st

from clipeval.ui import data, widgets

ctx = widgets.run_page("Annotate")
store = data.store()

notice = st.session_state.pop("annotate_notice", None)
c = st.columns([1.3, 1.2, 1.2])
rater = (
    c[0]
    .text_input(
        "Your name (rater)",
        key="rater",
        bind="query-params",
        placeholder="e.g. alice",
        help="Your answers are stored under this name; use the same name to resume later.",
    )
    .strip()
)
order = (
    c[1].segmented_control(
        "Order",
        ["layers", "shuffled"],
        default="layers",
        key="ann_order",
        bind="query-params",
        help="'layers': layer by layer, unit by unit. 'shuffled': a fixed pseudo-random "
        "order, the same for every rater and session.",
    )
    or "layers"
)
layer_names = list(data.layers(ctx.run_id)["layer"])
only = c[2].selectbox("Layer", ["all layers", *layer_names], key="ann_layer")
layer = None if only == "all layers" else only
if not rater:
    st.info(
        "Enter your name to start. Each answer is saved immediately under that name; coming back with the "
        "same name continues with the next neuron you have not judged."
    )
    st.stop()

skipped_key = f"ann_skipped::{ctx.run_id}::{rater}"
skipped: list = st.session_state.setdefault(skipped_key, [])


def _answer(layer_: str, unit_: int, label: str, verdict: bool) -> None:
    frame = pd.DataFrame([{"layer": layer_, "unit": int(unit_), "rater": rater, "verdict": bool(verdict)}])
    waiting = data.save_verdicts(ctx.run_id, frame, source="app")
    if data.dropped_verdicts():  # the run was removed: the app says so above every page
        return
    answer = f"{layer_} / {unit_} “{label}” → {'yes' if verdict else 'no'}"
    st.session_state["annotate_notice"] = (
        f"Saved: {answer}."
        if not waiting
        else f"Kept: {answer}. The store is busy (a clipeval command is writing); {waiting} answer(s) wait in this "
        "session and are saved on your next click."
    )


def _skip(layer_: str, unit_: int) -> None:
    skipped.append((layer_, int(unit_)))
    st.session_state["annotate_notice"] = f"Skipped {layer_} / {unit_} (no verdict stored; it comes back next session)."


waiting = data.flush_verdicts()  # answers kept while the store was busy are saved first
pending = [
    (f["layer"].iloc[0], int(f["unit"].iloc[0]))
    for r, f, _ in data.pending_verdicts()
    if r == ctx.run_id and f["rater"].iloc[0] == rater
]
progress = store.annotation_progress(ctx.run_id, rater, layer)
queue = store.annotation_queue(ctx.run_id, rater, order, layer, exclude=[*skipped, *pending])
done = progress["judged"]
total = progress["total"]
st.progress(
    done / total if total else 0.0,
    text=f"{rater}: {done} of {total} neurons judged{'' if layer is None else f' in {layer}'} "
    f"({progress['yes']} yes, {done - progress['yes']} no); {len(skipped)} skipped in this session; "
    f"{len(queue)} to go.",
)
if notice:
    st.caption(notice)
if waiting:
    st.warning(
        f"{waiting} answer(s) wait to be saved: a clipeval command is writing to the store. They are saved "
        "on your next click (nothing is lost while this tab stays open)."
    )

if queue.empty:
    if skipped:
        st.success("Every neuron here is judged or skipped.")
        st.button("Go through the skipped ones again", key="ann_reset_skipped", on_click=skipped.clear)
    elif total:
        st.success(f"Done: {rater} has judged every neuron{'' if layer is None else f' of {layer}'}. Thank you!")
    else:
        st.warning(
            "This run has no neurons with stored top images to judge: its labels were imported without "
            "activations. Import them again with `--target` and `--probe`."
        )
else:
    current = queue.iloc[0]
    cl, cu, label = current["layer"], int(current["unit"]), current["label"]
    st.markdown(f"#### Does at least one of these images show **“{label}”**?")
    st.caption(
        f"{cl} / unit {cu}. The label is correct if ANY of the top {ctx.k} activating images shows it "
        "(the evaluators' rule). Judge from the images alone; no evaluator verdict is shown here."
    )
    images = data.neuron_images(ctx.run_id, cl, cu)
    top = images[(images["kind"] == "top") & (images["rank"] <= ctx.k)]
    thumbs = data.thumbnails(ctx.run.get("probe_fingerprint"), top["image_id"])
    widgets.image_grid(top, thumbs, max(len(top), 5), source=False)
    b = st.columns([1, 1, 1, 3])
    b[0].button(
        "Yes",
        type="primary",
        width="stretch",
        shortcut="Y",
        icon=":material/check:",
        on_click=_answer,
        args=(cl, cu, label, True),
        key="ann_yes",
    )
    b[1].button(
        "No",
        width="stretch",
        shortcut="N",
        icon=":material/close:",
        on_click=_answer,
        args=(cl, cu, label, False),
        key="ann_no",
    )
    b[2].button(
        "Skip",
        width="stretch",
        shortcut="S",
        icon=":material/skip_next:",
        on_click=_skip,
        args=(cl, cu),
        key="ann_skip",
    )
    b[3].caption(
        "Keys: Y yes, N no, S skip. Answers are stored at once; a skipped neuron is only remembered in "
        "this browser session."
    )

history = store.rater_history(ctx.run_id, rater, 15)
if len(history):
    with st.expander(f"Your latest answers ({rater})"):
        st.dataframe(
            history.assign(verdict=history["verdict"].map({True: "yes", False: "no"})),
            hide_index=True,
            width="stretch",
            column_config={"created_at": st.column_config.DatetimeColumn("when", format="HH:mm:ss")},
        )
        st.caption(
            "To change an answer, judge the neuron again below: the history is kept and the newest answer counts."
        )
        options = [f"{r.layer}/{r.unit}" for r in history.drop_duplicates(["layer", "unit"]).itertuples()]
        labels = {f"{r.layer}/{r.unit}": f"{r.layer} / {r.unit}: {r.label}" for r in history.itertuples()}
        raw_labels = {f"{r.layer}/{r.unit}": r.label for r in history.itertuples()}
        r = st.columns([3, 1, 1], vertical_alignment="bottom")
        again = r[0].selectbox("Neuron", options, format_func=labels.get, key="ann_again")
        al, au = again.rsplit("/", 1)
        r[1].button(
            "Now yes",
            on_click=_answer,
            args=(al, int(au), raw_labels[again], True),
            key="ann_again_yes",
            width="stretch",
        )
        r[2].button(
            "Now no",
            on_click=_answer,
            args=(al, int(au), raw_labels[again], False),
            key="ann_again_no",
            width="stretch",
        )
