"""The challenges chapter's experiments: one MR assumption broken at a time, with a known truth.

Two kinds of experiment live here.

*Oracle experiments* (:func:`oracle_replicate`, :func:`assumption_sweep`,
:func:`linearity`) query the simulator's noise-free oracle for every single-base
substitution of each sequence and add Gaussian estimation noise of a known SE to the
exposure and outcome effects, as in the simulation studies of the MR literature
(Bowden et al. 2015, 2016). Every instrument is then measured without bias and with the
right SE, so whatever bias remains comes from the assumption the world breaks, not
from a model.

*Model experiments* (:func:`winners_curse`, :func:`se_calibration`,
:func:`accuracy_sweep`, :func:`direction`, :func:`multivariable_adjustment`) bring the
trained ensembles back: they reuse :func:`deepmr_utils.book.simulation_study.run_round`'s
models and data, so their truth is the oracle's on exactly the instruments used.

Every function returns a tidy frame with the setting varied, the estimator, the
estimate with its SE and CI, the truth and, where it applies, whether the CI covers it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn

from .. import instruments, meta, mr, pairs, pipeline, train
from .._parallel import map_jobs
from .._types import ArrayLike, Device, Sequences
from ..instruments import Selection
from ..ism import ISMOptions
from ..models import PooledRegressor
from ..predict import predict
from ..sequence import ALPHABET
from ..simulate import WITH_EXPOSURE, CooperativityModel, SequenceType, slope_through_origin
from .scoring import against_truth
from .simulation_study import (
    ESTIMATORS,
    Round,
    StudySizes,
    coverage_interval,
    fit_calibration,
    round_call,
    run_round,
)

__all__ = [
    "SWEEP_ESTIMATORS",
    "CONMIX",
    "conmix_per_locus",
    "all_substitutions",
    "oracle_table",
    "local_truth",
    "estimate",
    "oracle_replicate",
    "assumption_sweep",
    "pleiotropy_world",
    "summarize",
    "linearity",
    "variants",
    "disjoint_ensembles",
    "CURSE_DESIGNS",
    "winners_curse",
    "se_calibration",
    "train_dropout_model",
    "accuracy_sweep",
    "direction",
    "multivariable_adjustment",
]


def all_substitutions(X: Sequences) -> pd.DataFrame:
    """Every single-base substitution of every sequence: ``locus, position, alt`` (``3 L`` rows per sequence).

    ``X``: one-hot ``(N, 4, L)`` (ACGT, no N positions)."""
    Xn = X.detach().cpu().numpy() if hasattr(X, "detach") else np.asarray(X)
    n, _, length = Xn.shape
    ref = Xn.argmax(axis=1)  # (N, L)
    loc, pos, alt = np.meshgrid(np.arange(n), np.arange(length), np.arange(4), indexing="ij")
    keep = alt != ref[:, :, None]
    letters = np.array(list(ALPHABET))
    return pd.DataFrame({"locus": loc[keep], "position": pos[keep], "alt": letters[alt[keep]]})


def oracle_table(
    gen: CooperativityModel,
    X: Sequences,
    *,
    se: float,
    rng: np.random.Generator,
    b_conf: ArrayLike | None = None,
) -> pd.DataFrame:
    """A variant table of every substitution of ``X`` measured by the oracle with known noise.

    ``bx = dx + e_x``, ``by = dy + e_y`` and ``bz = dz + e_z`` (the confounder TF's own signal,
    for multivariable MR) with independent ``e ~ N(0, se^2)`` and ``bxse = byse = bzse = se``;
    the oracle's columns of :meth:`~deepmr_utils.simulate.CooperativityModel.variant_truth`
    ride along, so each instrument's validity is known. ``se > 0``.
    """
    if not se > 0:
        raise ValueError(f"se must be > 0 (MR weights are 1/se^2), got {se}")
    table = all_substitutions(X)
    truth = gen.variant_truth(X, table, b_conf)
    table = pd.concat([table, truth], axis=1)
    noise = rng.normal(0.0, se, (len(table), 3))
    table["bx"], table["by"], table["bz"] = table.dx + noise[:, 0], table.dy + noise[:, 1], table.dz + noise[:, 2]
    table["bxse"] = table["byse"] = table["bzse"] = se
    return table


# The chapter's tables: the simulation study's estimators (among them three of the original study's four:
# IVW, robust MR-Egger, the mode), the fourth (MR-RAPS), and two newer ones where an experiment shows what
# they add: MR-PRESSO's outlier removal under pleiotropy, dIVW's correction for noisy exposure effects.
# ConMix too, which the registry leaves out (its confidence set comes from the likelihood, with no SE to pool):
# here each locus's set lends it the SE a normal 95 % interval of that width would have (see conmix_per_locus).
CONMIX = "ConMix"
SWEEP_ESTIMATORS = {
    **ESTIMATORS,
    **{mr.ESTIMATORS[k].name: (k, {}) for k in ("raps", "presso", "divw")},
    CONMIX: ("conmix", {}),
}


def conmix_per_locus(instruments: pd.DataFrame, *, grid_points: int = 2000, alpha: float = 0.05) -> pd.DataFrame:
    """:func:`mr.conmix` on each locus of a variant table with ``locus, bx, bxse, by, byse`` (at least 3
    instruments), in :func:`mr.per_locus`'s columns ``locus, n_instruments, estimate, se, ci_low, ci_high,
    status``, plus ``n_intervals`` (the pieces of the confidence set).

    ConMix has no standard error. To enter a random-effects pool, each locus gets the SE that a normal
    interval as wide as its confidence set would have, ``(ci_high - ci_low) / (2 z_{1 - alpha/2})``, the usual
    way a meta-analysis recovers an SE from a reported CI. A set of several pieces counts by its span, so its
    SE is too large, not too small. The grid has ``grid_points`` steps over the locus's ratios +- 2 SEs
    (the package's fixed step of 0.01 is coarse next to the SEs of strong instruments)."""
    z = float(stats.norm.ppf(1 - alpha / 2))
    rows = []
    for locus, g in instruments.groupby("locus", sort=True):
        row = {"locus": locus, "n_instruments": len(g), "status": "ok"}
        bx, bxse, by, byse = (g[c].to_numpy(float) for c in ("bx", "bxse", "by", "byse"))
        try:
            if len(g) < 3:
                raise ValueError("conmix: fewer than 3 instruments")
            ratio, s = by / bx, np.abs(byse / bx)
            step = float(np.max(ratio + 2 * s) - np.min(ratio - 2 * s)) / grid_points
            res = mr.conmix(bx, bxse, by, byse, ci_step=step, alpha=alpha)
            se = (res.ci_high - res.ci_low) / (2 * z)
            if not se > 0:
                raise ValueError("conmix: the confidence set is a single grid point")
            row.update(estimate=res.estimate, se=se, ci_low=res.ci_low, ci_high=res.ci_high)
            row["n_intervals"] = len(res.intervals)
        except ValueError as err:  # what conmix raises, or the two checks above
            row["status"] = str(err)
        rows.append(row)
    cols = ["locus", "n_instruments", "estimate", "se", "ci_low", "ci_high", "status", "n_intervals"]
    return pd.DataFrame(rows).reindex(columns=cols)


def local_truth(instruments: pd.DataFrame) -> pd.DataFrame:
    """The true local effect per locus, ``locus, theta``: the slope through the origin of the
    causal outcome change on the exposure change *through the exposure TF's own binding*
    (``dy_causal`` on ``dx_causal``) over the locus's instruments. Invalid instruments (those
    that move the exposure only through a confounder) carry ``dx_causal = 0`` and drop out,
    so the truth is the causal effect itself, whichever instruments an estimator trusts."""
    return slope_through_origin(
        instruments.locus.to_numpy(), instruments.dx_causal.to_numpy(), instruments.dy_causal.to_numpy()
    )


def estimate(
    instruments: pd.DataFrame,
    truth: pd.DataFrame,
    *,
    estimators: dict = ESTIMATORS,
    n_boot: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """Local MR per locus with each estimator, pooled by REML; one row per estimator.

    ``instruments``: selected rows of a variant table; ``truth``: ``locus, theta``. Columns:
    ``estimator, estimate, se, ci_low, ci_high, tau``, ``cond_se, cond_ci_low, cond_ci_high`` (the
    conditional CI), ``truth`` (mean local truth of the pooled loci, weighted like the pool;
    ``truth_sample`` unweighted), ``covered`` (the conditional 95 % CI holds it), ``n_loci``, ``local_coverage``
    and ``local_rmse`` (local estimates against local truths). Without instruments, or with
    fewer than two usable loci, a row has ``n_loci`` and no estimate.
    """
    rows = []
    for name, (method, kw) in estimators.items():
        if instruments.empty:  # no instrument reached the threshold: reported as such, no estimate
            rows.append({"estimator": name, "n_loci": 0})
            continue
        if method == "conmix":
            rows.append(_pooled(name, conmix_per_locus(instruments, **kw), truth))
            continue
        _, local = pairs.estimate_pair(
            instruments, select=None, method=method, truth=lambda _: truth, n_boot=n_boot, seed=seed, method_options=kw
        )  # fmt: skip
        rows.append(_row(name, local))
    return pd.DataFrame(rows)


def _pooled(name: str, local: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """One estimator's row: its per-locus frame (``locus, estimate, se, ci_low, ci_high, status``)
    against the truth, pooled by REML when at least two loci have an estimate.

    The truth is the mean local truth of *these* loci, so the interval scored against it is the
    conditional one (:func:`~deepmr_utils.book.scoring.pool_loci`: the pool's weights,
    within-locus variance only) and the truth is weighted like the pool (``truth``; the plain mean
    is ``truth_sample``). The random-effects CI (``ci_low``, ``ci_high``) is for the mean over a
    population of sequences, which these experiments do not define; scored against the mean of the
    same loci it would cover nearly always."""
    return _row(name, local.merge(truth, on="locus", how="left"))


def _row(name: str, local: pd.DataFrame | None) -> dict:
    """One estimator's row of :func:`estimate` from its per-locus rows with their truths (``theta``)."""
    p, _ = against_truth(local)
    row = {"estimator": name, "n_loci": p["n_loci"]}
    if "estimate" in p:
        t = p["truth_weighted"]
        row.update(
            {k: p[k] for k in ("estimate", "se", "ci_low", "ci_high", "tau", "cond_se", "cond_ci_low", "cond_ci_high")},
            truth=t,
            truth_sample=p["truth_sample"],
            covered=bool(p["cond_ci_low"] <= t <= p["cond_ci_high"]),
            local_coverage=p["local_coverage"],
            local_rmse=p["local_rmse"],
        )
    return row


def _exposure_loci(gen: CooperativityModel, n: int, seed: int) -> dict:
    """``n`` sequences that carry the exposure motif (alone or with the outcome motif)."""
    data = gen.sample(4 * n, seed=seed)
    keep = np.flatnonzero(np.isin(data["config"], WITH_EXPOSURE))[:n]
    if len(keep) < n:
        raise ValueError(f"only {len(keep)} of {4 * n} sampled sequences carry the exposure motif; raise p_embed")
    return {k: (v[keep] if hasattr(v, "__getitem__") else v) for k, v in data.items()}


def oracle_replicate(
    gen: CooperativityModel,
    *,
    n_loci: int,
    se: float,
    seed: int,
    threshold: float = 3.0,
    estimators: dict = ESTIMATORS,
    n_boot: int = 200,
) -> pd.DataFrame:
    """One replicate of an oracle experiment: ``n_loci`` fresh sequences with the exposure
    motif, every substitution measured by :func:`oracle_table`, instruments at
    ``|bx|/se >= threshold``, then :func:`estimate`. Adds ``frac_invalid``: the share of the
    instruments that move the exposure mostly through the confounder (``|dx_causal| <
    |dx| / 2``) or move the outcome directly (``|dy - dy_causal| > |dy_causal|``), and of those
    two kinds the second alone, ``frac_direct``: in a world with no designed pleiotropy these are
    mutations that change the outcome TF's own occupancy (motif crosstalk), measured, not assumed away;
    ``inside_r2``: the squared correlation of the instruments' direct effects ``dy - dy_causal`` with
    their exposure effects ``dx`` (near 0 when InSIDE holds, near 1 when pleiotropy follows strength)."""
    rng = np.random.default_rng(seed)
    data = _exposure_loci(gen, n_loci, int(rng.integers(2**31 - 1)))
    table = oracle_table(gen, data["X"], se=se, rng=rng, b_conf=data["b_conf"])
    inst = Selection(threshold=threshold).apply(table).instruments
    out = estimate(inst, local_truth(inst), estimators=estimators, n_boot=n_boot, seed=seed)
    direct = (inst.dy - inst.dy_causal).abs() > inst.dy_causal.abs()
    invalid = (inst.dx_causal.abs() < inst.dx.abs() / 2) | direct
    out["frac_invalid"] = float(invalid.mean()) if len(inst) else np.nan
    out["frac_direct"] = float(direct.mean()) if len(inst) else np.nan
    # InSIDE holds when the direct effects do not follow the exposure effects: their squared correlation
    alpha = (inst.dy - inst.dy_causal).to_numpy()
    ok = len(inst) > 2 and alpha.std() > 0 and inst.dx.std() > 0
    out["inside_r2"] = float(np.corrcoef(inst.dx.to_numpy(), alpha)[0, 1] ** 2) if ok else np.nan
    out["n_instruments"] = len(inst)
    return out


def _replicate_job(job: tuple) -> pd.DataFrame:
    world, value, setting, r, kw, threads = job
    if threads:
        torch.set_num_threads(threads)
    f = oracle_replicate(world(value), **kw)
    return _tagged(f, setting=setting, value=value, replicate=r)


def assumption_sweep(
    setting: str,
    values: Sequence[float],
    world: Callable[[float], CooperativityModel],
    *,
    replicates: int,
    n_loci: int,
    se: float,
    seed: int,
    threshold: float = 3.0,
    estimators: dict = ESTIMATORS,
    n_boot: int = 200,
    n_jobs: int = 1,
) -> pd.DataFrame:
    """:func:`oracle_replicate` ``replicates`` times for each value of ``setting``; ``world(value)``
    builds the simulator. Returns all rows with ``setting, value, replicate`` first. Replicate ``r`` of
    value ``i`` has seed ``seed + 1000 i + r`` whatever ``n_jobs`` (processes with one thread each; the
    ``world`` must then be picklable: a module-level function or a ``functools.partial`` of one)."""
    common = {"n_loci": n_loci, "se": se, "threshold": threshold, "estimators": estimators, "n_boot": n_boot}
    jobs = [
        (world, value, setting, r, {**common, "seed": seed + 1000 * i + r}, 1 if n_jobs > 1 else 0)
        for i, value in enumerate(values)
        for r in range(replicates)
    ]
    return pd.concat(list(map_jobs(_replicate_job, jobs, n_jobs)), ignore_index=True)


def pleiotropy_world(strength: float, base: CooperativityModel | None = None) -> CooperativityModel:
    """The exclusion-restriction world: a SOX2 motif in half of the sequences, read by both TFs, adding
    ``20 strength`` to the exposure's and ``30 strength`` to the outcome's input (``eta``, ``nu``)."""
    base = CooperativityModel() if base is None else base
    return replace(base, sequence_dependent=True, p_confounder_motif=0.5, eta=20 * strength, nu=30 * strength)


def summarize(rows: pd.DataFrame, by: Sequence[str] = ("setting", "value", "estimator")) -> pd.DataFrame:
    """Per group: replicates, mean estimate and truth, bias, relative bias, RMSE, ``z_sd`` (the SD of
    ``(estimate - truth) / cond_se``: 1 for honest SEs) and the coverage of the conditional 95 % CI
    across replicates with its exact (Clopper-Pearson) interval (``coverage_low``, ``coverage_high``:
    with a few replicates it is wide, and the table says so) and both tails (``miss_below``: the CI lies
    below the truth; ``miss_above``), plus the means of ``frac_invalid``, ``frac_direct`` and ``inside_r2``
    when present."""
    r = rows.dropna(subset=["estimate", "truth"]).assign(err=lambda d: d.estimate - d.truth)
    r = r.assign(z=r.err / r.cond_se, below=r.cond_ci_high < r.truth, above=r.cond_ci_low > r.truth)
    agg = {
        "replicates": ("err", "size"),
        "estimate": ("estimate", "mean"),
        "truth": ("truth", "mean"),
        "bias": ("err", "mean"),
        "rmse": ("err", lambda e: float(np.sqrt((e**2).mean()))),
        "z_sd": ("z", lambda z: float(z.std(ddof=1)) if len(z) > 1 else np.nan),
        "coverage": ("covered", "mean"),
        "miss_below": ("below", "mean"),
        "miss_above": ("above", "mean"),
    }
    for col in ("frac_invalid", "frac_direct", "inside_r2"):
        if col in r:
            agg[col] = (col, "mean")
    groups = r.groupby(list(by), sort=False)
    out = groups.agg(**agg).reset_index()
    out.insert(out.columns.get_loc("bias") + 1, "rel_bias", out.bias / out.truth)
    exact = np.array([coverage_interval(g.covered)[1:] for _, g in groups]).reshape(-1, 2)
    at = out.columns.get_loc("coverage") + 1
    out.insert(at, "coverage_low", exact[:, 0])
    out.insert(at + 1, "coverage_high", exact[:, 1])
    return out


def linearity(
    hills: Sequence[float],
    *,
    base: CooperativityModel,
    n_loci: int,
    se: float,
    seed: int,
    threshold: float = 3.0,
) -> pd.DataFrame:
    """Local linearity: ISM Wald ratios against the true local derivative as cooperativity grows.

    For each ``hill`` (the outcome reads ``q_exp^hill``), the instruments of ``n_loci``
    sequences with both motifs are split at each locus's median ``|dx|`` into *small* and
    *large* perturbations; IVW per locus on each part (and on all), pooled by REML, is set
    against the mean of :meth:`~deepmr_utils.simulate.CooperativityModel.local_derivative`
    (``truth``) and against the finite-difference truth on the same instruments
    (``secant_truth``, what :func:`local_truth` gives). One row per hill and part.
    """
    rows = []
    for i, hill in enumerate(hills):
        gen = replace(base, hill=float(hill), p_embed=1.0)
        rng = np.random.default_rng(seed + i)
        data = gen.sample(4 * n_loci, seed=int(rng.integers(2**31 - 1)))
        keep = np.flatnonzero(data["config"] == SequenceType.PAIR)[:n_loci]
        X = data["X"][keep]
        deriv = pd.DataFrame({"locus": np.arange(len(keep)), "derivative": gen.local_derivative(X)})
        inst = Selection(threshold=threshold).apply(oracle_table(gen, X, se=se, rng=rng)).instruments
        small = inst.dx.abs() <= inst.groupby("locus").dx.transform(lambda d: d.abs().median())
        for part, rows_ in (("all", inst), ("small", inst[small]), ("large", inst[~small])):
            local = mr.per_locus(rows_, "ivw").merge(deriv, on="locus").merge(local_truth(rows_), on="locus")
            ok = local[local.status == "ok"]
            g = meta.pool(ok)
            rows.append(
                {
                    "hill": hill,
                    "perturbation": part,
                    "estimator": "IVW",
                    "estimate": g.estimate,
                    "se": g.se,
                    "ci_low": g.ci_low,
                    "ci_high": g.ci_high,
                    "truth": float(ok.derivative.mean()),
                    "secant_truth": float(ok.theta.mean()),
                    "median_abs_dx": float(rows_.dx.abs().median()),
                    "n_loci": len(ok),
                }
            )
    out = pd.DataFrame(rows)
    out["ratio_to_derivative"] = out.estimate / out.truth
    return out


# ---------------------------------------------------------------------------- trained models


def variants(
    details: Round,
    members: Sequence[int] | None = None,
    *,
    calibration: str = "variance",
    models: list[nn.Module] | None = None,
    mc_dropout: int = 0,
    seed: int = 0,
    member_correlation: bool = False,
) -> pd.DataFrame:
    """Every candidate variant of a round's mutated test sequences, measured by a subset of its
    ensemble, with the oracle's columns alongside (and the members' per-variant correlation of the
    exposure and outcome errors, ``psi``, with ``member_correlation``).

    ``details``: a round of the study (:class:`~deepmr_utils.book.simulation_study.Round`);
    ``members``: indices into its ensemble (default all), or ``models`` to measure with other
    models (e.g. one dropout model with ``mc_dropout`` passes). ``calibration`` is fitted on
    the round's held-out calibration labels for exactly these members (``"none"`` with MC-dropout,
    whose passes cannot be replayed on the calibration set by :func:`~deepmr_utils.predict.predict`).
    """
    if models is None:
        pool_ = details.models
        models = [pool_[i] for i in (range(len(pool_)) if members is None else members)]
    if mc_dropout and calibration != "none":
        raise ValueError("calibration must be 'none' with mc_dropout (the calibration is fitted on member predictions)")
    cal = fit_calibration(calibration, models, details.calibration_data)
    gen, test, mutated = details.generator, details.test, details.mutated
    Xm, b_conf = test["X"][mutated], test["b_conf"][mutated]
    table = pipeline.variant_effects(
        models,
        Xm,
        options=ISMOptions(mc_dropout=mc_dropout, seed=seed),
        exposure=0,
        outcome=1,
        calibration=cal,
        select=Selection("all"),
        progress=False,
        member_correlation=member_correlation,
    )
    table = table[(table.bxse > 0) & (table.byse > 0)].reset_index(drop=True)
    return pd.concat([table, gen.variant_truth(Xm, table, b_conf)], axis=1)


def _tagged(frame: pd.DataFrame, **tags) -> pd.DataFrame:
    for i, (k, v) in enumerate(tags.items()):
        frame.insert(i, k, v)
    return frame


def disjoint_ensembles(
    details: Round, *, n_members: int | None = None, seed: int = 0, device: Device = None
) -> tuple[list, list]:
    """Two ensembles of the round's architecture and training (``n_members`` each, default the round's),
    each trained on its own half of the round's training sequences (augmented from that half only), so
    that their errors are as independent as two samples': the two-sample design of :func:`winners_curse`."""
    s, tr, gen = details.sizes, details.train, details.generator
    n_members = s.n_members if n_members is None else n_members
    if isinstance(n_members, bool) or not isinstance(n_members, (int, np.integer)) or n_members < 2:
        raise ValueError(f"n_members must be an integer >= 2 (SEs need two members), got {n_members!r}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(tr["y"]))
    cfg = train.TrainConfig(max_epochs=s.max_epochs, patience=s.patience, batch_size=s.batch_size)
    out = []
    for idx in (np.sort(order[: order.size // 2]), np.sort(order[order.size // 2 :])):
        half = {k: v[idx] for k, v in tr.items() if k in ("X", "y", "config", "sites", "b_conf", "counts")}
        X, y = half["X"], half["y"]
        if s.augment:
            aug = gen.augment_variants(half, s.augment, seed=int(rng.integers(2**31 - 1)))
            X, y = torch.cat([X, aug["X"]]), np.concatenate([y, aug["y"]])
        models, _ = train.train_ensemble(
            lambda: PooledRegressor(2, n_filters=s.n_filters, hidden=s.hidden, output_names=["exposure", "outcome"]),
            X,
            y,
            n_members,
            config=cfg,
            seed=int(rng.integers(2**31 - 1)),
            device=device,
            progress=False,
        )
        out.append(models)
    return out[0], out[1]


# the designs of :func:`winners_curse`, in the order its table shows them
CURSE_DESIGNS = (
    "one sample",
    "one sample, psi-aware IVW",
    "same half",
    "split members",
    "one sample, half data",
    "two-sample",
)


def winners_curse(
    details: Round,
    *,
    thresholds: Sequence[float] = (2.0, 3.0, 5.0),
    estimators: dict = ESTIMATORS,
    disjoint: tuple[list, list] | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """Instrument strength and the winner's curse, measured on trained ensembles.

    For each selection ``threshold``, instruments chosen by ``|bx|/bxse`` and estimated under each of
    :data:`CURSE_DESIGNS`:

    * ``"one sample"``: chosen and estimated with the whole ensemble;
    * ``"one sample, psi-aware IVW"``: the same instruments, IVW with second-order weights that take
      each variant's correlation of its exposure and outcome errors across members (``psi``), the
      one-sample correction of the MR literature (IVW rows only);
    * ``"same half"``: chosen and estimated with the first half of the members;
    * ``"split members"``: chosen with the second half, estimated with the first. The members share
      their training data, so their errors are shared too: this is *not* two independent samples;
    * ``"one sample, half data"`` and ``"two-sample"`` (with ``disjoint``, the two ensembles of
      :func:`disjoint_ensembles`): chosen and estimated with the first, and chosen with the second
      and estimated with the first (:func:`deepmr_utils.instruments.two_sample`). The pair compares
      like with like: the same estimation ensemble, with and without selection on its own numbers.

    Rows of :func:`estimate` with ``threshold, design``, the number of instruments, ``z`` (the
    estimate's distance from the truth in conditional SEs: the curse's size against its noise),
    ``psi_selected`` (the mean member correlation of the chosen instruments' errors, one-sample rows)
    and ``exact_ivw``: IVW on the same instruments with the oracle's exact effects, the control that
    splits an error into the model's effects (estimate minus control) and the method (control minus truth).
    """
    m = len(details.models)
    if m < 4:
        raise ValueError(f"winners_curse needs an ensemble of at least 4 members to halve, got {m}")
    full = variants(details, member_correlation=True)
    first, second = variants(details, range(m // 2)), variants(details, range(m // 2, m))
    if disjoint is not None:
        est_models, sel_models = disjoint
        half_a, half_b = variants(details, models=est_models), variants(details, models=sel_models)
    keys = ["locus", "position", "alt"]
    # the one-sample correction: IVW's second-order weights with each variant's member correlation
    delta = {"weights": "delta", "psi": "psi"}
    psi_aware = {n: ("ivw", {**kw, **delta}) for n, (method, kw) in estimators.items() if method == "ivw"}
    frames = []
    for t in thresholds:
        sel = Selection(threshold=t)
        one = sel.apply(full).instruments
        designs = {
            "one sample": (one, estimators),
            "one sample, psi-aware IVW": (one, psi_aware),
            "same half": (sel.apply(first).instruments, estimators),
            "split members": (first.merge(sel.apply(second).instruments[keys], on=keys), estimators),
        }
        if disjoint is not None:
            designs["one sample, half data"] = (sel.apply(half_a).instruments, estimators)
            designs["two-sample"] = (instruments.two_sample(half_b, half_a, sel), estimators)
        for design, (inst, est) in designs.items():
            truth = local_truth(inst)
            f = estimate(inst, truth, estimators=est, n_boot=n_boot, seed=seed)
            f["n_instruments"] = len(inst)
            # the exact-effects control: the same instruments and SEs with the oracle's effects, IVW; what
            # separates it from the estimate is the model's effects, what separates it from the truth the method
            exact = estimate(inst.assign(bx=inst.dx, by=inst.dy), truth, estimators={"IVW": ("ivw", {})})
            f["exact_ivw"] = float(exact.estimate.iloc[0]) if "estimate" in exact else np.nan
            if design.startswith("one sample") and "psi" in inst:
                f["psi_selected"] = float(inst.psi.mean()) if len(inst) else np.nan
            frames.append(_tagged(f, threshold=t, design=design))
    out = pd.concat(frames, ignore_index=True)
    if {"estimate", "truth", "cond_se"} <= set(out.columns):
        out["z"] = (out.estimate - out.truth) / out.cond_se
    return out


def _interval_coverage(b: pd.Series, se: pd.Series, truth: pd.Series) -> float:
    return float(((b - truth).abs() <= 1.959964 * se).mean()) if len(b) else np.nan


def se_calibration(
    details: Round,
    *,
    sizes: Sequence[int],
    calibrations: Sequence[str] = ("none", "variance", "isotonic"),
    dropout_model: nn.Module | None = None,
    mc_passes: Sequence[int] = (),
    threshold: float = 3.0,
    estimators: dict | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """How the choice of uncertainty (ensemble size, MC-dropout passes) and of calibration moves coverage.

    For each ensemble size (the first ``k`` members) and calibration, and for ``dropout_model``
    with each number of ``mc_passes``: per-variant coverage of the oracle by the 95 % intervals
    of ``bx`` and ``by`` on the **selected instruments** and on all candidates
    (``cov_bx_selected``, ``cov_by_selected``, ``cov_bx_all``, ``cov_by_all``), then local and
    global MR (:func:`estimate`, IVW and robust MR-Egger by default).
    """
    estimators = estimators or {k: ESTIMATORS[k] for k in ("IVW", "robust MR-Egger")}
    settings = [("ensemble", k, c, {"members": range(k), "calibration": c}) for k in sizes for c in calibrations]
    if dropout_model is not None:
        settings += [
            ("MC-dropout", p, "none", {"models": [dropout_model], "mc_dropout": p, "calibration": "none", "seed": seed})
            for p in mc_passes
        ]
    frames = []
    for method, n, cal, kw in settings:
        table = variants(details, **kw)
        inst = Selection(threshold=threshold).apply(table).instruments
        f = estimate(inst, local_truth(inst), estimators=estimators, seed=seed)
        f["cov_bx_selected"] = _interval_coverage(inst.bx, inst.bxse, inst.dx)
        f["cov_by_selected"] = _interval_coverage(inst.by, inst.byse, inst.dy)
        f["cov_bx_all"] = _interval_coverage(table.bx, table.bxse, table.dx)
        f["cov_by_all"] = _interval_coverage(table.by, table.byse, table.dy)
        f["n_instruments"] = len(inst)
        frames.append(_tagged(f, uncertainty=method, n=n, calibration=cal))
    return pd.concat(frames, ignore_index=True)


def train_dropout_model(details: Round, *, dropout: float = 0.2, seed: int = 0, device: Device = None) -> nn.Module:
    """One :class:`~deepmr_utils.models.PooledRegressor` with dropout, trained on the round's training
    sequences with the round's sizes (for MC-dropout in :func:`se_calibration`)."""
    s = details.sizes
    tr = details.train
    cfg = train.TrainConfig(max_epochs=s.max_epochs, patience=s.patience, batch_size=s.batch_size)
    models, _ = train.train_ensemble(
        lambda: PooledRegressor(2, n_filters=s.n_filters, hidden=s.hidden, dropout=dropout),
        tr["X"],
        tr["y"],
        1,
        config=cfg,
        seed=seed,
        device=device,
        progress=False,
    )
    return models[0]


def _accuracy_job(job: tuple) -> pd.DataFrame:
    n_train, r, seed, sizes, threads = job
    if threads:
        torch.set_num_threads(threads)
    return _accuracy_rows(run_round("none", seed=seed, sizes=sizes), n_train, r)


def _accuracy_rows(d: Round, n_train: int, r: int) -> pd.DataFrame:
    rows = d.rows
    rows = rows[rows.estimator.isin(list(ESTIMATORS))].copy()
    # the random-effects CI is for the population mean mu, so that is the truth it is scored against
    rows["truth"] = rows["truth_population"]
    for col in ("estimate", "se", "ci_low", "ci_high", "truth", "tau", "local_coverage"):
        if col not in rows:  # a model with no usable loci: the round is kept, without estimates
            rows[col] = np.nan
    for col in ("local_rmse", "sd_local_estimate", "sd_local_truth"):
        rows[col] = np.nan
    for i, name in rows.estimator.items():
        scored, ok = against_truth(d.local[name])
        if len(ok) < 2:
            continue
        rows.loc[i, "local_rmse"] = scored["local_rmse"]
        rows.loc[i, "sd_local_estimate"] = float(ok.estimate.std())
        rows.loc[i, "sd_local_truth"] = float(ok.theta.std())
    rows["covered"] = (rows.ci_low <= rows.truth) & (rows.truth <= rows.ci_high)
    return _tagged(rows.reset_index(drop=True), n_train=n_train, round=r)


def accuracy_sweep(
    n_trains: Sequence[int],
    *,
    rounds: int,
    sizes: StudySizes,
    seed: int,
    n_jobs: int = 1,
    done: Sequence[Round] = (),
) -> pd.DataFrame:
    """Model accuracy limits the estimate: :func:`~deepmr_utils.book.simulation_study.run_round` (no
    confounding) at each training-set size, ``rounds`` rounds each. Round ``r`` is seeded ``seed + 1000 r``
    at every size, so the effect ratio and the test sequences are shared and only the training set
    grows. Rows per size, round and estimator: the round's numbers (held-out r of each output,
    estimate, SE, CI, tau; ``truth`` is the round's population mean mu, the random-effects CI's
    target) plus ``covered``, ``local_rmse`` and the spread of the local
    estimates against that of the local truths (an underfit model gives every sequence nearly
    the same local effect). ``n_jobs`` processes with one thread each.

    ``done``: rounds already run (a chapter's own, ``run_round("none", seed=seed, ...)``): one whose
    :attr:`~deepmr_utils.book.simulation_study.Round.call` is a job's (same seed, sizes and the rest) is
    taken as that job's round instead of training the same ensemble again."""
    todo, given = [], {}
    for n in n_trains:
        for r in range(rounds):
            job_sizes, job_seed = replace(sizes, n_train=n), seed + 1000 * r
            want = round_call("none", seed=job_seed, sizes=job_sizes)
            match = next((d for d in done if d.call == want), None)
            if match is not None:
                given[(n, r)] = match
            else:
                todo.append((n, r, job_seed, job_sizes))
    # one thread per process when several run side by side; a single job runs here, with this process's threads
    workers = max(1, min(n_jobs, len(todo)))
    jobs = [(*job, 1 if workers > 1 else 0) for job in todo]
    ran = dict(zip([job[:2] for job in todo], map_jobs(_accuracy_job, jobs, workers)))
    frames = [ran[(n, r)] if (n, r) in ran else _accuracy_rows(given[(n, r)], n, r)
              for n in n_trains for r in range(rounds)]  # fmt: skip
    return pd.concat(frames, ignore_index=True)


def direction(details: Round, *, threshold: float = 3.0, estimators: dict | None = None, seed: int = 0) -> pd.DataFrame:
    """Bidirectional MR on a world where the truth runs one way (exposure -> outcome).

    Forward (exposure -> outcome, truth: :func:`local_truth`) and reverse (outcome -> exposure,
    truth 0: the exposure never reads the outcome TF), each without and with the Steiger filter
    of :class:`~deepmr_utils.instruments.Selection` on the outputs' SDs across the test
    sequences (a common scale). Rows of :func:`estimate` with ``direction, steiger``.
    """
    estimators = estimators or {k: ESTIMATORS[k] for k in ("IVW", "robust MR-Egger", "weighted median")}
    full = variants(details)
    sd = predict(details.models, details.test["X"]).mean(dim=1).std(dim=0).numpy()
    swap = {"bx": "by", "by": "bx", "bxse": "byse", "byse": "bxse"}
    frames = []
    for label, table, scales in (
        ("forward", full, (sd[0], sd[1])),
        ("reverse", full.rename(columns=swap), (sd[1], sd[0])),
    ):
        for steiger in (False, True):
            inst = Selection(threshold=threshold, steiger=scales if steiger else None).apply(table).instruments
            truth = local_truth(inst)
            if label == "reverse":
                truth = truth.assign(theta=0.0)
            f = estimate(inst, truth, estimators=estimators, seed=seed)
            f["n_instruments"] = len(inst)
            frames.append(_tagged(f, direction=label, steiger=steiger))
    return pd.concat(frames, ignore_index=True)


def paralog_world(nu: float = 30.0, **kw) -> CooperativityModel:
    """The InSIDE-breaking world: a GATA paralog (GATA2, read on the reverse strand) binds the
    exposure's own GATA sites and raises the outcome directly by ``nu`` times its occupancy, so
    every exposure instrument is pleiotropic in proportion to its strength."""
    return CooperativityModel(
        sequence_dependent=True,
        confounder_motif="GATA2",
        confounder_strand="-",
        p_confounder_motif=0.0,
        eta=0.0,
        nu=nu,
        **kw,
    )


# Sanderson & Windmeijer's rule of thumb: below this conditional F a locus's direct effects suffer weak-
# instrument bias (the exposure and the paralog's output come from the same sites, so they are near collinear)
WEAK_CONDITIONAL_F = 10.0


def _multivariable_per_locus(inst: pd.DataFrame, min_instruments: int = 4) -> pd.DataFrame:
    """The exposure's direct effect per locus from multivariable IVW on ``bx`` and ``bz``
    (``locus, estimate, se, ci_low, ci_high, status``, as :func:`deepmr_utils.meta.pool` reads), with
    each exposure's conditional F statistic at that locus (``cond_f_exposure``, ``cond_f_confounder``;
    :func:`deepmr_utils.mr.conditional_f`, from ``bxse`` and ``bzse``)."""
    rows = []
    for locus, g in inst.groupby("locus", sort=False):
        row = {"locus": locus, "estimate": np.nan, "se": np.nan, "ci_low": np.nan, "ci_high": np.nan,
               "cond_f_exposure": np.nan, "cond_f_confounder": np.nan}  # fmt: skip
        if len(g) < min_instruments:
            row["status"] = f"too few instruments ({len(g)} < {min_instruments})"
        else:
            try:
                res = mr.multivariable(
                    g[["bx", "bz"]].to_numpy(), g.by.to_numpy(), g.byse.to_numpy(), bxse=g[["bxse", "bzse"]].to_numpy()
                )
            except ValueError as err:  # collinear exposures at this locus: no estimate, said why
                row["status"] = str(err)
            else:
                row.update(estimate=res.estimate[0], se=res.se[0], ci_low=res.ci_low[0], ci_high=res.ci_high[0])
                row.update(cond_f_exposure=res.conditional_f[0], cond_f_confounder=res.conditional_f[1])
                row["status"] = "ok"
        rows.append(row)
    return pd.DataFrame(rows)


def _univariable_vs_multivariable(inst: pd.DataFrame) -> pd.DataFrame:
    """IVW, multivariable IVW on every locus (the primary analysis), and multivariable IVW on the loci
    whose conditional F is at least :data:`WEAK_CONDITIONAL_F` for both exposures (a sensitivity
    analysis beside it; ``n_weak``: the loci left out)."""
    truth = local_truth(inst)
    mv = _multivariable_per_locus(inst)
    weak = (mv.status == "ok") & ~(
        (mv.cond_f_exposure >= WEAK_CONDITIONAL_F) & (mv.cond_f_confounder >= WEAK_CONDITIONAL_F)
    )
    strong = mv.assign(status=np.where(weak, f"weak: conditional F < {WEAK_CONDITIONAL_F:g}", mv.status))
    rows = [
        _pooled("IVW", mr.per_locus(inst, "ivw"), truth),
        _pooled("multivariable IVW", mv, truth),
        {**_pooled("multivariable IVW, strong loci", strong, truth), "n_weak": int(weak.sum())},
    ]
    ok = mv[mv.status == "ok"]
    # the distribution of the exposure's conditional F over loci (quartiles), not only its median
    for q, name in ((0.25, "q25"), (0.5, "median"), (0.75, "q75")):
        rows[1][f"{name}_cond_f_exposure"] = float(ok.cond_f_exposure.quantile(q)) if len(ok) else np.nan
    rows[1]["median_cond_f_confounder"] = float(ok.cond_f_confounder.median()) if len(ok) else np.nan
    rows[1]["n_weak"] = int(weak.sum())
    return pd.DataFrame(rows)


def multivariable_adjustment(
    nus: Sequence[float],
    *,
    sizes: StudySizes,
    se: float,
    seed: int,
    threshold: float = 3.0,
    device: Device = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A confounder's output as a second exposure: univariable against multivariable IVW.

    For each paralog strength ``nu`` (:func:`paralog_world`): an ensemble of three-output
    :class:`~deepmr_utils.models.PooledRegressor` (exposure, outcome, and the paralog's own ChIP
    signal) is trained on ``sizes.n_train`` sequences; its ISM gives ``bx``, ``by`` and ``bz`` for
    the test sequences that carry the exposure motif; per locus, IVW of ``by`` on ``bx`` is set
    against multivariable IVW on ``(bx, bz)`` (:func:`deepmr_utils.mr.multivariable`), both pooled
    by REML against the true causal effect (:func:`local_truth`). The same analysis on the oracle
    with noise ``se`` (``source="oracle"``) separates the method from the model. Returns
    ``(estimates, fidelity)``: the second frame holds held-out r of each output per ``nu``.
    """
    frames, fid = [], []
    names = ["exposure", "outcome", "confounder"]
    for i, nu in enumerate(nus):
        gen = paralog_world(nu)
        rng = np.random.default_rng(seed + i)
        s = rng.integers(0, 2**31 - 1, 4)
        tr, test = gen.sample(sizes.n_train, seed=int(s[0])), gen.sample(sizes.n_test, seed=int(s[1]))
        y3 = np.column_stack([tr["y"], tr["y_confounder"]])
        cfg = train.TrainConfig(max_epochs=sizes.max_epochs, patience=sizes.patience, batch_size=sizes.batch_size)
        models, _ = train.train_ensemble(
            lambda: PooledRegressor(3, n_filters=sizes.n_filters, hidden=sizes.hidden, output_names=names),
            tr["X"],
            y3,
            sizes.n_members,
            config=cfg,
            seed=int(s[2]),
            device=device,
            progress=False,
        )
        acc = train.accuracy(models, test["X"], np.column_stack([test["y"], test["y_confounder"]]), names=names)
        fid.append(acc.assign(nu=nu))
        mutated = np.flatnonzero(np.isin(test["config"], WITH_EXPOSURE))
        Xm = test["X"][mutated]
        common = {"select": Selection("all"), "progress": False, "options": ISMOptions(device=device)}
        t = pipeline.variant_effects(models, Xm, exposure=0, outcome=1, **common)
        tz = pipeline.variant_effects(models, Xm, exposure=2, outcome=1, **common)
        t["bz"], t["bzse"] = tz.bx.to_numpy(), tz.bxse.to_numpy()
        t = t[(t.bxse > 0) & (t.byse > 0)].reset_index(drop=True)
        t = pd.concat([t, gen.variant_truth(Xm, t)], axis=1)
        oracle = oracle_table(gen, Xm, se=se, rng=np.random.default_rng(int(s[3])))
        for source, table in (("model", t), ("oracle", oracle)):
            inst = Selection(threshold=threshold).apply(table).instruments
            f = _univariable_vs_multivariable(inst)
            f["n_instruments"] = len(inst)
            frames.append(_tagged(f, nu=nu, source=source))
    return pd.concat(frames, ignore_index=True), pd.concat(fid, ignore_index=True)
