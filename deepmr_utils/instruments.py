"""Tidy variant tables from ISM effects, and instrument selection (:class:`Selection`).

A *variant table* has one row per substitution of each locus:
``locus, position, ref, alt, exposure, outcome, bx, bxse, by, byse``. It feeds
:func:`deepmr_utils.mr.per_locus` directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ._types import ArrayLike, Positions, Sequences
from .ism import resolve_positions
from .sequence import ALPHABET

__all__ = ["variant_table", "Selection", "Selected", "select", "as_selection", "STRATEGIES"]

STRATEGIES = ("local_z", "global_z", "top_k", "all")

_BASES = np.array(list(ALPHABET))
COLUMNS = ["locus", "position", "ref", "alt", "exposure", "outcome", "bx", "bxse", "by", "byse"]


def variant_table(
    effect: ArrayLike,
    se: ArrayLike,
    X: Sequences,
    *,
    exposure: int,
    outcome: int,
    positions: Positions = None,
    loci: ArrayLike | None = None,
    output_names: Sequence[str] | None = None,
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
    if Xn.ndim != 3 or Xn.shape[1] != 4:
        raise ValueError(f"X must be one-hot (N, 4, L), got shape {Xn.shape}")
    if Xn.shape[0] != N:
        raise ValueError(f"effect holds {N} sequences but X holds {Xn.shape[0]}; pass the X the effects came from")
    pos = np.arange(Xn.shape[2]) if positions is None else resolve_positions(positions, Xn.shape[2]).numpy()
    if pos.size != P:
        raise ValueError(
            f"effect covers {P} positions but {'X is' if positions is None else 'positions name'} {pos.size} "
            "long; pass the positions (or window) the effects were computed on"
        )
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


@dataclass(frozen=True)
class Selection:
    """How instruments are chosen among the candidate variants of each locus.

    Strategies (instrument strength ``|bx| / bxse`` unless stated):

    ``"local_z"`` (default)
        keep variants with ``|bx| / bxse >= threshold`` (default 3, F ~ 9);
    ``"global_z"``
        the original DeepMR rule: standardise ``bx`` over *all* variants of all loci
        and keep ``|z| >= threshold`` (default 2; the paper used 1 for the
        simulation, 3 for BPNet). Ignores the SEs;
    ``"top_k"``
        the ``k`` strongest variants of each locus (default 10);
    ``"all"``
        every candidate, unfiltered (zero SEs included): the variant table itself.

    ``one_per_position=True`` then keeps only the strongest variant at each
    position, so no two instruments share a base. Except with ``"all"``, variants
    with a zero SE cannot be instruments and are never kept.

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
    """

    strategy: str = "local_z"
    threshold: float | None = None
    k: int | None = None
    one_per_position: bool = False
    steiger: bool | tuple[float, float] | None = None

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.k is not None and int(self.k) < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.threshold is not None and not np.isfinite(self.threshold):
            raise ValueError(f"threshold must be finite, got {self.threshold}")
        st = self.steiger
        if st is False:
            st = None
        elif st is not None and st is not True:
            arr = np.asarray(st, dtype=np.float64)
            if arr.shape != (2,) or not np.isfinite(arr).all() or (arr <= 0).any():
                raise ValueError(f"steiger must be True or two positive, finite scales (exposure, outcome), got {st!r}")
            st = (float(arr[0]), float(arr[1]))
        object.__setattr__(self, "steiger", st)

    def apply(self, table: pd.DataFrame) -> Selected:
        """The instruments of ``table`` (a variant table) and a per-locus account of the choice."""
        missing = [c for c in ("locus", "position", "bx", "bxse", "by", "byse") if c not in table.columns]
        if missing:
            raise ValueError(f"table is missing column(s) {missing}")
        t = table.reset_index(drop=True)
        valid = (t.bxse > 0) & (t.byse > 0) & np.isfinite(t.bx) & np.isfinite(t.by)
        usable = valid
        if self.steiger is not None:
            sd = np.ones(2) if self.steiger is True else np.asarray(self.steiger)
            usable = valid & (t.bx.abs() / sd[0] > t.by.abs() / sd[1])
        strength = (t.bx.abs() / t.bxse).where(usable, -np.inf)
        if self.strategy == "all":
            keep = pd.Series(True, index=t.index)
        elif self.strategy == "local_z":
            keep = strength >= (3.0 if self.threshold is None else self.threshold)
        elif self.strategy == "global_z":
            thr = 2.0 if self.threshold is None else self.threshold
            # standardised over all valid variants, as in the original rule, whatever the direction filter
            z = (t.bx - t.bx[valid].mean()) / t.bx[valid].std(ddof=0)
            keep = usable & (z.abs() >= thr)
        else:
            rank = strength.groupby(t.locus, sort=False).rank(ascending=False, method="first")
            keep = usable & (rank <= (10 if self.k is None else int(self.k)))
        if self.one_per_position:
            cand = t[keep].assign(_s=strength[keep])
            best = cand.sort_values("_s", ascending=False).drop_duplicates(["locus", "position"]).index
            keep = pd.Series(False, index=t.index)
            keep[best] = True
        loci = pd.DataFrame(
            {
                "n_candidates": t.groupby("locus", sort=False).size(),
                "n_usable": usable.groupby(t.locus, sort=False).sum(),
                "n_kept": keep.groupby(t.locus, sort=False).sum(),
            }
        )
        out = t[keep.to_numpy()].copy()
        out["n_candidates"] = out.locus.map(loci.n_candidates).to_numpy()
        out["n_kept"] = out.locus.map(loci.n_kept).to_numpy()
        out = out.sort_values(["locus", "position", "alt"], kind="stable").reset_index(drop=True)
        return Selected(out, loci.rename_axis("locus").reset_index(), self)


@dataclass(frozen=True)
class Selected:
    """The result of :meth:`Selection.apply`: the kept rows (``instruments``, with ``n_candidates``
    and ``n_kept`` of their locus), one row per locus (``loci``: candidates, usable, kept; loci that
    kept nothing included) and the ``selection`` that chose them."""

    instruments: pd.DataFrame
    loci: pd.DataFrame
    selection: Selection


def select(
    table: pd.DataFrame,
    strategy: str = "local_z",
    *,
    threshold: float | None = None,
    k: int | None = None,
    one_per_position: bool = False,
    steiger: bool | tuple[float, float] | None = None,
) -> pd.DataFrame:
    """The instruments of ``table``: ``Selection(...).apply(table).instruments`` (see :class:`Selection`)."""
    return Selection(strategy, threshold, k, one_per_position, steiger).apply(table).instruments


def as_selection(select: object, where: str = "select") -> Selection:
    """``select`` if it is a :class:`Selection`; the old forms (dict, callable, True/False/None) raise
    a ``TypeError`` that says what to pass instead."""
    if isinstance(select, Selection):
        return select
    hint = {
        dict: f"{where}=Selection(**{select!r})" if isinstance(select, dict) else "",
        bool: f"{where}=Selection('all') for every candidate, {where}=Selection() for the default rule",
        type(None): f"{where}=Selection() for the default rule, {where}=Selection('all') for every candidate",
    }.get(type(select), f"{where}=Selection('all') and filter the returned table yourself")
    raise TypeError(f"{where} takes an instruments.Selection (got {type(select).__name__}); pass {hint}")
