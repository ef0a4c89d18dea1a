"""MR-RAPS against the authors' R package (mr.raps 0.4.2; tests/data/raps_reference.json) and
against a simulated world whose causal effect and overdispersion are known."""

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepmr_utils import mr, simulate
from deepmr_utils.raps import raps_loci

REF = json.loads((Path(__file__).parent / "data" / "raps_reference.json").read_text())
# the package's mr.raps.mle, deterministic; robust + overdispersion is left out (see test below)
RELIABLE = [(od, loss) for od in (False, True) for loss in ("l2", "huber", "tukey") if not (od and loss != "l2")]


@pytest.fixture(scope="module")
def data(lipids, bmi):
    b = REF["bmi_sbp_data"]
    return {
        "ldlc_chd": lipids("ldlc"),
        "bmi_chd": bmi,
        "bmi_sbp": tuple(np.array(b[k]) for k in ("bx", "bxse", "by", "byse")),
    }


@pytest.mark.parametrize("name", ["ldlc_chd", "bmi_chd", "bmi_sbp"])
@pytest.mark.parametrize("od, loss", RELIABLE, ids=[f"od={od}-{loss}" for od, loss in RELIABLE])
def test_raps_matches_the_r_package(data, name, od, loss):
    ref = REF[name][f"mr.raps.mle_overdispersion_{str(od).upper()}_{loss}"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # bmi_sbp: a small mean F, as the package warns too
        res = mr.raps(*data[name], over_dispersion=od, loss=loss)
    assert res.estimate == pytest.approx(ref["beta.hat"], rel=1e-6)
    assert res.se == pytest.approx(ref["beta.se"], rel=1e-5)
    if od:
        assert res.tau2 == pytest.approx(ref["tau2.hat"], rel=1e-5)
        assert res.tau2_se == pytest.approx(ref["tau2.se"], rel=1e-4)
    else:
        assert res.tau2 == 0 and res.tau2_se == 0
    assert res.ci_low < res.estimate < res.ci_high and res.method == "MR-RAPS"


@pytest.mark.parametrize("loss", ["huber", "tukey"])
def test_robust_overdispersed_raps_fits_an_overdispersion_the_package_misses(data, loss):
    """The package's mr.raps.mle robust + overdispersion scales every residual by the largest sd
    (a scalar max(0, v)) and its root search for tau2 fails on these data, leaving tau2 = 0. With
    each residual scaled by its own sd, tau2 > 0 is found, and the estimate lands within a quarter
    of an SE of the package's recommended estimator (mr.raps(), estimating equations whose tau2
    equation weights instruments differently). Its SE is checked by simulation below."""
    for name in ("ldlc_chd", "bmi_chd"):
        assert REF[name][f"mr.raps.mle_overdispersion_TRUE_{loss}"]["tau2.hat"] == 0  # the package's failure
        res = mr.raps(*data[name], over_dispersion=True, loss=loss)
        wrapper = REF[name][f"mr.raps_wrapper_shrinkageFALSE_overdispersion_TRUE_{loss}_seed1"]
        assert res.tau2 > 0
        assert abs(res.estimate - wrapper["beta.hat"]) < 0.25 * wrapper["beta.se"], name


@pytest.mark.parametrize("loss", ["l2", "huber", "tukey"])
def test_raps_recovers_a_known_effect_and_overdispersion(loss):
    """A world with beta = 0.4 and pleiotropic effects of variance tau2 = 4e-4 on 2000 instruments:
    the overdispersed fit covers both, and without overdispersion its SE is too small."""
    rng = np.random.default_rng(7)
    k, beta, tau2 = 2000, 0.4, 4e-4
    gamma = rng.normal(0, 0.05, k)
    bxse, byse = rng.uniform(0.005, 0.015, k), rng.uniform(0.01, 0.03, k)
    bx = gamma + rng.normal(0, bxse)
    by = beta * gamma + rng.normal(0, np.sqrt(tau2), k) + rng.normal(0, byse)
    res = mr.raps(bx, bxse, by, byse, over_dispersion=True, loss=loss)
    assert abs(res.estimate - beta) < 3 * res.se
    assert abs(res.tau2 - tau2) < 3 * res.tau2_se
    naive = mr.raps(bx, bxse, by, byse, over_dispersion=False, loss=loss)
    assert naive.se < res.se


def test_raps_bad_input_is_named():
    bx, se = np.array([0.1, 0.2, 0.3]), np.full(3, 0.01)
    with pytest.raises(ValueError, match="loss"):
        mr.raps(bx, se, bx, se, loss="cauchy")
    with pytest.raises(ValueError, match="bx is 0 at index 1"):
        mr.raps(np.array([0.1, 0.0, 0.3]), se, bx, se)
    with pytest.raises(ValueError, match="at least 2"):
        mr.raps(bx[:1], se[:1], bx[:1], se[:1])
    with pytest.raises(ValueError, match="byse must be > 0"):
        mr.raps(bx, se, bx, np.array([0.01, -1, 0.01]))


@pytest.mark.parametrize("loss", ["huber", "tukey"])
def test_robust_overdispersed_sandwich_se_is_the_spread_of_the_estimates(loss):
    """Over 150 replicate worlds (beta 0.4, tau2 2e-4, 300 instruments) the sandwich SE matches the
    SD of the estimates to within 20 % (the SD itself is known to about +-12 % from 150 draws) and
    the 95 % CI covers the truth in 0.88 to 0.99 of them."""
    rng = np.random.default_rng(11)
    est, se, covered = [], [], []
    for _ in range(150):
        k = 300
        gamma = rng.normal(0, 0.05, k)
        bxse, byse = rng.uniform(0.005, 0.015, k), rng.uniform(0.01, 0.03, k)
        bx = gamma + rng.normal(0, bxse)
        by = 0.4 * gamma + rng.normal(0, np.sqrt(2e-4), k) + rng.normal(0, byse)
        r = mr.raps(bx, bxse, by, byse, over_dispersion=True, loss=loss)
        est.append(r.estimate), se.append(r.se), covered.append(r.ci_low <= 0.4 <= r.ci_high)
    assert np.mean(se) == pytest.approx(np.std(est, ddof=1), rel=0.2)
    assert 0.88 <= np.mean(covered) <= 0.99


def test_one_table_of_estimators_feeds_per_locus_the_command_and_the_study():
    from deepmr_utils import cli
    from deepmr_utils.book import simulation_study

    keys = set(mr.ESTIMATORS)
    assert set(cli.ESTIMATORS.values()) == keys
    assert set(cli.ESTIMATORS) == {e.cli for e in mr.ESTIMATORS.values()}
    assert {m for m, _ in simulation_study.ESTIMATORS.values()} <= keys
    assert all(mr.ESTIMATORS[m].name == name for name, (m, _) in simulation_study.ESTIMATORS.items())
    with pytest.raises(ValueError, match="raps"):  # the error lists the registry's keys
        mr.per_locus(pd.DataFrame({"locus": [0], "bx": [1.0], "bxse": [1.0], "by": [1.0], "byse": [1.0]}), "lasso")
    for e in mr.ESTIMATORS.values():
        assert (e.kernel is None) != (e.scalar is None), e.key  # exactly one way to run it


def test_per_locus_raps_equals_raps_per_locus_and_marks_bad_loci(data):
    frames = []
    for i, name in enumerate(("ldlc_chd", "bmi_chd")):
        bx, bxse, by, byse = data[name]
        frames.append(pd.DataFrame({"locus": i, "bx": bx, "bxse": bxse, "by": by, "byse": byse}))
    frames.append(pd.DataFrame({"locus": 2, "bx": [0.1, 0.2], "bxse": 0.01, "by": [0.1, 0.2], "byse": 0.01}))
    frames.append(pd.DataFrame({"locus": 3, "bx": [0.1, 0.0, 0.3], "bxse": 0.01, "by": [0.1, 0.2, 0.3], "byse": 0.01}))
    out = mr.per_locus(pd.concat(frames), "raps")
    for i, name in enumerate(("ldlc_chd", "bmi_chd")):
        ref = mr.raps(*data[name])
        assert out.loc[i, "status"] == "ok"
        # both solve the same equations; they differ only by their root-finding tolerance
        assert out.loc[i, "estimate"] == pytest.approx(ref.estimate, rel=1e-7)
        assert out.loc[i, "se"] == pytest.approx(ref.se, rel=1e-7)
        assert out.loc[i, "ci_low"] == pytest.approx(ref.ci_low, rel=1e-7)
    assert out.loc[2, "status"].startswith("too few instruments (2 < 3)")
    assert out.loc[3, "status"] == "degenerate: raps: bx is 0 at index 1 (its ratio by/bx is unbounded)"
    assert out.loc[3, ["estimate", "se"]].isna().all()


LOSSES = [(od, loss) for od in (True, False) for loss in ("l2", "huber", "tukey")]


@pytest.mark.parametrize("od, loss", LOSSES, ids=[f"od={od}-{loss}" for od, loss in LOSSES])
def test_raps_loci_matches_the_r_package_and_the_scalar_path(data, od, loss):
    """All loci solved together give the R package's numbers where the package is reliable, and the
    scalar path's everywhere, on the reference data and on 60 simulated loci with pleiotropy."""
    names = ("ldlc_chd", "bmi_chd", "bmi_sbp")
    sim, _ = simulate.summary_statistics(60, 25, effect=0.5, tau=0.1, pleiotropy_sd=0.02, seed=3)
    cases = [data[n] for n in names] + [
        tuple(g[c].to_numpy() for c in ("bx", "bxse", "by", "byse")) for _, g in sim.groupby("locus")
    ]
    codes = np.concatenate([np.full(len(c[0]), i) for i, c in enumerate(cases)])
    arrays = [np.concatenate([c[j] for c in cases]) for j in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = raps_loci(codes, len(cases), *arrays, over_dispersion=od, loss=loss)
        scalar = [mr.raps(*c, over_dispersion=od, loss=loss) for c in cases]
    assert (fit["status"] == "ok").all() and not fit["scalar"].any()
    for i, name in enumerate(names):
        if (od, loss) in RELIABLE:
            ref = REF[name][f"mr.raps.mle_overdispersion_{str(od).upper()}_{loss}"]
            assert fit["estimate"][i] == pytest.approx(ref["beta.hat"], rel=1e-6), name
            assert fit["se"][i] == pytest.approx(ref["beta.se"], rel=1e-5), name
            assert fit["tau2"][i] == pytest.approx(ref["tau2.hat"] if od else 0.0, rel=1e-5, abs=1e-12), name
    assert fit["estimate"] == pytest.approx([r.estimate for r in scalar], rel=1e-6)
    assert fit["se"] == pytest.approx([r.se for r in scalar], rel=1e-6)
    assert fit["tau2_se"] == pytest.approx([r.tau2_se for r in scalar], rel=1e-4, abs=1e-12)
    # tau2 where it is positive; near 0 the scalar path's stopping rule leaves it a little off its root
    assert fit["tau2"] == pytest.approx([r.tau2 for r in scalar], rel=1e-3, abs=1e-9)
    assert fit["n_instruments"].tolist() == [r.n_instruments for r in scalar]


def test_raps_loci_hands_loci_it_cannot_settle_to_the_scalar_path(data, monkeypatch):
    """With one Newton step allowed nothing settles: every locus is solved by raps() itself, same numbers."""
    from deepmr_utils import raps as raps_module

    monkeypatch.setattr(raps_module, "_NEWTON_STEPS", 1)
    bx, bxse, by, byse = data["ldlc_chd"]
    codes = np.repeat([0, 1], [len(bx), 10])
    arrays = [np.concatenate([a, a[:10]]) for a in (bx, bxse, by, byse)]
    fit = raps_loci(codes, 2, *arrays)
    assert fit["scalar"].all()
    assert fit["estimate"][0] == mr.raps(bx, bxse, by, byse).estimate
    assert fit["estimate"][1] == mr.raps(bx[:10], bxse[:10], by[:10], byse[:10]).estimate


def test_raps_loci_prunes_like_raps_and_names_what_is_left_out():
    rng = np.random.default_rng(1)
    bx = rng.normal(0.2, 0.05, 12)
    bxse = np.r_[np.full(10, 0.01), 0.5, 0.6]  # two exposure SEs above 10x the median
    by, byse = 0.4 * bx + rng.normal(0, 0.01, 12), np.full(12, 0.01)
    codes = np.r_[np.zeros(12, int), np.ones(3, int)]
    arrays = [np.r_[bx, bx[:3]], np.r_[bxse, 0.01, 0.5, 0.5], np.r_[by, by[:3]], np.r_[byse, byse[:3]]]
    fit = raps_loci(codes, 2, *arrays)
    ref = mr.raps(bx, bxse, by, byse)
    assert fit["n_pruned"].tolist() == [2, 0] and fit["n_instruments"][0] == ref.n_instruments == 10
    assert fit["estimate"][0] == pytest.approx(ref.estimate, rel=1e-7)
    # the median of (0.01, 0.5, 0.5) is 0.5: nothing pruned, three instruments fitted
    assert fit["status"][1] == "ok" and fit["n_instruments"][1] == 3
    with pytest.raises(ValueError, match="loss"):
        raps_loci(codes, 2, *arrays, loss="cauchy")
