"""Two-sample DeepMR and one-sample IVW with the members' correlation (psi).

References: the second-order IVW weights are MendelianRandomization 0.10.0's (R/mr_ivw-methods.R,
``lm(By ~ Bx - 1, weights = (Byse^2 + By^2*Bxse^2/Bx^2 - 2*psi*By*Bxse*Byse/Bx)^-1)``, its SE the fixed
one times max(1, residual SE) under random effects); R recycles ``psi`` over the variants, so one value
per variant is the same formula. The checks below solve that weighted regression with numpy's least
squares, not with the library's sums.
"""

import numpy as np
import pandas as pd
import pytest
import torch

from deepmr_utils import instruments, ism, mr, pipeline, uncertainty
from deepmr_utils import sequence as sq
from deepmr_utils.instruments import Selection
from deepmr_utils.models import DilatedResidualNet


def _wls_through_origin(bx, by, w):
    """Weighted least squares of by on bx without intercept, by lstsq on sqrt(w)-scaled rows."""
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq((sw * bx)[:, None], sw * by, rcond=None)
    resid = sw * (by - coef[0] * bx)
    sigma = np.sqrt(resid @ resid / (bx.size - 1))
    se_fixed = 1 / np.sqrt(np.sum(w * bx * bx))
    return coef[0], se_fixed, se_fixed * max(1.0, sigma)


@pytest.fixture(scope="module")
def lipid_like():
    rng = np.random.default_rng(11)
    k = 12
    bx = rng.uniform(0.05, 0.4, k) * rng.choice([-1, 1], k)
    bxse, byse = rng.uniform(0.01, 0.04, k), rng.uniform(0.02, 0.06, k)
    by = 0.45 * bx + rng.normal(0, 0.03, k)
    psi = rng.uniform(-0.8, 0.8, k)
    return bx, bxse, by, byse, psi


def test_per_variant_psi_matches_the_published_weights(lipid_like):
    bx, bxse, by, byse, psi = lipid_like
    w = 1 / (byse**2 + by**2 * bxse**2 / bx**2 - 2 * psi * by * bxse * byse / bx)
    est, se_fixed, se_random = _wls_through_origin(bx, by, w)
    fixed = mr.ivw(bx, bxse, by, byse, weights="delta", psi=psi, model="fixed")
    random = mr.ivw(bx, bxse, by, byse, weights="delta", psi=psi, model="random")
    assert fixed.estimate == pytest.approx(est, rel=1e-12) and fixed.se == pytest.approx(se_fixed, rel=1e-12)
    assert random.se == pytest.approx(se_random, rel=1e-12)
    # psi moves the weights: a scalar 0 and the per-variant values give different estimates
    assert abs(mr.ivw(bx, bxse, by, byse, weights="delta").estimate - est) > 1e-4
    # one value for every variant is the package's scalar psi
    same = mr.ivw(bx, bxse, by, byse, weights="delta", psi=np.full(bx.size, 0.3))
    assert same.estimate == mr.ivw(bx, bxse, by, byse, weights="delta", psi=0.3).estimate
    se2 = mr.ratio_se(bx, bxse, by, byse, order=2, psi=psi)
    assert np.allclose(se2**2 * bx**2, 1 / w, rtol=1e-12)


def test_per_locus_delta_weights_match_ivw_locus_by_locus(lipid_like):
    bx, bxse, by, byse, psi = lipid_like
    cols = {"bx": bx, "bxse": bxse, "by": by, "byse": byse, "psi": psi}
    frame = pd.DataFrame({"locus": np.repeat(["a", "b", "c"], 4), **cols})
    frame.loc[frame.locus == "c", "bx"] = np.r_[0.0, frame.bx[frame.locus == "c"].to_numpy()[1:]]
    out = mr.per_locus(frame, "ivw", weights="delta", psi="psi").set_index("locus")
    for name in ("a", "b"):
        g = frame[frame.locus == name]
        r = mr.ivw(g.bx, g.bxse, g.by, g.byse, weights="delta", psi=g.psi.to_numpy())
        assert out.loc[name, "estimate"] == pytest.approx(r.estimate, rel=1e-12)
        assert out.loc[name, "se"] == pytest.approx(r.se, rel=1e-12)
    # a zero bx fails its own locus, with the reason, and no other
    assert out.loc["c", "status"].startswith("bx is zero") and np.isnan(out.loc["c", "estimate"])
    with pytest.raises(ValueError, match="does not take it"):
        mr.per_locus(frame, "egger", weights="delta")
    with pytest.raises(ValueError, match="which frame does not have"):
        mr.per_locus(frame, "ivw", weights="delta", psi="rho")
    bad = frame.assign(psi=np.r_[frame.psi.to_numpy()[:-1], np.nan])
    with pytest.raises(ValueError, match="psi is a correlation"):
        mr.per_locus(bad, "ivw", weights="delta", psi="psi")
    with pytest.raises(ValueError, match="2 values for 12 instruments"):
        mr.ivw(bx, bxse, by, byse, weights="delta", psi=[0.1, 0.2])


def test_paired_correlation_is_the_members_correlation():
    rng = np.random.default_rng(0)
    N, M, L, O = 3, 6, 5, 3
    X = sq.random_sequences(N, L, seed=1)
    pred = rng.normal(size=(N, M, L, 4, O))
    rho = uncertainty.paired_correlation(pred, X, exposure=0, outcome=2)
    Xn = X.numpy()
    for n in range(N):
        for p in range(L):
            ref = int(Xn[n, :, p].argmax())
            first_ref = int(Xn[n, :, 0].argmax())
            base = pred[n, :, 0, first_ref, :]  # the unmutated prediction, from the first position's slot
            for b in range(4):
                if b == ref:
                    assert np.isnan(rho[n, p, b])
                    continue
                d = pred[n, :, p, b, :] - base
                assert rho[n, p, b] == pytest.approx(np.corrcoef(d[:, 0], d[:, 2])[0, 1], abs=1e-12)
    with pytest.raises(ValueError, match="outcome must be an output index"):
        uncertainty.paired_correlation(pred, X, exposure=0, outcome=3)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    a = [DilatedResidualNet(2, 8, 3, stem_kernel=5, output_names=["x", "y"]) for _ in range(3)]
    b = [DilatedResidualNet(2, 8, 3, stem_kernel=5, output_names=["x", "y"]) for _ in range(3)]
    return a, b, sq.random_sequences(6, 40, seed=2)


def test_variant_effects_member_correlation_column_and_its_pin(tiny, tmp_path):
    a, _, X = tiny
    kw = {"exposure": "x", "outcome": "y", "chunk_size": 4, "progress": False, "select": Selection("all")}
    plain = pipeline.variant_effects(a, X, **kw)
    tab = pipeline.variant_effects(a, X, member_correlation=True, out=tmp_path / "run", **kw)
    assert "psi" not in plain and np.allclose(tab.bx, plain.bx) and np.allclose(tab.byse, plain.byse)
    pred = ism.saturation_mutagenesis(a, X, device="cpu")
    rho = uncertainty.paired_correlation(pred, X, exposure=0, outcome=1)
    Xn = X.numpy()
    idx = {"A": 0, "C": 1, "G": 2, "T": 3}
    for r in tab.sample(25, random_state=0).itertuples():
        assert r.psi == pytest.approx(rho[r.locus, r.position, idx[r.alt]], abs=1e-6)
    assert Xn.shape[0] == tab.locus.nunique()
    again = pipeline.variant_effects(a, X, member_correlation=True, out=tmp_path / "run", **kw)
    pd.testing.assert_frame_equal(again, tab)
    with pytest.raises(ValueError):  # the folder pins member_correlation: a run without it is a different run
        pipeline.variant_effects(a, X, out=tmp_path / "run", **kw)
    with pytest.raises(TypeError, match="member_correlation must be True or False"):
        pipeline.variant_effects(a, X, member_correlation="yes", **kw)


def test_two_sample_chooses_in_one_table_and_measures_in_the_other(tiny, tmp_path):
    a, b, X = tiny
    opts = {"exposure": 0, "outcome": 1, "chunk_size": 4, "progress": False}
    sel = Selection("top_k", k=5)
    got = pipeline.two_sample_effects(b, a, X, select=sel, out=tmp_path / "ts", **opts)
    ta = pipeline.variant_effects(a, X, select=Selection("all"), **opts)
    tb = pipeline.variant_effects(b, X, select=Selection("all"), **opts)
    chosen = sel.apply(tb).instruments
    keys = ["locus", "position", "alt"]
    want = ta.merge(chosen[keys], on=keys).sort_values(keys).reset_index(drop=True)
    assert len(got) == len(chosen) == 6 * 5
    assert np.array_equal(got.bx.to_numpy(), want.bx.to_numpy())  # the estimation ensemble's numbers
    assert np.array_equal(got.bx_selection.to_numpy(), chosen.sort_values(keys).bx.to_numpy())
    assert (got.n_kept == 5).all()
    with pytest.raises(TypeError, match="among the options"):
        pipeline.two_sample_effects(b, a, X, calibration=None, **{**opts, "loci": None})
    with pytest.raises(ValueError, match="no usable measurement"):
        instruments.two_sample(tb, ta.iloc[5:], sel)
    with pytest.raises(TypeError, match="must be a variant table"):
        instruments.two_sample(tb.to_numpy(), ta, sel)
    with pytest.raises(ValueError, match="more than one row"):
        instruments.two_sample(tb, pd.concat([ta, ta.iloc[:1]]), sel)


def test_two_samples_remove_the_curse_that_correlated_errors_cause():
    """Members that share errors (psi = 0.6, noise slope 0.6 against theta = 0.2) make selection on
    |bx|/se pick variants whose errors pushed |bx| up, and by with them; choosing with an independent
    second sample leaves the chosen variants' errors centred. What remains is the estimation sample's
    own weak-instrument pull, (theta sum dx^2 + n psi se^2) / (sum dx^2 + n se^2) over the chosen
    variants, with no selection in it."""
    rng = np.random.default_rng(5)
    n_loci, k, theta, se, psi = 400, 60, 0.2, 0.1, 0.6
    locus = np.repeat(np.arange(n_loci), k)
    dx = rng.normal(0, 0.1, locus.size)  # mostly weak: selection picks lucky draws
    cov = se**2 * np.array([[1, psi], [psi, 1]])
    ex, ey = rng.multivariate_normal([0, 0], cov, locus.size).T
    one = pd.DataFrame({"locus": locus, "position": np.tile(np.arange(k), n_loci), "alt": "A", "dx": dx,
                        "ex": ex, "bx": dx + ex, "bxse": se, "by": theta * dx + ey, "byse": se})  # fmt: skip
    other = one.assign(bx=dx + rng.normal(0, se, locus.size))  # the selection sample's own noise
    sel = Selection(threshold=2.5)
    cursed, chosen = sel.apply(one).instruments, instruments.two_sample(other, one, sel)
    # the curse itself: errors aligned with the exposure effect's sign, about 1.5 SE on average here
    assert (np.sign(cursed.bx) * cursed.ex).mean() > 0.8 * se
    assert abs((np.sign(chosen.dx) * chosen.ex).mean()) < 0.1 * se
    n, sxx = len(chosen), float((chosen.dx**2).sum())
    expected = (theta * sxx + n * psi * se**2) / (sxx + n * se**2)
    clean, curse = mr.ivw(**_cols(chosen)).estimate, mr.ivw(**_cols(cursed)).estimate
    assert abs(clean - expected) < 0.015
    n1, sxx1 = len(cursed), float((cursed.dx**2).sum())
    # the one-sample estimate sits far above its no-selection expectation (0.40 against 0.30 at this seed)
    assert curse - (theta * sxx1 + n1 * psi * se**2) / (sxx1 + n1 * se**2) > 0.05


def _cols(t):
    return {c: t[c].to_numpy() for c in ("bx", "bxse", "by", "byse")}
