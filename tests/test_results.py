"""The base result (deepmr_utils.results): one printable line, rows by field name, intervals that refuse
a zero SE."""

import numpy as np
import pytest
from scipy import stats

from deepmr_utils.results import Estimate, interval


def test_an_estimate_prints_in_one_line_and_converts_to_a_row():
    e = Estimate("IVW", 0.5, 0.1, 0.304, 0.696, 5.7e-7)
    assert repr(e) == "IVW: 0.5 (SE 0.1, 95% CI 0.304 to 0.696, p=5.7e-07)" and "\n" not in str(e)
    assert e.to_dict("se", "estimate") == {"se": 0.1, "estimate": 0.5}
    assert list(e.to_dict()) == ["method", "estimate", "se", "ci_low", "ci_high", "pvalue", "alpha"]
    with pytest.raises(ValueError, match="Estimate has no field 'tau'"):
        e.to_dict("tau")
    assert "90% CI" in repr(Estimate("IVW", 0.5, 0.1, 0.3, 0.7, 0.01, alpha=0.1))


def test_interval_normal_and_t():
    lo, hi, p = interval(1.0, 0.5, 0.05)
    assert (lo, hi) == pytest.approx((1 - 1.959964 * 0.5, 1 + 1.959964 * 0.5)) and p == pytest.approx(
        2 * stats.norm.sf(2)
    )
    lo, hi, p = interval(np.array([1.0, -1.0]), np.array([0.5, 0.5]), 0.05, df=4)
    q = stats.t(4).ppf(0.975)
    np.testing.assert_allclose(hi - lo, 2 * q * 0.5)
    np.testing.assert_allclose(p, 2 * stats.t(4).sf(2))
    with pytest.raises(ValueError, match="standard error is 0"):
        interval(1.0, 0.0, 0.05)
