"""The shipped example data (deepmr_utils.book.datasets) against the values exported from R's
MendelianRandomization (tests/data/mr_reference.json, written by tools/make_mr_reference.R)."""

import numpy as np

from deepmr_utils.book import datasets


def test_lipids_chd_is_mendelianrandomizations_example(ref):
    d = datasets.lipids_chd()
    want = ref["datasets"]["waterworth_lipids_chd_28"]
    assert len(d) == 28
    for col in ("ldlc", "ldlcse", "hdlc", "hdlcse", "trig", "trigse", "chdlodds", "chdloddsse"):
        np.testing.assert_allclose(d[col].to_numpy(), np.asarray(want[col]), rtol=1e-6, err_msg=col)
