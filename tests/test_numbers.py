"""Issue 24: the number shown is the number used (thresholds, CP cut-offs, denominators, negatives, quoted prompts)."""

import numpy as np
import pandas as pd

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
    from clipeval import metrics
    from clipeval.judges import calibrate_splits

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
