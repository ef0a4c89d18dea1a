"""Paired effects and SEs from ISM, and their calibration on held-out sequences."""

import numpy as np
import pytest
import torch
from scipy import stats

from deepmr_utils import instruments, uncertainty
from deepmr_utils import sequence as sq


def test_paired_effects_by_hand(toy_pred):
    pred, X = toy_pred
    eff, se = uncertainty.paired_effects(pred, X)
    assert eff.shape == se.shape == (1, 2, 4, 2)
    assert eff[0, 0, 2, 0] == pytest.approx(2.0) and se[0, 0, 2, 0] == pytest.approx(1.0)  # sd(1,2,3), ddof 1
    assert eff[0, 0, 2, 1] == pytest.approx(-1.0) and se[0, 0, 2, 1] == 0.0  # paired: shared offsets cancel
    _, se0 = uncertainty.paired_effects(pred, X, ddof=0)
    assert se0[0, 0, 2, 0] == pytest.approx(np.sqrt(2 / 3))
    assert np.isnan(eff[0, 0, 0]).all() and np.isnan(eff[0, 1, 1]).all()  # reference slots A at 0, C at 1
    with pytest.raises(ValueError, match="at least 2 ensemble members"):
        uncertainty.paired_effects(pred[:, :1], X)


def test_variance_scaling_mle():
    rng = np.random.default_rng(0)
    n, M = 4000, 5
    mu = rng.normal(0, 1, n)
    sigma = rng.uniform(0.5, 1.5, n)
    members = mu[:, None] + sigma[:, None] * rng.normal(0, 1, (n, M))
    # the truth is 2x as spread as the members suggest
    y = members.mean(1) + 2 * members.std(1, ddof=1) * rng.normal(0, 1, n)
    cal = uncertainty.VarianceScaling().fit(members, y, ids=np.arange(n))
    assert cal.lam == pytest.approx(4.0, rel=0.1)
    new = cal.transform_members(members[:10], axis=1)
    assert np.allclose(new.std(1, ddof=1), 2 * members[:10].std(1, ddof=1), rtol=0.1)
    assert np.allclose(new.mean(1), members[:10].mean(1))
    with pytest.raises(ValueError, match="fitted on 1 of these sequences"):
        cal.transform_members(members[:2], axis=1, ids=[5, n + 3])


def test_isotonic_calibration_fixes_overconfidence():
    rng = np.random.default_rng(1)
    n, M = 3000, 5
    centre = rng.normal(0, 1, n)
    members = centre[:, None] + 0.5 * rng.normal(0, 1, (n, M))
    y = centre + 1.5 * rng.normal(0, 1, n)  # far more spread than the ensemble admits
    fit_idx, test_idx = np.arange(0, n, 2), np.arange(1, n, 2)
    before = uncertainty.coverage_curve(members[test_idx], y[test_idx])
    cal = uncertainty.IsotonicCalibration().fit(members[fit_idx], y[fit_idx], ids=fit_idx)
    # applied to held-out members, the recalibrated predictive CDF is uniform on held-out labels
    mu, sd = members[test_idx].mean(1), members[test_idx].std(1, ddof=1)
    u = cal.recalibrate_cdf(stats.norm.cdf((y[test_idx] - mu) / sd))
    assert stats.kstest(u, "uniform").pvalue > 0.01
    assert stats.kstest(stats.norm.cdf((y[test_idx] - mu) / sd), "uniform").pvalue < 1e-6
    assert uncertainty.miscalibration_area(before) > 0.2
    t = cal.transform_members(torch.tensor(members[test_idx][None]), axis=2)
    assert isinstance(t, torch.Tensor) and t.shape == (1, len(test_idx), M)
    with pytest.raises(ValueError, match="held-out"):
        cal.transform_members(members[:4], axis=1, ids=fit_idx[:4])


def test_coverage_curve_of_calibrated_model():
    rng = np.random.default_rng(2)
    mu = rng.normal(0, 1, 20000)
    sigma = rng.uniform(0.5, 2, 20000)
    y = mu + sigma * rng.normal(0, 1, 20000)
    cc = uncertainty.coverage_curve(mu=mu, sigma=sigma, y=y)
    assert list(cc.columns) == ["expected", "observed"] and len(cc) == 99
    assert uncertainty.miscalibration_area(cc) < 0.01
    with pytest.raises(ValueError, match="sigma must be > 0"):
        uncertainty.coverage_curve(mu=mu, sigma=np.zeros_like(mu), y=y)


def test_calibration_per_output_on_ism_tensor():
    rng = np.random.default_rng(3)
    n, M = 2000, 4
    pattern = np.array([-1.5, -0.5, 0.5, 1.5]) / np.std([-1.5, -0.5, 0.5, 1.5], ddof=1)  # spread exactly 1
    members = rng.normal(0, 1, (n, 1, 2)) + pattern[None, :, None]
    y = np.stack(
        [
            members[:, :, 0].mean(1) + 3 * rng.normal(0, 1, n),  # lambda ~ 9
            members[:, :, 1].mean(1) + 1 * rng.normal(0, 1, n),
        ],
        1,
    )  # lambda ~ 1
    cal = uncertainty.VarianceScaling(noise_var=0).fit(members, y, ids=np.arange(len(y)))
    assert cal.lams[0] == pytest.approx(9, rel=0.15) and cal.lams[1] == pytest.approx(1, rel=0.15)
    noisy = uncertainty.VarianceScaling(noise_var=1.0).fit(members, y, ids=np.arange(len(y)))
    with pytest.raises(TypeError, match="required keyword-only argument: 'ids'"):
        uncertainty.VarianceScaling().fit(members, y)
    with pytest.raises(ValueError, match="noise_var must be"):
        uncertainty.VarianceScaling(noise_var="guess")
    with pytest.raises(TypeError, match="fit needs ids="):
        uncertainty.VarianceScaling().fit(members, y, ids=None)
    assert noisy.lams[0] == pytest.approx(8, rel=0.2) and noisy.lams[1] < 0.2  # label noise is not model error
    pred = torch.randn(2, M, 5, 4, 2)  # (N, M, P, 4, O)
    out = cal.transform_members(pred, axis=1)
    sd_ratio = out.std(dim=1) / pred.double().std(dim=1)
    assert torch.allclose(sd_ratio[..., 0], torch.full_like(sd_ratio[..., 0], cal.lams[0] ** 0.5))
    assert torch.allclose(sd_ratio[..., 1], torch.full_like(sd_ratio[..., 1], cal.lams[1] ** 0.5))
    with pytest.raises(ValueError, match="outputs on the last axis"):
        cal.transform_members(pred[..., :1], axis=1)


def test_n_positions_are_measured_against_the_unmutated_sequence():
    """At an all-zero (N) column every base is a mutant; each is compared with the reference prediction."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 6, 2))
    X = sq.one_hot("ACNTGA", non_acgt="zero")
    models = [model, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4 * 6, 2))]
    from deepmr_utils import ism
    from deepmr_utils.predict import predict

    pred = ism.saturation_mutagenesis(models, X)
    eff, se = uncertainty.paired_effects(pred, X)
    ref = predict(models, X)  # (1, M, O): the sequence with the N
    for b in range(4):
        x = X.clone()
        x[0, b, 2] = 1
        d = (predict(models, x) - ref)[0].numpy()  # (M, O)
        np.testing.assert_allclose(eff[0, 2, b], d.mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(se[0, 2, b], d.std(axis=0, ddof=1), rtol=1e-4, atol=1e-6)
    assert np.isfinite(eff[0, 2]).all() and (se[0, 2] > 0).all()  # no slot is taken for the reference
    table = instruments.variant_table(eff, se, X, exposure=0, outcome=1)
    at_n = table[table.position == 2]
    assert list(at_n.ref) == ["N"] * 4 and list(at_n.alt) == list("ACGT")
    assert len(table) == 5 * 3 + 4
    # only N positions mutated: the reference must be given
    with pytest.raises(ValueError, match="no known base"):
        uncertainty.paired_effects(pred[:, :, 2:3], X, positions=[2])
    e2, _ = uncertainty.paired_effects(pred[:, :, 2:3], X, positions=[2], reference=ref)
    # the given reference and ISM's own come from batches of other shapes: float32 round-off apart
    np.testing.assert_allclose(e2[0, 0], eff[0, 2], rtol=1e-5, atol=1e-7)


def test_variance_scaling_estimates_label_noise_and_model_spread_apart():
    # y = mu + sqrt(lam) * sigma_i * z + noise: the spread varies between sequences, so lam and the
    # noise variance are both identified; the generating values are the reference
    rng = np.random.default_rng(11)
    n, M, lam, noise = 20000, 5, 4.0, 2.0
    sigma = rng.uniform(0.2, 3.0, n)
    mu = rng.normal(0, 5, n)
    z = rng.normal(0, 1, (n, M))
    z = (z - z.mean(1, keepdims=True)) / z.std(1, ddof=1, keepdims=True)  # members with spread exactly sigma
    members = mu[:, None] + sigma[:, None] * z
    y = mu + np.sqrt(lam) * sigma * rng.normal(0, 1, n) + np.sqrt(noise) * rng.normal(0, 1, n)
    cal = uncertainty.VarianceScaling().fit(members, y, ids=np.arange(n))
    assert cal.lams[0] == pytest.approx(lam, rel=0.08)
    assert cal.noise_vars[0] == pytest.approx(noise, rel=0.1)
    known = uncertainty.VarianceScaling(noise_var=noise).fit(members, y, ids=np.arange(n))
    assert known.lams[0] == pytest.approx(lam, rel=0.08) and known.noise_vars == [noise]
    # ignoring the label noise inflates lambda (the failure the estimate avoids)
    assert uncertainty.VarianceScaling(noise_var=0).fit(members, y, ids=np.arange(n)).lams[0] > 1.3 * lam


def test_members_agreeing_to_round_off_have_no_spread_whatever_the_kernels():
    # identical members give exactly 0 on one CPU and a few ulps on another: both are "no spread"
    members = np.tile(np.linspace(1.0, 2.0, 20)[:, None], (1, 4))
    y = np.linspace(1.0, 2.0, 20) + 0.1
    for ulps in (0.0, 1e-12, 1e-8):
        jitter = members + ulps * np.array([1.0, -1.0, 0.5, -0.5])
        with pytest.raises(ValueError, match="20 of 20 examples .first: example 0. have zero ensemble spread"):
            uncertainty.VarianceScaling().fit(jitter, y, ids=np.arange(20))
    real = members + 1e-3 * np.array([1.0, -1.0, 0.5, -0.5])
    assert uncertainty.VarianceScaling().fit(real, y, ids=np.arange(20)).n_flat == 0


def test_a_few_members_that_happen_to_agree_are_left_out_and_counted():
    # two real members agree to 5 digits on one example of many (seen at default scale: 3.38496 vs 3.38499,
    # flagged by a rule relative to the largest prediction, 32): the fit goes on without that example
    rng = np.random.default_rng(0)
    n = 400
    mu, sigma = rng.normal(5, 2, n), rng.uniform(0.05, 0.3, n)
    members = mu[:, None] + sigma[:, None] * rng.normal(0, 1, (n, 2))
    y = mu + 1.5 * sigma * rng.normal(0, 1, n) + rng.normal(0, 0.1, n)
    members[4] = [3.3849602, 3.384986]  # 1.8e-5 apart: a real, small disagreement, kept
    members[7] = [2.0, 2.0 + 1e-7]  # round-off: left out
    cal = uncertainty.VarianceScaling().fit(members, y, ids=np.arange(n))
    assert cal.n_flat == 1
    keep = np.arange(n) != 7
    ref = uncertainty.VarianceScaling().fit(members[keep], y[keep], ids=np.arange(n - 1))
    assert cal.lam == ref.lam and cal.noise_var_hat == ref.noise_var_hat
    iso = uncertainty.IsotonicCalibration().fit(members, y, ids=np.arange(n))
    assert iso.n_flat == 1
