"""Runs: every run with its settings and models, the share judged correct per configuration (the
paper's Table 2), time per stage and evaluator (Table 3), and deleting a run."""

import streamlit as st

from clipeval.ui import charts, data, tables, widgets

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
st.dataframe(tables.run_table(runs), hide_index=True, width="stretch",
             column_config={"created": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm"),
                            "peak RSS (MB)": st.column_config.NumberColumn(format="%.0f"),
                            "labelling model": st.column_config.TextColumn(width="large")})
st.caption("A run is written completely or not at all: 'running' is being written, 'interrupted' was stopped "
           "before it finished (run the same `clipeval dissect` again to finish it), 'failed' has its error.")

ids = list(runs["run_id"])
names = dict(zip(runs["run_id"], runs["name"]))
default = ids.index(ctx.run_id) if ctx.run_id in ids else 0
chosen = st.selectbox("Details of run", ids, index=default, format_func=lambda r: f"{names[r]}  ({r[:8]})",
                      key="runs_detail")
run = runs[runs["run_id"] == chosen].iloc[0].to_dict()
evals = data.evaluations()
evals = evals[evals["run_id"] == chosen]
latest = data.latest_evaluations(chosen)
c = st.columns([1.3, 1])
with c[0]:
    st.markdown("**Models**")
    for role, text in widgets.model_lines(run, latest, short=False).items():
        st.markdown(f"- **{role}:** {text}")
    st.markdown("**Evaluations of this run**")
    if evals.empty:
        st.caption(f"None yet: `clipeval evaluate {chosen} --evaluators cp,es,contrast,vqa`.")
    else:
        st.dataframe(tables.evaluation_table(evals), hide_index=True, width="stretch",
                     column_config={"seconds": st.column_config.NumberColumn(format="%.1f"),
                                    "model or reason": st.column_config.TextColumn(width="large"),
                                    "finished": st.column_config.DatetimeColumn(format="YYYY-MM-DD HH:mm")})
    if run["status"] == "complete":
        for acc in data.imagenet_accuracy(chosen):
            st.markdown(f"**ImageNet label accuracy of `{acc['layer']}`** ({acc['neurons']:,} class neurons): "
                        f"top-1 {acc['top1']:.1%}, top-5 {acc['top5']:.1%}")
            st.caption("The label (top-1) or one of the five best concepts (top-5) names the neuron's ImageNet "
                       "class or a WordNet synonym of it. The original CLIP-Dissect reports 95.5% top-1 for "
                       "ResNet-50 with CLIP, ImageNet validation images and the class names as concepts.")
with c[1]:
    st.markdown("**Configuration** (its hash names the run)")
    st.json(widgets.loads(run.get("config_json")), expanded=1)

# ---------------------------------------------------------------- comparison (Table 2)
st.subheader("Share judged correct per configuration")
complete = runs[runs["status"] == "complete"]
if complete.empty:
    st.caption("No complete run to compare yet.")
else:
    comparison = data.runs_comparison(ctx.thresholds, ctx.k).dropna(axis=1, how="all")
    info = ["name", "probe", "concepts", "neurons"]
    shares = [c for c in comparison.columns if c not in (*info, "run")]
    comparison, pct = widgets.as_percent(comparison[[*info, *shares, "run"]], shares)
    st.dataframe(comparison, hide_index=True, width="stretch", column_config=pct)
    st.caption(f"Pooled over all neurons of each run, at the sidebar's thresholds ({widgets.thresholds_caption(ctx)}); "
               "'shuffled' and 'constant' are the baselines. Evaluators that no run has are left out "
               "(see each run's evaluations above for why).")

# ---------------------------------------------------------------- timings (Table 3)
st.subheader("Time per stage and evaluator")
t = data.timings()
if t.empty:
    st.caption("No timings recorded yet.")
else:
    st.plotly_chart(charts.timings_bar(t), width="stretch", key="timings")
    wide = tables.timings_table(t)
    st.dataframe(wide, hide_index=True, width="stretch",
                 column_config={c: st.column_config.NumberColumn(format="%.1f s") for c in wide.columns
                                if c not in ("name", "run")})
    st.caption("Wall-clock seconds on the machine that made the run. Human annotation time is not recorded.")

# ---------------------------------------------------------------- delete
st.subheader("Delete a run")
doomed = st.selectbox("Run to delete", ids, index=None, format_func=lambda r: f"{names[r]}  ({r[:8]})",
                      key="delete_choice", placeholder="Choose a run")
if doomed:
    info = runs[runs["run_id"] == doomed].iloc[0]
    n_humans = len(data.store().human_verdicts(doomed))
    st.warning(f"This permanently removes run **{info['name']}** (`{doomed}`, {int(info['n_neurons']):,} neurons), "
               f"its {int((data.evaluations()['run_id'] == doomed).sum())} evaluation(s) and {n_humans} human "
               "verdict(s). Probe thumbnails and concept sets stay (other runs may share them).")
    sure = st.checkbox("I understand this cannot be undone", key="delete_confirm")

    def _delete(run_id: str, name: str) -> None:
        data.store().delete_run(run_id)
        data.after_write()
        st.session_state["runs_notice"] = f"Deleted run {name} ({run_id})."
        for key in ("delete_choice", "delete_confirm"):
            st.session_state.pop(key, None)

    st.button("Delete permanently", type="primary", disabled=not sure, icon=":material/delete:", key="delete_button",
              on_click=_delete, args=(doomed, info["name"]))
