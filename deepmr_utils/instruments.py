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
from ._validate import is_integer
from .ism import resolve_positions
from .sequence import ALPHABET

__all__ = ["variant_table", "Selection", "Selected", "select", "two_sample", "as_selection", "STRATEGIES"]

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
    psi: ArrayLike | None = None,
) -> pd.DataFrame:
    """Long table of all substitutions from :func:`deepmr_utils.uncertainty.paired_effects` output.

    ``effect``/``se``: ``(N, P, 4, O)``; ``X``: one-hot ``(N, 4, L)``; ``exposure`` and
    ``outcome``: output indices; ``loci``: N locus labels (default ``0..N-1``); ``psi``: optional
    ``(N, P, 4)`` correlations of the exposure and outcome errors
    (:func:`deepmr_utils.uncertainty.paired_correlation`), kept as a column ``psi``.
    Positions whose reference column is all zero get ``ref = "N"`` and four rows, one per
    base, each measured against the unmutated sequence (see ``paired_effects``).
    """
    effect, se = np.asarray(effect), np.asarray(se)
    if effect.shape != se.shape or effect.ndim != 4 or effect.shape[2] != 4:
        raise ValueError(f"effect and se must both be (N, P, 4, O), got {effect.shape} and {se.shape}")
    N, P, _, O = effect.shape
    for name, idx in (("exposure", exposure), ("outcome", outcome)):
        if not is_integer(idx):
            raise TypeError(f"{name} must be an output's integer index, got {idx!r}")
        if not 0 <= idx < O:
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
    if psi is not None:
        psi = np.asarray(psi, dtype=np.float64)
        if psi.shape != (N, P, 4):
            raise ValueError(f"psi must be (N, P, 4) = {(N, P, 4)} like the effects, got {psi.shape}")
        outside = np.abs(psi) > 1  # NaN (the reference base's slot) is not outside
        if outside.any():
            i = tuple(int(j) for j in np.argwhere(outside)[0])
            raise ValueError(f"psi is a correlation, so it must lie in [-1, 1]; got {psi[i]:.3g} at index {i}")
    table = pd.DataFrame(
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
    if psi is not None:
        table["psi"] = psi[n, p, b]
    return table


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
        if self.k is not None and (not is_integer(self.k) or self.k < 1):
            raise ValueError(f"k must be an integer >= 1, got {self.k!r}")
        # both strategies compare |z| with it: a negative bar would keep every variant without saying so
        if self.threshold is not None and not (np.isfinite(self.threshold) and self.threshold >= 0):
            raise ValueError(f"threshold must be finite and >= 0 (a bar on |z|), got {self.threshold}")
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


_VARIANT_KEYS = ["locus", "position", "alt"]


def two_sample(
    selection_table: pd.DataFrame, estimation_table: pd.DataFrame, select: Selection = Selection()
) -> pd.DataFrame:
    """Two-sample instruments: chosen in one variant table, measured in another.

    ``selection_table`` and ``estimation_table`` hold the same candidate variants (``locus, position,
    alt``) measured by two ensembles whose errors are independent, e.g. trained on disjoint halves of
    the training data (a split of *one* ensemble's members is not enough: members trained on the same
    data share their errors). ``select`` chooses the instruments in ``selection_table``; the rows of
    ``estimation_table`` at those variants are returned, with the selection's own ``bx, bxse`` as
    ``bx_selection, bxse_selection``. Selecting on the numbers that are also used to estimate favours
    variants whose errors happened to push ``|bx|`` up (the winner's curse); here the estimate's
    numbers never took part in the choice. A chosen variant missing from ``estimation_table`` or with
    a zero SE there raises, naming it.
    """
    select = as_selection(select)
    for name, t in (("selection_table", selection_table), ("estimation_table", estimation_table)):
        if not isinstance(t, pd.DataFrame):
            raise TypeError(f"{name} must be a variant table (a pandas DataFrame), got {type(t).__name__}")
        missing = [c for c in (*_VARIANT_KEYS, "bx", "bxse", "by", "byse") if c not in t.columns]
        if missing:
            raise ValueError(f"{name} is missing column(s) {missing}")
    if estimation_table.duplicated(_VARIANT_KEYS).any():
        raise ValueError("estimation_table has more than one row for a variant (locus, position, alt)")
    chosen = select.apply(selection_table).instruments
    picked = chosen[_VARIANT_KEYS].assign(bx_selection=chosen.bx.to_numpy(), bxse_selection=chosen.bxse.to_numpy())
    drop = [c for c in ("n_candidates", "n_kept") if c in estimation_table.columns]
    out = estimation_table.drop(columns=drop).merge(picked, on=_VARIANT_KEYS, how="right", indicator=True)
    bad = (out._merge != "both") | ~((out.bxse > 0) & (out.byse > 0))
    if bad.any():
        r = out[bad].iloc[0]
        raise ValueError(
            f"{int(bad.sum())} chosen variant(s) have no usable measurement in estimation_table, e.g. locus "
            f"{r.locus}, position {r.position}, alt {r.alt}: measure the same candidates with both ensembles"
        )
    out = out.drop(columns="_merge")
    out["n_kept"] = out.groupby("locus", sort=False).locus.transform("size").to_numpy()
    return out.sort_values(_VARIANT_KEYS, kind="stable").reset_index(drop=True)


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
