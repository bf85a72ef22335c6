"""runview.RunView and friends on the real small run (built once per session by conftest.py):
per-layer summaries, monotonic re-thresholding, sweeps, calibration against a synthetic human,
and the cross-run tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from clipeval.analysis import headlines, humans, metrics, runs, runview
from clipeval.errors import ClipevalError
from clipeval.evaluators.rules import RULES, VARIANTS
from clipeval.store import Store

THRESHOLDS = {"cp": 0.01, "es": 0.25, "contrast": 0.75, "vqa": 0.5}
EVALS = ["cp", "es", "contrast"]


@pytest.fixture(scope="module")
def view(built_run):
    db, run_id, _ = built_run
    store = Store(db, read_only=True)
    v = runview.RunView(store, run_id)
    yield v
    store.close()


@pytest.fixture
def human_view(run_store, tmp_path):
    """A writable copy with a synthetic human rater 'synth' who says yes when the ES neuron score is at
    least its median (so a threshold that agrees perfectly exists), on every neuron."""
    store, run_id, _ = run_store
    v = runview.RunView(store, run_id)
    score = v.table("es").neuron_scores("real")
    cut = float(np.median(score))
    verdicts = v.neurons.assign(verdict=np.where(score >= cut, "yes", "no"), rater="synth")
    path = tmp_path / "synth.csv"
    verdicts[["layer", "unit", "verdict", "rater"]].to_csv(path, index=False)
    humans.import_human(store, run_id, path)
    return runview.RunView(store, run_id), cut, store


def test_run_view_loads_the_evaluations(view):
    assert sorted(view.available) == sorted(EVALS)
    assert view.evaluators["vqa"].status == "missing" and "clipeval evaluate" in view.evaluators["vqa"].reason
    assert view.kmax == 5
    assert view.layers == ["blocks.1", "blocks.4", "classifier"]
    for e in EVALS:
        st = view.evaluators[e]
        assert st.status == "complete" and st.wall_s > 0 and st.constant_label
        assert st.models["image_text"]["backend"] == "conse"
        assert st.table.variants == list(VARIANTS)
    with pytest.raises(ClipevalError, match="vqa is not available"):
        view.table("vqa")
    with pytest.raises(ClipevalError, match="unknown evaluator"):
        view.table("bleu")


def test_layer_summary_shape_and_values(view):
    s = view.layer_summary(THRESHOLDS)
    n_layers = len(view.layers)
    assert list(s.columns) == ["layer", "evaluator", "variant", "share_correct", "n", "n_dead"]
    assert len(s) == len(EVALS) * len(VARIANTS) * (n_layers + 1)
    assert s["share_correct"].between(0, 1).all()
    per_layer = view.neurons.groupby("layer").size()
    for (_ev, _var), g in s.groupby(["evaluator", "variant"]):
        g = g.set_index("layer")
        assert list(g.index) == view.layers + ["overall"]
        assert g.loc["overall", "n"] == len(view.neurons)
        for layer in view.layers:
            assert g.loc[layer, "n"] == per_layer[layer]
        # overall is pooled over every neuron: the n-weighted mean of the layers
        pooled = (g.loc[view.layers, "share_correct"] * g.loc[view.layers, "n"]).sum() / len(view.neurons)
        assert g.loc["overall", "share_correct"] == pytest.approx(pooled)
    # the numbers are those of the verdicts
    es = view.table("es").verdicts(0.25)
    got = s[(s["evaluator"] == "ES") & (s["variant"] == "real") & (s["layer"] == "overall")]["share_correct"].item()
    assert got == pytest.approx(es.mean())
    only = view.layer_summary(THRESHOLDS, evaluators=["es", "vqa"])
    assert set(only["evaluator"]) == {"ES"}  # vqa is not available: skipped
    with pytest.raises(ClipevalError, match="outside"):
        view.layer_summary({**THRESHOLDS, "es": 1.5})


def test_verdicts_move_monotonically_with_the_threshold(view):
    taus = np.linspace(-0.2, 1.0, 25)
    es = view.table("es")
    V = es.sweep(taus)
    assert V.shape == (25, len(view.neurons))
    assert (V[1:] <= V[:-1]).all()  # a neuron correct at a tau is correct at every lower tau
    shares = [es.verdicts(t).mean() for t in taus]
    assert all(b <= a for a, b in zip(shares, shares[1:]))
    assert shares[0] > shares[-1]
    cp = view.table("cp")
    ps = np.linspace(0, 0.2, 21)
    C = cp.sweep(ps)
    assert (C[1:] >= C[:-1]).all() and C[0].sum() == 0  # p = 0 admits no concept at all
    auc = view.table("contrast").sweep(np.linspace(0, 1, 11))
    assert (auc[1:] <= auc[:-1]).all() and auc[0].all()
    # k: more images can only make a label correct, never wrong
    for k in range(1, 5):
        assert (es.verdicts(0.3, k=k) <= es.verdicts(0.3, k=k + 1)).all()


def test_sweep_rows_and_values(view):
    values = [0.2, 0.25, 0.3, 0.5]
    sw = view.sweep("es", values)
    assert len(sw) == len(values) * (len(view.layers) + 1) * len(VARIANTS)
    assert {"threshold", "share_correct", "layer", "variant"} <= set(sw.columns)
    assert "kappa" not in sw.columns  # no reference rater
    assert sw.groupby(["layer", "variant"]).size().eq(len(values)).all()
    summary = view.layer_summary({**THRESHOLDS, "es": 0.3}, evaluators=["es"])
    for r in summary.itertuples():
        hit = sw[(sw["threshold"] == 0.3) & (sw["layer"] == r.layer) & (sw["variant"] == r.variant)]
        assert hit["share_correct"].item() == pytest.approx(r.share_correct)
    for _layer, g in sw[sw["variant"] == "real"].groupby("layer"):
        assert g["share_correct"].is_monotonic_decreasing


def test_unit_grid(view):
    grid = view.unit_grid(THRESHOLDS)
    assert len(grid) == len(view.neurons)
    for t in ("CP", "ES", "Contrast"):
        assert f"{t} score" in grid.columns and grid[t].dtype == bool
    assert (grid["all evaluators agree correct"] == grid[["CP", "ES", "Contrast"]].all(axis=1)).all()


def test_sweep_and_calibration_against_a_synthetic_human(human_view):
    view, cut, store = human_view
    assert list(view.humans) == ["synth"]
    sw = view.sweep("es", [cut - 0.05, cut, cut + 0.05], reference="human: synth")
    real = sw[(sw["variant"] == "real") & (sw["layer"] == "overall")].set_index("threshold")
    assert real.loc[cut, "agreement"] == 1.0 and real.loc[cut, "kappa"] == pytest.approx(1.0)
    assert real["n_reference"].eq(len(view.neurons)).all()
    assert real.loc[cut - 0.05, "kappa"] < 1 and real.loc[cut + 0.05, "kappa"] < 1
    assert sw[sw["variant"] == "shuffled"]["kappa"].isna().all()  # agreement only for the real labels

    res = view.calibrate("es", "human: synth", fit_fraction=0.5, seed=0)
    rule = RULES["es"]
    assert res["evaluator"] == "es" and res["rater"] == "synth" and res["param"] == "tau"
    assert rule.lo <= res["threshold"] <= rule.hi
    assert res["n_fit"] + res["n_test"] == len(view.neurons) and res["n_test"] > 0
    assert res["fit_kappa"] == pytest.approx(1.0)
    assert abs(res["threshold"] - cut) < 0.05
    assert res["test_agreement"] > 0.95 and res["test_kappa"] > 0.9
    assert 0 <= res["test_share_correct"] <= 1
    assert runview.calibrate_threshold(store, view.run_id, "es", "synth") == res
    for e in ("cp", "contrast"):
        r = view.calibrate(e, "synth")
        assert RULES[e].lo <= r["threshold"] <= RULES[e].hi
        assert -1 <= r["test_kappa"] <= 1 and 0 <= r["test_agreement"] <= 1
    with pytest.raises(ClipevalError, match="no rater 'nobody'.*synth"):
        view.calibrate("es", "nobody")
    with pytest.raises(ClipevalError, match="vqa is not available"):
        view.calibrate("vqa", "synth")


def test_calibration_needs_enough_judged_neurons(run_store, tmp_path):
    store, run_id, _ = run_store
    neurons = store.neurons(run_id).head(3)
    path = tmp_path / "few.csv"
    neurons.assign(verdict=["yes", "no", "yes"], rater="few")[["layer", "unit", "verdict", "rater"]].to_csv(
        path, index=False
    )
    humans.import_human(store, run_id, path)
    view = runview.RunView(store, run_id)
    with pytest.raises(ClipevalError, match="at least 4"):
        view.calibrate("es", "few")
    # agreement with evaluators over the neurons the human judged
    raters = view.rater_verdicts(THRESHOLDS)
    assert sorted(raters) == ["CP", "Contrast", "ES", "human: few"]
    K = metrics.kappa_matrix(raters)
    assert (np.diag(K.to_numpy()) == 1).all()
    t = metrics.pairwise_table(raters["ES"], raters["human: few"])
    assert t.set_index("layer").loc["overall", "n"] == 3


def test_runs_comparison_and_timings(view, built_run):
    db, run_id, _ = built_run
    store = Store(db, read_only=True)
    try:
        comp = runs.runs_comparison(store)
        assert list(comp["run"]) == [run_id]
        row = comp.iloc[0]
        assert row["neurons"] == len(view.neurons)
        summary = view.layer_summary(runview.default_thresholds())
        for _e, title in (("cp", "CP"), ("es", "ES"), ("contrast", "Contrast")):
            for v in VARIANTS:
                col = title if v == "real" else f"{title} {v}"
                want = summary[
                    (summary["layer"] == "overall") & (summary["evaluator"] == title) & (summary["variant"] == v)
                ]["share_correct"].item()
                assert row[col] == pytest.approx(want)
        assert np.isnan(row["VQA"])
        tm = runs.timings(store)
        assert list(tm.columns) == ["run", "name", "step", "seconds"]
        assert set(tm["run"]) == {run_id}
        steps = set(tm["step"])
        assert {"evaluate: CP", "evaluate: ES", "evaluate: Contrast"} <= steps
        assert any(s.startswith("dissect: ") for s in steps)
        assert (tm["seconds"].astype(float) >= 0).all()
    finally:
        store.close()


def test_runs_comparison_skips_runs_that_are_not_complete(run_store):
    store, run_id, _ = run_store
    store.execute("UPDATE runs SET status = 'failed' WHERE run_id = ?", [run_id])  # a run that did not finish
    assert runs.runs_comparison(store).empty
    with pytest.raises(ClipevalError, match="not complete"):
        runview.RunView(store, run_id)


def test_cp_calibration_can_reach_every_rank_cut_off(run_store, tmp_path):
    """A rater who accepts a label when it ranks 1st or 2nd among the concepts for one of the top images:
    the CP cut-off that reproduces them (int(|S| * p) = 2) must be among the candidates, even though
    p = 2/|S| is far finer than a 0.005 grid."""
    store, run_id, _ = run_store
    view = runview.RunView(store, run_id)
    cp = view.table("cp")
    ranks = cp.neuron_scores("real")
    assert 0.2 < (ranks <= 2).mean() < 0.8  # a mixed reference on this run
    path = tmp_path / "strict.csv"
    view.neurons.assign(verdict=np.where(ranks <= 2, "yes", "no"), rater="strict")[
        ["layer", "unit", "verdict", "rater"]
    ].to_csv(path, index=False)
    humans.import_human(store, run_id, path)
    view = runview.RunView(store, run_id)
    res = view.calibrate("cp", "strict")
    assert res["fit_kappa"] == pytest.approx(1.0)
    assert int(cp.n_concepts * res["threshold"]) == 2
    assert res["test_kappa"] == pytest.approx(1.0)
    np.testing.assert_array_equal(cp.verdicts(res["threshold"]), ranks <= 2)


def test_sweep_with_an_unknown_reference_is_an_error(view):
    with pytest.raises(ClipevalError, match="no rater 'nobody'"):
        view.sweep("es", [0.2, 0.3], reference="human: nobody")
    assert "kappa" not in view.sweep("es", [0.2], reference=None).columns


def test_weak_evaluators_flags_only_those_near_a_baseline():
    rows = [
        ("overall", "CP", "real", 0.74),
        ("overall", "CP", "shuffled", 0.27),
        ("overall", "CP", "constant", 0.14),
        ("overall", "ES", "real", 0.99),
        ("overall", "ES", "shuffled", 0.98),
        ("overall", "ES", "constant", 0.60),
        ("overall", "Contrast", "real", 0.30),
        ("overall", "Contrast", "constant", 0.25),
        ("blocks.1", "CP", "real", 0.30),
        ("blocks.1", "CP", "shuffled", 0.29),
    ]  # a layer alone is not pooled
    summary = pd.DataFrame(rows, columns=["layer", "evaluator", "variant", "share_correct"])
    weak = headlines.weak_evaluators(summary)
    assert [(w["evaluator"], w["baseline"]) for w in weak] == [("ES", "shuffled"), ("Contrast", "constant")]
    assert weak[0]["real"] == 0.99 and weak[0]["baseline_share"] == 0.98
    assert headlines.weak_evaluators(summary, ratio=0.995) == []  # only a baseline at 99.5% of the real share
    only_real = summary[summary["variant"] == "real"]
    assert headlines.weak_evaluators(only_real) == []  # no baseline stored: nothing to compare against


def test_weak_evaluators_on_the_real_run(view):
    lenient = dict(THRESHOLDS, es=-1.0)  # every image matches: real and shuffled labels all pass
    weak = {w["evaluator"] for w in headlines.weak_evaluators(view.layer_summary(lenient))}
    assert "ES" in weak
    strict = dict(THRESHOLDS, es=1.0)  # nothing matches: 0% real, 0% baselines: also no separation
    assert "ES" in {w["evaluator"] for w in headlines.weak_evaluators(view.layer_summary(strict))}


def test_rater_agreement_matches_the_metrics(human_view):
    v, cut, _ = human_view
    table = v.rater_agreement(dict(THRESHOLDS, es=cut))
    assert set(table["evaluator"]) == {"CP", "ES", "Contrast"} and set(table["rater"]) == {"human: synth"}
    es = table[table["evaluator"] == "ES"].iloc[0]
    # the synthetic rater says yes exactly when the ES neuron score reaches `cut`
    assert es["n"] == len(v.neurons) and es["agreement"] == 1.0 and es["kappa"] == pytest.approx(1.0)
    cp = table[table["evaluator"] == "CP"].iloc[0]
    expect = metrics.pairwise_table(v.verdicts("cp", 0.01), v.humans["synth"], by_layer=False).iloc[0]
    assert cp["agreement"] == pytest.approx(expect["agreement"]) and cp["kappa"] == pytest.approx(expect["kappa"])
