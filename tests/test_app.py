"""The Streamlit explorer, driven headlessly with streamlit.testing.v1.AppTest on a real small run
(the `run_store` fixture: EfficientNet-Lite0, the small offline probe, CP / ES / contrast scores)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit import dataframe_util
from streamlit.testing.v1 import AppTest

from clipeval.analysis import headlines
from clipeval.analysis.headlines import weak_evaluators
from clipeval.analysis.intervals import MIN_N, share_interval
from clipeval.analysis.runview import RunView, default_thresholds
from clipeval.render.tables import MUTED_COLOUR

APP = str(Path(__file__).resolve().parents[1] / "app.py")
PAGES = [
    "pages/home.py",
    "pages/neuron.py",
    "pages/layers.py",
    "pages/thresholds.py",
    "pages/agreement.py",
    "pages/runs.py",
    "pages/annotate.py",
    "pages/sql.py",
]
TIMEOUT = 90


pytestmark = pytest.mark.usefixtures("fresh_caches")


def open_page(page: str | None = None, **query) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for k, v in query.items():
        at.query_params[k] = str(v)
    at.run()
    if page:
        at.switch_page(page).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def charts(at: AppTest) -> list[dict]:
    """The plotly charts on the page (widgets.chart), as the figures sent to the browser."""
    return [json.loads(e.proto.spec) for e in at.get("plotly_chart")]


def csv_buttons(at: AppTest) -> list[str]:
    """The keys of the 'Download data (CSV)' buttons beside the charts."""
    return [b.key for b in at.get("download_button") if b.proto.label == "Download data (CSV)"]


_ESCAPED = re.compile(r"\\([!-/:-@\[-`{-~])")  # tables.markdown_literal's backslashes


def _shown(text: str) -> str:
    return _ESCAPED.sub(r"\1", str(text))


def tables(at: AppTest) -> list[pd.DataFrame]:
    """The static tables on the page (st.table of a Styler, widgets.table), as the text their cells show."""
    out = []
    for t in at.table:
        frame = dataframe_util.convert_arrow_bytes_to_pandas_df(t.proto.arrow_data.styler.display_values)
        out.append(frame.rename(columns=_shown).map(_shown))
    return out


def greyed(at: AppTest, index: int) -> set[tuple[int, int]]:
    """(row, column) of the cells of the page's index-th static table that the Styler greys."""
    out = set()
    for rule in at.table[index].proto.arrow_data.styler.styles.splitlines():
        selector, _, declarations = rule.partition("{")
        if f"color: {MUTED_COLOUR}" in declarations:
            out |= {(int(r), int(c)) for r, c in re.findall(r"row(\d+)_col(\d+)", selector)}
    return out


def texts(at: AppTest) -> str:
    parts = (
        [m.value for m in at.markdown]
        + [c.value for c in at.caption]
        + [t.value for t in at.title]
        + [s.value for s in at.subheader]
        + [i.value for i in at.info]
        + [w.value for w in at.warning]
        + [e.value for e in at.error]
        + [s.value for s in at.success]
    )
    return "\n".join(str(p) for p in parts)


def metric(at: AppTest, label_start: str) -> str:
    hits = [m.value for m in at.metric if m.label.startswith(label_start)]
    assert hits, [m.label for m in at.metric]
    return hits[0]


def add_humans(store, run_id: str, rater: str = "alice", per_layer: int = 20, seed: int = 0) -> pd.DataFrame:
    """Human verdicts that mostly follow CP's verdicts (so calibration and agreement have signal)."""
    from clipeval.analysis.runview import RunView, default_thresholds

    view = RunView(store, run_id)
    f = view.verdicts("cp", default_thresholds()["cp"])
    pick = pd.concat([g.head(per_layer) for _, g in f.groupby("layer", sort=False)])
    flip = np.random.default_rng(seed).random(len(pick)) < 0.1
    frame = pick.assign(rater=rater, verdict=pick["verdict"].to_numpy() ^ flip)
    store.add_human_verdicts(run_id, frame, source="test")
    return frame


# ------------------------------------------------------------------------------------ every page
@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_and_names_the_models(app_store, page):
    store, run_id = app_store
    store.record_evaluation(
        "vqa-missing", run_id, "vqa", "{}", status="unavailable", error="BLIP-2 weights are not on this machine"
    )
    at = open_page(page, rater="tester")
    body = texts(at)
    assert "not CLIP" in body, "every page says the labelling model is an offline stand-in, not CLIP"
    assert "BLIP-2 unavailable: BLIP-2 weights are not on this machine" in body
    assert at.sidebar.selectbox(key="run_choice").value == run_id


def test_no_runs_shows_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.setenv("CLIPEVAL_DB", str(tmp_path / "empty.duckdb"))
    for page in [
        None,
        "pages/neuron.py",
        "pages/layers.py",
        "pages/thresholds.py",
        "pages/agreement.py",
        "pages/annotate.py",
        "pages/runs.py",
    ]:
        body = texts(open_page(page))
        assert "No complete run" in body and "clipeval demo" in body and "./run app" in body, page


# ------------------------------------------------------------------------------------ widgets and URL
def test_tau_slider_changes_the_verdicts_shown(app_store):
    at = open_page()
    before = metric(at, "ES: labels judged correct")
    at.number_input(key="tau").set_value(0.9).run()
    after = metric(at, "ES: labels judged correct")
    assert before != after and float(after.rstrip("%")) < float(before.rstrip("%"))
    # the layer overview follows the same slider (shared sidebar state)
    at.switch_page("pages/layers.py").run()
    assert not at.exception
    assert at.number_input(key="tau").value == pytest.approx(0.9)


def test_url_parameters_restore_the_view(app_store):
    store, run_id = app_store
    layer = store.layers(run_id)["layer"].iloc[1]
    at = open_page("pages/neuron.py", run=run_id, layer=layer, unit=3, tau=0.3, k=3, show_cp="false")
    assert at.selectbox(key="layer").value == layer
    assert at.number_input(key="unit").value == 3
    assert at.number_input(key="tau").value == pytest.approx(0.3)
    assert at.slider(key="k").value == 3
    assert at.toggle(key="show_cp").value is False and at.toggle(key="show_es").value is True
    body = texts(at)
    assert f"{layer} / unit 3" in body
    label = store.neurons(run_id, layer).set_index("unit").loc[3, "label"]
    assert f"“{label}”" in body
    assert "beyond k = 3" in body  # images 4 and 5 are shown but not judged
    assert "CP rank" not in body and "ES cos" in body  # the CP toggle is off, ES on


def test_neuron_explorer_navigates_and_searches(app_store):
    store, run_id = app_store
    at = open_page("pages/neuron.py")
    assert at.number_input(key="unit").value == 0
    at.button(key="next").click().run()
    assert at.number_input(key="unit").value == 1
    neurons = store.neurons(run_id)
    at.button(key="prev").click().run()
    assert (at.selectbox(key="layer").value, at.number_input(key="unit").value) == (neurons.iloc[0]["layer"], 0)
    assert at.button(key="prev").disabled  # the first neuron: Previous must not jump to the last layer
    target = neurons.iloc[len(neurons) // 2]
    at.text_input(key="search_text").set_value(target["label"]).run()
    at.selectbox(key="search_hit").set_value(f"{target['layer']}/{target['unit']}").run()
    assert (at.selectbox(key="layer").value, at.number_input(key="unit").value) == (target["layer"], target["unit"])
    assert not at.exception
    # images come from stored thumbnails, with their source and licence
    assert len(at.image) >= 5
    assert any("procedural" in c.value or "scikit" in c.value for c in at.caption)


def test_neuron_explorer_tables_are_static_and_complete(app_store):
    """The runner-up concepts and the verdicts are a few rows read at a glance: static tables, so the page's
    first view loads no data grid (~1.7 MB of scripts), every column visible."""
    store, run_id = app_store
    at = open_page("pages/neuron.py")
    assert not at.dataframe
    layer = store.neurons(run_id).iloc[0]["layer"]
    verdicts, ru = tables(at)  # the verdict details come first, under the images; the runner-ups after
    want = store.runner_ups(run_id, layer, 0)
    assert list(ru.columns) == ["rank", "concept", "score"] and list(ru["concept"]) == list(want["concept"])
    assert list(ru["score"]) == [f"{x:.3f}" for x in want["score"]]
    assert list(verdicts.columns) == ["rater", "verdict", "score", "threshold", "shuffled label", "constant label"]
    assert {"CP", "ES", "Contrast"} <= set(verdicts["rater"])


def test_static_table_escapes_its_cells(monkeypatch):
    """Labels and rater names are arbitrary text, and st.table reads cells and headers as Markdown: they show
    literally (no emphasis, maths, colour or HTML), and a number keeps its column's format."""
    from clipeval.ui import widgets

    shown = []
    monkeypatch.setattr(widgets.st, "table", lambda styler, **kw: shown.append(styler))
    text = "<b>bold</b> | $x$ & 'q' *y* :red[z]"
    frame = pd.DataFrame({text: [text], "n": [3], "share": [0.25]})
    widgets.table(frame, formats={"share": widgets.fmt_pct})
    styler = shown[0]
    cells = styler._translate(False, False)["body"][0]
    values = [c["display_value"] for c in cells if c["type"] == "td"]
    assert _shown(styler.data.columns[0]) == text and _shown(values[0]) == text
    assert re.search(r"(?<!\\)[<*$|:\[]", values[0] + styler.data.columns[0]) is None  # every one escaped
    assert [_shown(v) for v in values[1:]] == ["3", "25.0%"]


def test_neuron_explorer_draws_only_the_open_tab(app_store):
    """The tabs below the top images are drawn when opened (a first view sent 30 images and a chart for
    the one tab shown): the histogram appears with its tab, the level images leave with theirs."""
    at = open_page("pages/neuron.py")
    n_default = len(at.image)
    assert not charts(at) and "spread over the neuron's activation range" in texts(at)
    at.session_state["beyond"] = "Activation histogram"
    at.run()
    assert not at.exception and len(charts(at)) == 1 and charts(at)[0]["data"][0]["name"] == "probe images"
    assert csv_buttons(at) == ["csv_histogram"]
    assert "spread over the neuron's activation range" not in texts(at) and len(at.image) < n_default
    at.session_state["beyond"] = "Least active"
    at.run()
    assert not charts(at) and "least activating probe images" in texts(at)


def test_agreement_charts_carry_n_and_intervals_and_their_data(app_store):
    """The kappa matrix's hover holds each pair's interval and n; each chart has its data as CSV beside it."""
    at = open_page("pages/agreement.py")
    heat = [c for c in charts(at) if c["data"][0]["type"] == "heatmap"]
    assert len(heat) == 2  # the kappa matrix and the pair's confusion matrix
    hover = [cell for row in heat[0]["data"][0]["customdata"] for cell in row]
    assert any("95% interval [" in h and "<br>n=" in h for h in hover)
    assert csv_buttons(at) == ["csv_kappa_pairs", "csv_confusion"]


def test_unavailable_evaluator_is_shown_with_its_reason(app_store):
    store, run_id = app_store
    store.record_evaluation("vqa-missing", run_id, "vqa", "{}", status="unavailable", error="no BLIP-2 weights here")
    at = open_page("pages/neuron.py")
    assert at.toggle(key="show_vqa").disabled
    assert "VQA is unavailable for this run: no BLIP-2 weights here" in texts(at)
    at.switch_page("pages/layers.py").run()
    assert "VQA is unavailable for this run: no BLIP-2 weights here" in texts(at)


# ------------------------------------------------------------------------------------ pages with data
def test_layer_overview_defines_interpretable_and_filters_the_grid(app_store):
    store, run_id = app_store
    neurons = store.neurons(run_id)
    first = neurons["layer"].iloc[0]
    n_first = int((neurons["layer"] == first).sum())
    at = open_page("pages/layers.py")
    assert "every chosen evaluator" in texts(at)
    assert len(at.dataframe) == 1  # the unit grid; the per-layer shares and frequent labels are static tables
    assert "n_negatives" not in at.dataframe[0].value.columns  # an internal name, shown on the neuron explorer
    summary, frequent = tables(at)
    assert list(summary["layer"]) == [*dict.fromkeys(neurons["layer"]), "overall"]
    assert summary["neurons"].iloc[-1] == str(len(neurons))
    # each evaluator's real share with its Wilson interval (as the report), the baselines as shares
    real = ["CP", "ES", "Contrast"]
    assert summary[real].stack().str.fullmatch(r"\d+\.\d% \[\d+\.\d%, \d+\.\d%\]").all()
    assert summary.drop(columns=["layer", "neurons", *real]).stack().str.fullmatch(r"\d+\.\d%").all()
    few = [i for i, n in enumerate(summary["neurons"]) if int(n) < MIN_N]  # blocks.1: 24 channels
    assert few and greyed(at, 0) == {(i, c) for i in few for c in range(2, summary.shape[1])}
    assert any(f"fewer than {MIN_N} neurons" in w.value for w in at.warning)
    assert frequent["share"].str.endswith("%").all() and len(frequent) > 0
    # one layer at a time (the run's every unit is 100k rows at scale), the first by default, with a link per unit
    assert f"{n_first:,} of {n_first:,} units of {first}" in texts(at)
    assert set(at.dataframe[0].value["layer"]) == {first}
    last = neurons["layer"].iloc[-1]
    at.selectbox(key="grid_layer").set_value(last).run()
    grid = at.dataframe[0].value
    assert set(grid["layer"]) == {last} and len(grid) == int((neurons["layer"] == last).sum())
    assert grid["open"].str.contains(f"layer={last}&unit=").all()
    linked = open_page()
    linked.switch_page("pages/layers.py")
    linked.query_params.update({"grid_layer": last})
    linked.run()
    assert set(linked.dataframe[0].value["layer"]) == {last}  # a link shows the layer it names
    interpretable_all = {m.label: m.value for m in at.metric}
    at.multiselect(key="interp_evaluators").set_value(["es"]).run()
    assert not at.exception
    assert {m.label: m.value for m in at.metric} != interpretable_all  # fewer evaluators must agree


def test_layer_overview_warns_when_an_evaluator_passes_wrong_labels(app_store):
    at = open_page("pages/layers.py", tau=-1)  # every image matches: shuffled and constant labels pass too
    warned = [w.value for w in at.warning]
    assert any(w.startswith("**ES** judges 100.0% of") for w in warned), warned
    store, run_id = app_store
    summary = RunView(store, run_id).layer_summary(dict(default_thresholds(), es=-1.0))
    flagged = sorted(w["evaluator"] for w in weak_evaluators(summary))
    assert sorted(w.split("**")[1] for w in warned if "barely tells" in w) == flagged


def test_overview_shares_carry_their_wilson_interval_and_n(app_store):
    """The Overview's headline shares show the interval and n the HTML report gives, not a bare percentage."""
    store, run_id = app_store
    view = RunView(store, run_id)
    heads = headlines.headlines(view.layer_summary(view.thresholds(), view.kmax))
    at = open_page()
    for title, h in heads.items():
        shown = [m for m in at.metric if m.label == f"{title}: labels judged correct"][0]
        f = share_interval(h.real, h.n)
        assert shown.value == f"{100 * h.real:.1f}%" and shown.delta == f"95% {f.interval()}, n = {h.n:,}"
        assert f.interval().startswith("[")


def test_runs_comparison_carries_intervals_and_n(app_store):
    store, run_id = app_store
    at = open_page("pages/runs.py")
    table = [d.value for d in at.dataframe if "thresholds" in set(d.value.iloc[:, 0])][0].set_index("")
    view = RunView(store, run_id)
    h = headlines.headlines(view.layer_summary(view.thresholds(), view.kmax))["ES"]
    assert table.loc["ES"].iloc[0] == share_interval(h.real, h.n).text()  # '12.3% [10.1%, 14.8%] n=1,000'
    assert table.loc["ES shuffled"].iloc[0].endswith("%")


def test_thresholds_default_to_the_largest_reference_and_flag_a_near_chance_calibration(app_store):
    """A rater who judged 5 neurons no longer stands in for a larger reference; a held-out kappa comes with its
    interval and, near chance, a warning."""
    store, run_id = app_store
    neurons = store.neurons(run_id)
    store.add_human_verdicts(run_id, neurons.head(5).assign(rater="alice", verdict=True), source="test")
    coin = np.random.default_rng(3).random(90) < 0.5  # verdicts unrelated to any score: kappa near 0
    store.add_human_verdicts(run_id, neurons.head(90).assign(rater="bob", verdict=coin), source="test")
    at = open_page("pages/thresholds.py")
    assert at.selectbox(key="ref").value == "human: bob"
    at.selectbox(key="cal_evaluator").set_value("es").run()
    at.selectbox(key="cal_rater").set_value("human: bob").run()
    at.button(key="calibrate").click().run()
    assert not at.exception
    held = [m for m in at.metric if m.label == "Held-out kappa"][0]
    assert re.fullmatch(r"95% \[-?\d\.\d{3}, -?\d\.\d{3}\], n = \d+", held.delta), held.delta
    assert any(w.value.startswith("Near chance") for w in at.warning), [w.value for w in at.warning]


def test_thresholds_calibrate_to_a_human_and_apply(app_store):
    store, run_id = app_store
    add_humans(store, run_id, "alice", per_layer=30)
    at = open_page("pages/thresholds.py")
    assert at.selectbox(key="ref").value == "human: alice"
    drawn = charts(at)
    assert len(drawn) >= 6  # share and kappa curves for CP, ES and Contrast
    # every chart: interactive hover across its lines, the two thresholds marked, its data downloadable
    assert all(c["layout"]["hovermode"] == "x unified" and c["layout"]["shapes"] for c in drawn)
    assert {"csv_sweep_share_cp", "csv_sweep_kappa_es"} <= set(csv_buttons(at)) and len(csv_buttons(at)) == len(drawn)
    at.selectbox(key="cal_evaluator").set_value("es").run()
    at.button(key="calibrate").click().run()
    assert not at.exception
    fitted = [m for m in at.metric if m.label == "Fitted tau"]
    assert fitted and "Held-out kappa" in [m.label for m in at.metric]
    at.button(key="apply_calibration").click().run()
    assert at.number_input(key="tau").value == pytest.approx(float(fitted[0].value), rel=1e-3)


def test_agreement_compares_humans_and_evaluators(app_store):
    store, run_id = app_store
    add_humans(store, run_id, "alice")
    add_humans(store, run_id, "bob", seed=1)
    at = open_page("pages/agreement.py")
    assert at.selectbox(key="agree_ref").value == "human: alice"
    assert not at.dataframe  # the one grid, every measure per layer, is drawn when its expander opens
    table = tables(at)[0]
    assert {"CP", "ES", "Contrast", "human: bob"} <= set(table.iloc[:, 0])
    assert "overall" in table.columns
    assert "IoU" in texts(at) and "agreement" in texts(at)
    at.selectbox(key="agree_rater").set_value("CP").run()
    assert {"Agreement", "Cohen's kappa", "Jaccard", "F1"} <= {m.label for m in at.metric}
    at.session_state["agree_every"] = True
    at.run()
    long = at.dataframe[0].value
    assert {"rater", "layer", "n", "kappa", "kappa lo"} <= set(long.columns) and "human: bob" in set(long["rater"])


# ------------------------------------------------------------------------------------ writes
def test_annotation_writes_land_in_the_store_and_resume(app_store):
    store, run_id = app_store
    at = open_page("pages/annotate.py", rater="carol")
    first = store.annotation_queue(run_id, "carol").iloc[0]
    at.button(key="ann_yes").click().run()
    got = store.human_verdicts(run_id, "carol")
    assert len(got) == 1 and (got.iloc[0]["layer"], got.iloc[0]["unit"], bool(got.iloc[0]["verdict"])) == (
        first["layer"],
        first["unit"],
        True,
    )
    at.button(key="ann_skip").click().run()  # no write, moves on
    assert len(store.human_verdicts(run_id, "carol")) == 1
    at.button(key="ann_no").click().run()
    got = store.human_verdicts(run_id, "carol")
    assert len(got) == 2 and not got["verdict"].all()
    assert f"2 of {len(store.neurons(run_id))} neurons judged" in at.progress[0].text

    # a new session with the same name resumes: the skipped neuron (not stored) comes back first
    queue = store.annotation_queue(run_id, "carol")
    again = open_page("pages/annotate.py", rater="carol")
    assert f"{queue.iloc[0]['layer']} / unit {queue.iloc[0]['unit']}" in texts(again)


def test_two_tabs_annotating_at_once_lose_nothing(app_store):
    store, run_id = app_store
    tab1 = open_page("pages/annotate.py", rater="dave")
    tab2 = open_page("pages/annotate.py", rater="dave")  # both show the same first neuron
    tab1.button(key="ann_yes").click().run()
    tab2.button(key="ann_no").click().run()  # answers the neuron it showed, not tab1's next one
    history = store.rater_history(run_id, "dave")
    assert len(history) == 2 and history["unit"].nunique() == 1
    current = store.human_verdicts(run_id, "dave")
    assert len(current) == 1 and not bool(current.iloc[0]["verdict"])  # the newest answer counts
    tab1.button(key="ann_yes").click().run()
    assert len(store.rater_history(run_id, "dave")) == 3


def test_sql_console_reads_and_refuses_writes(app_store):
    store, run_id = app_store
    counts = {t: store.df(f"SELECT count(*) AS n FROM {t}")["n"][0] for t in ("runs", "neurons", "human_verdicts")}
    version = store.data_version()
    at = open_page("pages/sql.py")
    assert len(at.dataframe[0].value) == 1  # the first example runs at once
    assert not at.code  # the store's tables are listed when their expander is opened
    at.session_state["sql_tables"] = True
    at.run()
    assert any("neurons" in c.value for c in at.code)
    at.text_area(key="sql_text").set_value("SELECT layer, count(*) AS n FROM neurons GROUP BY layer").run()
    at.button(key="sql_run").click().run()
    assert len(at.dataframe[0].value) == len(store.layers(run_id)) and len(at.get("download_button")) == 1
    for sql in [
        "DROP TABLE runs",
        "DELETE FROM neurons",
        "SELECT 1; DROP TABLE runs",
        "INSERT INTO human_verdicts VALUES ('x', 'y', 1, 'z', true, 's', now())",
    ]:
        at.text_area(key="sql_text").set_value(sql).run()
        at.button(key="sql_run").click().run()
        assert at.error, sql
    assert {t: store.df(f"SELECT count(*) AS n FROM {t}")["n"][0] for t in counts} == counts
    assert store.data_version() == version


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO runs (run_id) VALUES ('x')",
        "UPDATE neurons SET label = 'x'",
        "DELETE FROM neurons",
        "DROP TABLE neurons",
        "CREATE TABLE t (a INT)",
        "CREATE TABLE t AS SELECT 1",
        "ALTER TABLE runs ADD COLUMN b INT",
        "ATTACH ':memory:' AS other",
        "DETACH other",
        "COPY runs TO '/tmp/clipeval-test-copy.csv'",
        "EXPORT DATABASE '/tmp/clipeval-test-export'",
        "SET threads = 1",
        "CHECKPOINT",
        "VACUUM",
        "BEGIN TRANSACTION",
        "COMMIT",
        "INSTALL httpfs",
        "LOAD httpfs",
        "PRAGMA enable_profiling",
        "CALL pragma_table_info('runs')",
        "EXPLAIN ANALYZE DELETE FROM neurons",
        "SELECT 1; DELETE FROM neurons",
        "SELECT 1;; DROP TABLE runs",
        "CREATE MACRO m(a) AS a",
        "PREPARE p AS DELETE FROM neurons",
        "USE memory",
        "",
        # reading anything but the store is refused too
        "SELECT * FROM read_csv('/etc/passwd')",
        "FROM '/etc/passwd'",
        "SUMMARIZE '/etc/hosts'",
        "SELECT * FROM query('SELECT 1')",
        "EXPLAIN SELECT * FROM read_text('/etc/hosts')",
    ],
)
def test_read_only_query_refuses_writes_and_files(run_store, sql):
    from clipeval.errors import ClipevalError

    store, _, _ = run_store
    before = (
        store.data_version(),
        store.df("SELECT count(*) AS n FROM neurons")["n"][0],
        sorted(store.df("SHOW TABLES")["name"]),
    )
    with pytest.raises(ClipevalError):
        store.read_only_query(sql)
    after = (
        store.data_version(),
        store.df("SELECT count(*) AS n FROM neurons")["n"][0],
        sorted(store.df("SHOW TABLES")["name"]),
    )
    assert after == before


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*) FROM neurons",
        "FROM runs",
        "WITH a AS (SELECT 1 AS x) SELECT x FROM a",
        "DESCRIBE neurons",
        "SHOW TABLES",
        "SUMMARIZE layers",
        "EXPLAIN SELECT 1",
        "PRAGMA table_info('runs')",
    ],
)
def test_read_only_query_answers_reads(run_store, sql):
    store, _, _ = run_store
    frame, more = store.read_only_query(sql, max_rows=5)
    assert len(frame) >= 1 and len(frame) <= 5


def test_runs_page_lists_unfinished_runs(app_store):
    store, run_id = app_store
    store.start_run("deadbeef0000", "crashed run", "dissect", "{}", "deadbeef0000")
    store.fail_run("deadbeef0000", "failed", "RuntimeError: out of memory")
    at = open_page("pages/runs.py")
    runs = at.dataframe[0].value
    assert set(runs["status"]) == {"complete", "failed"} and "RuntimeError: out of memory" in set(runs["error"])
    assert len(at.sidebar.selectbox(key="run_choice").options) == 1  # only complete runs can be explored
    assert at.sidebar.selectbox(key="run_choice").value == run_id


def test_runs_page_draws_the_timings_chart_and_full_reasons_when_opened(app_store):
    """The Runs page's first view has no chart and no code block (the browser loaded 1.5 MB of syntax
    highlighter for an expander that starts closed): both are drawn on opening their tab / expander."""
    store, run_id = app_store
    store.record_evaluation(
        "vqa-missing", run_id, "vqa", "{}", status="unavailable", error="no BLIP-2 weights here\nline two of the reason"
    )
    at = open_page("pages/runs.py")
    assert not charts(at) and not at.code
    assert any("Wall-clock seconds" in c.value for c in at.caption)
    at.session_state["timings_view"] = "Chart"
    at.session_state["why_unavailable"] = True
    at.run()
    assert not at.exception and len(charts(at)) == 1
    assert any("line two of the reason" in c.value for c in at.code)


def test_delete_run_needs_confirmation(app_store):
    store, run_id = app_store
    at = open_page("pages/runs.py")
    assert len(at.dataframe) >= 2  # the runs, the comparison (and timings)
    at.selectbox(key="delete_choice").set_value(run_id).run()
    assert at.button(key="delete_button").disabled, "nothing can be deleted without the confirmation"
    assert "permanently removes run" in texts(at)
    at.checkbox(key="delete_confirm").check().run()
    assert not at.button(key="delete_button").disabled
    at.button(key="delete_button").click().run()
    assert not at.exception
    assert store.runs().empty and store.neurons(run_id).empty
    assert "Deleted run" in texts(at) and "No complete run" in "\n".join(i.value for i in at.sidebar.info)


def test_the_app_server_skips_streamlits_forced_collection_after_every_run():
    """A full gc.collect(2) after every script run was about 70% of the script thread while a slider was
    stepped (py-spy, full demo): each keyboard step waited for it (docs/performance.md)."""
    import tomllib

    config = tomllib.loads((Path(APP).parent / ".streamlit" / "config.toml").read_text())
    assert config["runner"]["postScriptGC"] is False


def test_every_page_finds_the_thumbnails_of_the_images_it_shows(app_store):
    """A run stores thumbnails only for the images its units keep: every one a page shows is there."""
    store, run_id = app_store
    fp = store.complete_run(run_id)["probe_fingerprint"]
    kept = store.neuron_images(run_id, kinds=("top", "level", "low", "random"))
    assert set(store.thumbnails(fp, range(store.complete_run(run_id)["n_images"]))) == set(kept["image_id"])
    for page, query in (
        ("pages/neuron.py", {}),
        ("pages/neuron.py", {"layer": "classifier", "unit": 207}),
        ("pages/annotate.py", {"rater": "pytest"}),
    ):  # the Labellers page's images: test_app_labellers (it needs a label source)
        at = open_page(page, **query)
        assert not at.exception, page
        assert len(at.image), page
        assert not [c.value for c in at.caption if "no thumbnail stored" in c.value], page
