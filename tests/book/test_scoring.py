"""Scoring against the truth (deepmr_utils.book.scoring): hand-computed values."""

import numpy as np
import pandas as pd
import pytest

from deepmr_utils import meta
from deepmr_utils.book import scoring


def _local():
    return pd.DataFrame(
        {
            "locus": [0, 1, 2, 3, 4],
            "estimate": [0.9, 1.3, 0.7, 2.0, 1.1],
            "se": [0.2, 0.3, 0.25, 0.5, 0.2],
            "status": ["ok", "ok", "ok", "too few instruments", "ok"],
            "theta": [1.0, 1.0, 1.2, 1.0, np.nan],  # locus 4 has no truth, locus 3 no estimate
        }
    ).assign(ci_low=lambda d: d.estimate - 1.96 * d.se, ci_high=lambda d: d.estimate + 1.96 * d.se)


def test_against_truth_scores_the_loci_with_an_estimate_and_a_truth():
    row, ok = scoring.against_truth(_local())
    assert list(ok.locus) == [0, 1, 2] and row["n_loci"] == 3 and row["n_excluded"] == 2
    g = meta.random_effects(np.array([0.9, 1.3, 0.7]), np.array([0.2, 0.3, 0.25]))
    assert row["estimate"] == pytest.approx(g.estimate) and row["tau"] == pytest.approx(g.tau)
    # locus 2's CI (0.21, 1.19) misses 1.2; the others cover 1.0
    assert row["local_coverage"] == pytest.approx(2 / 3)
    assert row["local_rmse"] == pytest.approx(np.sqrt((0.1**2 + 0.3**2 + 0.5**2) / 3))
    z = np.array([-0.1 / 0.2, 0.3 / 0.3, -0.5 / 0.25])
    assert row["local_z_sd"] == pytest.approx(z.std(ddof=1))
    w = 1 / (np.array([0.2, 0.3, 0.25]) ** 2 + g.tau2)
    assert row["truth_weighted"] == pytest.approx(np.sum(w * [1.0, 1.0, 1.2]) / w.sum())
    assert row["cond_se"] == pytest.approx(np.sqrt(np.sum(w**2 * np.array([0.2, 0.3, 0.25]) ** 2)) / w.sum())
    assert row["cond_se"] < row["se"] or g.tau2 == 0  # the conditional CI leaves out tau


def test_against_truth_without_enough_loci():
    row, ok = scoring.against_truth(None)
    assert row == {"n_loci": 0} and ok.empty
    row, ok = scoring.against_truth(_local().iloc[:1])
    assert row == {"n_loci": 1} and len(ok) == 1


def test_judged_needs_the_interval_to_exclude_zero_on_the_truths_side():
    assert scoring.judged(0.1, 0.5, 0.3) == {"covered": True, "sign_recovered": True}
    assert scoring.judged(-0.1, 0.5, 0.3) == {"covered": True, "sign_recovered": False}
    assert scoring.judged(-0.5, -0.1, 0.3) == {"covered": False, "sign_recovered": False}
    assert np.isnan(scoring.judged(-0.1, 0.1, 0.0)["sign_recovered"])
