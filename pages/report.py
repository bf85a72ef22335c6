"""A report to send: the run as one self-contained HTML file (the same as `clipeval report RUN --html`),
with the sidebar's thresholds and k."""

import time

import streamlit as st

from clipeval.errors import ClipevalError
from clipeval.render.report import build_report
from clipeval.ui import data, widgets

ctx = widgets.run_page("Report")
view = data.run_view(ctx.run_id)
k = min(ctx.k, view.kmax) if view.available else ctx.k
n_units = len(view.neurons)
st.markdown(
    "One HTML file with everything inside (thumbnails, the interactive charts and their script): it opens in any "
    "browser without a "
    "network. It holds the run's models and settings, the share judged correct per layer beside the baselines with "
    "95% intervals, the threshold sensitivity plots, agreement between raters with n and intervals, the labellers "
    "side by side (if the run has label sources), and a page of units per layer with their top images, label and "
    f"verdicts. It uses the sidebar's thresholds and k ({widgets.thresholds_caption(ctx)}). The same from the "
    f"command line: `clipeval report {ctx.run_id} --html report.html`."
)
c = st.columns([1, 1, 2])
cap = c[0].number_input(
    "Units per layer (0 = all)",
    min_value=0,
    value=0,
    step=10,
    key="report_units",
    help=f"The run has {n_units:,} units; all of them take a few MB.",
)


def _build(run_id: str, thresholds: dict, k: int, units: int | None) -> None:
    # a callback (runs before the page): the sidebar may rerun the script, which would drop a button's
    # one-run "clicked" value before the page saw it
    start = time.perf_counter()
    try:
        html = build_report(data.store(), run_id, thresholds, k, units)
    except ClipevalError as e:
        st.session_state["report_html"] = (run_id, None, str(e))
        return
    st.session_state["report_html"] = (run_id, html, time.perf_counter() - start)


c[1].button(
    "Build the report",
    type="primary",
    key="report_build",
    on_click=_build,
    args=(ctx.run_id, dict(ctx.thresholds), k, int(cap) or None),
)
built = st.session_state.get("report_html")
if built and built[0] == ctx.run_id and built[1] is None:
    st.error(built[2])
elif built and built[0] == ctx.run_id:
    _, html, secs = built
    st.success(f"Report built in {secs:.1f} s: {len(html.encode()) / 1e6:.1f} MB.")
    st.download_button(
        "Download report.html",
        html,
        file_name=f"clipeval-report-{ctx.run_id}.html",
        mime="text/html",
        key="report_download",
        icon=":material/download:",
    )
