"""The logic behind the explorer's headlines (issue 14): shares beside their baselines and the weak-
evaluator warning, reference raters (human vs automatic), the unit's own ImageNet class, runs told
apart and renamed, n and bootstrap intervals, neuron stepping, search ranking, one threshold rounding,
and the pages that show them (AppTest on the real small run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_app import greyed, open_page, tables, texts

from clipeval.analysis import headlines, intervals, metrics, sweeps
from clipeval.analysis.headlines import weak_evaluators
from clipeval.analysis.imagenet import unit_imagenet_class
from clipeval.analysis.runview import RunView, default_thresholds
from clipeval.errors import ClipevalError
from clipeval.evaluators import thresholds
from clipeval.render.glossary import TERMS
from clipeval.render.tables import stand_ins, verdict_marks
from clipeval.store import runnames

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("fresh_caches")


def summary(real: float, shuffled: float, constant: float, n: int = 100) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"layer": "overall", "evaluator": "ES", "variant": v, "share_correct": s, "n": n}
            for v, s in (("real", real), ("shuffled", shuffled), ("constant", constant))
        ]
    )


# ------------------------------------------------------------------------------------ 2: shares beside baselines
def test_headline_is_weak_when_a_baseline_comes_close():
    h = headlines.headlines(summary(0.976, 0.901, 0.990))["ES"]
    assert h.weak and h.worst_baseline == "constant" and h.gap == pytest.approx(-0.014)
    assert h.baseline_text() == "shuffled labels 90.1% · constant labels 99.0%"
    assert h.warning().startswith("**ES** judges 99.0% of constant labels correct against 97.6%")
    strong = headlines.headlines(summary(0.80, 0.20, 0.10))["ES"]
    assert not strong.weak and strong.warning() is None and strong.gap == pytest.approx(0.60)


def test_weak_is_relative_to_the_real_share():
    # A calibrated strict threshold: 3.5% of real labels pass and 0.1% of shuffled ones, a sharp judge
    # (an absolute 10-point margin flagged it). A judge passing 90% of real and 80% of shuffled labels
    # tells little, though the two are 10 points apart.
    sharp = summary(0.035, 0.001, 0.0)
    assert not headlines.headlines(sharp)["ES"].weak and weak_evaluators(sharp) == []
    loose = summary(0.90, 0.80, 0.05)
    assert headlines.headlines(loose)["ES"].weak
    assert [w["baseline"] for w in weak_evaluators(loose)] == ["shuffled"]


def test_headline_without_baselines_is_never_weak():
    only_real = summary(0.9, 0.1, 0.1).query("variant == 'real'")
    h = headlines.headlines(only_real)["ES"]
    assert h.baselines == {} and not h.weak and h.baseline_text() == "no baselines scored"


def test_share_headline_and_interpretable_shares_match_the_verdicts(app_store):
    store, run_id = app_store
    view = RunView(store, run_id)
    th = default_thresholds()
    h = headlines.share_headline(view, "es", th["es"], 5)
    assert h.real == pytest.approx(view.verdicts("es", th["es"], "real", 5)["verdict"].mean())
    assert h.baselines["shuffled"] == pytest.approx(view.verdicts("es", th["es"], "shuffled", 5)["verdict"].mean())
    assert h.n == len(view.neurons)
    per_layer = headlines.interpretable_shares(view, th, 5, ["cp", "es"], view.layers)
    overall = per_layer.set_index("layer").loc["overall"]
    both = (
        view.verdicts("cp", th["cp"], "shuffled", 5)["verdict"].to_numpy()
        & view.verdicts("es", th["es"], "shuffled", 5)["verdict"].to_numpy()
    )
    assert overall["shuffled"] == pytest.approx(both.mean())
    assert overall["neurons"] == len(view.neurons)


def test_overview_shows_baselines_and_the_warning_beside_each_share(app_store):
    at = open_page(tau=-1)  # every image matches: shuffled and constant labels pass as often as real ones
    body = texts(at)
    assert "shuffled labels 100.0%" in body and "constant labels 100.0%" in body
    assert any(w.value.startswith("**ES** judges 100.0% of") for w in at.warning)


def test_thresholds_and_runs_pages_carry_the_baselines_and_the_warning(app_store):
    at = open_page("pages/thresholds.py", tau=-1)
    assert "(shuffled labels 100.0% · constant labels 100.0%)" in texts(at)
    assert any("**ES** judges 100.0%" in w.value for w in at.warning)
    at.switch_page("pages/runs.py").run()
    assert not at.exception
    # the Runs page compares each run at its own judges' defaults, not at the selected run's sidebar tau = -1
    # (issue 24 point 7), and says so
    assert not any("**ES** judges 100.0%" in w.value for w in at.warning)
    assert any("not the sidebar's" in c.value for c in at.caption)


# ------------------------------------------------------------------------------------ 5: reference raters
def _add_raters(store, run_id):
    neurons = store.neurons(run_id).head(40)
    store.add_human_verdicts(run_id, neurons.assign(rater="alice", verdict=True), source="app")
    store.add_human_verdicts(
        run_id,
        neurons.assign(rater="ImageNet class (automatic)", verdict=False),
        source="auto: label names the ImageNet class (WordNet)",
    )


def test_reference_raters_are_marked_human_or_automatic(app_store):
    store, run_id = app_store
    _add_raters(store, run_id)
    view = RunView(store, run_id)
    assert view.human_labels == ["human: alice"]
    assert view.automatic_labels == ["automatic: ImageNet class"]
    assert view.rater_labels == ["human: alice", "automatic: ImageNet class"]
    assert view.is_automatic("automatic: ImageNet class") and not view.is_automatic("human: alice")
    # the demo's rater name says '(automatic)' itself: the label does not say it twice, and leads back to it
    assert view.rater_name("automatic: ImageNet class") == "ImageNet class (automatic)"
    assert store.store_overview()["automatic_verdicts"] == 40


def test_neuron_page_keeps_humans_and_automatic_references_apart(app_store):
    store, run_id = app_store
    _add_raters(store, run_id)
    at = open_page("pages/neuron.py")
    verdict_rows = [t for t in tables(at) if "rater" in t.columns][0]
    assert {"human: alice", "automatic: ImageNet class"} <= set(verdict_rows["rater"])
    at.toggle(key="show_auto").set_value(False).run()
    verdict_rows = [t for t in tables(at) if "rater" in t.columns][0]
    assert "human: alice" in set(verdict_rows["rater"])
    assert not any(r.startswith("automatic:") for r in verdict_rows["rater"])
    at.switch_page("pages/thresholds.py").run()
    assert at.selectbox(key="cal_rater").options == ["human: alice", "automatic: ImageNet class"]
    assert "Calibrate a threshold to a reference rater" in texts(at)


# ------------------------------------------------------------------------------------ 6: own ImageNet class
def test_unit_imagenet_class_of_a_classifier_layer():
    own = unit_imagenet_class(1000, 207, "microwave oven", ["microwave oven", "golden retriever"])
    assert own["class"] == "Golden Retriever" and not own["label_matches"] and own["concept_rank"] == 2
    assert unit_imagenet_class(1000, 207, "golden retriever")["label_matches"]
    assert unit_imagenet_class(1280, 207, "x") is None  # not a 1000-way classifier
    assert unit_imagenet_class(1000, 1000, "x") is None


def test_neuron_page_shows_the_units_own_class(app_store):
    store, run_id = app_store
    at = open_page("pages/neuron.py", layer="classifier", unit=207)
    body = texts(at)
    assert "This unit's own ImageNet class: Golden Retriever" in body
    at = open_page("pages/neuron.py", layer="blocks.1", unit=3)
    assert "own ImageNet class" not in texts(at)


# ------------------------------------------------------------------------------------ 3: runs told apart
def _runs(*configs) -> pd.DataFrame:
    import json

    rows = []
    for i, (concepts, fn) in enumerate(configs):
        cfg = {
            "concepts": {"source": concepts},
            "similarity": {"fn": fn, "params": []},
            "target": {"name": "efficientnet_lite0"},
            "layers": ["a", "b"],
            "probe": {"paths": ["/x/demo"]},
        }
        rows.append(
            {
                "run_id": f"{i:02d}" + "f" * 38,
                "name": "demo: EfficientNet-Lite0 | demo probe (full)",
                "config_json": json.dumps(cfg),
                "models_json": "{}",
                "created_at": f"2026-11-29 2{i}:00",
            }
        )
    return pd.DataFrame(rows)


def test_runs_are_named_by_what_differs():
    runs = _runs(("common-10k", "soft_wpmi"), ("common-20k", "soft_wpmi"), ("imagenet", "soft_wpmi"))
    d = runnames.differences(runs)
    assert list(d.values()) == ["concepts common-10k", "concepts common-20k", "concepts imagenet"]
    runs = _runs(("common-10k", "soft_wpmi"), ("common-10k", "wpmi"))
    assert list(runnames.differences(runs).values()) == ["similarity soft_wpmi", "similarity wpmi"]
    twins = runnames.differences(_runs(("common-10k", "wpmi"), ("common-10k", "wpmi")))
    assert list(twins.values()) == ["made 2026-11-29 20:00", "made 2026-11-29 21:00"]
    label = runnames.picker_label("0123456789", "demo: long name", "concepts imagenet")
    assert label.startswith("concepts imagenet · demo: long name") and label.endswith("(01234567)")


def test_rename_run_checks_the_name_and_shows_in_the_picker(app_store):
    store, run_id = app_store
    with pytest.raises(ClipevalError, match="empty"):
        store.rename_run(run_id, "   ")
    with pytest.raises(ClipevalError, match="at most 120"):
        store.rename_run(run_id, "x" * 121)
    at = open_page("pages/runs.py")
    at.text_input(key="rename_text").set_value("my  baseline run").run()
    at.button(key="rename_button").click().run()
    assert not at.exception
    assert store.run(run_id)["name"] == "my baseline run"
    picker = at.sidebar.selectbox(key="run_choice")
    assert "my baseline run" in picker.format_func(picker.value)


# ------------------------------------------------------------------------------------ 4: n and intervals
def test_bootstrap_interval_covers_the_value_and_shrinks_with_n():
    rng = np.random.default_rng(1)
    a = rng.random(1000) < 0.5
    b = np.where(rng.random(1000) < 0.8, a, ~a)  # agree 80% of the time
    big = intervals.bootstrap(a, b)
    small = intervals.bootstrap(a[:20], b[:20])
    lo, hi = big["agreement"]
    assert lo < (a == b).mean() < hi and hi - lo < 0.07
    assert small["kappa"][1] - small["kappa"][0] > big["kappa"][1] - big["kappa"][0]
    assert intervals.bootstrap(a, a)["kappa"] == (1.0, 1.0)
    assert (
        intervals.bootstrap(np.ones(50, bool), np.ones(50, bool))["kappa"] == (pytest.approx(np.nan, nan_ok=True),) * 2
    )


def test_kappa_matrix_pairs_each_two_raters_over_the_neurons_both_judged():
    rng = np.random.default_rng(3)

    def full():
        return pd.DataFrame(
            {
                "layer": np.repeat(["a", "b"], 100),
                "unit": np.tile(np.arange(100), 2),  # noqa: E731
                "verdict": rng.random(200) < 0.5,
            }
        )

    raters = {"x": full(), "y": full(), "z": full().iloc[::4].sample(frac=1, random_state=0)}  # a quarter, shuffled
    m = intervals.kappa_with_intervals(raters)
    assert np.allclose(m["kappa"].to_numpy(), metrics.kappa_matrix(raters).to_numpy(), equal_nan=True)
    assert m["n"].loc["x", "y"] == 200 and m["n"].loc["x", "z"] == m["n"].loc["z", "y"] == 50
    w = metrics.align({"x": raters["x"], "z": raters["z"]})
    assert (m["lo"].loc["x", "z"], m["hi"].loc["x", "z"]) == intervals.bootstrap(w["x"], w["z"])["kappa"]


def test_pairwise_table_marks_small_groups():
    frame = lambda v: pd.DataFrame({"layer": ["x"] * 10 + ["y"] * 40, "unit": range(50), "verdict": v})  # noqa: E731
    rng = np.random.default_rng(0)
    t = intervals.pairwise_with_intervals(frame(rng.random(50) < 0.5), frame(rng.random(50) < 0.5)).set_index("layer")
    assert bool(t.loc["x", "small"]) and not bool(t.loc["y", "small"]) and not bool(t.loc["overall", "small"])
    f = intervals.figure(t.loc["x"], "kappa")
    assert f.text().endswith("n=10") and "[" in f.text()
    assert intervals.figure(t.loc["y"], "agreement").text().split(" ")[0].endswith("%")


def test_agreement_page_shows_n_intervals_and_greys_small_samples(app_store):
    store, run_id = app_store
    neurons = store.neurons(run_id).head(12)  # fewer than MIN_N
    store.add_human_verdicts(run_id, neurons.assign(rater="few", verdict=[True, False] * 6), source="app")
    at = open_page("pages/agreement.py")
    body = texts(at)
    assert f"fewer than {intervals.MIN_N} neurons" in body
    cells = [t for t in tables(at) if any("vs human: few" in str(c) for c in t.columns)][0]
    assert cells["overall"].str.contains(r"\[.*\] n=12").all()
    index = [i for i, t in enumerate(tables(at)) if any("vs human: few" in str(c) for c in t.columns)][0]
    small = {(r, c) for (r, c), v in np.ndenumerate(cells.to_numpy()) if c > 0 and "n=12" in v}
    assert small and greyed(at, index) == small  # exactly the cells under MIN_N are greyed
    assert any("Only 12 neurons judged by both" in w.value for w in at.warning)


# ------------------------------------------------------------------------------------ 9: tables, charts, navigation
def test_search_ranks_exact_and_whole_word_matches_first(run_store):
    store, run_id, _ = run_store
    first = store.neurons(run_id).head(3)
    for (layer, unit), label in zip(first[["layer", "unit"]].itertuples(index=False), ["hotdog", "hot dog", "dog"]):
        store.execute(
            "UPDATE neurons SET label = ? WHERE run_id = ? AND layer = ? AND unit = ?",
            [label, run_id, layer, int(unit)],
        )
    hits = store.search_neurons(run_id, "Dog")
    labels = [l for l in hits["label"] if l in ("hotdog", "hot dog", "dog")]
    assert labels == ["dog", "hot dog", "hotdog"]
    assert list(hits["match_quality"].iloc[:2]) == [0, 1]
    assert store.search_neurons(run_id, "a.b(").empty  # regex characters are taken literally


def test_one_rounding_for_every_threshold():
    assert thresholds.fmt("es", 0.627789) == "0.628" and thresholds.printf("es") == "%.3f"
    assert thresholds.label("cp", 0.01) == "p = 0.0100" and thresholds.fmt("contrast", 0.75) == "0.75"


def test_applied_calibration_reads_the_same_everywhere(app_store):
    store, run_id = app_store
    neurons = store.neurons(run_id)
    rng = np.random.default_rng(0)
    store.add_human_verdicts(run_id, neurons.assign(rater="r", verdict=rng.random(len(neurons)) < 0.5), source="app")
    at = open_page("pages/thresholds.py")
    at.selectbox(key="cal_evaluator").set_value("es").run()
    at.button(key="calibrate").click().run()
    fitted = [m.value for m in at.metric if m.label == "Fitted tau"][0]
    at.button(key="apply_calibration").click().run()
    assert not at.exception
    shown = thresholds.fmt("es", at.number_input(key="tau").value)
    assert shown == fitted and f"tau = {shown}" in texts(at)


def test_range_slider_ends_fit_the_range():
    lo, hi = sweeps.slider_bounds("cp", 0.0, 0.05)
    assert lo == 0.0 and hi == pytest.approx(0.1) and (0.05 - 0.0) / (hi - lo) > 0.3
    assert sweeps.clamp_range((0.0, 0.9), (0.0, 0.1)) == (0.0, 0.1)


def test_verdict_marks_replace_pale_checkboxes():
    df = pd.DataFrame({"ES": [True, False], "human: a": [True, np.nan]})
    out = verdict_marks(df, ["ES", "human: a"])
    assert list(out["ES"]) == ["✓", "✗"] and list(out["human: a"]) == ["✓", ""]


# ------------------------------------------------------------------------------------ 10, 11: offline, help
def test_page_icon_ships_with_the_app():
    app = (ROOT / "app.py").read_text()
    assert ":material/" not in app.split("st.set_page_config")[1].split("\n")[0]
    assert (ROOT / "assets" / "icon.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_glossary_link_points_at_an_entry():
    import re

    sources = [p.read_text() for p in [*(ROOT / "pages").glob("*.py"), *(ROOT / "clipeval" / "ui").glob("*.py")]]
    anchors = {a for s in sources for a in re.findall(r"glossary_link\(\"([a-z-]+)\"", s)}
    assert anchors and anchors <= set(TERMS)
    for term in ("soft-wpmi", "cp", "es", "contrast", "kappa", "conse", "baselines"):
        assert term in TERMS


def test_glossary_page_and_stand_in_notice(app_store):
    at = open_page("pages/glossary.py")
    assert {s.value for s in at.subheader} >= {t for t, _ in TERMS.values()}
    for page in ("pages/neuron.py", "pages/layers.py", "pages/agreement.py", "pages/thresholds.py"):
        at = open_page(page)
        assert any(w.value.startswith("**Not CLIP.**") for w in at.warning), page


def test_stand_ins_names_every_role_made_without_clip(app_store):
    store, run_id = app_store
    roles = stand_ins(store.run(run_id), store.latest_evaluations(run_id))
    assert roles[0] == "labels" and {"CP", "ES", "Contrast"} <= set(roles)
