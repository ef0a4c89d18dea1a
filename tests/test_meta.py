"""deepmr_utils.meta against metafor 3.8-1 (tests/data/mr_reference.json)."""

import numpy as np
import pytest

from deepmr_utils import meta

EXACT = 1e-8
PVAL = 1e-6


def close(a, b, rtol=EXACT):
    # relative only: p-values near 1e-26 must match to rtol too (an absolute floor would pass anything)
    if b == 0:
        assert a == 0, (a, b)
    else:
        assert a == pytest.approx(b, rel=rtol, abs=0), (a, b)


def _data(ref, name):
    ds = ref["datasets"]
    if name.startswith("dat.bcg"):
        d = ds["metafor_dat_bcg"][name.split("_")[1]]
        return np.array(d["yi"]), np.sqrt(d["vi"])
    if name == "dat.raudenbush1985":
        d = ds["metafor_dat_raudenbush1985"]
        return np.array(d["yi"]), np.sqrt(d["vi"])
    if name == "CLASP_dersimonian2007":
        d = ds["clasp_dersimonian_kacker_2007"]
        return np.array(d["yi"]), np.sqrt(d["vi"])
    # MR-flavoured: Wald ratios of the lipid data with first- or second-order SEs
    d = ds["waterworth_lipids_chd_28"]
    bx, bxse, by, byse = (np.array(d[k]) for k in ("ldlc", "ldlcse", "chdlodds", "chdloddsse"))
    r = by / bx
    if name.endswith("first_order"):
        return r, byse / np.abs(bx)
    return r, np.sqrt(byse**2 / bx**2 + by**2 * bxse**2 / bx**4)


DATASETS = [
    "dat.bcg_RR",
    "dat.bcg_OR",
    "dat.raudenbush1985",
    "CLASP_dersimonian2007",
    "ldlc_chd_ratio_meta_first_order",
    "ldlc_chd_ratio_meta_second_order",
]
CASES = [(d, m, kh) for d in DATASETS for m in ("DL", "REML") for kh in (False, True)]


@pytest.mark.parametrize("dataset,method,kh", CASES)
def test_random_effects_matches_metafor(ref, dataset, method, kh):
    r = ref["computed_outputs"]["metafor_3.8-1"][dataset][method + ("_knha" if kh else "")]
    y, s = _data(ref, dataset)
    res = meta.random_effects(y, s, method=method, knapp_hartung=kh)
    close(res.estimate, r["estimate"])
    close(res.se, r["se"])
    close(res.ci_low, r["ci_lb"])
    close(res.ci_high, r["ci_ub"])
    close(res.pvalue, r["pval"], PVAL)
    close(res.tau2, r["tau2"])
    close(res.se_tau2, r["se_tau2"])
    close(res.q, r["QE"])
    close(res.q_pvalue, r["QEp"], PVAL)
    close(100 * res.i2, r["I2"])
    close(res.h2, r["H2"])
    assert res.k == r["k"] and res.converged
    assert res.test == ("t" if kh else "z")


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("method", ["DL", "REML"])
def test_prediction_interval_matches_metafor(ref, dataset, method):
    r = ref["computed_outputs"]["metafor_3.8-1"][dataset].get(f"{method}_predict")
    if r is None:
        pytest.skip("no predict() output stored for this case")
    res = meta.random_effects(*_data(ref, dataset), method=method)
    close(res.pi_low, r["pi_lb"])
    close(res.pi_high, r["pi_ub"])


@pytest.mark.parametrize("dataset", ["dat.bcg_RR", "dat.bcg_OR", "ldlc_chd_ratio_meta_first_order"])
def test_fixed_effect_matches_metafor(ref, dataset):
    r = ref["computed_outputs"]["metafor_3.8-1"][dataset]["EE"]
    res = meta.fixed_effect(*_data(ref, dataset))
    close(res.estimate, r["estimate"])
    close(res.se, r["se"])
    close(res.ci_low, r["ci_lb"])
    close(res.pvalue, r["pval"], PVAL)
    close(res.q, r["QE"])
    close(100 * res.i2, r["I2"])
    close(res.h2, r["H2"])


def test_published_values(ref):
    """Numbers printed in publications, as quoted by metafor's own test-suite."""
    pub = ref["published_outputs"]["metafor_testthat_expected"]
    rau = pub["dat.raudenbush1985 (test_analysis_example_raudenbush2009.r; Raudenbush 2009 Table 16.3)"]
    y, s = _data(ref, "dat.raudenbush1985")
    for m in ("DL", "REML"):
        for test, kh in (("z_test", False), ("knha_test", True)):
            tau2, mu, se, z, lo, hi = rau[test][m]
            res = meta.random_effects(y, s, method=m, knapp_hartung=kh)
            for got, want in ((res.tau2, tau2), (res.estimate, mu), (res.se, se), (res.ci_low, lo), (res.ci_high, hi)):
                assert got == pytest.approx(want, abs=1e-4)
    lo, hi = rau["REML_prediction_interval"]
    res = meta.random_effects(y, s)
    assert (res.pi_low, res.pi_high) == pytest.approx((lo, hi), abs=1e-4)
    clasp = pub["CLASP (test_analysis_example_dersimonian2007.r; DerSimonian & Kacker 2007 Tables 3-4)"]
    y, s = _data(ref, "CLASP_dersimonian2007")
    for m in ("DL", "REML"):
        tau, mu, se = clasp[m]
        res = meta.random_effects(y, s, method=m)
        assert (res.tau, res.estimate, res.se) == pytest.approx((tau, mu, se), abs=1e-4)


def test_dl_is_truncated_at_zero():
    res = meta.random_effects([0.1, 0.12, 0.11], [0.1, 0.1, 0.1], method="DL")
    assert res.tau2 == 0.0 and res.i2 == 0.0
    assert res.se == pytest.approx(meta.fixed_effect([0.1, 0.12, 0.11], [0.1, 0.1, 0.1]).se)


@pytest.mark.parametrize(
    "kw,msg",
    [
        (
            {"estimates": [0.1, np.nan, 0.2], "ses": [0.1, 0.1, 0.1]},
            r"estimates contains a non-finite value \(nan\) at index 1",
        ),
        ({"estimates": [0.1, 0.2, 0.3], "ses": [0.1, 0.0, 0.1]}, r"ses must be > 0, got 0.0 at index 1"),
        ({"estimates": [0.1, 0.2], "ses": [0.1]}, "same length"),
        ({"estimates": [0.1], "ses": [0.1]}, "at least 2"),
        # SEs and estimates whose squares leave float64: weights of inf or 0 made every mean 0/0 (a
        # ZeroDivisionError, or a NaN estimate reported as converged)
        ({"estimates": [0.1, 0.2, 0.3], "ses": [0.1, 1e-200, 0.1]}, r"ses is 1e-200 at index 1: so small"),
        ({"estimates": [0.1, 0.2, 0.3], "ses": [1e200, 0.1, 0.1]}, r"ses is 1e\+200 at index 0: its square overflows"),
        ({"estimates": [0.1, 1e160, 0.3], "ses": [0.1, 1.0, 0.1]}, r"estimate 1e\+160 at index 1 is too large"),
    ],
)
def test_bad_input(kw, msg):
    with pytest.raises(ValueError, match=msg):
        meta.random_effects(**kw)
    for call in (meta.fixed_effect, lambda **a: meta.random_effects(**a, method="DL")):
        if "at least" not in msg:  # the fixed effect needs one estimate
            with pytest.raises(ValueError, match=msg):
                call(**kw)
    with pytest.raises(ValueError, match="method"):
        meta.random_effects([0.1, 0.2], [0.1, 0.1], method="PM")


@pytest.mark.parametrize(
    "kw,msg",
    [
        ({"threshold": float("nan")}, "threshold must be a positive number"),  # REML took no step and said converged
        ({"threshold": -1.0}, "threshold must be a positive number"),
        ({"max_iter": 0}, "max_iter must be an integer >= 1"),
        ({"max_iter": 2.5}, "max_iter must be an integer >= 1"),
    ],
)
def test_bad_iteration_settings_are_named(kw, msg):
    with pytest.raises(ValueError, match=msg):
        meta.random_effects([1.0, 2.0, 3.0], [0.1, 0.1, 0.1], **kw)


def test_repr_one_line(ref):
    text = repr(meta.random_effects(*_data(ref, "dat.bcg_RR")))
    assert "\n" not in text and "REML" in text and "I^2=92.2%" in text


def test_pool_skips_unusable_loci_with_a_count():
    import pandas as pd

    local = pd.DataFrame(
        {
            "estimate": [0.4, 0.5, np.nan, 0.7, np.nan],
            "se": [0.1, 0.2, np.nan, 0.1, np.nan],
            "status": ["ok", "ok", "degenerate: se=0", "ok", "too few instruments (1 < 2)"],
        }
    )
    res = meta.pool(local)
    want = meta.random_effects([0.4, 0.5, 0.7], [0.1, 0.2, 0.1])
    assert res.estimate == want.estimate and res.se == want.se and res.n_excluded == 2
    assert "2 loci excluded" in repr(res)
    with pytest.raises(ValueError, match=r"only 1 of 2 loci have an estimate .*'degenerate': 1"):
        meta.pool(local.iloc[1:3])


def test_reml_that_does_not_converge_says_so():
    y, s = np.array([0.1, 1.5, -0.8, 2.2, 0.4]), np.array([0.3, 0.2, 0.5, 0.4, 0.1])
    res = meta.random_effects(y, s, max_iter=1, threshold=1e-12)
    assert not res.converged and "NOT CONVERGED" in repr(res)


def _traces_by_definition(w):
    """tr(P) and tr(PP) of P = W - w w' / sum(w), built as a matrix in extended precision."""
    w = np.asarray(w, dtype=np.longdouble)
    p = np.diag(w) - np.outer(w, w) / w.sum()
    return float(np.trace(p)), float(np.sum(p * p))


@pytest.mark.parametrize(
    "w",
    [np.random.default_rng(0).uniform(0.5, 2.0, 7), np.array([7.26e-11, 0.1024]), np.array([1e-12, 3.0, 1e-9, 0.5])],
)
def test_reml_traces_hold_when_one_weight_dominates(w):
    tr_p, tr_pp = meta._traces(w)
    want_p, want_pp = _traces_by_definition(w)
    assert tr_p == pytest.approx(want_p, rel=1e-6) and tr_pp == pytest.approx(want_pp, rel=1e-6)


def test_reml_with_one_imprecise_locus_ends_at_the_precise_one():
    # two loci of a barely trained model (SEs 1.2e5 and 3.1): the textbook traces cancelled to tr(PP) = 0, the
    # Fisher step was -inf and the step-halving loop never ended. REML's answer is tau^2 = 0 (one locus carries
    # the information): the fixed-effect estimate, and a finite I^2
    y, s = np.array([3.18436859, 3.29255782]), np.sqrt([1.37755627e10, 9.76360455])
    res = meta.random_effects(y, s)
    fe = meta.fixed_effect(y, s)
    assert res.converged and res.tau2 == 0.0 and res.iterations < 5
    assert res.estimate == pytest.approx(fe.estimate, rel=1e-12) and res.se == pytest.approx(fe.se, rel=1e-12)
    assert np.isfinite(res.i2) and np.isfinite(res.se_tau2)
    dl = meta.random_effects(y, s, method="DL")
    assert dl.tau2 == 0.0 and np.isfinite(dl.se_tau2) and np.isfinite(dl.i2)
