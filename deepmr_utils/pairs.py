"""DeepMR for every ordered pair of a model's outputs, from one mutagenesis run.

ISM is run once; each (exposure, outcome) pair then only needs a variant table,
instrument selection, per-locus MR and a meta-analysis. :func:`all_pairs` does
that for all ``T (T - 1)`` pairs and returns tidy frames: one row per pair (the
global effect) and one row per pair and locus (the local effects).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from itertools import permutations
from typing import Any

import numpy as np
import pandas as pd

from . import instruments, meta, mr
from ._types import ArrayLike, Positions, Sequences

__all__ = ["all_pairs", "estimate_pair", "to_matrix"]


def all_pairs(
    effect: ArrayLike,
    se: ArrayLike,
    X: Sequences,
    names: Sequence[str],
    *,
    positions: Positions = None,
    loci: ArrayLike | None = None,
    select: instruments.Selection = instruments.Selection(),
    steiger: bool | Sequence[float] | None = None,
    truth: Callable[[pd.DataFrame, int, int], pd.DataFrame] | None = None,
    pairs: Sequence[tuple[int, int]] | None = None,
    **recipe,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Local and global MR effects for every ordered pair of outputs.

    Parameters
    ----------
    effect, se : ``(N, P, 4, T)`` from :func:`deepmr_utils.uncertainty.paired_effects`.
    X : the one-hot ``(N, 4, L)`` sequences they came from.
    names : the ``T`` output names.
    positions : the positions (or ``(start, stop)`` window) the effects were computed on;
        ``None``: all ``L``.
    loci : ``None`` (every sequence for every pair) or a callable
        ``loci(exposure, outcome) -> indices`` of the sequences to analyse for that pair.
    select : an :class:`~deepmr_utils.instruments.Selection` (default: local ``|bx|/bxse >= 3``).
    steiger : ``None`` (no direction filter), ``True`` (instruments must move the exposure
        more than the outcome; outputs on one scale) or ``(T,)`` per-output scales (e.g. SDs
        across sequences) to compare outputs in different units; it sets the selection's
        ``steiger`` for each pair. See :class:`~deepmr_utils.instruments.Selection`.
    recipe : the rest of the recipe, for :func:`estimate_pair`: ``method`` (the per-locus estimator of
        :func:`deepmr_utils.mr.per_locus`, default ``"ivw"``), ``meta_method`` (``"REML"``), ``min_loci``
        (2), and ``n_boot`` and ``seed`` for the weighted median and the mode.
    truth : optional ``truth(selected_table, exposure, outcome)`` returning
        ``locus, theta`` (the true local effects); adds ``theta`` and ``truth`` columns.
    pairs : ``None`` (all ordered pairs) or a list of ``(exposure, outcome)`` indices.

    Returns
    -------
    ``(global, local)``: ``global`` has one row per pair with the random-effects
    estimate, SE, CI, tau, p-value, number of loci and instruments (and ``truth``,
    the mean true local effect over the same loci); ``local`` has the per-locus rows
    of :func:`~deepmr_utils.mr.per_locus` with ``exposure`` and ``outcome`` columns.
    """
    effect, se = np.asarray(effect), np.asarray(se)
    if effect.ndim != 4 or effect.shape != se.shape:
        raise ValueError(f"effect and se must both be (N, P, 4, T), got {effect.shape} and {se.shape}")
    T = effect.shape[3]
    n_x = len(X) if isinstance(X, (list, tuple)) else X.shape[0]
    if n_x != effect.shape[0]:
        raise ValueError(f"effect holds {effect.shape[0]} sequences but X holds {n_x}; pass the X of the effects")
    if len(names) != T:
        raise ValueError(f"names has {len(names)} entries for {T} outputs")
    scales = None
    if steiger is not None and not isinstance(steiger, bool):
        scales = np.asarray(steiger, dtype=np.float64)
        if scales.shape != (T,):
            raise ValueError(f"steiger must be True or one scale per output ({T}), got shape {scales.shape}")
    select = instruments.as_selection(select)
    if steiger is not None and select.steiger is not None:
        raise ValueError("give the direction filter once: steiger= here, or Selection(steiger=...), not both")
    unknown = set(recipe) - RECIPE
    if unknown:
        raise TypeError(f"all_pairs got unexpected keyword(s) {sorted(unknown)}; the recipe takes {sorted(RECIPE)}")
    todo = list(permutations(range(T), 2)) if pairs is None else [tuple(map(int, p)) for p in pairs]
    rows, local_all = [], []
    for e, o in todo:
        keep = np.arange(effect.shape[0]) if loci is None else np.asarray(loci(e, o), dtype=int)
        row = {"exposure": names[e], "outcome": names[o], "n_loci": 0, "n_instruments": 0}
        if keep.size == 0:
            rows.append(row)
            continue
        table = instruments.variant_table(
            effect[keep],
            se[keep],
            X[keep],
            exposure=e,
            outcome=o,
            positions=positions,
            loci=keep,
            output_names=list(names),
        )
        direction = steiger if scales is None else (scales[e], scales[o])
        rule = select if direction is None else replace(select, steiger=direction)
        pair_truth = None if truth is None else (lambda chosen, e=e, o=o: truth(chosen, e, o))
        found, local = estimate_pair(table, select=rule, truth=pair_truth, **recipe)
        row.update(found)
        if local is not None:
            local.insert(0, "exposure", names[e])
            local.insert(1, "outcome", names[o])
            local_all.append(local)
        rows.append(row)
    local = pd.concat(local_all, ignore_index=True) if local_all else pd.DataFrame()
    return pd.DataFrame(rows), local


def estimate_pair(
    table: pd.DataFrame,
    *,
    select: instruments.Selection | None = instruments.Selection(),
    method: str = "ivw",
    meta_method: str = "REML",
    min_loci: int = 2,
    truth: Callable[[pd.DataFrame], pd.DataFrame] | None = None,
    n_boot: int = 10000,
    seed: int | None = None,
    method_options: Mapping[str, Any] | None = None,
) -> tuple[dict, pd.DataFrame | None]:
    """DeepMR for one exposure and outcome: select instruments, estimate each locus, pool the loci.

    ``table``: a variant table (:func:`deepmr_utils.instruments.variant_table`, or the candidates of
    :func:`deepmr_utils.pipeline.variant_effects` with ``Selection("all")``). ``select`` picks the
    instruments (``None``: ``table`` holds them already); ``method`` is the per-locus estimator
    (:func:`deepmr_utils.mr.per_locus`, with ``n_boot`` and ``seed`` for the bootstrap ones and
    ``method_options`` for its other keywords, e.g. ``{"weights": "delta", "psi": "psi"}``); the loci
    whose status is ``"ok"`` are pooled by
    :func:`deepmr_utils.meta.pool` (``meta_method``) when there are at least ``min_loci``. ``truth``:
    optional ``truth(instruments) -> locus, theta`` (the true local effects), adding ``theta`` to the
    local rows and their mean over the pooled loci as ``truth``.

    Returns ``(row, local)``: ``row`` holds ``n_loci, n_instruments`` (0 when nothing was selected),
    ``n_excluded`` and, when pooled, the random-effects ``estimate, se, ci_low, ci_high, tau, pvalue, i2,
    converged``; ``local`` the per-locus rows, or ``None`` when no instrument was selected.
    """
    chosen = table if select is None else instruments.as_selection(select).apply(table).instruments
    row: dict = {"n_loci": 0, "n_instruments": 0}
    if len(chosen) == 0:
        return row, None
    extra = dict(method_options or {})
    clash = sorted(set(extra) & {"n_boot", "seed", "method"})
    if clash:
        raise TypeError(f"method_options sets {clash}, which estimate_pair takes as its own keywords")
    local = mr.per_locus(chosen, method, n_boot=n_boot, seed=seed, **extra)
    if truth is not None:
        local = local.merge(truth(chosen), on="locus", how="left")
    ok = local[local.status == "ok"]
    row.update(n_loci=len(ok), n_instruments=int(ok.n_instruments.sum()), n_excluded=len(local) - len(ok))
    if len(ok) >= min_loci:
        g = meta.pool(local, method=meta_method, min_loci=min_loci)
        row.update(g.to_dict("estimate", "se", "ci_low", "ci_high", "tau", "pvalue", "i2", "converged"))
    if truth is not None:
        row["truth"] = float(ok.theta.mean()) if len(ok) else np.nan
    return row, local


# what all_pairs passes on to estimate_pair for every pair: its keywords but the ones all_pairs sets per pair
RECIPE = frozenset(inspect.signature(estimate_pair).parameters) - {"table", "select", "truth"}


def to_matrix(frame: pd.DataFrame, value: str = "estimate", names: Sequence[str] | None = None) -> pd.DataFrame:
    """Pivot a per-pair frame to an exposure x outcome matrix (diagonal NaN)."""
    m = frame.pivot(index="exposure", columns="outcome", values=value)
    if names is not None:
        m = m.reindex(index=list(names), columns=list(names))
    m.index.name, m.columns.name = "exposure", "outcome"
    return m
