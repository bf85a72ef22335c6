"""Runs: every run with its settings and models, the share judged correct per configuration (the
paper's Table 2), time per stage and evaluator (Table 3), and deleting a run."""

import streamlit as st

from clipeval.analysis import headlines, intervals
from clipeval.errors import ClipevalError
from clipeval.evaluators.rules import cp_cutoff
from clipeval.formats import json_cell
from clipeval.render import charts, tables
from clipeval.store import runnames
from clipeval.ui import data, widgets

ctx = widgets.context()
st.title("Runs")
runs = data.runs()
notice = st.session_state.pop("runs_notice", None)
if notice:
    st.success(notice)
if runs.empty:
    widgets.how_to_make_a_run()
    st.stop()

# ---------------------------------------------------------------- all runs
st.subheader("Every run in the store")
differs = runnames.differences(runs)
label = widgets.run_labels(runs)
table = tables.run_table(runs).assign(differs=[differs.get(r, "") for r in runs["run_id"]])
st.dataframe(
    table,
    hide_index=True,
    width="stretch",
    column_order=["differs", "name", "status", "created", "neurons", "CLIP?", "labelling model", "run"],
    column_config={
        "created": st.column_config.DatetimeColumn(format="MM-DD HH:mm", width="small"),
        "differs": st.column_config.TextColumn("what differs", width="medium", pinned=True),
        "CLIP?": st.column_config.TextColumn(width="small"),
        "run": st.column_config.TextColumn(width="small"),
    },
)
st.caption(
    "A run is written completely or not at all: 'running' is being written, 'interrupted' was stopped "
    "before it finished (run the same `clipeval dissect` again to finish it), 'failed' has its error."
)

ids = list(runs["run_id"])
default = ids.index(ctx.run_id) if ctx.run_id in ids else 0
chosen = st.selectbox("Details of run", ids, index=default, format_func=label.get, key="runs_detail")
run = runs[runs["run_id"] == chosen].iloc[0].to_dict()


def _rename(run_id: str) -> None:
    try:
        new = data.store().rename_run(run_id, st.session_state.get("rename_text", ""))
    except ClipevalError as err:
        st.session_state["runs_error"] = str(err)
        return
    data.after_write()
    # the run pickers keep their choice as its option's text, which the rename changes: the browser then sends
    # text no option has, and the sidebar fell back to its first run. Set by value, the choice stays and its
    # new text is drawn in this rerun.
    for key in (widgets.RUN_KEY, "runs_detail"):
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]
    st.session_state["runs_notice"] = f"Renamed run {run_id[:8]} to “{new}”."
    st.session_state.pop("rename_text", None)


r = st.columns([3, 1], vertical_alignment="bottom")
r[0].text_input(
    "New name for this run",
    key="rename_text",
    placeholder=run["name"],
    max_chars=120,
    help="Only the name shown changes; the run id (the hash of its settings) stays.",
)
r[1].button("Rename", on_click=_rename, args=(chosen,), icon=":material/edit:", key="rename_button", width="stretch")
if st.session_state.get("runs_error"):
    st.error(st.session_state.pop("runs_error"))
evals = data.evaluations()
evals = evals[evals["run_id"] == chosen]
latest = data.latest_evaluations(chosen)
c = st.columns([1.3, 1])
with c[0]:
    st.markdown("**Models**")
    for role, text in widgets.model_lines(run, latest).items():
        st.markdown(f"- **{role}:** {text}")
    st.markdown("**Evaluations of this run**")
    if evals.empty:
        st.caption(f"None yet: `clipeval evaluate {chosen} --evaluators cp,es,contrast,vqa`.")
    else:
        st.dataframe(
            tables.evaluation_table(evals),
            hide_index=True,
            width="stretch",
            column_config={
                "evaluator": st.column_config.TextColumn("evaluator", pinned=True),
                "seconds": st.column_config.NumberColumn(format="%.1f"),
                "model or reason": st.column_config.TextColumn(width="large"),
                "finished": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
            },
        )
        reasons = tables.full_reasons(evals)
        if reasons:
            # drawn when opened: the code blocks load a 1.5 MB highlighter into the browser
            why = st.expander(
                "Why an evaluation is unavailable or failed (full reasons)", key="why_unavailable", on_change="rerun"
            )
            if why.open:
                with why:
                    for name, reason in reasons:
                        st.markdown(f"**{name}**")
                        st.code(reason, language=None, wrap_lines=True)
    if run["status"] == "complete":
        for acc in data.imagenet_accuracy(chosen):
            st.markdown(
                f"**ImageNet label accuracy of `{acc['layer']}`** ({acc['neurons']:,} class neurons): "
                f"top-1 {acc['top1']:.1%}, top-5 {acc['top5']:.1%}"
            )
            st.caption(
                "The label (top-1) or one of the five best concepts (top-5) names the neuron's ImageNet "
                "class or a WordNet synonym of it. The original CLIP-Dissect reports 95.5% top-1 for "
                "ResNet-50 with CLIP, ImageNet validation images and the class names as concepts."
            )
        notes = widgets.judge_caveats(data.run_view(chosen))
        if not json_cell(run.get("models_json")).get("image_text", {}).get("is_clip", True):
            notes.insert(
                0,
                "Not comparable with the paper's 95.5% ImageNet label accuracy: this run's labeller is not CLIP but "
                "an ImageNet classifier (ConSE) that sees every image through the same 1,000 class names it is "
                "asked to name.",
            )
        widgets.caveats(notes)
with c[1]:
    st.markdown("**Configuration** (its hash names the run)")
    st.json(json_cell(run.get("config_json")), expanded=1)

# ---------------------------------------------------------------- comparison (Table 2)
st.subheader("Share judged correct per configuration")
complete = runs[runs["status"] == "complete"]
if complete.empty:
    st.caption("No complete run to compare yet.")
else:
    # each run at its own judges' defaults: the sidebar's thresholds are the selected run's, and a run judged
    # by another model has its thresholds on another scale (a ConSE cosine is not a CLIP cosine). CP apart: its
    # p is a share of the concept set, so one p over 998 and 20,000 concepts judged the top 1 against the top 40
    same, own = "the same rank cut-off in every run", "each run's own default p"
    cp_cols = st.columns([2, 1], vertical_alignment="bottom")
    cp_how = cp_cols[0].radio("CP compared at", [same, own], horizontal=True, key="runs_cp_how")
    cp_rank = None
    if cp_how == same:
        chosen_view = data.run_view(ctx.run_id) if ctx.run_id else None
        n_chosen = chosen_view.table("cp").n_concepts if chosen_view and "cp" in chosen_view.available else None
        cp_rank = int(
            cp_cols[1].number_input(
                "the label within the top N concepts of its run's concept set, N =",
                min_value=1,
                max_value=1_000_000,
                value=cp_cutoff(ctx.thresholds["cp"], n_chosen) or 1 if n_chosen else 10,
                key="runs_cp_rank",
                help="Starts at the rank the sidebar's p gives the selected run.",
            )
        )
    full = data.runs_comparison(None, ctx.k, cp_rank)
    # kept when empty (runs imported without a probe or concepts)
    about = ["run", "probe", "concepts", "neurons", "thresholds"]
    shares = [
        c for c in full.columns if c not in ("name", *about) and not c.endswith(" n") and full[c].notna().any()
    ]  # evaluators no run has are left out
    comparison = full.reindex(columns=["name", *about, *shares])
    # a real labels' share with its 95% interval and the neurons it is over, as the report; baselines as shares
    real = {c: full[f"{c} n"] for c in shares if f"{c} n" in full}
    text, small = tables.share_texts(comparison[shares], real, with_n=True)
    comparison[shares] = text.replace("", "n/a")
    short = {r: differs.get(r) or r[:8] for r in comparison["run"]}
    st.dataframe(
        tables.by_run_columns(comparison[[*about, *shares]].astype(str), short), hide_index=True, width="stretch"
    )
    weak = [
        f"- {short.get(row['run'], row['name'])}: {h.warning()}"
        for row in full.to_dict("records")
        for h in headlines.comparison_headlines(row)
        if h.warning()
    ]
    if weak:
        st.warning("\n".join(weak), icon=":material/warning:")
    few = [short.get(r, r[:8]) for r, s in zip(comparison["run"], small.any(axis=1)) if s]
    if few:
        st.warning(
            f"{', '.join(few)}: fewer than {intervals.MIN_N} neurons judged, so a share can move a lot with a few "
            "more neurons; read its interval.",
            icon=":material/warning:",
        )
    cp_text = (
        f"except CP, which judges every run at the same rank cut-off, the label within the top {cp_rank} concepts "
        "of the run's own concept set (its p differs with the set's size)"
        if cp_rank
        else "CP included: its p is a share of each run's concept set, so runs with sets of different sizes "
        "are judged at different ranks (the row 'thresholds' names each)"
    )
    st.caption(
        f"Pooled over all neurons of each run, k = {ctx.k} (or the run's largest), each run at its own judges' "
        f"default thresholds, {cp_text} (row 'thresholds': the values and where they came from), not the "
        "sidebar's, which are the selected run's; each real labels' share with its 95% Wilson interval and n, the neurons "
        "judged (as the HTML report); 'shuffled' and 'constant' are the baselines. Evaluators that no "
        "run has are left out (see each run's evaluations above for why)."
    )

# ---------------------------------------------------------------- timings (Table 3)
st.subheader("Time per stage and evaluator")
t = data.timings()
if t.empty:
    st.caption("No timings recorded yet.")
else:
    # the table first and the chart on its own tab, drawn when opened (with plotly, its 4.7 MB of script
    # cost 1.7 s of every first visit of this page for a chart below the fold)
    table_tab, chart_tab = st.tabs(["Table", "Chart"], key="timings_view", on_change="rerun")
    if table_tab.open:
        with table_tab:
            wide = tables.timings_table(t)
            steps = [c for c in wide.columns if c not in ("name", "run")]
            wide[steps] = wide[steps].map(lambda v: "" if v is None or v != v else f"{v:.1f} s")
            st.dataframe(
                tables.by_run_columns(wide, {r: differs.get(r) or r[:8] for r in wide["run"]}),
                hide_index=True,
                width="stretch",
            )
    if chart_tab.open:
        with chart_tab:
            named = t.assign(name=t["run"].map(lambda r: differs.get(r) or r[:8]))
            widgets.chart(charts.timings_bar(named), named, "timings")
    st.caption("Wall-clock seconds on the machine that made the run. Human annotation time is not recorded.")

# ---------------------------------------------------------------- delete
st.subheader("Delete a run")
doomed = st.selectbox(
    "Run to delete", ids, index=None, format_func=label.get, key="delete_choice", placeholder="Choose a run"
)
if doomed:
    info = runs[runs["run_id"] == doomed].iloc[0]
    n_humans = len(data.store().human_verdicts(doomed))
    st.warning(
        f"This permanently removes run **{info['name']}** (`{doomed}`, {int(info['n_neurons']):,} neurons), "
        f"its {int((data.evaluations()['run_id'] == doomed).sum())} evaluation(s) and {n_humans} human "
        "verdict(s). Probe thumbnails and concept sets stay (other runs may share them)."
    )
    sure = st.checkbox("I understand this cannot be undone", key="delete_confirm")

    def _delete(run_id: str, name: str) -> None:
        data.store().delete_run(run_id)
        data.after_write()
        st.session_state["runs_notice"] = f"Deleted run {name} ({run_id})."
        for key in ("delete_choice", "delete_confirm"):
            st.session_state.pop(key, None)

    st.button(
        "Delete permanently",
        type="primary",
        disabled=not sure,
        icon=":material/delete:",
        key="delete_button",
        on_click=_delete,
        args=(doomed, info["name"]),
    )
