"""deepmr_utils.mr against the R packages' outputs (tests/data/mr_reference.json)."""

import numpy as np
import pandas as pd
import pytest

from deepmr_utils import mr, simulate

EXACT = 1e-8  # analytic estimates and SEs
PVAL = 1e-6  # p-values (tail areas; scipy vs R's pnorm/pt)
BOOT = 0.10  # bootstrap SEs: R's RNG cannot be reproduced (_meta.rng_note: 5-10 % for 10 000 draws)

MRPKG = "MendelianRandomization_0.10.0"


def close(a, b, rtol=EXACT):
    assert a == pytest.approx(b, rel=rtol, abs=1e-300), (a, b)


def check_ivw(res, r):
    close(res.estimate, r["Estimate"])
    close(res.se, r["StdError"])
    close(res.ci_low, r["CILower"])
    close(res.ci_high, r["CIUpper"])
    close(res.pvalue, r["Pvalue"], PVAL)
    close(res.rse, r["RSE"])
    close(res.f_stat, r["Fstat"])
    assert res.n_instruments == r["SNPs"]
    if r["Heter.Stat"][0] != "NaN":
        close(res.q, r["Heter.Stat"][0])
        close(res.q_pvalue, r["Heter.Stat"][1], PVAL)
    assert res.model == r["Model"]


IVW_CASES = [
    ("ldlc", "ldlc_chd", "ivw_default", {}),
    ("ldlc", "ldlc_chd", "ivw_fixed", {"model": "fixed"}),
    ("ldlc", "ldlc_chd", "ivw_random", {"model": "random"}),
    ("ldlc", "ldlc_chd", "ivw_random_tdist", {"model": "random", "distribution": "t"}),
    ("ldlc", "ldlc_chd", "ivw_delta_random", {"weights": "delta", "model": "random"}),
    ("ldlc", "ldlc_chd", "ivw_delta_fixed", {"weights": "delta", "model": "fixed"}),
    ("ldlc", "ldlc_chd", "ivw_alpha_0.1", {"alpha": 0.1}),
    ("hdlc", "hdlc_chd", "ivw_default", {}),
    ("hdlc", "hdlc_chd", "ivw_fixed", {"model": "fixed"}),
    ("trig", "trig_chd", "ivw_default", {}),
    ("trig", "trig_chd", "ivw_fixed", {"model": "fixed"}),
]


@pytest.mark.parametrize("exposure,block,key,kw", IVW_CASES)
def test_ivw_matches_mendelianrandomization(ref, lipids, exposure, block, key, kw):
    check_ivw(mr.ivw(*lipids(exposure), **kw), ref["computed_outputs"][MRPKG][block][key])


def test_ivw_default_is_fixed_below_four_instruments(ref, lipids):
    data = [a[:3] for a in lipids("ldlc")]
    r = ref["computed_outputs"][MRPKG]["ldlc_chd_first3"]
    check_ivw(mr.ivw(*data), r["ivw_default"])
    # under-dispersed (RSE < 1): the random model's SE is floored at the fixed SE
    check_ivw(mr.ivw(*data, model="random"), r["ivw_random"])


def test_ivw_bmi_chd(ref, bmi):
    r = ref["computed_outputs"]["MendelianRandomization_0.10.0_on_bmi_chd_79"]
    res = mr.ivw(*bmi)
    close(res.estimate, r["ivw"]["Estimate"])
    close(res.se, r["ivw"]["StdError"])
    close(res.q, r["ivw"]["Heter.Stat"][0])
    close(mr.ivw(*bmi, model="fixed").se, r["ivw_fixed"]["StdError"])
    tsmr = ref["published_outputs"]["TwoSampleMR_testthat_expected"]["mr(dat) default methods"]
    assert res.estimate == pytest.approx(tsmr["Inverse variance weighted"], abs=1e-3)


@pytest.mark.parametrize(
    "block,order,key",
    [
        ("ldlc_chd_first1", 1, "ivw_simple"),
        ("ldlc_chd_first1", 2, "ivw_delta"),
        ("ldlc_chd_snp9", 1, "ivw_simple"),
        ("ldlc_chd_snp9", 2, "ivw_delta"),
    ],
)
def test_wald_ratio(ref, lipids, block, order, key):
    j = 0 if block.endswith("first1") else 8
    data = [a[j : j + 1] for a in lipids("ldlc")]
    r = ref["computed_outputs"][MRPKG][block][key]
    res = mr.wald_ratio(*data, order=order)
    close(res.estimate, r["Estimate"])
    close(res.se, r["StdError"])
    close(res.ci_low, r["CILower"])
    close(res.pvalue, r["Pvalue"], PVAL)
    # a single instrument through ivw() is the same first-order ratio
    if order == 1:
        close(mr.ivw(*data).se, r["StdError"])


def check_egger(res, r, rtol=EXACT):
    close(res.estimate, r["Estimate"], rtol)
    close(res.se, r["StdError.Est"], rtol)
    close(res.ci_low, r["CILower.Est"], rtol)
    close(res.ci_high, r["CIUpper.Est"], rtol)
    close(res.pvalue, r["Pvalue.Est"], max(PVAL, 100 * rtol))  # a p-value amplifies z errors by ~z^2
    close(res.intercept, r["Intercept"], rtol)
    close(res.intercept_se, r["StdError.Int"], rtol)
    close(res.intercept_ci_low, r["CILower.Int"], rtol)
    close(res.intercept_ci_high, r["CIUpper.Int"], rtol)
    close(res.intercept_pvalue, r["Pvalue.Int"], max(PVAL, 100 * rtol))  # a p-value amplifies z errors by ~z^2
    close(res.rse, r["RSE"], rtol)
    close(res.q, r["Heter.Stat"][0], rtol)
    if r.get("I.sq") not in (None, "NaN"):
        close(res.i2_gx, r["I.sq"])


EGGER_CASES = [
    ("ldlc", "ldlc_chd", "egger_default", {}),
    ("ldlc", "ldlc_chd", "egger_tdist", {"distribution": "t"}),
    ("hdlc", "hdlc_chd", "egger_default", {}),
    ("hdlc", "hdlc_chd", "egger_tdist", {"distribution": "t"}),
    ("trig", "trig_chd", "egger_default", {}),
    ("trig", "trig_chd", "egger_tdist", {"distribution": "t"}),
]


@pytest.mark.parametrize("exposure,block,key,kw", EGGER_CASES)
def test_egger_matches_mendelianrandomization(ref, lipids, exposure, block, key, kw):
    check_egger(mr.egger(*lipids(exposure), **kw), ref["computed_outputs"][MRPKG][block][key])


def test_egger_three_instruments_underdispersed(ref, lipids):
    data = [a[:3] for a in lipids("ldlc")]
    check_egger(mr.egger(*data), ref["computed_outputs"][MRPKG]["ldlc_chd_first3"]["egger_default"])


def test_egger_bmi_chd(ref, bmi):
    r = ref["computed_outputs"]["MendelianRandomization_0.10.0_on_bmi_chd_79"]
    check_egger(mr.egger(*bmi), r["egger"])
    check_egger(mr.egger(*bmi, distribution="t"), r["egger_tdist"])


def test_egger_orientation_is_invariant_to_allele_coding(lipids):
    bx, bxse, by, byse = lipids("ldlc")
    flip = np.arange(bx.size) % 2 == 0
    s = np.where(flip, -1.0, 1.0)
    a, b = mr.egger(bx, bxse, by, byse), mr.egger(bx * s, bxse, by * s, byse)
    close(a.estimate, b.estimate, 1e-12)
    close(a.intercept, b.intercept, 1e-12)


def test_robust_egger_matches_lmrob(ref, lipids):
    # lmrob converges to rel.tol = 1e-7 (S-step refine.tol 1e-7), so R's own
    # answer is only that precise: compare at 1e-6.
    r = ref["computed_outputs"][MRPKG]["ldlc_chd"]["egger_robust"]
    check_egger(mr.egger(*lipids("ldlc"), robust=True), r, rtol=1e-6)


def test_heterogeneity_matches_twosamplemr_rucker(ref, lipids, bmi):
    for data, block in ((lipids("ldlc"), "ldlc_chd"), (bmi, "bmi_chd_ieu_a_2_vs_ieu_a_7")):
        q = {
            row["Method"]: row
            for row in ref["computed_outputs"]["TwoSampleMR_0.7.9_functions"][block]["mr_rucker"]["Q"]
        }
        h = mr.heterogeneity(*data)
        close(h.q_ivw, q["Q_ivw"]["Q"])
        close(h.q_egger, q["Q_egger"]["Q"])
        close(h.q_diff, q["Q_diff"]["Q"], 1e-7)  # a difference of two close numbers
        close(h.q_diff_pvalue, q["Q_diff"]["P"], 1e-6)
        assert (h.q_ivw_df, h.q_egger_df) == (q["Q_ivw"]["df"], q["Q_egger"]["df"])


def test_egger_t_pvalue_matches_twosamplemr(ref, bmi):
    r = ref["computed_outputs"]["TwoSampleMR_0.7.9_functions"]["bmi_chd_ieu_a_2_vs_ieu_a_7"]["mr_egger_regression"]
    res = mr.egger(*bmi, distribution="t")  # RSE > 1, so MR's t rule equals TwoSampleMR's
    close(res.pvalue, r["pval"], PVAL)
    close(res.intercept_pvalue, r["pval_i"], PVAL)


@pytest.mark.parametrize(
    "exposure,block,weighting",
    [
        ("ldlc", "ldlc_chd", "weighted"),
        ("ldlc", "ldlc_chd", "simple"),
        ("ldlc", "ldlc_chd", "penalized"),
        ("hdlc", "hdlc_chd", "weighted"),
        ("hdlc", "hdlc_chd", "simple"),
        ("trig", "trig_chd", "weighted"),
        ("trig", "trig_chd", "simple"),
    ],
)
def test_weighted_median(ref, lipids, exposure, block, weighting):
    r = ref["computed_outputs"][MRPKG][block][f"median_{weighting}"]
    res = mr.weighted_median(*lipids(exposure), weighting=weighting, seed=314159265)
    close(res.estimate, r["Estimate"])
    close(res.se, r["StdError"], BOOT)


def test_weighted_median_bmi(ref, bmi):
    r = ref["computed_outputs"]["MendelianRandomization_0.10.0_on_bmi_chd_79"]
    for w in ("weighted", "simple"):
        res = mr.weighted_median(*bmi, weighting=w, seed=1)
        close(res.estimate, r[f"median_{w}"]["Estimate"])
        close(res.se, r[f"median_{w}"]["StdError"], BOOT)


def test_weighted_median_seeded_bootstrap_is_reproducible(lipids):
    a = mr.weighted_median(*lipids("ldlc"), seed=7, n_boot=500)
    b = mr.weighted_median(*lipids("ldlc"), seed=7, n_boot=500)
    assert a == b


def _grid_step(bx, by, h):
    r = by / bx
    return (r.max() - r.min() + 6 * h) / 511


@pytest.mark.parametrize(
    "weighting,stderror,key",
    [
        ("weighted", "delta", "mbe_weighted_delta"),
        ("weighted", "simple", "mbe_weighted_simple"),
        ("simple", "delta", "mbe_unweighted_delta"),
        ("simple", "simple", "mbe_unweighted_simple"),
    ],
)
def test_mbe_ldlc(ref, lipids, weighting, stderror, key):
    r = ref["computed_outputs"][MRPKG]["ldlc_chd"][key]
    res = mr.mbe(*lipids("ldlc"), weighting=weighting, stderror=stderror, seed=314159265)
    # the exact KDE on R's grid reproduces these grid points (mode_note)
    close(res.estimate, r["Estimate"])
    close(res.se, r["StdError"], BOOT)


def test_mbe_bmi_within_one_grid_step(ref, bmi):
    bx, bxse, by, byse = bmi
    r = by / bx
    k = r.size
    mad = 1.4826 * np.median(np.abs(r - np.median(r)))
    h = 0.9 * min(r.std(ddof=1), mad) / k**0.2
    step = _grid_step(bx, by, h)
    mrb = ref["computed_outputs"]["MendelianRandomization_0.10.0_on_bmi_chd_79"]
    tsmr = ref["published_outputs"]["TwoSampleMR_testthat_expected"]["mr(dat) default methods"]
    w = mr.mbe(*bmi, seed=1)
    s = mr.mbe(*bmi, weighting="simple", seed=1)
    assert abs(w.estimate - mrb["mbe"]["Estimate"]) <= step * 1.0001
    assert abs(w.estimate - tsmr["Weighted mode"]) <= 1e-3  # R >= 4.4 value
    close(s.estimate, mrb["mbe_unweighted"]["Estimate"])
    assert s.estimate == pytest.approx(tsmr["Simple mode"], abs=1e-3)
    close(w.se, mrb["mbe"]["StdError"], BOOT)


def test_a_zero_bootstrap_se_is_an_error_not_a_zero_width_interval():
    # Found by the simulation study's exact-effects control: one instrument with an exposure change of ~1e-13 has
    # a Wald ratio of ~-4e8, so R's 512-point KDE grid (min - 3 bw .. max + 3 bw) has steps of ~1e6 and
    # every bootstrap draw lands on the same grid point: SE 0. That must not come back as a CI of width 0.
    bx = np.array([-2.9e-13, -7.10, -6.52, -7.11, -5.95, -5.95, -6.53, -3.46])
    bxse = np.array([0.037, 3.26, 1.52, 2.79, 2.53, 3.10, 1.97, 1.92])
    by = np.array([1.29e-4, -23.73, -21.79, -23.77, -19.87, -19.87, -21.80, -11.54])
    byse = np.array([0.19, 6.69, 4.07, 6.27, 4.94, 6.40, 3.60, 4.53])
    with pytest.raises(ValueError, match="standard error is 0"):
        mr.mbe(bx, bxse, by, byse, n_boot=200, seed=14022)
    frame = pd.DataFrame({"locus": 0, "bx": bx, "bxse": bxse, "by": by, "byse": byse})
    out = mr.per_locus(frame, "mbe", n_boot=200, seed=14022)
    assert out.status[0].startswith("degenerate") and np.isnan(out.estimate[0])  # only this locus, no crash


# --------------------------------------------------------------------------- per_locus


def _frame(rng, n_loci=60, k_range=(2, 12)):
    rows = []
    for i in range(n_loci):
        k = rng.integers(*k_range)
        bx = rng.normal(0, 1, k)
        rows.append(
            pd.DataFrame(
                {
                    "locus": f"seq{i}",
                    "bx": bx,
                    "bxse": rng.uniform(0.05, 0.3, k),
                    "by": 0.5 * bx + rng.normal(0, 0.3, k) + (0.2 if i % 3 == 0 else 0.0),
                    "byse": rng.uniform(0.05, 0.3, k),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


@pytest.mark.parametrize(
    "method,kw",
    [
        ("ivw", {}),
        ("ivw", {"model": "fixed"}),
        ("ivw", {"model": "random", "distribution": "t"}),
        ("egger", {}),
        ("egger", {"distribution": "t"}),
        ("egger", {"alpha": 0.1}),
    ],
)
def test_per_locus_matches_scalar(method, kw):
    frame = _frame(np.random.default_rng(0))
    out = per = mr.per_locus(frame, method, **kw)
    fn = mr.ivw if method == "ivw" else mr.egger
    checked = 0
    for _, row in per.iterrows():
        g = frame[frame.locus == row.locus]
        if row.status != "ok":
            assert len(g) < (2 if method == "ivw" else 3)
            continue
        res = fn(g.bx, g.bxse, g.by, g.byse, **kw)
        for c in ("estimate", "se", "ci_low", "ci_high", "q", "rse"):
            close(row[c], getattr(res, c), 1e-9)
        close(row.pvalue, res.pvalue, 1e-7)
        if method == "egger":
            close(row.intercept, res.intercept, 1e-9)
            close(row.intercept_se, res.intercept_se, 1e-9)
            close(row.intercept_pvalue, res.intercept_pvalue, 1e-7)
        checked += 1
    assert checked > 40
    assert list(out.locus) == list(frame.locus.unique())


def test_per_locus_reports_bad_loci_without_losing_others():
    frame = _frame(np.random.default_rng(1), n_loci=6, k_range=(5, 8))
    frame.loc[frame.index[frame.locus == "seq1"][2], "bx"] = np.nan
    frame.loc[frame.index[frame.locus == "seq2"][0], "byse"] = 0.0
    frame.loc[frame.locus == "seq3", "bx"] = 0.0
    frame = pd.concat(
        [frame, pd.DataFrame({"locus": ["lonely"], "bx": [1.0], "bxse": [0.1], "by": [0.5], "byse": [0.1]})],
        ignore_index=True,
    )
    out = mr.per_locus(frame, "egger").set_index("locus")
    assert out.loc["seq1", "status"].startswith("non-finite")
    bad_row = frame.index[(frame.locus == "seq1") & frame.bx.isna()][0]
    assert f"row {bad_row}" in out.loc["seq1", "status"]
    assert "> 0" in out.loc["seq2", "status"]
    assert out.loc["seq3", "status"] == "all bx are zero"
    assert out.loc["lonely", "status"].startswith("too few instruments (1 < 3)")
    good = out.loc[["seq0", "seq4", "seq5"]]
    assert (good.status == "ok").all() and good.estimate.notna().all()
    assert out.loc[["seq1", "seq2", "seq3", "lonely"], "estimate"].isna().all()


def test_per_locus_matches_r_on_three_loci(ref, lipids):
    """Three loci (the lipid data for LDL-c, HDL-c and triglycerides) in one frame, against R's outputs."""
    frame = pd.concat(
        [
            pd.DataFrame(dict(zip(("bx", "bxse", "by", "byse"), lipids(e))), index=None).assign(locus=e)
            for e in ("ldlc", "hdlc", "trig")
        ],
        ignore_index=True,
    )
    r = ref["computed_outputs"][MRPKG]
    for method, key, kw, tol in (
        ("ivw", "ivw_default", {}, EXACT),
        ("egger", "egger_default", {}, EXACT),
        ("egger_robust", "egger_robust", {}, 1e-6),
        ("weighted_median", "median_weighted", {"n_boot": 2000, "seed": 1}, EXACT),
    ):
        out = mr.per_locus(frame, method, **kw).set_index("locus")
        for e in ("ldlc", "hdlc", "trig"):
            want = r[f"{e}_chd"].get(key)
            if want is None:
                continue
            assert out.status[e] == "ok"
            close(out.estimate[e], want["Estimate"], tol)
            se = want.get("StdError", want.get("StdError.Est"))
            close(out.se[e], se, BOOT if method == "weighted_median" else tol)


def test_per_locus_flags_zero_bootstrap_se():
    # identical ratios: every bootstrap mode is the same grid point, so the MAD is 0
    # and ratios equal only up to round-off: which of two neighbouring grid points each draw's mode lands on
    # is then decided by the CPU's exp() kernel (SE 0 on some CPUs, 8.7e-11 on others), so "equal" must be
    # relative to the ratios' size, and the answer "degenerate" whatever the kernels
    frame = pd.DataFrame(
        {
            "locus": np.repeat(["same", "round-off"], 4),
            "bx": 1.0,
            "bxse": 1e-15,
            "by": np.r_[[0.5] * 4, 0.5 + np.array([0.0, 1e-16, -1e-16, 2e-16])],
            "byse": 1e-15,
        }
    )
    out = mr.per_locus(frame, "mbe", n_boot=50, seed=0)
    for i in (0, 1):
        assert out.status[i].startswith("degenerate: mbe: all 4 ratio estimates are equal"), out.status[i]
        assert np.isnan(out.estimate[i])
    with pytest.raises(ValueError, match="ratio estimates are equal"):
        mr.mbe(np.ones(4), np.full(4, 0.1), np.full(4, 0.5), np.full(4, 0.1), n_boot=50, seed=0)


def test_per_locus_min_instruments():
    frame = _frame(np.random.default_rng(3), n_loci=10, k_range=(2, 12))
    out = mr.per_locus(frame, "ivw", min_instruments=5)
    k = frame.groupby("locus", sort=False).size().to_numpy()
    assert ((out.status == "ok") == (k >= 5)).all()


# --------------------------------------------------------------------------- bad input

GOOD = (np.array([0.1, 0.2, 0.3, 0.15]), np.full(4, 0.02), np.array([0.05, 0.09, 0.16, 0.07]), np.full(4, 0.03))


@pytest.mark.parametrize("fn", [mr.ivw, mr.egger, mr.weighted_median, mr.mbe, mr.heterogeneity])
@pytest.mark.parametrize(
    "arg,index,value,msg",
    [
        (0, 2, np.nan, r"bx contains a non-finite value \(nan\) at index 2"),
        (2, 1, np.inf, r"by contains a non-finite value \(inf\) at index 1"),
        (1, 3, 0.0, r"bxse must be > 0, got 0.0 at index 3"),
        (3, 0, -0.1, r"byse must be > 0, got -0.1 at index 0"),
    ],
)
def test_bad_values_raise(fn, arg, index, value, msg):
    data = [a.copy() for a in GOOD]
    data[arg][index] = value
    with pytest.raises(ValueError, match=msg):
        fn(*data)


@pytest.mark.parametrize(
    "fn,k,msg",
    [
        (mr.ivw, 0, "at least 1 instrument"),
        (mr.egger, 2, "at least 3"),
        (mr.weighted_median, 2, "at least 3"),
        (mr.mbe, 2, "at least 3"),
    ],
)
def test_too_few_instruments(fn, k, msg):
    with pytest.raises(ValueError, match=msg):
        fn(*[a[:k] for a in GOOD])


@pytest.mark.parametrize("fn", [mr.weighted_median, mr.mbe, lambda *a: mr.ivw(*a, weights="delta")])
def test_zero_bx_in_ratio_methods(fn):
    bx = GOOD[0].copy()
    bx[1] = 0.0
    with pytest.raises(ValueError, match="bx is zero at index 1"):
        fn(bx, *GOOD[1:])


def test_other_bad_input():
    with pytest.raises(ValueError, match="same length"):
        mr.ivw(GOOD[0], GOOD[1][:3], GOOD[2], GOOD[3])
    with pytest.raises(ValueError, match="all bx are zero"):
        mr.egger(np.zeros(4), *GOOD[1:])
    with pytest.raises(ValueError, match="1-D"):
        mr.ivw(np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(TypeError, match="numeric"):
        mr.ivw(["a", "b"], [1, 1], [1, 1], [1, 1])
    with pytest.raises(ValueError, match="model must be one of"):
        mr.ivw(*GOOD, model="additive")
    with pytest.raises(ValueError, match="takes one instrument"):
        mr.wald_ratio(*GOOD)
    with pytest.raises(ValueError, match="alpha"):
        mr.ivw(*GOOD, alpha=1.5)
    with pytest.raises(ValueError, match="empty"):
        mr.per_locus(pd.DataFrame(columns=["locus", "bx", "bxse", "by", "byse"]))
    with pytest.raises(ValueError, match="missing column"):
        mr.per_locus(pd.DataFrame({"locus": [1], "bx": [1.0]}))
    with pytest.raises(TypeError, match="DataFrame"):
        mr.per_locus({"locus": [1]})
    # once: nan (SE inf) from an overflow, psi outside [-1, 1] used as given
    with pytest.raises(ValueError, match="too large for their SEs at index 0"):
        mr.ivw([1e200, 2e200, 3e200], [1, 1, 1], [1e200, 2e200, 3.1e200], [1, 1, 1])
    # the other end: (bx/byse)^2 underflowing to 0 for every instrument left IVW at inf and PRESSO, RAPS and the
    # fixed-effect pool dividing by zero
    tiny = (GOOD[0] * 1e-200, GOOD[1] * 1e-200, *GOOD[2:])
    for fn in (mr.ivw, mr.egger, mr.raps, mr.divw, lambda *a: mr.presso(*a, n_sim=20, seed=1)):
        with pytest.raises(ValueError, match=r"underflows float64 to 0: no information on the exposure"):
            fn(*tiny)
    for psi in (1.5, -2, float("nan")):
        with pytest.raises(ValueError, match="psi is a correlation"):
            mr.ivw(*GOOD, weights="delta", psi=psi)
    with pytest.raises(TypeError, match="psi must be a number"):
        mr.wald_ratio(1.0, 0.1, 2.0, 0.1, order=2, psi="0.5")


def test_result_repr_is_one_line(lipids):
    res = mr.egger(*lipids("ldlc"))
    text = repr(res)
    assert "\n" not in text and text.startswith("MR-Egger: 3.253") and "intercept" in text
    assert res.to_dict()["estimate"] == res.estimate
    assert res.to_dict("se", "estimate") == {"se": res.se, "estimate": res.estimate}  # a row: only these, in order
    assert list(res.to_dict("se", "estimate")) == ["se", "estimate"]
    with pytest.raises(ValueError, match="no field 'tau'"):
        res.to_dict("estimate", "tau")
    from dataclasses import FrozenInstanceError

    with pytest.raises(FrozenInstanceError):
        res.estimate = 0


def test_degenerate_fits_raise_or_are_flagged():
    bxse, byse = np.full(4, 0.1), np.full(4, 0.1)
    same = np.ones(4)
    by = np.array([0.5, 0.6, 0.4, 0.55])
    for robust in (False, True):
        with pytest.raises(ValueError, match="all \\|bx\\| are .*equal"):
            mr.egger(same * [1, -1, 1, -1], bxse, by, byse, robust=robust)
    with pytest.raises(ValueError, match="byse is 1e-300 at index 0: so small that its weight"):
        mr.ivw(np.arange(1.0, 5.0), bxse, by, np.array([1e-300, 0.1, 0.1, 0.1]))
    # an exact fit: the slope is known, its SE is the fixed-effect SE (the limit of R's formula), not 0/0
    bx = np.arange(1.0, 5.0)
    res = mr.egger(bx, bxse, 0.5 * bx + 0.1, byse)
    w = byse**-2
    fixed = np.sqrt(np.sum(w) / (np.sum(w) * np.sum(w * bx**2) - np.sum(w * bx) ** 2))
    assert res.estimate == pytest.approx(0.5) and res.se == pytest.approx(fixed) and np.isfinite(res.pvalue)
    with pytest.raises(ValueError, match="exact"):
        mr.egger(bx, bxse, 0.5 * bx + 0.1, byse, robust=True)
    # the same exact fit as some BLAS kernels leave it (OpenBLAS SkylakeX: residuals ~1e-14, not 0):
    # degenerate whatever the kernels, so the decision must be relative to the data's scale
    for noise in (1e-15, 1e-13, 1e-11):
        jitter = noise * np.array([1.0, -1.0, 0.5, -0.5])
        with pytest.raises(ValueError, match="exact fit"):
            mr.egger(bx, bxse, 0.5 * bx + 0.1 + jitter, byse, robust=True)
    # ... while a fit that is merely tight, far above round-off, is a fit
    tight = mr.egger(bx, bxse, 0.5 * bx + 0.1 + 1e-6 * np.array([1.0, -1.0, 0.5, -0.5]), byse, robust=True)
    assert tight.estimate == pytest.approx(0.5, abs=1e-5) and np.isfinite(tight.se)
    frame = pd.DataFrame(
        {
            "locus": np.repeat(["same", "exact", "tiny", "fine"], 4),
            "bx": np.r_[same, bx, bx, bx],
            "bxse": 0.1,
            "by": np.r_[by, 0.5 * bx + 0.1, by, by + [0.01, -0.02, 0.0, 0.03]],
            "byse": np.r_[np.full(8, 0.1), [1e-300, 0.1, 0.1, 0.1], np.full(4, 0.1)],
        }
    )
    for method in ("egger", "egger_robust", "ivw", "weighted_median"):
        out = mr.per_locus(frame, method, **({"n_boot": 100, "seed": 0} if method == "weighted_median" else {}))
        ok = out[out.status == "ok"]
        assert np.isfinite(ok[["estimate", "se", "ci_low", "ci_high", "pvalue"]].to_numpy()).all(), method
        assert out.status[2].startswith("byse so small"), method
        assert out.status[3] == "ok", method
        if method in ("egger", "egger_robust"):
            assert out.status[0].startswith("degenerate: "), (method, out.status[0])
            assert np.isnan(out.estimate[0])
    egger = mr.per_locus(frame, "egger")
    assert egger.status[1] == "ok" and egger.se[1] == pytest.approx(fixed)
    assert mr.per_locus(frame, "egger_robust").status[1].startswith("degenerate: ")


def test_one_result_class_per_method_with_a_common_base():
    from dataclasses import fields

    from deepmr_utils import meta
    from deepmr_utils.results import Estimate

    v, _ = simulate.summary_statistics(1, 30, seed=3)
    a = (v.bx, v.bxse, v.by, v.byse)
    got = {
        mr.IVWResult: mr.ivw(*a),
        mr.EggerResult: mr.egger(*a),
        mr.MedianResult: mr.weighted_median(*a, n_boot=200),
        mr.ModeResult: mr.mbe(*a, n_boot=200),
        mr.WaldResult: mr.wald_ratio(1.0, 0.1, 2.0, 0.1),
    }
    for cls, res in got.items():
        assert type(res) is cls and isinstance(res, mr.MRResult) and isinstance(res, Estimate)
        assert not any(f.name.startswith("intercept") for f in fields(res)) or cls is mr.EggerResult
        line = repr(res)
        assert "\n" not in line and f"K={res.n_instruments}" in line and "nan" not in line.lower()
    assert not hasattr(got[mr.IVWResult], "intercept") and not hasattr(got[mr.MedianResult], "q")
    assert "intercept" in repr(got[mr.EggerResult]) and "Q=" in repr(got[mr.IVWResult])
    pooled = meta.random_effects([1.0, 2.0, 3.0], [0.5, 0.5, 0.5])
    assert isinstance(pooled, Estimate) and pooled.to_dict()["k"] == 3


def test_multivariable_matches_mendelianrandomization_on_the_lipid_example(ref):
    # MendelianRandomization 0.10.0 vignette, mr_mvivw / mr_mvegger(bx = cbind(ldlc, hdlc, trig)), printed to 3 dp
    pub = ref["published_outputs"]["MendelianRandomization_vignette_printed"]
    d = ref["datasets"]["waterworth_lipids_chd_28"]
    X = np.column_stack([d["ldlc"], d["hdlc"], d["trig"]])
    for method, key in (("ivw", "mr_mvivw_ldlc_hdlc_trig"), ("egger", "mr_mvegger_ldlc_hdlc_trig")):
        res, r = mr.multivariable(X, d["chdlodds"], d["chdloddsse"], method=method), pub[key]
        np.testing.assert_allclose(res.estimate, r["estimates"], atol=6e-4)
        np.testing.assert_allclose(res.se, r["se"], atol=6e-4)
        assert res.rse == pytest.approx(r["rse"], abs=6e-4) and res.q == pytest.approx(r["Q"], abs=1e-3)
        assert res.q_df == r["Q_df"]
        if method == "egger":
            assert res.intercept == pytest.approx(r["intercept"], abs=6e-4)
            assert res.intercept_se == pytest.approx(r["intercept_se"], abs=6e-4)
    assert list(res.to_frame().exposure) == ["exposure 1", "exposure 2", "exposure 3"] and "\n" not in repr(res)


def test_multivariable_with_one_exposure_is_univariable_mr_and_recovers_direct_effects(ref):
    d = ref["datasets"]["waterworth_lipids_chd_28"]
    bx, bxse, by, byse = (np.asarray(d[k]) for k in ("ldlc", "ldlcse", "chdlodds", "chdloddsse"))
    one = mr.multivariable(bx[:, None], by, byse)
    uni = mr.ivw(bx, bxse, by, byse)  # itself checked against R above
    assert one.estimate[0] == pytest.approx(uni.estimate, rel=1e-12) and one.se[0] == pytest.approx(uni.se, rel=1e-12)
    eg, uni_eg = mr.multivariable(bx[:, None], by, byse, method="egger"), mr.egger(bx, bxse, by, byse)
    assert eg.estimate[0] == pytest.approx(uni_eg.estimate, rel=1e-10) and eg.se[0] == pytest.approx(
        uni_eg.se, rel=1e-10
    )
    # two exposures with known direct effects (0.5 and 2): the joint fit recovers both, a univariable fit does not
    rng = np.random.default_rng(0)
    X = rng.normal(0, 1, (400, 2))
    X[:, 1] += 0.8 * X[:, 0]  # correlated exposures, as a confounding TF's binding would be
    y = X @ [0.5, 2.0] + rng.normal(0, 0.05, 400)
    res = mr.multivariable(X, y, np.full(400, 0.05))
    np.testing.assert_allclose(res.estimate, [0.5, 2.0], atol=4 * res.se.max())
    assert mr.ivw(X[:, 0], np.full(400, 0.01), y, np.full(400, 0.05)).estimate > 1.5  # biased without adjustment
    with pytest.raises(ValueError, match="collinear"):
        mr.multivariable(np.column_stack([X[:, 0], 2 * X[:, 0]]), y, np.full(400, 0.05))
    with pytest.raises(ValueError, match="more variants"):
        mr.multivariable(X[:3], y[:3], np.ones(3), method="egger")
    with pytest.raises(ValueError, match=r"\(n_variants, n_exposures\)"):
        mr.multivariable(X[:, 0], y, np.ones(400))


@pytest.mark.parametrize("m", [1, 2, 3])
def test_multivariable_default_model_is_fixed_below_four_variants_for_any_number_of_exposures(m):
    """MendelianRandomization's mr_mvivw: model "default" is fixed when there are fewer than 4 variants
    (whatever the number of exposures) and random from 4 on; random = fixed SE x max(1, residual SE)."""
    rng = np.random.default_rng(m)
    for n in range(m + 1, 7):
        X = rng.normal(0, 1, (n, m))
        y = X @ np.ones(m) + rng.normal(0, 1.0, n)  # residual SE well above 1: the two models differ
        byse = np.full(n, 0.1)
        res = mr.multivariable(X, y, byse)
        fixed = mr.multivariable(X, y, byse, model="fixed")
        assert res.model == ("fixed" if n < 4 else "random"), (m, n)
        expected = fixed.se * (max(1.0, res.rse) if n >= 4 else 1.0)
        np.testing.assert_allclose(res.se, expected, rtol=1e-12)


def _conditional_f_by_hand(X, S):
    """The published formula, written out variant by variant with a 2x2 / 1x1 normal-equation solve."""
    n, m = len(X), len(X[0])
    out = []
    for k in range(m):
        others = [j for j in range(m) if j != k]
        # normal equations of the regression through the origin of column k on the others
        A = [[sum(X[i][a] * X[i][b] for i in range(n)) for b in others] for a in others]
        c = [sum(X[i][a] * X[i][k] for i in range(n)) for a in others]
        delta = list(np.linalg.solve(np.array(A), np.array(c))) if others else []
        q = 0.0
        for i in range(n):
            resid = X[i][k] - sum(d * X[i][j] for d, j in zip(delta, others))
            sigma2 = S[i][k] ** 2 + sum(d * d * S[i][j] ** 2 for d, j in zip(delta, others))
            q += resid * resid / sigma2
        out.append(q / (n - m + 1))
    return out


def test_conditional_f_on_the_lipid_example(ref):
    """Sanderson, Spiller & Bowden (2021): each lipid's instruments given the other two. Computed by
    hand from the formula; with one exposure it is the mean F; the MVMR package's scaling (1/L) differs
    by (L - K + 1) / L, as the docstring says."""
    d = ref["datasets"]["waterworth_lipids_chd_28"]
    X = np.column_stack([d["ldlc"], d["hdlc"], d["trig"]])
    S = np.column_stack([d["ldlcse"], d["hdlcse"], d["trigse"]])
    f = mr.conditional_f(X, S)
    np.testing.assert_allclose(f, _conditional_f_by_hand(X.tolist(), S.tolist()), rtol=1e-12)
    assert f[0] < np.mean((X[:, 0] / S[:, 0]) ** 2)  # strength is lost by conditioning on the others
    assert mr.conditional_f(X[:, :1], S[:, :1])[0] == pytest.approx(np.mean((X[:, 0] / S[:, 0]) ** 2), rel=1e-12)
    res = mr.multivariable(X, d["chdlodds"], d["chdloddsse"], bxse=S, exposures=["ldlc", "hdlc", "trig"])
    assert res.conditional_f == pytest.approx(tuple(f), rel=1e-12)
    assert list(res.to_frame().conditional_f) == pytest.approx(list(f))
    # two nearly collinear exposures: each is weak given the other
    rng = np.random.default_rng(1)
    a = rng.normal(0, 0.1, 50)
    Xc, Sc = np.column_stack([a, a + rng.normal(0, 0.005, 50)]), np.full((50, 2), 0.01)
    assert mr.conditional_f(Xc, Sc).max() < 1.5 < np.mean((a / 0.01) ** 2)
    with pytest.raises(ValueError, match="bxse must be > 0|bxse \\(flattened"):
        mr.conditional_f(X, -S)
    with pytest.raises(ValueError, match="both be"):
        mr.conditional_f(X, S[:, :2])


def test_m_scale_of_an_exact_fit_of_most_points_is_zero_not_a_hang():
    from deepmr_utils import _robust

    # 1 of 5 residuals nonzero with p = 2: mean chi can reach only 1/3 < b = 0.5 as the scale falls to 0, so there
    # is no positive root; the bracket's halving never ended before
    assert _robust.m_scale(np.array([0.0, 0.0, 0.0, 0.0, 1.3]), p=2) == 0.0
    # two nonzero of five (2/3 > b): a positive scale, at which the M-equation holds
    r = np.array([0.0, 0.0, 0.0, 0.4, 1.3])
    s = _robust.m_scale(r, p=2)
    assert s > 0 and _robust.chi(np.abs(r) / s, _robust.C_CHI).sum() / 3 == pytest.approx(_robust.BB, abs=1e-9)
