"""MR-PRESSO against the authors' R package (MRPRESSO 1.0; tests/data/presso_reference.json), and on
worlds with and without a planted pleiotropic outlier."""

import json
from pathlib import Path

import numpy as np
import pytest

from deepmr_utils import mr

DATA = Path(__file__).parent / "data"
REF = json.loads((DATA / "presso_reference.json").read_text())
RAPS = json.loads((DATA / "raps_reference.json").read_text())


@pytest.fixture(scope="module")
def data(lipids, bmi):
    e, s = REF["summarystats_e1_data"], RAPS["bmi_sbp_data"]
    return {
        "ldlc_chd": lipids("ldlc"),
        "bmi_chd": bmi,
        "bmi_sbp": tuple(np.array(s[k]) for k in ("bx", "bxse", "by", "byse")),
        "summarystats_e1": tuple(np.array(e[k]) for k in ("E1_effect", "E1_se", "Y_effect", "Y_se")),
    }


@pytest.mark.parametrize("name", ["ldlc_chd", "bmi_chd", "bmi_sbp", "summarystats_e1"])
def test_residual_sum_and_raw_fit_match_the_r_package(data, name):
    """Deterministic parts: the observed leave-one-out residual sum, and the raw weighted fit (lm)."""
    ref = REF[name]["mr_presso_NbDistribution1000_seed1"]
    res = mr.presso(*data[name], seed=1)
    assert res.rss_obs == pytest.approx(ref["global_RSSobs"], rel=1e-10)
    raw = ref["main"][0]
    assert (res.raw_estimate, res.raw_se, res.raw_pvalue) == pytest.approx(
        (raw["Causal Estimate"], raw["Sd"], raw["P-value"]), rel=1e-9
    )
    assert ref["global_Pvalue"] == "<0.001" and res.global_pvalue == 0  # R: no draw exceeded RSSobs


@pytest.mark.parametrize("name, seed", [("ldlc_chd", 0), ("ldlc_chd", 1), ("ldlc_chd", 2), ("bmi_chd", 1)])
def test_outliers_and_corrected_estimate_match_where_the_outliers_are_clear(data, name, seed):
    """On the lipid data both of R's seeds flag variants 12 and 14, with empirical p-values of 0 (every
    other variant's is 1 or above 0.2): any seed must find them, and given them the corrected fit and the
    distortion coefficient are deterministic. BMI -> CHD with R's seed 1 flags 61 and 70 (seed 2 flags a
    different pair, so there the outliers are borderline; the test uses our seed 1, which agrees)."""
    ref = REF[name]["mr_presso_NbDistribution1000_seed1"]
    res = mr.presso(*data[name], seed=seed)
    assert [i + 1 for i in res.outliers] == ref["distortion_test"]["Outliers Indices"]
    corr = ref["main"][1]
    assert (res.estimate, res.se, res.pvalue) == pytest.approx(
        (corr["Causal Estimate"], corr["Sd"], corr["P-value"]), rel=1e-9
    )
    assert res.distortion == pytest.approx(ref["distortion_test"]["Distortion Coefficient"], rel=1e-9)
    # two independent Monte-Carlo estimates of a p near 0.5 from 1000 draws each: SE of the difference 0.022
    assert res.distortion_pvalue == pytest.approx(ref["distortion_test"]["Pvalue"], abs=0.07)


def test_no_outlier_in_a_world_without_pleiotropy_and_a_planted_one_is_found():
    rng = np.random.default_rng(2)
    k = 40
    bx = rng.uniform(0.05, 0.2, k)
    bxse, byse = np.full(k, 0.01), np.full(k, 0.02)
    by = 0.5 * bx + rng.normal(0, byse)
    clean = mr.presso(bx + rng.normal(0, bxse), bxse, by, byse, seed=0)
    assert clean.global_pvalue > 0.05 and clean.outliers == ()
    assert clean.estimate == clean.raw_estimate and np.isnan(clean.distortion)
    by_bad = by.copy()
    by_bad[7] += 0.3  # one instrument with a direct effect of 15 outcome SEs
    bad = mr.presso(bx, bxse, by_bad, byse, seed=0)
    assert bad.global_pvalue == 0 and bad.outliers == (7,)
    assert abs(bad.estimate - 0.5) < abs(bad.raw_estimate - 0.5)


def test_same_seed_same_numbers_and_bad_input_is_named(data):
    a, b = mr.presso(*data["ldlc_chd"], seed=4), mr.presso(*data["ldlc_chd"], seed=4)
    assert a == b
    x = np.linspace(0.1, 0.4, 10)
    with pytest.raises(ValueError, match="n_sim must be an integer larger than the number of instruments"):
        mr.presso(x, x, x, x, n_sim=10)
    with pytest.raises(ValueError, match="at least 4"):
        mr.presso(x[:3], x[:3], x[:3], x[:3])
    with pytest.raises(ValueError, match="threshold"):
        mr.presso(x, x, x, x, threshold=0)
