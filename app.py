"""clipeval explorer: `streamlit run app.py` (or `./run app`). Reads the run store at $CLIPEVAL_DB
(default: clipeval.store.DEFAULT_DB). Layout only: every number comes from the clipeval package."""

import streamlit as st

from clipeval.ui import widgets

st.set_page_config(page_title="clipeval explorer", page_icon=":material/neurology:", layout="wide")

PAGES = [
    st.Page("pages/home.py", title="Overview", icon=":material/home:", default=True),
    st.Page("pages/neuron.py", title="Neuron explorer", icon=":material/neurology:", url_path="neuron"),
    st.Page("pages/layers.py", title="Layer overview", icon=":material/layers:", url_path="layers"),
    st.Page("pages/thresholds.py", title="Thresholds", icon=":material/tune:", url_path="thresholds"),
    st.Page("pages/agreement.py", title="Agreement", icon=":material/handshake:", url_path="agreement"),
    st.Page("pages/runs.py", title="Runs", icon=":material/list_alt:", url_path="runs"),
    st.Page("pages/annotate.py", title="Annotate", icon=":material/how_to_vote:", url_path="annotate"),
    st.Page("pages/sql.py", title="SQL", icon=":material/terminal:", url_path="sql"),
]

page = st.navigation(PAGES)
widgets.sidebar()  # run, k and thresholds: shared by every page and kept in the URL
page.run()
