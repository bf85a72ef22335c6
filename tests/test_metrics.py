"""Agreement metrics on hand-made cases (method.md section 3): agreement, Jaccard, Cohen's kappa,
precision/recall/F1, kappa matrix, per-layer vs pooled tables, threshold sweeps and calibration."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from clipeval.analysis import intervals, metrics
from clipeval.errors import ClipevalError

# a worked example: 10 neurons, evaluator A against reference B
A = [1, 1, 1, 0, 0, 0, 1, 0, 1, 1]
B = [1, 1, 0, 0, 0, 1, 1, 0, 1, 0]
# equal on 7 of 10; yes-rates 0.6 and 0.5 -> Pe = 0.6*0.5 + 0.4*0.5 = 0.5 -> kappa = (0.7-0.5)/0.5 = 0.4
# yes(A) = {0,1,2,6,8,9}, yes(B) = {0,1,5,6,8}: |&| = 4, |u| = 7
# tp = 4, fp = 2 (2, 9), fn = 1 (5), tn = 3


def frame(layer_units_verdicts) -> pd.DataFrame:
    return pd.DataFrame(layer_units_verdicts, columns=["layer", "unit", "verdict"])


# ------------------------------------------------------------------ the pairwise numbers
def test_worked_example():
    assert metrics.agreement(A, B) == pytest.approx(0.7)
    assert metrics.cohen_kappa(A, B) == pytest.approx(0.4)
    assert metrics.jaccard(A, B) == pytest.approx(4 / 7)
    prf = metrics.precision_recall_f1(A, B)
    assert prf["precision"] == pytest.approx(4 / 6)
    assert prf["recall"] == pytest.approx(4 / 5)
    assert prf["f1"] == pytest.approx(2 * (4 / 6) * (4 / 5) / (4 / 6 + 4 / 5))
    assert prf["f1"] == pytest.approx(8 / 11)
    c = metrics.confusion(A, B)
    assert c.loc["evaluator yes", "reference yes"] == 4
    assert c.loc["evaluator yes", "reference no"] == 2
    assert c.loc["evaluator no", "reference yes"] == 1
    assert c.loc["evaluator no", "reference no"] == 3


def test_kappa_matches_sklearn_on_random_raters():
    import sklearn.metrics as sk

    rng = np.random.default_rng(1)
    for _ in range(20):
        a, b = rng.integers(0, 2, 50), rng.integers(0, 2, 50)
        assert metrics.cohen_kappa(a, b) == pytest.approx(sk.cohen_kappa_score(a, b))


def test_symmetric_measures_do_not_depend_on_the_order():
    for f in (metrics.agreement, metrics.cohen_kappa, metrics.jaccard):
        assert f(A, B) == pytest.approx(f(B, A))
    # precision and recall swap when the reference does
    ab, ba = metrics.precision_recall_f1(A, B), metrics.precision_recall_f1(B, A)
    assert ab["precision"] == pytest.approx(ba["recall"]) and ab["recall"] == pytest.approx(ba["precision"])


def test_perfect_agreement():
    a = [1, 0, 1, 0, 1, 1]
    assert metrics.agreement(a, a) == 1.0
    assert metrics.cohen_kappa(a, a) == pytest.approx(1.0)
    assert metrics.jaccard(a, a) == 1.0
    assert metrics.precision_recall_f1(a, a) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}


def test_chance_level_raters_have_kappa_zero():
    a = [1, 1, 0, 0] * 5
    b = [1, 0, 1, 0] * 5  # independent of a: Po = Pe = 0.5
    assert metrics.agreement(a, b) == pytest.approx(0.5)
    assert metrics.cohen_kappa(a, b) == pytest.approx(0.0, abs=1e-12)
    # a constant rater against a varied one: agreement may be high, kappa is still 0
    always = [1] * 10
    mostly = [1] * 8 + [0] * 2
    assert metrics.agreement(always, mostly) == pytest.approx(0.8)
    assert metrics.cohen_kappa(always, mostly) == pytest.approx(0.0, abs=1e-12)
    # random raters: kappa near 0
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 2, 4000), rng.integers(0, 2, 4000)
    assert abs(metrics.cohen_kappa(x, y)) < 0.05


def test_systematic_disagreement_gives_negative_kappa():
    a = [1, 0, 1, 0, 1, 0]
    b = [0, 1, 0, 1, 0, 1]
    assert metrics.agreement(a, b) == 0.0
    assert metrics.cohen_kappa(a, b) == pytest.approx(-1.0)
    assert metrics.jaccard(a, b) == 0.0
    # mostly disagreeing: negative but above -1
    c = [0, 1, 0, 1, 1, 0]
    assert -1 < metrics.cohen_kappa(a, c) < 0


def test_all_yes_raters_kappa_undefined_agreement_one():
    yes = [1, 1, 1, 1]
    assert metrics.agreement(yes, yes) == 1.0
    assert math.isnan(metrics.cohen_kappa(yes, yes))  # Pe = 1: undefined by design, not a made-up number
    assert metrics.jaccard(yes, yes) == 1.0
    no = [0, 0, 0, 0]
    assert metrics.agreement(no, no) == 1.0
    assert math.isnan(metrics.cohen_kappa(no, no))


def test_jaccard_without_any_yes_is_nan():
    assert math.isnan(metrics.jaccard([0, 0, 0], [0, 0, 0]))
    assert metrics.jaccard([0, 0, 1], [0, 0, 0]) == 0.0  # a yes on one side: defined, 0


def test_undefined_precision_recall():
    prf = metrics.precision_recall_f1([0, 0, 0], [1, 0, 1])  # the evaluator never says yes
    assert math.isnan(prf["precision"]) and prf["recall"] == 0.0 and prf["f1"] == 0.0
    prf = metrics.precision_recall_f1([1, 0, 1], [0, 0, 0])  # the reference never does
    assert prf["precision"] == 0.0 and math.isnan(prf["recall"]) and prf["f1"] == 0.0
    prf = metrics.precision_recall_f1([0, 0], [0, 0])
    assert all(math.isnan(v) for v in prf.values())


def test_booleans_series_and_lists_are_equivalent():
    a, b = np.array(A, bool), pd.Series(B, dtype=bool)
    assert metrics.cohen_kappa(a, b) == pytest.approx(0.4)
    assert metrics.agreement(np.array(A, float), np.array(B, float)) == pytest.approx(0.7)


def test_empty_input_is_nan_not_a_number():
    assert math.isnan(metrics.agreement([], []))
    assert math.isnan(metrics.cohen_kappa([], []))
    assert math.isnan(metrics.jaccard([], []))


@pytest.mark.parametrize(
    "fn", [metrics.agreement, metrics.jaccard, metrics.cohen_kappa, metrics.precision_recall_f1, metrics.confusion]
)
def test_input_validation(fn):
    with pytest.raises(ClipevalError, match="same neurons"):
        fn([1, 0, 1], [1, 0])
    with pytest.raises(ClipevalError, match="0/1"):
        fn([1, 0, 2], [1, 0, 1])
    with pytest.raises(ClipevalError, match="0/1"):
        fn([1, 0, 1], [1, 0.5, 1])
    with pytest.raises(ClipevalError, match="0/1"):
        fn([1, 0, np.nan], [1, 0, 1])
    with pytest.raises(ClipevalError, match="0/1"):
        fn(["yes", "no"], [1, 0])
    with pytest.raises(ClipevalError):
        fn([[1, 0], [0, 1]], [[1, 0], [0, 1]])  # one verdict per neuron: 1-D only


# ------------------------------------------------------------------ ROC-AUC
def test_roc_auc_with_ties():
    # pairs: 0.9 beats both; each 0.5 ties 0.5 (half) and beats 0.1 -> (2 + 1.5 + 1.5) / 6
    assert metrics.roc_auc([0.9, 0.5, 0.5], [0.5, 0.1]) == pytest.approx(5 / 6)
    assert metrics.roc_auc([0.3, 0.3], [0.3, 0.3, 0.3]) == pytest.approx(0.5)
    assert metrics.roc_auc([2, 3], [0, 1]) == 1.0
    assert metrics.roc_auc([0, 1], [2, 3]) == 0.0
    assert metrics.roc_auc([1, np.nan], [0, np.nan]) == 1.0  # NaN scores are dropped
    assert math.isnan(metrics.roc_auc([], [1.0]))
    assert math.isnan(metrics.roc_auc([1.0], [np.nan]))


def test_roc_auc_matches_sklearn():
    import sklearn.metrics as sk

    rng = np.random.default_rng(3)
    pos, neg = rng.integers(0, 5, 30).astype(float), rng.integers(0, 4, 40).astype(float)  # many ties
    y = np.r_[np.ones(30), np.zeros(40)]
    assert metrics.roc_auc(pos, neg) == pytest.approx(sk.roc_auc_score(y, np.r_[pos, neg]))


# ------------------------------------------------------------------ several raters
def test_align_keeps_only_neurons_all_raters_judged():
    a = frame([("l1", 0, True), ("l1", 1, False), ("l2", 0, True)])
    b = frame([("l1", 1, True), ("l2", 0, True), ("l2", 5, False)])
    w = metrics.align({"a": a, "b": b})
    assert sorted(zip(w["layer"], w["unit"])) == [("l1", 1), ("l2", 0)]
    assert list(w.columns) == ["layer", "unit", "a", "b"]
    assert list(metrics.align({}).columns) == ["layer", "unit"]


def test_kappa_matrix_symmetric_diagonal_one_and_pairwise_neurons():
    rng = np.random.default_rng(0)
    units = np.arange(40)
    full = rng.integers(0, 2, 40).astype(bool)
    noisy = full ^ (rng.random(40) < 0.2)
    # r1 judged units 0..29, r2 units 10..39, r3 all of them; r4 said yes to everything
    r1 = frame({"layer": "l", "unit": units[:30], "verdict": full[:30]})
    r2 = frame({"layer": "l", "unit": units[10:], "verdict": noisy[10:]})
    r3 = frame({"layer": "l", "unit": units, "verdict": noisy})
    r4 = frame({"layer": "l", "unit": units, "verdict": np.ones(40, bool)})
    # r2 disagrees everywhere with r1 outside the shared range: pairs must use only units 10..29
    r1.loc[r1["unit"] < 10, "verdict"] = ~noisy[:10]
    K = metrics.kappa_matrix({"r1": r1, "r2": r2, "r3": r3, "r4": r4})
    assert list(K.index) == list(K.columns) == ["r1", "r2", "r3", "r4"]
    assert (np.diag(K.to_numpy()) == 1.0).all()  # 1 on the diagonal, even for the constant rater
    np.testing.assert_array_equal(K.to_numpy(), K.to_numpy().T)
    assert K.loc["r1", "r2"] == pytest.approx(metrics.cohen_kappa(full[10:30], noisy[10:30]))
    assert K.loc["r1", "r3"] == pytest.approx(metrics.cohen_kappa(r1["verdict"], noisy[:30]))
    assert K.loc["r2", "r3"] == pytest.approx(1.0)  # same verdicts on the 30 neurons both judged
    assert K.loc["r3", "r4"] == pytest.approx(0.0)  # an all-yes rater against a varied one


def test_pairwise_table_overall_is_pooled_not_mean_of_layers():
    # layer "a": 2 neurons, both disagree; layer "b": 8 neurons, all agree
    ev = frame([("a", 0, 1), ("a", 1, 0)] + [("b", u, u % 2) for u in range(8)])
    hu = frame([("a", 0, 0), ("a", 1, 1)] + [("b", u, u % 2) for u in range(8)] + [("c", 0, 1)])
    t = metrics.pairwise_table(ev, hu).set_index("layer")
    assert list(t.index) == ["a", "b", "overall"]
    assert t.loc["a", "agreement"] == 0.0 and t.loc["b", "agreement"] == 1.0
    assert t.loc["overall", "agreement"] == pytest.approx(0.8)  # pooled: 8/10, not (0 + 1) / 2
    assert t.loc["overall", "agreement"] != pytest.approx(t.loc[["a", "b"], "agreement"].mean())
    assert list(t["n"]) == [2, 8, 10]  # "c" was judged only by the human: left out
    assert t.loc["a", "kappa"] == pytest.approx(-1.0)
    assert t.loc["b", "kappa"] == pytest.approx(1.0)
    pooled_ev = [1, 0] + [u % 2 for u in range(8)]
    pooled_hu = [0, 1] + [u % 2 for u in range(8)]
    assert t.loc["overall", "kappa"] == pytest.approx(metrics.cohen_kappa(pooled_ev, pooled_hu))
    assert t.loc["overall", "jaccard"] == pytest.approx(metrics.jaccard(pooled_ev, pooled_hu))
    assert t.loc["overall", "precision"] == pytest.approx(4 / 5)  # evaluator is a, human the reference
    assert t.loc["overall", "recall"] == pytest.approx(4 / 5)
    only = metrics.pairwise_table(ev, hu, by_layer=False)
    assert list(only["layer"]) == ["overall"]
    assert only.iloc[0]["agreement"] == pytest.approx(0.8)


# ------------------------------------------------------------------ threshold sweeps
def test_sweep_against_matches_the_pairwise_functions():
    rng = np.random.default_rng(2)
    ref = rng.integers(0, 2, 60).astype(bool)
    V = rng.random((7, 60)) < np.linspace(0.05, 0.95, 7)[:, None]
    V[0] = True  # all yes
    V[1] = ref  # perfect
    V[2] = ~ref  # always wrong
    s = metrics.sweep_against(V, ref)
    assert len(s) == 7 and list(s.columns) == ["share_correct", "agreement", "kappa"]
    for i in range(7):
        assert s["share_correct"][i] == pytest.approx(V[i].mean())
        assert s["agreement"][i] == pytest.approx(metrics.agreement(V[i], ref))
        assert s["kappa"][i] == pytest.approx(metrics.cohen_kappa(V[i], ref), nan_ok=True)
    assert s["kappa"][0] == pytest.approx(0.0) and s["kappa"][1] == pytest.approx(1.0)
    assert s["agreement"][2] == 0.0 and s["kappa"][2] < -0.9


def test_sweep_against_undefined_kappa_is_nan():
    s = metrics.sweep_against(np.ones((2, 4), bool), np.ones(4, bool))
    assert s["agreement"].tolist() == [1.0, 1.0]
    assert s["kappa"].isna().all()


def test_sweep_against_validates_its_input():
    with pytest.raises(ClipevalError):
        metrics.sweep_against(np.ones((3, 5), bool), np.ones(4, bool))
    with pytest.raises(ClipevalError):  # one reference verdict must not silently broadcast to every neuron
        metrics.sweep_against(np.ones((3, 5), bool), np.ones(1, bool))
    with pytest.raises(ClipevalError, match="0/1"):
        metrics.sweep_against(np.ones((3, 4), bool), np.array([0, 1, 2, 1]))


# ------------------------------------------------------------------ calibration
def _ge(scores, thresholds):
    return np.asarray(scores)[None, :] >= np.asarray(thresholds)[:, None]


def test_calibrate_finds_the_true_threshold_and_reports_held_out():
    rng = np.random.default_rng(5)
    scores = rng.permutation(np.linspace(0.005, 0.995, 60))  # unique scores
    reference = scores >= 0.6
    calls = []

    def verdict_fn(s, th):
        calls.append((np.array(s), np.array(th)))
        return _ge(s, th)

    res = metrics.calibrate(scores, reference, np.linspace(0, 1, 101), verdict_fn, fit_fraction=0.5, seed=3)
    assert res["n_fit"] == 30 and res["n_test"] == 30
    (fit_scores, fit_th), (test_scores, test_th) = calls
    assert len(fit_th) == 101 and list(test_th) == [res["threshold"]]
    fit_idx = [int(np.flatnonzero(scores == s)[0]) for s in fit_scores]
    test_idx = [int(np.flatnonzero(scores == s)[0]) for s in test_scores]
    assert not set(fit_idx) & set(test_idx) and len(set(fit_idx) | set(test_idx)) == 60  # a true split
    # the chosen threshold separates the fit neurons perfectly, and the reported numbers are the held-out ones
    below = scores[fit_idx][~reference[fit_idx]].max()
    above = scores[fit_idx][reference[fit_idx]].min()
    assert below < res["threshold"] <= above
    assert res["fit_kappa"] == pytest.approx(1.0)
    held = test_scores >= res["threshold"]
    assert res["test_agreement"] == pytest.approx(metrics.agreement(held, reference[test_idx]))
    assert res["test_kappa"] == pytest.approx(metrics.cohen_kappa(held, reference[test_idx]))
    assert res["test_share_correct"] == pytest.approx(held.mean())
    assert res["test_agreement"] > 0.9
    tp, fp, fn, tn = res["test_cells"]  # the held-out 2x2 table an interval is drawn from
    ref = reference[test_idx]
    assert (tp, fp, fn, tn) == ((held & ref).sum(), (held & ~ref).sum(), (~held & ref).sum(), (~held & ~ref).sum())
    # same seed, same answer; the split depends on the seed
    again = metrics.calibrate(scores, reference, np.linspace(0, 1, 101), _ge, seed=3)
    assert again == res
    other = metrics.calibrate(scores, reference, np.linspace(0, 1, 101), _ge, 0.25, seed=4)
    assert other["n_fit"] == 15 and other["n_test"] == 45


def test_share_interval_is_the_reports_wilson_interval_with_n():
    f = intervals.share_interval(0.8, 10)
    assert (f.lo, f.hi) == metrics.wilson_interval(8, 10) and f.small  # 10 < MIN_N
    assert f.text() == "80.0% [49.0%, 94.3%] n=10" and f.text(with_n=False) == "80.0% [49.0%, 94.3%]"
    assert not intervals.share_interval(0.5, intervals.MIN_N).small
    assert intervals.share_interval(float("nan"), 0).text() == "n/a n=0"


def test_near_chance_kappa():
    near_chance = intervals.near_chance
    assert near_chance(0.025, -0.03) and near_chance(0.15) and near_chance(float("nan"))
    assert near_chance(0.4, 0.0)  # its interval reaches chance
    assert not near_chance(0.5, 0.4) and not near_chance(0.3)


def test_calibrate_on_noisy_reference_picks_the_kappa_maximising_threshold():
    rng = np.random.default_rng(0)
    scores = rng.random(200)
    reference = (scores + rng.normal(0, 0.1, 200)) >= 0.4
    cands = np.linspace(0, 1, 41)
    res = metrics.calibrate(scores, reference, cands, _ge, fit_fraction=0.5, seed=0)
    assert 0.3 <= res["threshold"] <= 0.5
    assert res["test_kappa"] > 0.5
    assert res["threshold"] in cands


def test_calibrate_errors():
    with pytest.raises(ClipevalError, match="at least 4"):
        metrics.calibrate([0.1, 0.2, 0.3], [0, 1, 1], [0.5], _ge)
    with pytest.raises(ClipevalError, match="fit_fraction"):
        metrics.calibrate(np.arange(10.0), np.arange(10) > 4, [0.5], _ge, fit_fraction=1.0)
    with pytest.raises(ClipevalError, match="fit_fraction"):
        metrics.calibrate(np.arange(10.0), np.arange(10) > 4, [0.5], _ge, fit_fraction=0)
    with pytest.raises(ClipevalError):  # one score per reference verdict
        metrics.calibrate(np.arange(12.0), np.arange(10) > 4, [0.5], _ge)
    with pytest.raises(ClipevalError, match="0/1"):
        metrics.calibrate(np.arange(10.0), np.arange(10), [0.5], _ge)


def test_calibrate_refuses_a_reference_without_both_verdicts():
    """Kappa is 0 or undefined at every threshold when the rater says the same thing to every fit neuron:
    there is nothing to calibrate (the old behaviour silently picked the lowest threshold, i.e. 'all
    correct', for a rater who said 'no' to everything)."""
    scores = np.linspace(0, 1, 20)
    for ref in (np.zeros(20, bool), np.ones(20, bool)):
        with pytest.raises(ClipevalError, match="both yes and no"):
            metrics.calibrate(scores, ref, np.linspace(0, 1, 11), _ge)
