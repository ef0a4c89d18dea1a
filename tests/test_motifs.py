"""Shipped JASPAR matrices, sampling and occupancy (deepmr_utils.motifs)."""

import json
from importlib import resources

import numpy as np
import pytest

from deepmr_utils import motifs, simulate
from deepmr_utils import sequence as sq


def test_motif_file_matches_pyjaspar():
    pj = pytest.importorskip("pyjaspar")
    db = pj.jaspardb()
    table = json.loads(resources.files("deepmr_utils.data").joinpath("jaspar_motifs.json").read_text())
    for name, m in table["motifs"].items():
        ref = db.fetch_motif_by_id(m["matrix_id"])
        counts = np.array([[ref.counts[b][i] for b in "ACGT"] for i in range(ref.length)])
        assert np.allclose(counts, m["counts"]), name


def test_jaspar_pwm_and_sampling():
    pwm = motifs.jaspar("GATA1")
    assert pwm.shape == (11, 4) and np.allclose(pwm.sum(1), 1) and (pwm > 0).all()
    with pytest.raises(ValueError, match="unknown motif"):
        motifs.jaspar("NOPE")
    rng = np.random.default_rng(0)
    draws = np.stack([motifs.sample_instance(pwm, rng) for _ in range(4000)])
    freq = np.stack([(draws == b).mean(0) for b in range(4)], axis=1)
    assert np.abs(freq - pwm).max() < 0.03


def test_occupancy_by_hand():
    pwm = motifs.jaspar("TAL1::TCF3")
    bg = np.array([0.27, 0.23, 0.23, 0.27])
    codes = pwm.argmax(1)
    X = sq.one_hot("".join("ACGT"[c] for c in codes))
    llr = float(np.sum(np.log(pwm[np.arange(len(codes)), codes] / bg[codes])))
    for mu in (0.0, -3.0):
        s = 1 / (1 + np.exp(-llr - mu))
        assert motifs.occupancy(X, pwm, bg, mu=mu)[0] == pytest.approx(s)
    # two windows: at least one bound
    X2 = sq.one_hot("".join("ACGT"[c] for c in codes) + "A")
    e = -motifs.window_llr(X2, pwm, bg)[0]
    s = 1 / (1 + np.exp(e))
    assert motifs.occupancy(X2, pwm, bg)[0] == pytest.approx(1 - np.prod(1 - s))


def test_occupancy_ism_equals_the_occupancy_of_every_explicit_mutant():
    from deepmr_utils import motifs
    from deepmr_utils.sequence import substitute

    gen = simulate.CooperativityModel().with_scenario("sequence-dependent")
    X = gen.sample(12, seed=8)["X"].numpy()
    L = X.shape[2]
    pos, alt = np.repeat(np.arange(L), 4), np.tile(np.arange(4), L)
    for role in ("exposure", "outcome", "confounder"):
        fast = motifs.occupancy_ism(X, gen.pwm(role), gen.background, mu=gen.mu)
        for i in (0, 5, 11):
            slow = motifs.occupancy(substitute(np.repeat(X[i : i + 1], 4 * L, 0), pos, alt), gen.pwm(role),
                                    gen.background, mu=gen.mu).reshape(L, 4)  # fmt: skip
            np.testing.assert_allclose(fast[i], slow, rtol=0, atol=1e-12)
