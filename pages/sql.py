"""SQL: a read-only DuckDB console over the run store. One reading statement at a time (SELECT, WITH,
FROM, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN, read-only PRAGMAs); it runs on its own cursor inside a
transaction that is always rolled back, so the console cannot change the store."""

import streamlit as st

from clipeval import store as store_module
from clipeval.errors import ClipevalError
from clipeval.store import Store
from clipeval.ui import data, widgets

ctx = widgets.context()
st.title("SQL console")
st.caption(
    f"Read-only, over the run store `{data.db_path()}`: one SELECT / WITH / FROM / DESCRIBE / SHOW / "
    "SUMMARIZE / EXPLAIN statement at a time. Writing statements (INSERT, UPDATE, DELETE, CREATE, DROP, ALTER, "
    "ATTACH, COPY, SET, ...) and reading files or URLs are refused; each query runs in a transaction that is "
    "rolled back."
)
widgets.models_banner(ctx)
store = data.store()

examples = Store.example_queries()


def _load_example() -> None:
    st.session_state["sql_text"] = examples[st.session_state["sql_example"]]


c = st.columns([2, 1])
c[0].selectbox(
    "Example queries",
    list(examples),
    index=None,
    key="sql_example",
    on_change=_load_example,
    placeholder="Pick an example to load it into the editor",
)
max_rows = c[1].number_input("Rows shown at most", 10, 100_000, 5_000, step=1_000, key="sql_max_rows")
if "sql_text" not in st.session_state:
    st.session_state["sql_text"] = examples["Runs and their status"]
sql = st.text_area("SQL", key="sql_text", height=180)


def _run_query() -> None:
    text = st.session_state["sql_text"]
    try:
        result, more = store.read_only_query(text, int(st.session_state.get("sql_max_rows", 5_000)))
    except ClipevalError as err:
        st.session_state["sql_error"] = str(err)
    else:
        st.session_state.pop("sql_error", None)
        st.session_state["sql_result"] = (text, result, more)


st.button(
    "Run", type="primary", icon=":material/play_arrow:", shortcut="Ctrl+Enter", key="sql_run", on_click=_run_query
)

# drawn when opened: a code block loads a 1.5 MB highlighter into the browser on the page's first view
tables_help = st.expander("Tables of the run store", key="sql_tables", on_change="rerun")
if tables_help.open:
    with tables_help:
        st.code(store_module.__doc__.split("Tables\n", 1)[-1].split("Writes that", 1)[0].rstrip(), language=None)
        st.caption("DESCRIBE <table> shows a table's columns.")

if "sql_result" not in st.session_state and "sql_error" not in st.session_state:
    _run_query()  # the first visit shows the example's result at once
if st.session_state.get("sql_error"):
    st.error(st.session_state["sql_error"])
last = st.session_state.get("sql_result")
if last:
    query, result, more = last
    if query != sql:
        st.caption("Result of the previous query (press Run for the one in the editor).")
    st.caption(f"{len(result):,} row(s){f', {more}' if more else ''}.")  # more: why the result was cut
    st.dataframe(result, hide_index=True, width="stretch")
    st.download_button(
        "Download CSV",
        result.to_csv(index=False).encode(),
        file_name="clipeval-query.csv",
        mime="text/csv",
        icon=":material/download:",
        key="sql_download",
    )
