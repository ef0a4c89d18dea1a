"""dIVW against MendelianRandomization 0.10.0's mr_divw (tests/data/mr_reference.json) and against a
weak-instrument world whose causal effect is known."""

import numpy as np
import pandas as pd
import pytest

from deepmr_utils import mr


def test_divw_matches_mendelianrandomization(ref, lipids):
    r = ref["computed_outputs"]["MendelianRandomization_0.10.0"]["ldlc_chd"]["divw_default"]
    res = mr.divw(*lipids("ldlc"))
    assert res.estimate == pytest.approx(r["Estimate"], rel=1e-10)
    assert res.se == pytest.approx(r["StdError"], rel=1e-10)
    assert (res.ci_low, res.ci_high) == pytest.approx((r["CILower"], r["CIUpper"]), rel=1e-10)
    assert res.pvalue == pytest.approx(r["Pvalue"], rel=1e-8)
    assert res.condition == pytest.approx(r["Condition"], rel=1e-10)
    assert res.n_instruments == r["SNPs"] == 28


def test_divw_removes_the_weak_instrument_bias_of_ivw():
    """200 worlds of 300 weak instruments (mean F about 3), beta = 0.5: IVW is pulled towards 0 by
    about a quarter, dIVW is unbiased within its Monte-Carlo error and its CI covers 0.5 in 0.9-0.99."""
    rng = np.random.default_rng(3)
    ivw, divw, covered = [], [], []
    for _ in range(200):
        k = 300
        gamma = rng.normal(0, 0.014, k)
        bxse, byse = np.full(k, 0.01), rng.uniform(0.01, 0.02, k)
        bx, by = gamma + rng.normal(0, bxse), 0.5 * gamma + rng.normal(0, byse)
        ivw.append(mr.ivw(bx, bxse, by, byse).estimate)
        d = mr.divw(bx, bxse, by, byse)
        divw.append(d.estimate)
        covered.append(d.ci_low <= 0.5 <= d.ci_high)
    assert np.mean(ivw) < 0.42
    assert abs(np.mean(divw) - 0.5) < 3 * np.std(divw) / np.sqrt(200)
    assert 0.9 <= np.mean(covered) <= 0.99


def test_per_locus_divw_equals_divw_and_flags_noise_only_loci(lipids):
    bx, bxse, by, byse = lipids("ldlc")
    weak = {"bx": [1e-4, -2e-4, 1e-4], "bxse": 0.01, "by": [0.1, 0.2, 0.3], "byse": 0.1}
    noise = pd.DataFrame({"locus": "noise", **weak})
    frame = pd.concat([pd.DataFrame({"locus": "ldlc", "bx": bx, "bxse": bxse, "by": by, "byse": byse}), noise])
    out = mr.per_locus(frame, "divw").set_index("locus")
    ref = mr.divw(bx, bxse, by, byse)
    for col in ("estimate", "se", "ci_low", "ci_high", "pvalue"):
        assert out.loc["ldlc", col] == pytest.approx(getattr(ref, col), rel=1e-12)
    assert out.loc["noise", "status"].startswith("degenerate: sum of (bx^2 - bxse^2)")
    assert np.isnan(out.loc["noise", "estimate"])
    with pytest.raises(ValueError, match="weaker than their own noise"):
        mr.divw(noise.bx, noise.bxse, noise.by, noise.byse)
