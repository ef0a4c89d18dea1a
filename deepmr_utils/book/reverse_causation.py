"""The DeepSEA chapter's reverse-causation experiment: a ChIP signal that reads accessibility, and remedies.

The original DeepMR study found every TF "opening" chromatin in DeepSEA, repressors included. One
mechanism can produce that without any model error: a ChIP signal that itself rises with accessibility
(:class:`~deepmr_utils.simulate.ChromatinModel` with ``feedback=kappa``). A mutation that opens chromatin
through another TF's site then raises the repressor's measured signal *and* accessibility, a pair of
changes with the ratio ``1/kappa``, positive whatever the repressor does.

The instruments are every single-base substitution of sequences from that world, in one table with a
row per substitution and, per output, its measured change and SE (``b_<output>``, ``se_<output>``) and the
oracle's change (``d_<output>``). :func:`experiment` measures them by the oracle with Gaussian noise of a
known SE (the design of the challenges chapter's oracle experiments: whatever goes wrong is the world's
doing, not a model's); :func:`model_variants` with :func:`oracle_changes` holds a trained model's ISM, so
:func:`remedies` asks the same questions of a model. Per locus, IVW on the instruments with
``|bx|/SE >= threshold``; the local estimates pooled by REML; the random-effects CI scored against the
truth, the causal coefficient of the TF's binding on accessibility (the same at every locus, so the
population mean is the coefficient). The remedies, each with its interval:

* ``steiger``: keep an instrument only if it moves the exposure more than the outcome on the outputs'
  common scale (each output's SD over the analysed sequences, standing in for variance explained);
* ``bidirectional``: the reverse question, accessibility -> the TF's ChIP signal (truth: ``kappa``);
* ``multivariable``: every TF's ChIP signal as an exposure at once (multivariable IVW on all loci's
  instruments together); with feedback the ChIP signals share ``kappa`` times accessibility, and
  adjusting for the other TFs' signals removes the path through them: the direct effect is then
  ``beta_t / (1 + kappa * sum_s beta_s)`` (:func:`multivariable_truth`), the right sign, attenuated. The
  signals move together (all read accessibility), so each one's *conditional* strength is low and the
  fit shrinks towards 0 with the exposures' noise: ``conditional_f`` reports it.

Loci are the sequences that carry the TF's motif (``"motif"``) or those the oracle calls a ChIP peak of
the TF, P > 0.5 (``"peaks"``: selected on the measured signal, which reads accessibility).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .. import mr, pairs
from ..sequence import base_indices, substitute
from ..simulate.chromatin import CELL_TYPES, EFFECTS, TFS, ChromatinModel
from .challenges import all_substitutions
from .scoring import judged

__all__ = [
    "REMEDIES",
    "experiment",
    "fidelity",
    "model_variants",
    "multivariable_truth",
    "oracle_changes",
    "oracle_variants",
    "remedies",
    "sequences",
]

REMEDIES = ("none", "steiger", "bidirectional", "multivariable")


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


def oracle_changes(world: ChromatinModel, X: np.ndarray, table: pd.DataFrame) -> pd.DataFrame:
    """The oracle's change of every output (``d_<output>``) and each TF's true binding change
    (``binding_<TF>``) for the substitutions of ``table`` (``locus, position, alt``; loci index ``X``)."""
    # a copy: pandas may hand out a read-only view, which torch warns about when it indexes a tensor
    # (substitute copies its own index arrays)
    loc = table.locus.to_numpy(dtype=np.int64, copy=True)
    mutants = substitute(X[loc], table.position.to_numpy(), base_indices(table.alt))
    (b0, a0), (b1, a1) = world.binding_and_access(X), world.binding_and_access(mutants)
    d = world.outputs_from(b1, a1) - world.outputs_from(b0, a0)[loc]
    columns = {f"d_{name}": d[:, j] for j, name in enumerate(world.output_names)}
    columns.update({f"binding_{tf}": b1[:, t] - b0[loc, t] for t, tf in enumerate(TFS)})
    return pd.DataFrame(columns, index=table.index)


def oracle_variants(world: ChromatinModel, X: np.ndarray, *, se: float, rng: np.random.Generator) -> pd.DataFrame:
    """Every substitution of ``X`` (``locus, position, alt``) with the oracle's changes (:func:`oracle_changes`)
    and, as the measurement, the same plus ``N(0, se^2)`` noise (``b_<output>``, with ``se_<output>`` = ``se``)."""
    if not se > 0:
        raise ValueError(f"se must be > 0 (MR weights are 1/se^2), got {se}")
    table = all_substitutions(X)
    truth = oracle_changes(world, X, table)
    noise = rng.normal(0.0, se, (len(table), len(world.output_names)))
    columns = {}
    for j, name in enumerate(world.output_names):
        columns[f"b_{name}"], columns[f"se_{name}"] = truth[f"d_{name}"].to_numpy() + noise[:, j], se
    return pd.concat([table, truth, pd.DataFrame(columns, index=table.index)], axis=1)


def model_variants(effect: np.ndarray, se: np.ndarray, X: np.ndarray, output_names: Sequence[str]) -> pd.DataFrame:
    """A model's ISM of ``X`` as the experiment's table: every substitution (``locus, position, alt``) with
    each output's effect and SE (``b_<output>``, ``se_<output>``).

    ``effect``, ``se``: ``(N, L, 4, O)`` from :func:`deepmr_utils.pipeline.effects` over every position;
    ``X``: one-hot ``(N, 4, L)``; ``output_names``: the ``O`` names."""
    effect, se, X = np.asarray(effect), np.asarray(se), np.asarray(X)
    names = list(output_names)
    if effect.shape != se.shape or effect.ndim != 4 or effect.shape[:3] != (X.shape[0], X.shape[2], 4):
        raise ValueError(f"effect and se must be (N, L, 4, O) for X {X.shape}, got {effect.shape} and {se.shape}")
    if effect.shape[3] != len(names):
        raise ValueError(f"effect has {effect.shape[3]} outputs but output_names names {len(names)}")
    table = all_substitutions(X)
    ref = X.argmax(axis=1)  # the same (locus, position, alt) order as all_substitutions
    keep = np.arange(4)[None, None, :] != ref[:, :, None]
    columns = {}
    for j, name in enumerate(names):
        columns[f"b_{name}"], columns[f"se_{name}"] = effect[..., j][keep], se[..., j][keep]
    return pd.concat([table, pd.DataFrame(columns, index=table.index)], axis=1)


def _check_pair(tf: str, cell: str) -> None:
    if tf not in TFS:
        raise ValueError(f"tf must be one of {TFS}, got {tf!r}")
    if cell not in CELL_TYPES:
        raise ValueError(f"cell must be one of {CELL_TYPES}, got {cell!r}")


def _pooled(inst: pd.DataFrame, truth: float) -> dict:
    """DeepMR on the instruments ``inst`` (IVW per locus, REML pool); the random-effects CI judged against
    ``truth``."""
    g, _ = pairs.estimate_pair(inst, select=None, method="ivw")
    row = {"n_loci": g["n_loci"], "truth": truth}
    if "estimate" not in g:
        return row
    row.update({k: g[k] for k in ("estimate", "se", "ci_low", "ci_high", "tau")})
    return {**row, **judged(g["ci_low"], g["ci_high"], truth)}


def _univariable(table: pd.DataFrame, x: str, y: str, threshold: float, scales=None):
    """The instruments for ``x`` -> ``y`` (``locus, bx, bxse, by, byse``) and the boolean row mask that chose them."""
    frame = pd.DataFrame({"locus": table.locus, "bx": table[f"b_{x}"], "by": table[f"b_{y}"]})
    frame["bxse"], frame["byse"] = table[f"se_{x}"], table[f"se_{y}"]
    # an effect with no spread across members has no known error: it cannot be weighted, so it is not an instrument
    keep = (frame.bxse > 0) & (frame.byse > 0) & (frame.bx.abs() / frame.bxse >= threshold)
    if scales is not None:  # Steiger: the exposure moves more than the outcome on the common scale
        keep &= frame.bx.abs() / scales[x] > frame.by.abs() / scales[y]
    return frame[keep], keep


def _leaks(table: pd.DataFrame, keep: pd.Series, tf: str) -> dict:
    """Of the chosen instruments of ``tf``'s signal, the share that move it mostly through accessibility
    (their true binding change under half their true signal change) and their share of the IVW weight
    ``sum(bx^2 / se^2)`` (within a sequence the weights of a ratio estimate)."""
    chosen = table[keep]
    leak = chosen[f"binding_{tf}"].abs() < chosen[f"d_{tf}"].abs() / 2
    w = (chosen[f"b_{tf}"] / chosen[f"se_{tf}"]) ** 2
    return {"leak_share": float(leak.mean()), "leak_weight": float(w[leak].sum() / w.sum())} if len(chosen) else {}


def fidelity(table: pd.DataFrame, keep: pd.Series, x: str, y: str) -> dict:
    """Fidelity at the level of effects on the chosen instruments (rows of ``table`` where ``keep``): the
    slope through the origin of the measured change (``b_``) on the oracle's (``d_``) and their correlation,
    for the exposure ``x`` (``slope_x``, ``r_x``) and the outcome ``y`` (``slope_y``, ``r_y``); 1 is faithful.
    NaN where the oracle does not move that output on those instruments (mean square change under 1e-6)."""
    chosen = table[keep]
    out = {}
    for role, name in (("x", x), ("y", y)):
        b, d = chosen[f"b_{name}"].to_numpy(), chosen[f"d_{name}"].to_numpy()
        moved = len(d) > 2 and float((d * d).mean()) > 1e-6
        out[f"slope_{role}"] = float((b * d).sum() / (d * d).sum()) if moved else np.nan
        out[f"r_{role}"] = float(np.corrcoef(b, d)[0, 1]) if moved and b.std() > 0 else np.nan
    return out


def remedies(
    table: pd.DataFrame,
    world: ChromatinModel,
    tf: str,
    cell: str = "HepG2",
    *,
    threshold: float = 3.0,
    scales: Mapping[str, float] | None = None,
) -> pd.DataFrame:
    """DeepMR for ``tf``'s ChIP signal -> DNase in ``cell`` on a variant table, with each of :data:`REMEDIES`.

    ``table``: :func:`oracle_variants`, or :func:`model_variants` joined with :func:`oracle_changes` (the
    truth that the leak shares and the fidelity slopes need), restricted to the loci to analyse.
    ``scales``: each output's SD over the analysed sequences (Steiger's common scale; default: the SD of
    the measured changes). One row per remedy: ``remedy, estimate, se, ci_low, ci_high, tau, n_loci,
    n_instruments, truth, covered, sign_recovered`` and, for the univariable remedies, ``slope_x``,
    ``slope_y``, ``r_x``, ``r_y`` (:func:`fidelity`); for ``none`` and ``steiger`` also ``leak_share``
    and ``leak_weight``; for ``multivariable`` the TF's ``conditional_f`` (:func:`deepmr_utils.mr.multivariable`:
    under about 10 its direct effect is biased towards 0 by the exposures' measurement error).
    ``bidirectional`` answers the reverse question (DNase -> ChIP signal; truth ``feedback`` when ``cell``
    is the ChIP's cell type, else 0: no TF's binding reads accessibility here)."""
    _check_pair(tf, cell)
    x, y = tf, f"DNase {cell}"
    if scales is None:
        scales = {name: float(table[f"b_{name}"].std()) for name in world.output_names}
    beta = float(EFFECTS.loc[tf, cell])
    rows = []
    for remedy in REMEDIES:
        if remedy in ("none", "steiger"):
            inst, keep = _univariable(table, x, y, threshold, scales if remedy == "steiger" else None)
            row = {**_pooled(inst, beta), **_leaks(table, keep, tf), **fidelity(table, keep, x, y)}
        elif remedy == "bidirectional":
            inst, keep = _univariable(table, y, x, threshold)
            row = {**_pooled(inst, world.feedback if cell == world.chip_cell else 0.0), **fidelity(table, keep, y, x)}
        else:
            row, keep = _multivariable(table, world, tf, cell, threshold)
        rows.append({"remedy": remedy, **row, "n_instruments": int(keep.sum())})
    out = pd.DataFrame(rows)
    out.insert(0, "tf", tf)
    out.insert(1, "cell_type", cell)
    out["feedback"] = world.feedback
    return out


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
    """:func:`remedies` on the oracle: ``n_loci`` sequences of ``tf`` (:func:`sequences`), every substitution
    measured with noise of SE ``se``; Steiger's scales are the oracle's output SDs over those sequences.
    Adds ``selection`` (``select``)."""
    _check_pair(tf, cell)  # before sampling sequences for it
    rng = np.random.default_rng(seed)
    X = sequences(world, tf, n_loci=n_loci, select=select, seed=seed)
    table = oracle_variants(world, X, se=se, rng=rng)
    scales = dict(zip(world.output_names, world.oracle(X).std(axis=0)))
    return remedies(table, world, tf, cell, threshold=threshold, scales=scales).assign(selection=select)


def multivariable_truth(world: ChromatinModel, tf: str, cell: str) -> float:
    """The direct effect of ``tf``'s ChIP signal on ``cell``'s accessibility adjusted for every other TF's:
    ``beta_t / (1 + kappa * sum_s beta_s)`` when ``cell`` is the ChIP's cell type, else ``beta_t`` (the
    signals then carry no accessibility of that cell)."""
    beta = EFFECTS[cell].to_numpy()
    kappa = world.feedback if cell == world.chip_cell else 0.0
    return float(beta[TFS.index(tf)] / (1 + kappa * beta.sum()))


def _multivariable(table, world, tf, cell, threshold) -> tuple[dict, pd.Series]:
    """Multivariable IVW on every TF's ChIP signal, over the instruments of all loci together: a single
    sequence rarely carries enough motifs to move four exposures independently (its variants then move
    one direction of the four and the fit has no solution), while the truth is the same at every locus."""
    exposures, ses = [f"b_{t}" for t in TFS], [f"se_{t}" for t in TFS]
    S = table[ses].to_numpy()
    measured = (S > 0).all(axis=1) & (table[f"se_DNase {cell}"].to_numpy() > 0)  # every error known (see _univariable)
    z = table[exposures].abs().to_numpy() / np.where(S > 0, S, np.inf)
    keep = pd.Series((z >= threshold).any(axis=1) & measured, index=table.index)
    sub = table[keep]
    truth = multivariable_truth(world, tf, cell)
    row = {"n_loci": int(sub.locus.nunique()), "truth": truth}
    if len(sub) <= len(exposures):
        return row, keep
    y = f"DNase {cell}"
    res = mr.multivariable(
        sub[exposures].to_numpy(), sub[f"b_{y}"].to_numpy(), sub[f"se_{y}"].to_numpy(), bxse=sub[ses].to_numpy()
    )
    i = TFS.index(tf)
    lo, hi = float(res.ci_low[i]), float(res.ci_high[i])
    row.update(
        estimate=float(res.estimate[i]),
        se=float(res.se[i]),
        ci_low=lo,
        ci_high=hi,
        tau=np.nan,
        conditional_f=float(res.conditional_f[i]),
    )
    return {**row, **judged(lo, hi, truth)}, keep
