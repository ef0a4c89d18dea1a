"""The DeepSEA chapter's oracle experiment: reverse causation in what ChIP measures, and its remedies.

The original DeepMR study found every TF "opening" chromatin in DeepSEA, repressors included. One
mechanism can produce that without any model error: a ChIP signal that itself rises with accessibility
(:class:`~deepmr_utils.simulate.ChromatinModel` with ``feedback=kappa``). A mutation that opens chromatin
through another TF's site then raises the repressor's measured signal *and* accessibility, a pair of
changes with the ratio ``1/kappa``, positive whatever the repressor does.

Here the instruments are every single-base substitution of sequences from that world, measured by the
oracle with Gaussian noise of a known SE (the design of the challenges chapter's oracle experiments), so
whatever goes wrong is the world's doing, not a model's. Per locus, IVW on the instruments with
``|bx|/SE >= threshold``; the local estimates pooled by REML; the random-effects CI scored against the
truth, the causal coefficient of the TF's binding on accessibility (the same at every locus, so the
population mean is the coefficient). The remedies, each with its interval:

* ``steiger``: keep an instrument only if it moves the exposure more than the outcome on the outputs'
  common scale (each output's SD over the analysed sequences, standing in for variance explained);
* ``bidirectional``: the reverse question, accessibility -> the TF's ChIP signal (truth: ``kappa``);
* ``multivariable``: every TF's ChIP signal as an exposure at once (multivariable IVW on all loci's
  instruments together); with feedback the ChIP signals share ``kappa`` times accessibility, and
  adjusting for the other TFs' signals removes the path through them: the direct effect is then
  ``beta_t / (1 + kappa * sum_s beta_s)`` (:func:`multivariable_truth`), the right sign, attenuated.

Loci are the sequences that carry the TF's motif (``"motif"``) or those the oracle calls a ChIP peak of
the TF, P > 0.5 (``"peaks"``: selected on the measured signal, which reads accessibility).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .. import mr, pairs
from ..sequence import base_indices, substitute
from ..simulate.chromatin import CELL_TYPES, EFFECTS, TFS, ChromatinModel
from .challenges import all_substitutions
from .scoring import judged

__all__ = ["REMEDIES", "experiment", "multivariable_truth", "oracle_variants", "sequences"]

REMEDIES = ("none", "steiger", "bidirectional", "multivariable")
_Z = 1.959963984540054


def sequences(world: ChromatinModel, tf: str, *, n_loci: int, select: str, seed: int) -> np.ndarray:
    """``n_loci`` one-hot sequences ``(n, 4, L)`` for ``tf``: those carrying its motif (``select="motif"``)
    or the oracle's ChIP peaks of it, signal probability > 0.5 (``"peaks"``)."""
    if select not in ("motif", "peaks"):
        raise ValueError(f"select must be 'motif' or 'peaks', got {select!r}")
    t = TFS.index(tf)
    X = []
    for k in range(20):  # draw until enough sequences qualify
        data = world.sample(20 * n_loci, seed=seed + k)
        keep = data["sites"][:, t] >= 0 if select == "motif" else data["logits"][:, t] > 0
        X.append(data["X"][keep])
        if sum(len(x) for x in X) >= n_loci:
            return np.concatenate(X)[:n_loci]
    raise ValueError(f"fewer than {n_loci} {select} sequences for {tf} in {20 * 20 * n_loci} draws")


def oracle_variants(world: ChromatinModel, X: np.ndarray, *, se: float, rng: np.random.Generator) -> pd.DataFrame:
    """Every substitution of ``X`` (``locus, position, alt``) with the oracle's change of every output
    (``d_<output>``), the same plus ``N(0, se^2)`` noise (``b_<output>``), and each TF's true binding
    change (``binding_<TF>``)."""
    if not se > 0:
        raise ValueError(f"se must be > 0 (MR weights are 1/se^2), got {se}")
    table = all_substitutions(X)
    loc = table.locus.to_numpy()
    mutants = substitute(X[loc], table.position.to_numpy(), base_indices(table.alt))
    (b0, a0), (b1, a1) = world.binding_and_access(X), world.binding_and_access(mutants)
    d = world.outputs_from(b1, a1) - world.outputs_from(b0, a0)[loc]
    noise = rng.normal(0.0, se, d.shape)
    columns = {}
    for j, name in enumerate(world.output_names):
        columns[f"d_{name}"], columns[f"b_{name}"] = d[:, j], d[:, j] + noise[:, j]
    for t, tf in enumerate(TFS):
        columns[f"binding_{tf}"] = b1[:, t] - b0[loc, t]
    return pd.concat([table, pd.DataFrame(columns, index=table.index)], axis=1)


def _pooled(inst: pd.DataFrame, truth: float) -> dict:
    """DeepMR on the instruments ``inst`` (IVW per locus, REML pool); the random-effects CI judged against
    ``truth``."""
    g, _ = pairs.estimate_pair(inst, select=None, method="ivw")
    row = {"n_loci": g["n_loci"], "truth": truth}
    if "estimate" not in g:
        return row
    row.update({k: g[k] for k in ("estimate", "se", "ci_low", "ci_high", "tau")})
    return {**row, **judged(g["ci_low"], g["ci_high"], truth)}


def _univariable(table: pd.DataFrame, x: str, y: str, se: float, threshold: float, scales=None):
    """The instruments for ``x`` -> ``y`` (``locus, bx, bxse, by, byse``) and the boolean row mask that chose them."""
    frame = pd.DataFrame({"locus": table.locus, "bx": table[f"b_{x}"], "by": table[f"b_{y}"], "bxse": se, "byse": se})
    keep = frame.bx.abs() / se >= threshold
    if scales is not None:  # Steiger: the exposure moves more than the outcome on the common scale
        keep &= frame.bx.abs() / scales[x] > frame.by.abs() / scales[y]
    return frame[keep], keep


def _leaks(table: pd.DataFrame, keep: pd.Series, tf: str) -> dict:
    """Of the chosen instruments of ``tf``'s signal, the share that move it mostly through accessibility
    (their true binding change under half their signal change) and their share of sum(bx^2), which within
    a sequence is their share of the IVW weight (every SE is the same)."""
    chosen = table[keep]
    leak = chosen[f"binding_{tf}"].abs() < chosen[f"d_{tf}"].abs() / 2
    w = chosen[f"b_{tf}"] ** 2
    return {"leak_share": float(leak.mean()), "leak_weight": float(w[leak].sum() / w.sum())} if len(chosen) else {}


def experiment(
    world: ChromatinModel,
    tf: str,
    cell: str = "HepG2",
    *,
    n_loci: int,
    se: float,
    seed: int,
    select: str = "motif",
    threshold: float = 3.0,
) -> pd.DataFrame:
    """DeepMR for ``tf``'s ChIP signal -> DNase in ``cell``, on the oracle, with each of :data:`REMEDIES`.

    One row per remedy: ``remedy, estimate, se, ci_low, ci_high, tau, n_loci, n_instruments, truth,
    covered, sign_recovered`` plus ``tf, cell_type``, ``selection`` (``select``) and ``feedback``; for
    ``none`` and ``steiger`` also ``leak_share`` and ``leak_weight`` (the chosen instruments that move the
    signal mostly through accessibility, and their share of the IVW weight).
    ``bidirectional`` answers the reverse question (DNase -> ChIP signal; truth ``feedback`` when ``cell``
    is the ChIP's cell type, else 0: no TF's binding reads accessibility here)."""
    if tf not in TFS:
        raise ValueError(f"tf must be one of {TFS}, got {tf!r}")
    if cell not in CELL_TYPES:
        raise ValueError(f"cell must be one of {CELL_TYPES}, got {cell!r}")
    rng = np.random.default_rng(seed)
    X = sequences(world, tf, n_loci=n_loci, select=select, seed=seed)
    table = oracle_variants(world, X, se=se, rng=rng)
    x, y = tf, f"DNase {cell}"
    beta = float(EFFECTS.loc[tf, cell])
    logits = world.oracle(X)
    scales = dict(zip(world.output_names, logits.std(axis=0)))
    rows = []
    for remedy in REMEDIES:
        if remedy in ("none", "steiger"):
            inst, keep = _univariable(table, x, y, se, threshold, scales if remedy == "steiger" else None)
            n_inst = int(keep.sum())
            row = {**_pooled(inst, beta), **_leaks(table, keep, tf)}
        elif remedy == "bidirectional":
            inst, keep = _univariable(table, y, x, se, threshold)
            n_inst = int(keep.sum())
            row = _pooled(inst, world.feedback if cell == world.chip_cell else 0.0)
        else:
            row, n_inst = _multivariable(table, world, tf, cell, se, threshold)
        rows.append({"remedy": remedy, **row, "n_instruments": n_inst})
    out = pd.DataFrame(rows)
    out.insert(0, "tf", tf)
    out.insert(1, "cell_type", cell)
    out["selection"], out["feedback"] = select, world.feedback
    return out


def multivariable_truth(world: ChromatinModel, tf: str, cell: str) -> float:
    """The direct effect of ``tf``'s ChIP signal on ``cell``'s accessibility adjusted for every other TF's:
    ``beta_t / (1 + kappa * sum_s beta_s)`` when ``cell`` is the ChIP's cell type, else ``beta_t`` (the
    signals then carry no accessibility of that cell)."""
    beta = EFFECTS[cell].to_numpy()
    kappa = world.feedback if cell == world.chip_cell else 0.0
    return float(beta[TFS.index(tf)] / (1 + kappa * beta.sum()))


def _multivariable(table, world, tf, cell, se, threshold) -> tuple[dict, int]:
    """Multivariable IVW on every TF's ChIP signal, over the instruments of all loci together: a single
    sequence rarely carries enough motifs to move four exposures independently (its variants then move
    one direction of the four and the fit has no solution), while the truth is the same at every locus."""
    exposures = [f"b_{t}" for t in TFS]
    keep = (table[exposures].abs() / se >= threshold).any(axis=1)
    sub = table[keep]
    truth = multivariable_truth(world, tf, cell)
    row = {"n_loci": int(sub.locus.nunique()), "truth": truth}
    if len(sub) <= len(exposures):
        return row, int(keep.sum())
    bx = sub[exposures].to_numpy()
    res = mr.multivariable(bx, sub[f"b_DNase {cell}"].to_numpy(), np.full(len(sub), se), bxse=np.full_like(bx, se))
    i = TFS.index(tf)
    lo, hi = float(res.ci_low[i]), float(res.ci_high[i])
    row.update(estimate=float(res.estimate[i]), se=float(res.se[i]), ci_low=lo, ci_high=hi, tau=np.nan)
    return {**row, **judged(lo, hi, truth)}, int(keep.sum())
