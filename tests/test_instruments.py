"""Variant tables and instrument selection."""

import numpy as np
import pandas as pd
import pytest

from deepmr_utils import instruments, uncertainty


def test_variant_table_and_selection(toy_pred):
    pred, X = toy_pred
    eff, se = uncertainty.paired_effects(pred, X)
    t = instruments.variant_table(eff, se, X, exposure=0, outcome=1, loci=["seqA"], output_names=["x", "y"])
    assert list(t.columns) == instruments.COLUMNS and len(t) == 6
    row = t[(t.position == 0) & (t.alt == "G")].iloc[0]
    assert (row.ref, row.exposure, row.outcome, row.bx, row.bxse, row.by, row.byse) == (
        "A",
        "x",
        "y",
        2.0,
        1.0,
        -1.0,
        0.0,
    )
    with pytest.raises(ValueError, match="outcome index 4 does not exist"):
        instruments.variant_table(eff, se, X, exposure=0, outcome=4)
    # an index that is not an integer was truncated or failed inside numpy; a psi beyond [-1, 1] passed unseen
    with pytest.raises(TypeError, match="exposure must be an output's integer index, got 0.5"):
        instruments.variant_table(eff, se, X, exposure=0.5, outcome=1)
    psi = np.zeros(eff.shape[:3])
    psi[0, 1, 2] = 1.5
    with pytest.raises(ValueError, match=r"psi is a correlation.*got 1.5 at index \(0, 1, 2\)"):
        instruments.variant_table(eff, se, X, exposure=0, outcome=1, psi=psi)
    psi[0, 1, 2] = np.nan  # the reference base's slot, as paired_correlation leaves it
    assert "psi" in instruments.variant_table(eff, se, X, exposure=0, outcome=1, psi=psi)


def _table(rng, loci=3, n=40):
    rows = []
    for i in range(loci):
        pos = np.repeat(np.arange(n // 2), 2)
        rows.append(
            pd.DataFrame(
                {
                    "locus": i,
                    "position": pos,
                    "alt": np.tile(["C", "G"], n // 2),
                    "bx": rng.normal(0, 1, n) * (i + 1),
                    "bxse": rng.uniform(0.2, 0.5, n),
                    "by": rng.normal(0, 1, n),
                    "byse": rng.uniform(0.2, 0.5, n),
                }
            )
        )
    return pd.concat(rows, ignore_index=True)


def test_selection_strategies():
    t = _table(np.random.default_rng(0))
    t.loc[0, "bxse"] = 0.0  # a zero SE can never be an instrument
    chosen = instruments.Selection(threshold=3).apply(t)
    loc = chosen.instruments
    assert loc.equals(instruments.select(t, threshold=3))
    assert ((loc.bx.abs() / loc.bxse) >= 3).all()
    assert not ((loc.locus == 0) & (loc.position == 0) & (loc.alt == "C")).any()  # the zero-SE row
    summ = chosen.loci.set_index("locus")
    assert summ.n_candidates.tolist() == [40, 40, 40] and summ.n_usable.tolist() == [39, 40, 40]
    assert (loc.groupby("locus").size() == summ.n_kept[summ.n_kept > 0]).all()
    assert (loc.n_candidates == 40).all()
    g = instruments.select(t, "global_z", threshold=1.0)
    z = (t.bx - t.bx[t.bxse > 0].mean()) / t.bx[t.bxse > 0].std(ddof=0)
    assert len(g) == int(((z.abs() >= 1.0) & (t.bxse > 0)).sum())
    top = instruments.select(t, "top_k", k=5)
    assert (top.groupby("locus").size() == 5).all()
    one = instruments.select(t, "top_k", k=10, one_per_position=True)
    assert not one.duplicated(["locus", "position"]).any()
    with pytest.raises(ValueError, match="strategy"):
        instruments.select(t, "best")
    assert len(instruments.Selection("all").apply(t).instruments) == len(t)  # zero-SE row included


def test_old_select_forms_say_what_to_pass():
    for old, hint in [
        ({"threshold": 5}, r"Selection\(\*\*\{'threshold': 5\}\)"),
        (False, r"Selection\('all'\)"),
        (None, r"Selection\(\) for the default"),
        (lambda t: t, "filter the returned table"),
    ]:
        with pytest.raises(TypeError, match=hint):
            instruments.as_selection(old)
    with pytest.raises(ValueError, match="steiger must be"):
        instruments.Selection(steiger=(1.0, -1.0))
    # a negative bar on |z| kept every variant, and k=1.5 was read as 1, both without a word
    with pytest.raises(ValueError, match=r"threshold must be finite and >= 0"):
        instruments.Selection(threshold=-1.0)
    for k in (1.5, 0, True):
        with pytest.raises(ValueError, match="k must be an integer >= 1"):
            instruments.Selection("top_k", k=k)


def test_selection_keeps_loci_with_nothing_in_summary():
    t = _table(np.random.default_rng(1))
    t.loc[t.locus == 2, "bx"] = 1e-6
    chosen = instruments.Selection(threshold=3).apply(t)
    out, summ = chosen.instruments, chosen.loci.set_index("locus")
    assert summ.loc[2, "n_kept"] == 0 and 2 not in set(out.locus)
