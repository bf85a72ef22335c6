"""Links into the explorer (issue 26, points 7 and 11): a link pins every number it shows (the run, k and
every threshold in effect, not only those moved), a provisional default says so, the run shown without a
link is a fully evaluated one, and a link (or a typed value) that cannot be followed is said, with what is
shown instead, and the widget shows that too."""

from __future__ import annotations

import pytest
import streamlit as st

from clipeval.analysis.runview import RunView
from clipeval.compute import progress
from clipeval.evaluators import judges
from tests.test_app import open_page, texts

pytestmark = pytest.mark.usefixtures("fresh_caches")


def warnings(at) -> str:
    return "\n".join(w.value for w in at.warning)


def test_a_link_carries_every_threshold_in_effect(app_store):
    """Streamlit's binding leaves a widget at its default out of the URL: the link of an untouched sidebar
    said nothing of k or the thresholds, so it meant other numbers once a calibration moved the defaults."""
    store, run_id = app_store
    at = open_page()
    view = RunView(store, run_id)
    link = dict(at.query_params)
    assert link["run"] == [run_id] or link["run"] == run_id
    for e, value in view.default_thresholds().items():
        param = judges.RULES[e].param
        assert param in link, (param, link)
        got = link[param][-1] if isinstance(link[param], list) else link[param]
        assert float(got) == pytest.approx(value, abs=0)  # exactly: p printed short would judge at another rank
    got_k = link["k"][-1] if isinstance(link["k"], list) else link["k"]
    assert int(got_k) == view.kmax


def test_a_link_keeps_its_numbers_after_a_calibration(app_store):
    store, run_id = app_store
    first = open_page()
    link = {k: (v[-1] if isinstance(v, list) else v) for k, v in first.query_params.items()}
    tau_then = first.sidebar.number_input(key="tau").value
    # the stand-in evaluator is calibrated meanwhile: its default ES tau moves
    view = RunView(store, run_id)
    info = view.evaluators["es"].models["image_text"]
    res = judges.calibrate_splits(
        view.verdicts("es", 0.0)["score"].to_numpy(), (view.verdicts("es", 0.0)["score"] > 0.3).to_numpy(), "es", 5
    )
    judges.save_calibration(store, info, {"es": res}, "test rater", "a test")
    assert RunView(store, run_id).defaults["es"].value != tau_then
    st.cache_data.clear()  # as a restarted app: nothing cached from before the calibration
    st.cache_resource.clear()
    again = open_page(**link)
    assert again.sidebar.number_input(key="tau").value == pytest.approx(tau_then)


def test_a_provisional_default_says_calibration_pending(app_store):
    """While a build of the store runs, an uncalibrated stand-in's default is the paper's CLIP value only until
    the build calibrates it at its end: every place that names the default says so."""
    store, run_id = app_store
    assert RunView(store, run_id).defaults["es"].source == "paper (uncalibrated)"
    progress.BuildStatus(progress.status_path(store.path), "the offline demo (test)")  # this process: alive
    view = RunView(store, run_id)
    assert view.defaults["es"].source == judges.PENDING
    assert "calibration pending" in view.threshold_text("es", view.defaults["es"].value)
    at = open_page("pages/layers.py")
    assert "calibration pending" in texts(at)
    assert any("calibration pending" in c.value for c in at.sidebar.caption)


def test_a_calibration_reaches_the_app_without_a_restart(app_store):
    """A calibration is written to the store's settings, which the app's caches were not keyed on: the app
    kept the paper's defaults until restarted."""
    store, run_id = app_store
    at = open_page()
    before = at.sidebar.number_input(key="tau").value
    view = RunView(store, run_id)
    scores = view.verdicts("es", 0.0)["score"]
    res = judges.calibrate_splits(scores.to_numpy(), (scores > 0.3).to_numpy(), "es", 5)
    judges.save_calibration(store, view.evaluators["es"].models["image_text"], {"es": res}, "test rater", "a test")
    after = open_page()  # a new session: the sidebar starts from the defaults
    assert after.sidebar.number_input(key="tau").value == pytest.approx(res["value"]) != before


def test_without_a_link_the_newest_fully_evaluated_run_is_shown(app_store, tmp_path):
    """A newer run not evaluated yet (the demo build evaluates each run after writing it) was shown by default,
    with numbers about to appear and change."""
    from clipeval.dissect.descriptions import import_descriptions

    store, run_id = app_store
    csv = tmp_path / "descriptions.csv"
    csv.write_text("layer,unit,description,similarity\nl1,0,dog,0.5\nl1,1,cat,0.4\n")
    newer = import_descriptions(store, csv, progress=False)
    assert store.runs()["run_id"].iloc[0] == newer
    at = open_page()
    assert at.sidebar.selectbox(key="run_choice").value == run_id
    at = open_page(run=newer)  # a link still reaches it
    assert at.sidebar.selectbox(key="run_choice").value == newer


def test_a_link_to_a_missing_run_says_so(app_store):
    store, run_id = app_store
    at = open_page(run="zzzz")
    assert "`zzzz`" in warnings(at) and "no such run" in warnings(at) and run_id[:8] in warnings(at)
    assert at.sidebar.selectbox(key="run_choice").value == run_id


def test_a_bad_threshold_in_a_link_says_so(app_store):
    at = open_page(tau="lots", k="99")
    text = warnings(at)
    assert "`tau=lots`" in text and "`k=99`" in text
    at.sidebar.number_input(key="tau").set_value(0.5).run()  # chosen by the user since: the link's problem is behind
    assert "`tau=lots`" not in warnings(at) and "`k=99`" in warnings(at)


def test_a_link_to_a_missing_unit_says_so_and_shows_the_unit_in_the_box(app_store):
    store, run_id = app_store
    last = int(store.neurons(run_id, "classifier")["unit"].max())
    at = open_page()
    at.switch_page("pages/neuron.py")
    at.query_params.update({"layer": "classifier", "unit": "99999"})
    at.run()
    assert at.number_input(key="unit").value == last
    assert "no unit 99999" in warnings(at) and f"showing unit {last}" in warnings(at)
    assert f"classifier / unit {last}" in texts(at)


def test_a_link_to_a_missing_layer_says_so(app_store):
    at = open_page()
    at.switch_page("pages/neuron.py")
    at.query_params.update({"layer": "blocks.99"})
    at.run()
    assert "`blocks.99`" in warnings(at) and at.selectbox(key="layer").value == "blocks.1"


def test_a_typed_unit_past_the_layer_is_replaced_in_the_box_and_said(app_store):
    store, run_id = app_store
    last = int(store.neurons(run_id, "blocks.1")["unit"].max())
    at = open_page("pages/neuron.py")
    at.selectbox(key="layer").set_value("blocks.1").run()
    at.number_input(key="unit").set_value(last + 7).run()
    assert at.number_input(key="unit").value == last
    assert f"no unit {last + 7}" in warnings(at) and f"blocks.1 / unit {last}" in texts(at)


def test_a_rename_reaches_the_sidebar_at_once_and_keeps_the_run(app_store, tmp_path):
    """The run picker's widget state is its option's text: after a rename the browser sent the old text, which
    no option had any more, so the picker fell back to its first run (or showed the old name) until a later
    rerun."""
    from clipeval.dissect.descriptions import import_descriptions

    store, run_id = app_store
    csv = tmp_path / "descriptions.csv"
    csv.write_text("layer,unit,description,similarity\nl1,0,dog,0.5\n")
    import_descriptions(store, csv, progress=False)  # a newer run: first in the picker
    at = open_page("pages/runs.py", run=run_id)
    at.text_input(key="rename_text").set_value("my baseline run")
    at.button(key="rename_button").click().run()
    assert not at.exception and store.run(run_id)["name"] == "my baseline run"
    picker = at.sidebar.selectbox(key="run_choice")
    assert picker.value == run_id and "my baseline run" in picker.format_func(picker.value)


def test_a_neuron_link_carries_the_evaluators_shown(app_store):
    """The evaluator switches were bound to the URL only when moved from their default (on where the
    evaluator has scores): a link made before an evaluation finished showed another set after it."""
    at = open_page()
    at.switch_page("pages/neuron.py").run()
    link = {k: (v[-1] if isinstance(v, list) else v) for k, v in at.query_params.items()}
    assert link["show_cp"] == "true" and link["show_es"] == "true" and link["show_vqa"] == "false", link
    at.toggle(key="show_es").set_value(False).run()
    assert at.query_params["show_es"] in ("false", ["false"])
    again = open_page()
    again.switch_page("pages/neuron.py")
    again.query_params.update({"show_es": "false", "show_cp": "maybe"})
    again.run()
    assert again.toggle(key="show_es").value is False and again.toggle(key="show_cp").value is True
    assert "`show_cp=maybe`" in warnings(again)
