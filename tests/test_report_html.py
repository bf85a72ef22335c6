"""`clipeval report RUN --html OUT.html`: one self-contained file with the run's models, shares beside
baselines, sensitivity plots, agreement with n and intervals, and a page of units per layer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import pytest
from plotly.offline import get_plotlyjs

from clipeval.analysis import metrics
from clipeval.cli import main


def test_wilson_interval_known_values():
    lo, hi = metrics.wilson_interval(8, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)  # the textbook 95% Wilson interval for 8/10
    assert metrics.wilson_interval(0, 20)[0] == 0.0 and metrics.wilson_interval(0, 20)[1] > 0.1
    assert np.isnan(metrics.wilson_interval(0, 0)[0])


@pytest.fixture(scope="module")
def report(built_run, tmp_path_factory):
    db, run_id, _ = built_run
    out = tmp_path_factory.mktemp("report") / "report.html"
    assert main(["--db", str(db), "report", run_id, "--html", str(out), "--tau", "0.3"]) == 0
    return out, out.read_text(encoding="utf-8"), db, run_id


def test_report_is_self_contained_and_complete(report):
    out, text, db, run_id = report
    # nothing is fetched: plotly.js is inside the file, once; no src/href to another place, no @import, no
    # url() that is not data: (Chromium checks the requests below)
    assert text.count(get_plotlyjs()[-300:]) == 1 and "<script src" not in text
    page = text.replace(get_plotlyjs(), "")  # plotly.js's own strings name its web site
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page)
    assert not re.search(r"""url\((?!data:)""", page)
    assert "@import" not in page
    assert text.count("data:image/jpeg;base64,") > 10  # thumbnails inlined, each image once
    assert text.count("<div class='plot'>") == text.count("Plotly.newPlot(") >= 3  # the charts, one script each
    for section in (
        "Models and settings",
        "Share judged correct per layer",
        "Threshold sensitivity",
        "Agreement between raters",
        "Units per layer",
    ):
        assert section in text
    assert "EfficientNet-Lite0" in text or "efficientnet_lite0" in text
    assert "not CLIP" in text  # the stand-in says what it is
    assert "95% interval" in text and "kappa 95% interval" in text
    assert "ES tau=0.3 (given)" in text


def test_report_unit_pages_match_the_store(report):
    from clipeval.analysis.runview import RunView
    from clipeval.store import Store

    out, text, db, run_id = report
    store = Store(db, read_only=True)
    try:
        view = RunView(store, run_id)
        grid = view.unit_grid({**{e: r for e, r in [("cp", 0.01), ("vqa", 0.5), ("contrast", 0.75)]}, "es": 0.3})
    finally:
        store.close()
    assert text.count("class='unit'") == len(grid)
    for layer, g in grid.groupby("layer"):
        assert f"{layer}: {len(g):,} units" in text
        assert f"ES judges {int(g['ES'].sum()):,} of {len(g):,} labels correct" in text


def test_the_report_to_send_says_not_clip_hides_local_paths_and_prints_plain_numbers(built_run):
    """The report is the file sent to others: it showed a raw p of 0.00200401, CP ranks as '128.000' and this
    machine's probe folder, and had no 'not CLIP' banner although stand-ins made every number."""
    import json

    from clipeval.render.report import build_report
    from clipeval.store import Store

    db, run_id, _ = built_run
    store = Store(db, read_only=True)
    try:
        probe = Path(json.loads(store.run(run_id)["config_json"])["probe"]["paths"][0])
        text = build_report(store, run_id, {"cp": 0.00200401}, units_per_layer=2)
    finally:
        store.close()
    assert "<strong>Not CLIP.</strong>" in text
    assert str(probe.parent) not in text and probe.name in text
    # what a reader sees (the charts' data may place a line at the exact value)
    visible = re.sub(r"<script.*?</script>", "", text, flags=re.S)
    assert "0.00200401" not in visible and "CP p=0.002 (top " in visible
    ranks = re.findall(r"CP [✓✗] ([^<]*)</span>", text)
    assert ranks and all(re.fullmatch(r"\d+", r) for r in ranks), ranks[:5]


def test_report_bad_output_fails_before_work(built_run, tmp_path, capsys):
    db, run_id, _ = built_run
    assert main(["--db", str(db), "report", run_id, "--html", str(tmp_path / "r.pdf")]) == 2
    assert "HTML file" in capsys.readouterr().err
    assert main(["--db", str(db), "report", run_id, "--html", str(tmp_path / "missing" / "r.html")]) == 2
    assert main(["--db", str(db), "report", run_id, "--html", str(tmp_path / "r.html"), "--k", "99"]) == 2
    assert not (tmp_path / "r.html").exists()


def test_report_units_per_layer_cap(built_run, tmp_path):
    db, run_id, _ = built_run
    out = tmp_path / "small.html"
    assert main(["--db", str(db), "report", run_id, "--html", str(out), "--units", "3"]) == 0
    text = out.read_text()
    assert "(first 3 shown)" in text and text.count("class='unit'") <= 3 * 3


def test_report_opens_in_chromium_without_a_request_leaving_the_file(report, tmp_path, chromium):
    out = report[0]
    script = Path(__file__).resolve().parents[1] / "scripts" / "check_report_offline.py"
    res = subprocess.run(
        [sys.executable, str(script), str(out), "--wait", "60"], capture_output=True, text=True, timeout=180
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert " 0 outside the file" in res.stdout


def test_report_page_builds_and_offers_the_file(run_store, monkeypatch, fresh_caches):
    from tests.test_app import open_page, texts

    store, run_id, _ = run_store
    monkeypatch.setenv("CLIPEVAL_DB", str(store.path))
    at = open_page("pages/report.py")
    at.number_input(key="report_units").set_value(2).run()
    at.button(key="report_build").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert "Report built in" in texts(at)
    html = at.session_state["report_html"][1]
    assert html.count("class='unit'") <= 2 * 3 and "Units per layer" in html


def test_the_offline_check_catches_a_request_that_leaves(tmp_path, chromium):
    page = tmp_path / "leaky.html"
    page.write_text("<html><body><img src='http://127.0.0.1:9/x.png'><p>hi</p></body></html>")
    script = Path(__file__).resolve().parents[1] / "scripts" / "check_report_offline.py"
    res = subprocess.run(
        [sys.executable, str(script), str(page), "--wait", "10"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 1 and "request left the file: http://127.0.0.1:9/x.png" in res.stdout


def test_the_offline_check_catches_a_chart_that_did_not_draw(tmp_path, chromium):
    """Counting svg elements (plotly draws several per chart) once said '21 of 7 charts drawn' and let a
    report with undrawn charts pass: a chart counts when plotly drew marks into its frame. One drawn chart
    of two must fail."""
    page = tmp_path / "half.html"
    fig = go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))
    drawn = "<div class='plot'>" + fig.to_html(full_html=False, include_plotlyjs=False) + "</div>"
    undrawn = "<div class='plot'><div class='plotly-graph-div' style='height:300px'></div></div>"
    page.write_text(f"<html><head><script>{get_plotlyjs()}</script></head><body>{drawn}{undrawn}</body></html>")
    script = Path(__file__).resolve().parents[1] / "scripts" / "check_report_offline.py"
    res = subprocess.run(
        [sys.executable, str(script), str(page), "--wait", "10"], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 1 and "1 of 2 charts drawn" in res.stdout, res.stdout + res.stderr


def test_report_kappa_sweep_uses_the_reference_with_the_most_neurons(run_store):
    """A person who judged 5 units came first and the report drew its kappa against them, instead of against
    the 1,000-unit reference: the largest reference is used, the report says which, and warns under MIN_N."""
    from clipeval.analysis.intervals import MIN_N
    from clipeval.render.report import build_report

    store, run_id, _ = run_store
    neurons = store.neurons(run_id)
    store.add_human_verdicts(run_id, neurons.head(5).assign(rater="alice", verdict=True), source="test")
    text = build_report(store, run_id)
    assert "Kappa is against human: alice, the reference rater who judged the most units (5)" in text
    assert f"Only 5 units: fewer than {MIN_N}" in text
    coin = np.random.default_rng(0).random(60) < 0.5
    store.add_human_verdicts(run_id, neurons.head(60).assign(rater="bob", verdict=coin), source="test")
    text = build_report(store, run_id)
    assert "Kappa is against human: bob, the reference rater who judged the most units (60; human: alice: 5)" in text
    assert re.search(r"kappa with human: bob over the \d+ units", text) and "kappa with human: alice" not in text
    assert "Only 5 units" not in text


def test_report_charts_do_not_take_streamlit_s_template(built_run, tmp_path):
    """Once Streamlit is imported (the Report page builds the file inside the app) plotly's default template
    is Streamlit's, whose colours are placeholders that only Streamlit's page fills in: in the file every
    line was drawn in near-black #000001.. colours. The report names its own template."""
    import streamlit.elements.plotly_chart  # noqa: F401  (sets plotly's default template to Streamlit's)

    db, run_id, _ = built_run
    out = tmp_path / "r.html"
    assert main(["--db", str(db), "report", run_id, "--html", str(out), "--units", "1"]) == 0
    text = out.read_text()
    assert "Plotly.newPlot(" in text and "#000001" not in text and "#000011" not in text
