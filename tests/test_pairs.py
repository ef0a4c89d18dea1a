"""Instrument direction (Steiger) filtering and DeepMR over all output pairs, on effects with a known cascade."""

import numpy as np
import pandas as pd
import pytest
import torch

from deepmr_utils import instruments, pairs
from deepmr_utils.instruments import Selection


def _cascade(n=40, p=30, seed=0):
    """ISM-like effects for 3 outputs with one causal arrow, 0 -> 1 (effect 0.5).

    Every variant hits one output directly (chosen at random); output 1 also
    responds to output 0. Output 2 is unrelated. SEs are 0.01 for all.
    """
    rng = np.random.default_rng(seed)
    X = np.zeros((n, 4, p), dtype=np.float32)
    X[:, 0] = 1  # all-A reference, so the A slot is the reference
    direct = np.zeros((n, p, 4, 3))
    target = rng.integers(0, 3, size=(n, p, 4))
    size = rng.normal(0, 1, size=(n, p, 4))
    np.put_along_axis(direct, target[..., None], size[..., None], axis=3)
    eff = direct.copy()
    eff[..., 1] += 0.5 * direct[..., 0]
    eff[:, :, 0] = np.nan  # reference base
    se = np.where(np.isnan(eff), np.nan, 0.01)
    return eff, se, torch.from_numpy(X), target, size


def test_steiger_filter_keeps_exactly_the_forward_variants():
    eff, se, X, target, size = _cascade()
    # the truth by construction: with output 1 as exposure and 0 as outcome, the forward variants
    # are those that hit output 1 directly (target 1); those that hit 0 move 1 only through it
    n, p, b = np.nonzero((target == 1) & (np.abs(size) / 0.01 >= 3))
    b_mask = b != 0  # base A is the reference
    forward = {(int(i), int(j), "ACGT"[k]) for i, j, k in zip(n[b_mask], p[b_mask], b[b_mask])}
    n0, p0, b0 = np.nonzero((target == 0) & (0.5 * np.abs(size) / 0.01 >= 3))
    reverse = {(int(i), int(j), "ACGT"[k]) for i, j, k in zip(n0, p0, b0) if k != 0}
    t = instruments.variant_table(eff, se, X, exposure=1, outcome=0)

    def keys(frame):
        return set(zip(frame.locus.astype(int), frame.position.astype(int), frame.alt))

    assert keys(instruments.select(t, threshold=3)) == forward | reverse  # no filter: both kinds
    for steiger in ((2.0, 1.0), True):
        kept = instruments.select(t, threshold=3, steiger=steiger)
        assert keys(kept) == forward and len(forward) > 50
    assert instruments.Selection(threshold=3, steiger=True).apply(t).selection.steiger is True
    assert instruments.Selection(threshold=3, steiger=[2, 1]).apply(t).selection.steiger == (2.0, 1.0)
    # the original global-z rule standardises over all variants, whatever the direction filter
    g_all = instruments.select(t, "global_z", threshold=1.0)
    g_dir = instruments.select(t, "global_z", threshold=1.0, steiger=(1.0, 1.0))
    g_all = g_all[g_all.bx.abs() > g_all.by.abs()]
    assert len(g_dir) > 0 and np.array_equal(
        g_dir[["locus", "position", "alt"]].to_numpy(), g_all[["locus", "position", "alt"]].to_numpy()
    )
    for bad in [(1.0,), (1.0, 0.0), (1.0, np.nan), (-1.0, 1.0)]:
        with pytest.raises(ValueError, match="steiger must be True or two positive"):
            instruments.select(t, steiger=bad)


def test_all_pairs_recovers_the_arrow_and_steiger_removes_reverse_causation():
    eff, se, X, _, _ = _cascade()
    names = ["a", "b", "c"]
    g, local = pairs.all_pairs(eff, se, X, names, select=Selection(threshold=3))
    assert len(g) == 6 and set(local.exposure) == set(names)
    est = pairs.to_matrix(g, names=names)
    assert np.isnan(np.diag(est.to_numpy())).all()
    assert est.loc["a", "b"] == pytest.approx(0.5, abs=0.02)
    assert abs(est.loc["a", "c"]) < 0.02 and abs(est.loc["c", "a"]) < 0.02
    # without a direction filter, output 0's own variants are instruments for output 1 too: reverse bias
    assert est.loc["b", "a"] > 0.3
    g2, _ = pairs.all_pairs(eff, se, X, names, select=Selection(threshold=3), steiger=True)
    est2 = pairs.to_matrix(g2, names=names)
    assert abs(est2.loc["b", "a"]) < 0.02
    assert est2.loc["a", "b"] == pytest.approx(0.5, abs=0.02)


def test_all_pairs_loci_truth_and_errors():
    eff, se, X, _, _ = _cascade(n=12)
    names = ["a", "b", "c"]

    def truth(table, e, o):
        return pd.DataFrame({"locus": table.locus.unique(), "theta": 0.5 if (e, o) == (0, 1) else 0.0})

    g, local = pairs.all_pairs(
        eff, se, X, names, loci=lambda e, o: [0, 1, 2, 3] if e == 0 else [], pairs=[(0, 1), (1, 0)], truth=truth
    )
    assert list(zip(g.exposure, g.outcome)) == [("a", "b"), ("b", "a")]
    assert g.n_loci.tolist() == [4, 0] and np.isnan(g.estimate[1])
    assert g.truth[0] == 0.5 and set(local.locus) == {0, 1, 2, 3} and "theta" in local
    with pytest.raises(ValueError, match="names has 2 entries"):
        pairs.all_pairs(eff, se, X, names[:2])
    with pytest.raises(ValueError, match="one scale per output"):
        pairs.all_pairs(eff, se, X, names, steiger=[1.0, 1.0])
    # per-output scales: dividing output 0 by 4 makes its own variants look weaker than their effect on 1
    g3, _ = pairs.all_pairs(eff, se, X, names, select=Selection(threshold=3), steiger=[4.0, 1.0, 1.0], pairs=[(0, 1)])
    assert g3.n_instruments[0] == 0
    with pytest.raises(ValueError, match=r"\(N, P, 4, T\)"):
        pairs.all_pairs(eff[0], se[0], X, names)


def test_estimate_pair_is_the_recipe_all_pairs_runs_for_each_pair():
    eff, se, X, _, _ = _cascade()
    glob, local = pairs.all_pairs(eff, se, X, ["a", "b", "c"], steiger=True, pairs=[(0, 1)])
    table = instruments.variant_table(eff, se, X, exposure=0, outcome=1)
    row, mine = pairs.estimate_pair(table, select=Selection(steiger=True))
    for key, value in row.items():
        assert glob.iloc[0][key] == value, key
    pd.testing.assert_frame_equal(mine, local.drop(columns=["exposure", "outcome"]))
    assert abs(row["estimate"] - 0.5) < 0.05  # the cascade's effect, as the truth says
    # nothing selected: counts of 0 and no local rows; a truth adds theta and its mean over the pooled loci
    assert pairs.estimate_pair(table, select=Selection(threshold=1e9)) == ({"n_loci": 0, "n_instruments": 0}, None)
    row, mine = pairs.estimate_pair(table, truth=lambda t: pd.DataFrame({"locus": t.locus.unique(), "theta": 0.5}))
    assert row["truth"] == 0.5 and (mine.theta == 0.5).all()


def test_estimate_pair_on_chosen_instruments_with_estimator_options():
    """select=None: the table holds the instruments (the book's experiments choose their own);
    method_options reach mr.per_locus, and a clash with the recipe's own keywords is named."""
    from deepmr_utils import meta, mr

    eff, se, X, _, _ = _cascade()
    chosen = Selection(threshold=3.0).apply(instruments.variant_table(eff, se, X, exposure=0, outcome=1)).instruments
    chosen = chosen.assign(psi=0.3)
    row, local = pairs.estimate_pair(chosen, select=None, method_options={"weights": "delta", "psi": "psi"})
    want = mr.per_locus(chosen, "ivw", weights="delta", psi="psi")
    pd.testing.assert_frame_equal(local, want)
    assert not local.se.equals(mr.per_locus(chosen, "ivw").se)  # the options changed the numbers
    assert row["estimate"] == meta.pool(want).estimate and row["n_instruments"] == len(chosen)
    with pytest.raises(TypeError, match=r"method_options sets \['seed'\]"):
        pairs.estimate_pair(chosen, select=None, method_options={"seed": 1})
    assert pairs.estimate_pair(chosen.iloc[:0], select=None) == ({"n_loci": 0, "n_instruments": 0}, None)


def test_all_pairs_names_a_recipe_keyword_it_does_not_know():
    eff, se, X, _, _ = _cascade(n=4, p=5)
    with pytest.raises(TypeError, match=r"unexpected keyword\(s\) \['methods'\]; the recipe takes"):
        pairs.all_pairs(eff, se, X, ["a", "b", "c"], methods="ivw")
