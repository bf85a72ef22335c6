"""Issue 24: the number shown is the number used (thresholds, CP cut-offs, denominators, negatives, quoted prompts)."""

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_evaluators import colour_run  # noqa: F401  (a fixture)

from clipeval.evaluators.rules import ScoreTable, cp_cutoff

# ---------------------------------------------------------------- 4. CP's cut-off rank


def test_cp_cutoff_of_rank_over_size_is_that_rank_for_every_rank():
    assert int(998 * (4 / 998)) == 3  # the floating-point product that applied p = 4/998 as rank 3
    assert cp_cutoff(4 / 998, 998) == 4
    for n in (12, 998, 1000, 10_000, 20_000):
        r = np.arange(n + 1)
        np.testing.assert_array_equal(cp_cutoff(r / n, n), r)
        np.testing.assert_array_equal(cp_cutoff((r + 0.5) / n, n), r)
        np.testing.assert_array_equal(cp_cutoff(r[1:] / n - 1e-7, n), r[1:] - 1)  # just under: one rank less


def test_a_calibrated_cp_p_is_applied_at_the_rank_it_was_fitted_on():
    from clipeval.analysis import metrics
    from clipeval.evaluators.judges import calibrate_splits

    n = 998
    rng = np.random.default_rng(3)
    ranks = rng.integers(1, 40, 300)
    reference = ranks <= 4
    cal = calibrate_splits(ranks / n, reference, "cp", n_splits=10)
    assert cal["heldout_kappa"] == 1.0
    neurons = pd.DataFrame({"layer": "l", "unit": np.arange(len(ranks))})
    scores = neurons.assign(variant="real", kind="top", rank=1, image_id=0, label="x", raw=ranks)
    applied = ScoreTable(scores, "cp", neurons, n_concepts=n).verdicts(cal["value"])
    np.testing.assert_array_equal(applied, reference)
    assert metrics.cohen_kappa(applied, reference) == 1.0


# ---------------------------------------------------------------- 2. one source of default thresholds

CALIBRATION = {
    "value": 0.03,
    "interval": (0.02, 0.04),
    "heldout_kappa": 0.9,
    "heldout_kappa_interval": (0.8, 1.0),
    "n_neurons": 12,
    "n_splits": 50,
}


def _calibrated(colour_run):
    """The colour run judged by ES and contrast with a fake non-CLIP model whose ES tau is calibrated to 0.03:
    there 10 of its 12 shuffled labels pass (cosines 0.017-0.038), at the paper's 0.25 none."""
    from test_evaluators import run_mod

    from clipeval.evaluators.judges import save_calibration

    store, run_id, model, _, cache = colour_run
    run_mod.evaluate(store, run_id, "es,contrast", cache_dir=cache, progress=False)
    save_calibration(store, model.info(), {"es": CALIBRATION}, "ref", "somewhere")
    jpeg = io.BytesIO()
    Image.new("RGB", (4, 4), "red").save(jpeg, "JPEG")  # the HTML report draws thumbnails
    store.execute("UPDATE probe_images SET thumbnail = ?", [jpeg.getvalue()])
    return store, run_id


def _overall_es(frame: pd.DataFrame) -> dict:
    return frame[(frame["layer"] == "overall") & (frame["evaluator"] == "ES")].iloc[0].to_dict()


def test_the_html_report_applies_and_names_the_judges_calibrated_thresholds(colour_run, capsys):
    from io import StringIO

    from clipeval.cli import print_report
    from clipeval.render.report import build_report

    store, run_id = _calibrated(colour_run)
    html = build_report(store, run_id)
    shares = next(t for t in pd.read_html(StringIO(html)) if "shuffled labels" in t.columns)
    es = _overall_es(shares)
    assert (es["units"], es["real labels"], es["shuffled labels"]) == (12, "100.0%", "83.3%")  # 10 / 12 at 0.03
    assert "ES tau=0.03 (calibrated default)" in html and "Contrast auc=0.75 (paper (uncalibrated) default)" in html
    assert "tau = 0.03 calibrated for lookup tables against &#x27;ref&#x27;" in html  # how the default was set
    print_report(store, run_id)
    text = capsys.readouterr().out
    assert "ES tau=0.03 (calibrated default)" in text and "100.0 / 83.3 / " in text  # the same numbers
    given = build_report(store, run_id, {"es": 0.25})
    assert "ES tau=0.25 (given)" in given
    assert (
        _overall_es(next(t for t in pd.read_html(StringIO(given)) if "shuffled labels" in t.columns))["shuffled labels"]
        == "0.0%"
    )


# ---------------------------------------------------------------- 7. runs compared each at its own judge's defaults


def test_runs_are_compared_each_at_its_own_judges_defaults(colour_run, tmp_path, monkeypatch):
    from test_evaluators import (
        COLOUR_NAMES,
        CONCEPTS,
        FAKE_CFG,
        SHADES,
        FakeImageText,
        build_run,
        colour_neurons,
        colour_world,
        run_mod,
    )

    from clipeval.analysis.runs import runs_comparison

    store, run_id = _calibrated(colour_run)
    colours, image_table, text_table, ids_of = colour_world()
    other = build_run(
        store,
        tmp_path / "probe2",
        colours,
        colour_neurons(ids_of),
        CONCEPTS,
        run_id="handmade02",
        image_labels=[c for c in COLOUR_NAMES for _ in range(SHADES)],
    )
    judge = FakeImageText(image_table, text_table, fingerprint="fake-2")  # another model: not calibrated
    monkeypatch.setattr(run_mod, "resolve_eval_model", lambda cfg=None, progress=True: (FAKE_CFG, judge))
    run_mod.evaluate(store, other, "es", cache_dir=tmp_path / "cache2", progress=False)
    comp = runs_comparison(store).set_index("run")
    assert comp.loc[run_id, "ES shuffled"] == pytest.approx(10 / 12)  # tau 0.03, its calibrated default
    assert comp.loc[other, "ES shuffled"] == 0.0  # tau 0.25, the paper's: its judge has no calibration
    assert "ES tau=0.03 (calibrated default)" in comp.loc[run_id, "thresholds"]
    assert "ES tau=0.25 (paper (uncalibrated) default)" in comp.loc[other, "thresholds"]
    given = runs_comparison(store, {"es": 0.25}).set_index("run")
    assert given.loc[run_id, "ES shuffled"] == 0.0 and "ES tau=0.25 (given)" in given.loc[run_id, "thresholds"]


def test_runs_can_be_compared_at_one_cp_rank_cut_off(colour_run, monkeypatch, fresh_caches):
    """CP's p is a share of the concept set: one p over sets of 998, 10k and 20k concepts judged the top 1
    against the top 20 and 40. The comparison can hold the rank cut-off fixed instead, and the Runs page
    does by default, saying which."""
    from test_app import open_page, texts
    from test_evaluators import run_mod

    from clipeval.analysis.runs import runs_comparison
    from clipeval.analysis.runview import RunView

    store, run_id, _, _, cache = colour_run
    run_mod.evaluate(store, run_id, "cp", cache_dir=cache, progress=False)
    view = RunView(store, run_id)
    n = view.table("cp").n_concepts
    row = runs_comparison(store, cp_rank=2).set_index("run").loc[run_id]
    assert f"top 2 of {n:,} concepts" in row["thresholds"]
    at_rank = view.layer_summary(view.thresholds({"cp": 2 / n}))
    assert (
        row["CP"]
        == at_rank[(at_rank["layer"] == "overall") & (at_rank["variant"] == "real") & (at_rank["evaluator"] == "CP")][
            "share_correct"
        ].iloc[0]
    )
    monkeypatch.setenv("CLIPEVAL_DB", str(store.path))
    at = open_page("pages/runs.py")
    rank = at.number_input(key="runs_cp_rank").value
    assert f"the same rank cut-off, the label within the top {rank} concepts" in texts(at)
    at.number_input(key="runs_cp_rank").set_value(3).run()
    comparison = at.dataframe[-2].value
    assert f"top 3 of {n:,} concepts" in comparison[comparison.iloc[:, 0] == "thresholds"].iloc[0].iloc[1]
    at.radio(key="runs_cp_how").set_value("each run's own default p").run()
    assert "its p is a share of each run's concept set" in texts(at)


def test_the_app_names_each_threshold_and_where_it_came_from(colour_run, tmp_path, monkeypatch, fresh_caches):
    from test_app import open_page, texts

    store, run_id = _calibrated(colour_run)
    monkeypatch.setenv("CLIPEVAL_DB", str(store.path))
    at = open_page("pages/layers.py")
    assert "tau = 0.030 (calibrated default)" in texts(at) and "auc = 0.75 (paper (uncalibrated) default)" in texts(at)
    at.number_input(key="tau").set_value(0.25).run()
    assert "tau = 0.250 (set in the sidebar)" in texts(at)
    at = open_page("pages/runs.py")
    comparison = at.dataframe[-2].value  # the comparison of runs (the timings table is last)
    row = comparison[comparison.iloc[:, 0] == "thresholds"].iloc[0]
    assert "ES tau=0.03 (calibrated default)" in row.iloc[1]


# ---------------------------------------------------------------- 3. a label source over the run's live units


def test_a_label_sources_shares_and_baseline_are_over_the_runs_live_units(colour_run, tmp_path, monkeypatch, capsys):
    from test_evaluators import run_mod

    from clipeval.analysis.sources import RUN_SOURCE, LabellerView
    from clipeval.cli import main
    from clipeval.evaluators import sources
    from clipeval.models import image_text

    store, run_id, model, _, cache = colour_run
    labels = store.neurons(run_id)[["layer", "unit", "label"]]
    dead = [("layer1", 4), ("layer1", 5)]  # cyan, magenta: constant over the probe, so no images and no label
    for layer, u in dead:
        store.execute(
            "UPDATE neurons SET dead = true, label = NULL WHERE run_id = ? AND layer = ? AND unit = ?",
            [run_id, layer, u],
        )
        store.execute("DELETE FROM neuron_images WHERE run_id = ? AND layer = ? AND unit = ?", [run_id, layer, u])
    run_mod.evaluate(store, run_id, "es", cache_dir=cache, progress=False)
    milan = tmp_path / "milan.csv"  # the run's own labels, on every unit, dead ones included
    labels.rename(columns={"label": "description"}).to_csv(milan, index=False)
    sid = sources.add_source(store, run_id, "milan", str(milan))
    monkeypatch.setattr(image_text, "load_image_text", lambda cfg, placement=None: model)
    done = sources.evaluate_source(store, run_id, sid, cache_dir=cache, progress=False)
    assert [o["message"] for o in done] == ["on 10 live units (2 labels on dead units not judged)"]

    lv = LabellerView(store, run_id)
    th = lv.view.thresholds()
    shares = lv.shares(th).set_index(["source", "evaluator", "layer"])
    mine, run = shares.loc[(sid, "ES", "overall")], shares.loc[(RUN_SOURCE, "ES", "overall")]
    assert mine["n"] == run["n"] == 10  # the same 10 live units, the same denominators
    assert mine["correct"] == mine["run real"] == run["correct"] == 1.0  # the same labels on them: the same share
    assert shares.loc[(sid, "ES", "layer1"), "n"] == 4
    # the source's baseline shuffles its labels among the live units only
    shuffled = lv.tables[(sid, "es")].labels["shuffled"]
    live1 = (lv.labels[sid]["layer"] == "layer1").to_numpy()
    assert sorted(shuffled[live1]) == sorted(lv.labels[sid]["label"][live1]) == ["blue", "green", "red", "yellow"]
    # a pass made before dead units were left out (scores on a dead unit) is not read as one over the live
    # units, and `sources evaluate` judges the source again
    done = store.source_evaluations(run_id).set_index("evaluator").loc["es"]
    scores = store.source_scores(done["source_eval_id"])
    old = pd.concat([scores, scores.head(1).assign(layer="layer1", unit=4)])
    store.execute("DELETE FROM source_scores WHERE source_eval_id = ?", [done["source_eval_id"]])
    store.execute("DELETE FROM source_evals WHERE source_eval_id = ?", [done["source_eval_id"]])
    store.record_source_evaluation("old-pass", sid, run_id, "es", done["config_json"], status="complete", scores=old)
    assert (sid, "es") not in LabellerView(store, run_id).tables
    assert "judged on dead units too" in " ".join(LabellerView(store, run_id).missing_evaluations())
    assert [o["status"] for o in sources.evaluate_source(store, run_id, sid, cache_dir=cache, progress=False)] == [
        "complete"
    ]
    assert (
        LabellerView(store, run_id)
        .shares(th)
        .set_index(["source", "evaluator", "layer"])
        .loc[(sid, "ES", "overall"), "n"]
        == 10
    )
    store.close()
    assert main(["--db", str(store.path), "sources", "list", run_id]) == 0
    out = capsys.readouterr().out
    assert "they label 10 of the run's 10 live units (100.0%); 2 fall on dead units" in out
    assert "layer1 4/4, layer2 6/6" in out


# ---------------------------------------------------------------- 8. contrast negatives are distinct images


def test_contrast_negatives_of_a_unit_are_distinct_images():
    from clipeval.dissect.activations import neuron_summaries

    rng = np.random.default_rng(0)
    A = rng.normal(size=(60, 40)).astype(np.float32)
    A[:, :20] = np.where(rng.random((60, 20)) < 0.9, 0.0, 6.0)  # ReLU6 units: most of the probe tied at 0
    images, _, stats = neuron_summaries("l", A, k=5, n_contrast=10, seed=0)
    negatives = images[images["kind"].isin(["low", "random"])]
    per_unit = negatives.groupby("unit")["image_id"]
    assert (per_unit.nunique() == per_unit.size()).all()  # no image is both a 'low' and a 'random' negative
    assert dict(zip(stats["unit"], stats["n_negatives"])) == per_unit.nunique().to_dict()
    top = images[images["kind"] == "top"].groupby("unit")["image_id"].apply(set)
    assert all(not set(g) & top[u] for u, g in per_unit)


# ---------------------------------------------------------------- 9. quoted prompts, thresholds and rules


def test_every_quoted_prompt_threshold_and_rule_is_the_one_the_code_uses():
    import re
    from pathlib import Path

    from clipeval.analysis.intervals import MIN_N, N_BOOT
    from clipeval.cli import build_parser
    from clipeval.config import EvalConfig
    from clipeval.dissect.activations import INACTIVE_QUANTILE
    from clipeval.evaluators.judges import PAPER_THRESHOLDS
    from clipeval.models.vqa import DEFAULT_TEMPLATE, format_prompt
    from clipeval.render import glossary

    root = Path(__file__).resolve().parents[1]
    # the README and docs/, with line breaks as spaces (a quote may wrap)
    readme = " ".join(
        " ".join(f.read_text().split()) for f in [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    )
    terms = {anchor: text for anchor, (_, text) in glossary.TERMS.items()}
    question = format_prompt(DEFAULT_TEMPLATE, "<label>")  # what BLIP-2 is asked
    assert question in terms["vqa"] and question in readme
    assert EvalConfig("vqa").prompt == build_parser().parse_args(["evaluate", "RUN"]).prompt == DEFAULT_TEMPLATE
    for e in ("cp", "es", "vqa"):
        assert f"the paper's {PAPER_THRESHOLDS[e]:g}" in terms[e]
    assert f"ES threshold {PAPER_THRESHOLDS['es']:g}" in readme
    assert f"{N_BOOT:,} times" in terms["intervals"] and f"Below {MIN_N} neurons" in terms["intervals"]
    assert f"below {MIN_N} neurons" in readme
    # quoted where importing the constant would cost the app a torch import: every quote is checked here
    quotes = "\n".join([*terms.values(), readme, (root / "pages" / "neuron.py").read_text()])
    percentiles = re.findall(r"below its (\d+)th percentile", quotes)
    assert len(percentiles) >= 3 and {int(q) for q in percentiles} == {round(100 * INACTIVE_QUANTILE)}
    assert f"its top {round(100 * (1 - INACTIVE_QUANTILE))}%" in readme


# ---------------------------------------------------------------- the Overview, Layer overview, Agreement pages and
# the text report, against numbers worked out by hand on the colour run


def test_overview_layer_and_agreement_numbers_match_a_hand_computation(colour_run, capsys):
    """12 units, 6 per layer, each labelled with its top images' colour; layer1 unit 1 relabelled 'dog' (its
    green images' cosine with 'dog' is ~0.03) and layer2 unit 5 dead. At tau = 0.5, ES: layer1 5 of 6, layer2 5
    of 5. The constant label is the most frequent live label, 'red' (layer1 unit 0, layer2 unit 2): 1 of 6 and
    1 of 5. A person judged layer1: correct, no, no, correct, correct, correct (and the dead unit: left out).
    ES against them over 6 units: agree on 5; ES says yes 5/6, the person 4/6; chance 22/36, so kappa =
    (30/36 - 22/36) / (14/36) = 4/7; both yes on 4 of the 5 either says yes: Jaccard 0.8, precision 0.8,
    recall 1."""
    from test_evaluators import run_mod

    from clipeval.analysis import headlines, intervals
    from clipeval.analysis.runview import RunView
    from clipeval.cli import print_report
    from clipeval.render.tables import summary_table

    store, run_id, _, _, cache = colour_run
    store.execute("UPDATE neurons SET label = 'dog' WHERE run_id = ? AND layer = 'layer1' AND unit = 1", [run_id])
    store.execute(
        "UPDATE neurons SET dead = true, label = NULL WHERE run_id = ? AND layer = 'layer2' AND unit = 5", [run_id]
    )
    store.execute("DELETE FROM neuron_images WHERE run_id = ? AND layer = 'layer2' AND unit = 5", [run_id])
    run_mod.evaluate(store, run_id, "es", cache_dir=cache, progress=False)
    person = pd.DataFrame(
        {
            "layer": ["layer1"] * 6 + ["layer2"],
            "unit": [0, 1, 2, 3, 4, 5, 5],
            "rater": "ann",
            "verdict": [True, False, False, True, True, True, True],
        }
    )
    store.add_human_verdicts(run_id, person, source="test")

    assert store.store_overview()["neurons"] == 11  # Overview, 'Neurons labelled': the dead unit has no label
    view = RunView(store, run_id)
    th = {**view.thresholds(), "es": 0.5}
    summary = view.layer_summary(th).set_index(["layer", "variant"])
    assert summary.loc[("layer1", "real"), "share_correct"] == 5 / 6
    assert summary.loc[("layer2", "real"), "share_correct"] == 1.0
    assert summary.loc[("overall", "real"), "share_correct"] == 10 / 11
    assert summary.loc[("overall", "constant"), "share_correct"] == 2 / 11
    assert list(summary.loc[(slice(None), "real"), "n"]) == [6, 5, 11]
    table = summary_table(view.layer_summary(th), view.layers).set_index("layer")  # Layer overview's table
    assert table.loc["layer2", "dead units (left out)"] == 1 and table.loc["overall", "neurons"] == 11
    interp = headlines.interpretable_shares(view, th, None, ["es"], view.layers).set_index("layer")
    assert interp.loc["overall", ["neurons", "interpretable"]].tolist() == [11, 10]
    assert interp.loc["overall", "constant"] == 2 / 11

    raters = view.rater_verdicts(th)  # the Agreement page's raters
    matrix = intervals.kappa_with_intervals(raters)
    assert matrix["n"].loc["ES", "human: ann"] == 6
    assert matrix["kappa"].loc["ES", "human: ann"] == pytest.approx(4 / 7)
    pair = intervals.pairwise_with_intervals(raters["ES"], raters["human: ann"]).set_index("layer").loc["overall"]
    assert (pair["n"], pair["agreement"], pair["jaccard"], pair["precision"], pair["recall"]) == (
        6,
        pytest.approx(5 / 6),
        pytest.approx(0.8),
        pytest.approx(0.8),
        1.0,
    )
    assert pair["kappa lo"] <= 4 / 7 <= pair["kappa hi"]
    print_report(store, run_id, {"es": 0.5})  # the text report
    out = capsys.readouterr().out
    assert "layer1                 6  83.3 / " in out and "layer2                 5  100.0 / " in out
    assert "1 dead unit(s)" in out and "n=6      agreement 0.833  kappa 0.571" in out


def test_the_k_a_page_names_is_the_k_it_applies(colour_run, monkeypatch, fresh_caches):
    """The run stored 5 top images per unit, the evaluation judged 3: the pages apply k = 3 and must say 3."""
    from test_app import open_page, texts
    from test_evaluators import run_mod

    store, run_id, _, _, cache = colour_run
    run_mod.evaluate(store, run_id, "es", cache_dir=cache, progress=False, k=3)
    monkeypatch.setenv("CLIPEVAL_DB", str(store.path))
    at = open_page("pages/layers.py")
    assert "k = 3; " in texts(at) and "k = 5; " not in texts(at)
