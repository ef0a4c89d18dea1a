"""Tidy variant tables from ISM effects, and instrument selection.

A *variant table* has one row per substitution of each locus:
``locus, position, ref, alt, exposure, outcome, bx, bxse, by, byse``. It feeds
:func:`deepmr_utils.mr.per_locus` directly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .sequence import ALPHABET

__all__ = ["variant_table", "select"]

_BASES = np.array(list(ALPHABET))
COLUMNS = ["locus", "position", "ref", "alt", "exposure", "outcome", "bx", "bxse", "by", "byse"]


def variant_table(
    effect, se, X, *, exposure: int, outcome: int, positions=None, loci=None, output_names=None
) -> pd.DataFrame:
    """Long table of all substitutions from :func:`deepmr_utils.uncertainty.paired_effects` output.

    ``effect``/``se``: ``(N, P, 4, O)``; ``X``: one-hot ``(N, 4, L)``; ``exposure`` and
    ``outcome``: output indices; ``loci``: N locus labels (default ``0..N-1``).
    Positions whose reference column is all zero get ``ref = "N"`` and four rows, one per
    base, each measured against the unmutated sequence (see ``paired_effects``).
    """
    effect, se = np.asarray(effect), np.asarray(se)
    if effect.shape != se.shape or effect.ndim != 4 or effect.shape[2] != 4:
        raise ValueError(f"effect and se must both be (N, P, 4, O), got {effect.shape} and {se.shape}")
    N, P, _, O = effect.shape
    for name, idx in (("exposure", exposure), ("outcome", outcome)):
        if not 0 <= int(idx) < O:
            raise ValueError(f"{name} index {idx} does not exist: there are {O} outputs")
    if exposure == outcome:
        raise ValueError("exposure and outcome must be different outputs")
    Xn = X.detach().cpu().numpy() if hasattr(X, "detach") else np.asarray(X)
    pos = np.arange(Xn.shape[2]) if positions is None else np.asarray(positions)
    loci = np.arange(N) if loci is None else np.asarray(loci)
    if loci.size != N:
        raise ValueError(f"loci has {loci.size} labels for {N} sequences")
    ref_oh = Xn[:, :, pos].transpose(0, 2, 1)  # (N, P, 4)
    ref_idx = np.where(ref_oh.sum(axis=2) == 0, 4, ref_oh.argmax(axis=2))
    n, p, b = np.nonzero(ref_oh != 1)
    names = list(output_names) if output_names is not None else [str(i) for i in range(O)]
    if len(names) != O:
        raise ValueError(
            f"output_names has {len(names)} names for the {O} outputs of effect (name the selected "
            "outputs, e.g. with deepmr_utils.predict.output_names(models, outputs))"
        )
    return pd.DataFrame(
        {
            "locus": loci[n],
            "position": pos[p],
            "ref": np.array(list(ALPHABET + "N"))[ref_idx[n, p]],
            "alt": _BASES[b],
            "exposure": names[exposure],
            "outcome": names[outcome],
            "bx": effect[n, p, b, exposure],
            "bxse": se[n, p, b, exposure],
            "by": effect[n, p, b, outcome],
            "byse": se[n, p, b, outcome],
        }
    )


def select(
    table: pd.DataFrame,
    strategy: str = "local_z",
    *,
    threshold: float | None = None,
    k: int | None = None,
    one_per_position: bool = False,
    steiger=None,
) -> pd.DataFrame:
    """Choose instruments among the candidate variants of each locus.

    Strategies (instrument strength ``|bx| / bxse`` unless stated):

    ``"local_z"`` (default)
        keep variants with ``|bx| / bxse >= threshold`` (default 3, F ~ 9);
    ``"global_z"``
        the original DeepMR rule: standardise ``bx`` over *all* variants of all loci
        and keep ``|z| >= threshold`` (default 2; the paper used 1 for the
        simulation, 3 for BPNet). Ignores the SEs;
    ``"top_k"``
        the ``k`` strongest variants of each locus (default 10).

    ``one_per_position=True`` then keeps only the strongest variant at each
    position, so no two instruments share a base. Variants with a zero SE cannot
    be instruments and are never kept.

    ``steiger`` adds a direction filter in the spirit of MR Steiger filtering (Hemani
    et al. 2017, PLoS Genet; ``steiger_filtering`` in TwoSampleMR): a variant is kept
    only if it moves the exposure more than the outcome, ``|bx| / s_x > |by| / s_y``.
    ``steiger=True`` compares the effects directly (``s_x = s_y = 1``: right when both
    outputs are on the same scale, e.g. two counts heads of one model); a pair
    ``(s_x, s_y)``, e.g. the outputs' SDs across sequences, puts outputs in different
    units on a common scale (ISM has no sample size, so this stands in for variance
    explained). It drops instruments that act on the outcome first and on the exposure
    only through it (reverse causation), which otherwise bias every reverse-direction
    estimate.

    The result has the kept rows plus ``n_candidates`` and ``n_kept`` of their
    locus; ``result.attrs["selection"]`` lists every locus, including those that
    kept nothing.
    """
    missing = [c for c in ("locus", "position", "bx", "bxse", "by", "byse") if c not in table.columns]
    if missing:
        raise ValueError(f"table is missing column(s) {missing}")
    if strategy not in ("local_z", "global_z", "top_k"):
        raise ValueError(f"strategy must be 'local_z', 'global_z' or 'top_k', got {strategy!r}")
    t = table.reset_index(drop=True)
    valid = (t.bxse > 0) & (t.byse > 0) & np.isfinite(t.bx) & np.isfinite(t.by)
    usable = valid
    if steiger is not None and steiger is not False:
        sd = np.ones(2) if steiger is True else np.asarray(steiger, dtype=np.float64)
        if sd.shape != (2,) or not np.isfinite(sd).all() or (sd <= 0).any():
            raise ValueError(
                f"steiger must be True or two positive, finite scales (exposure, outcome), got {steiger!r}"
            )
        usable = valid & (t.bx.abs() / sd[0] > t.by.abs() / sd[1])
    strength = (t.bx.abs() / t.bxse).where(usable, -np.inf)
    if strategy == "local_z":
        thr = 3.0 if threshold is None else threshold
        keep = strength >= thr
    elif strategy == "global_z":
        thr = 2.0 if threshold is None else threshold
        # standardised over all valid variants, as in the original rule, whatever the direction filter
        z = (t.bx - t.bx[valid].mean()) / t.bx[valid].std(ddof=0)
        keep = usable & (z.abs() >= thr)
    else:
        kk = 10 if k is None else int(k)
        if kk < 1:
            raise ValueError(f"k must be >= 1, got {kk}")
        rank = strength.groupby(t.locus, sort=False).rank(ascending=False, method="first")
        keep = usable & (rank <= kk)
    if one_per_position:
        cand = t[keep].assign(_s=strength[keep])
        best = cand.sort_values("_s", ascending=False).drop_duplicates(["locus", "position"]).index
        keep = pd.Series(False, index=t.index)
        keep[best] = True
    summary = pd.DataFrame(
        {
            "n_candidates": t.groupby("locus", sort=False).size(),
            "n_usable": usable.groupby(t.locus, sort=False).sum(),
            "n_kept": keep.groupby(t.locus, sort=False).sum(),
        }
    )
    out = t[keep.to_numpy()].copy()
    out["n_candidates"] = out.locus.map(summary.n_candidates).to_numpy()
    out["n_kept"] = out.locus.map(summary.n_kept).to_numpy()
    out = out.sort_values(["locus", "position", "alt"], kind="stable").reset_index(drop=True)
    out.attrs["selection"] = summary.reset_index().rename(columns={"index": "locus"})
    out.attrs["strategy"] = {
        "strategy": strategy,
        "threshold": threshold,
        "k": k,
        "one_per_position": one_per_position,
        "steiger": None
        if steiger is None or steiger is False
        else (1.0, 1.0)
        if steiger is True
        else tuple(map(float, steiger)),
    }
    return out
