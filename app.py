"""clipeval explorer: `streamlit run app.py` (or `./run app`). Reads the run store at $CLIPEVAL_DB
(default: clipeval.store.DEFAULT_DB). Layout only: every number comes from the clipeval package."""

from pathlib import Path

import streamlit as st

from clipeval.render import charts
from clipeval.store import StoreBusy
from clipeval.ui import build, data, widgets

# the page icon ships with the app: a ":material/...:" icon made the browser fetch it from a font server
# on every load, which fails offline
ICON = str(Path(__file__).resolve().parent / "assets" / "icon.png")
st.set_page_config(page_title="clipeval explorer", page_icon=ICON, layout="wide")
# Narrow windows (about 800 px with the sidebar open): let columns wrap instead of squeezing, so metric
# values, toggle names and buttons are never cut to "8..." or "V...".
st.markdown(
    """<style>
/* widgets.side_by_side: a pair shares the row while each gets HALF_MIN px, else they stack */
[data-testid="stHorizontalBlock"]:has(> [data-testid="stLayoutWrapper"] > [class*="st-key-HALF_KEY"]) {
  flex-wrap: wrap; }
[data-testid="stLayoutWrapper"]:has(> [class*="st-key-HALF_KEY"]) { flex: 1 1 HALF_MINpx; min-width: min(HALF_MINpx, 100%); }
@media (max-width: 1100px) {
  /* in the main area only: the sidebar's slider and its number box stay on one row */
  [data-testid="stMain"] [data-testid="stHorizontalBlock"] { flex-wrap: wrap; row-gap: 0.5rem; }
  /* two columns a row, none growing alone to full width (a lone 5th image would fill the page) */
  [data-testid="stMain"] [data-testid="stHorizontalBlock"] > [data-testid="stColumn"] { min-width: min(12rem, 100%);
    flex: 0 1 calc(50% - 0.5rem); }
  [data-testid="stButtonGroup"] > div { flex-wrap: wrap; }
  /* a column holding a table takes the whole row: half of 500 px shows two of its columns */
  [data-testid="stHorizontalBlock"] > [data-testid="stColumn"]:has([data-testid="stDataFrame"], .cv-table) {
    flex: 1 1 100%; }
}
</style>""".replace("HALF_KEY", widgets.HALF_KEY).replace("HALF_MIN", str(charts.HALF_MIN)),
    unsafe_allow_html=True,
)

PAGES = [
    st.Page("pages/home.py", title="Overview", icon=":material/home:", default=True),
    st.Page("pages/neuron.py", title="Neuron explorer", icon=":material/neurology:", url_path="neuron"),
    st.Page("pages/layers.py", title="Layer overview", icon=":material/layers:", url_path="layers"),
    st.Page("pages/thresholds.py", title="Thresholds", icon=":material/tune:", url_path="thresholds"),
    st.Page("pages/agreement.py", title="Agreement", icon=":material/handshake:", url_path="agreement"),
    st.Page("pages/labellers.py", title="Labellers", icon=":material/compare:", url_path="labellers"),
    st.Page("pages/runs.py", title="Runs", icon=":material/list_alt:", url_path="runs"),
    st.Page("pages/report.py", title="Report", icon=":material/description:", url_path="report"),
    st.Page("pages/annotate.py", title="Annotate", icon=":material/how_to_vote:", url_path="annotate"),
    st.Page("pages/sql.py", title="SQL", icon=":material/terminal:", url_path="sql"),
    st.Page("pages/glossary.py", title="Glossary", icon=":material/menu_book:", url_path="glossary"),
]

# the first four pages listed (those the Overview's "start here" names), the others under "View more": eleven links pushed the sidebar's thresholds
# below the fold of a 900 px high window (the Overview lists every page)
page = st.navigation(PAGES, expanded=4)
try:
    data.flush_verdicts()  # annotations kept while a clipeval command held the store are saved first
    for message in data.dropped_verdicts(clear=True):
        st.warning(message, icon=":material/warning:")
    data.warm_up()  # once per server: every run's scores load in the background while the first page draws
    widgets.sidebar()  # run, k and thresholds: shared by every page and kept in the URL
    build.build_progress()  # a demo build running in the background: its stage and time left, on every page
    page.run()
except StoreBusy as busy:  # a clipeval command held the store longer than the app waits
    widgets.store_busy(busy)
