"""ConMix against MendelianRandomization 0.10.0's mr_conmix (tests/data/mr_reference.json), and its
confidence set as a union of intervals where the valid instruments form two clusters."""

import numpy as np
import pytest

from deepmr_utils import mr


@pytest.mark.parametrize("case", ["ldlc", "bmi"])
def test_conmix_matches_mendelianrandomization(ref, lipids, bmi, case):
    out = ref["computed_outputs"]
    if case == "ldlc":
        data, r = lipids("ldlc"), out["MendelianRandomization_0.10.0"]["ldlc_chd"]["conmix_default"]
    else:
        data, r = bmi, out["MendelianRandomization_0.10.0_on_bmi_chd_79"]["conmix"]
    res = mr.conmix(*data)
    step = r["CIStep"]  # estimate and interval ends are grid points: equal up to float round-off of the grid
    assert res.estimate == pytest.approx(r["Estimate"], abs=1e-9 * max(1, abs(r["CIMax"])) + 1e-12)
    assert (res.ci_low, res.ci_high) == pytest.approx((r["CILower"], r["CIUpper"]), abs=step / 100)
    assert len(res.intervals) == 1
    assert res.psi == pytest.approx(r["Psi"], rel=1e-12)
    assert res.pvalue == pytest.approx(r["Pvalue"], rel=1e-6)
    if "Valid" in r:
        assert [i + 1 for i in res.valid] == r["Valid"]
    assert np.isnan(res.se) and res.n_instruments == r["SNPs"]


def test_conmix_confidence_set_can_be_two_intervals():
    """Two equally strong clusters of ratios, at -2 and at +2 (equally far from 0, so an invalid
    instrument costs the same at either peak), and nothing between them: the likelihood has two peaks of
    nearly the same height, and the set keeps both pieces apart instead of bridging the gap."""
    bx = np.full(20, 0.5)
    ratio = np.r_[np.full(10, -2.0), np.full(10, 2.0)] + np.tile(np.linspace(-0.05, 0.05, 10), 2)
    res = mr.conmix(bx, np.full(20, 0.01), ratio * bx, np.full(20, 0.05))
    assert len(res.intervals) == 2
    (a, b), (c, d) = res.intervals
    assert a <= -2.0 <= b < 0 < c <= 2.0 <= d
    assert (res.ci_low, res.ci_high) == (a, d)
    assert "U" in repr(res)


def test_conmix_bad_input_is_named():
    x = np.array([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="bx"):
        mr.conmix(np.array([0.1, 0.0, 0.3]), x, x, x)
    with pytest.raises(ValueError, match="ci_step"):
        mr.conmix(x, x, x, x, ci_step=0)
    with pytest.raises(ValueError, match="ci_min < ci_max"):
        mr.conmix(x, x, x, x, ci_min=1.0, ci_max=0.5)


def test_conmix_grid_on_ratios_far_from_unit_scale_is_refused_with_the_step_to_use():
    """The package's absolute step of 0.01 gives ratios of ~1e-5 a grid of one point (its estimate the grid's
    lower end, a silent non-answer) and ratios of ~1e9 a grid of billions of points (a MemoryError); both are
    named, with the step that fits, and that step then works."""
    rng = np.random.default_rng(0)
    bx = rng.uniform(0.5, 1.5, 8)
    by, se = 0.4 * bx + rng.normal(0, 0.05, 8), np.full(8, 0.05)
    ref = mr.conmix(bx, se, by, se, ci_step=1e-4)
    for scale in (1e-5, 1e9):
        with pytest.raises(ValueError, match=r"ci_step=0.01 has .* points"):
            mr.conmix(bx, se, by * scale, se * scale)
        rescaled = mr.conmix(bx, se, by * scale, se * scale, ci_step=1e-4 * scale)
        assert rescaled.estimate / scale == pytest.approx(ref.estimate, rel=1e-6)
    with pytest.raises(ValueError, match="overflows"):
        mr.conmix(np.r_[1e-300, bx[1:]], se, np.r_[1e10, by[1:]], se)


def test_conmix_grid_does_not_depend_on_the_instruments_orientation(ref, lipids):
    """The package's default grid, min((by - 2 byse) / bx) to max((by + 2 byse) / bx), shrinks or is reversed
    when bx < 0 (ISM losses of binding). Flipping instruments (bx and by together) leaves every ratio and its
    SE unchanged, so the result must not change: on the reference case, on the two clusters (whose peaks the
    package's grid would cut off) and on one tight cluster (whose grid the package would reverse)."""
    bx = np.full(20, 0.5)
    two = np.r_[np.full(10, -2.0), np.full(10, 2.0)] + np.tile(np.linspace(-0.05, 0.05, 10), 2)
    tight = 1.0 + np.linspace(-0.02, 0.02, 20)
    cases = [tuple(np.asarray(a, float) for a in lipids("ldlc"))]
    cases += [(bx, np.full(20, 0.01), r * bx, np.full(20, 0.05)) for r in (two, tight)]
    for x, xse, y, yse in cases:
        first = mr.conmix(x, xse, y, yse)
        for flip in (-np.ones_like(x), np.where(np.arange(x.size) % 2, -1.0, 1.0)):
            res = mr.conmix(flip * x, xse, flip * y, yse)
            assert np.ravel(res.intervals) == pytest.approx(np.ravel(first.intervals), abs=1e-9)
            assert res.estimate == pytest.approx(first.estimate, abs=1e-9)
    r = ref["computed_outputs"]["MendelianRandomization_0.10.0"]["ldlc_chd"]["conmix_default"]
    assert mr.conmix(*(-a if k in (0, 2) else a for k, a in enumerate(cases[0]))).estimate == pytest.approx(
        r["Estimate"], abs=1e-9 * max(1, abs(r["CIMax"])) + 1e-12
    )
