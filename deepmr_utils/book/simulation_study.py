"""The simulation study: DeepMR against a known truth, one round at a time.

A round draws an effect ratio, simulates training / calibration / test data from
:class:`deepmr_utils.simulate.CooperativityModel`, trains an ensemble of
translation-invariant CNNs, fits the SE calibration on the held-out calibration
sequences (labels only, never the oracle), checks the model against the oracle
(:func:`fidelity`), mutates the test sequences that carry the exposure motif, selects
instruments, and estimates local effects with several MR estimators and the global
effect with a REML meta-analysis. The truth is computed by the oracle on exactly the
same sequences and instruments
(:meth:`~deepmr_utils.simulate.CooperativityModel.true_local_effects`).
:func:`run_study` runs many rounds (in parallel processes, resumable round by round)
and :func:`summarize` reports bias, RMSE and coverage per scenario and estimator.

Fixes relative to the original study (``deepmr_method.md`` §A, §C, §G): truth
on the estimate's own instruments with confounder terms included, eval-mode
BatchNorm at prediction time, calibration fitted on sequences that are never
mutated and applied in the semantics it was fitted in, a model that reaches the
oracle (checked every round), and the coverage of the global 95 % CI reported next
to the paper's ±2τ band.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from .. import mr, pairs, pipeline, simulate, train
from .._io import open_pinned, write_atomic
from .._parallel import map_jobs
from .._types import Models
from .._validate import renamed_keywords
from ..instruments import Selection
from ..ism import ISMOptions
from ..models import PooledRegressor
from ..predict import predict
from ..progress import show_progress
from ..simulate import CooperativityModel, slope_through_origin
from ..uncertainty import IsotonicCalibration, VarianceScaling
from .scoring import Z, against_truth, pool_loci

__all__ = [
    "StudySizes",
    "FidelityBar",
    "ESTIMATORS",
    "CONTROLLED",
    "SCENARIOS",
    "CALIBRATIONS",
    "ANALYSES",
    "STEPS",
    "CLASSES",
    "round_call",
    "round_seed",
    "fidelity",
    "Round",
    "run_round",
    "effect_coverage",
    "fit_calibration",
    "run_study",
    "seed_study_folder",
    "measured_effects_gate",
    "coverage_interval",
    "summarize",
    "scoring_change",
]

SCENARIOS = ("none", "sequence-independent", "sequence-dependent", "both")
CALIBRATIONS = ("variance", "variance-denoised", "isotonic", "none")

# display name -> (per_locus method, extra keyword arguments); names and keys from mr.ESTIMATORS. The original
# study's four (robust MR-Egger, IVW, mode, MR-RAPS) plus MR-Egger and the weighted median
ESTIMATORS = {
    mr.ESTIMATORS[k].name: (k, {}) for k in ("ivw", "egger", "egger_robust", "weighted_median", "mbe", "raps")
}
NAIVE = "naive (mean Wald ratio)"


@dataclass(frozen=True)
class StudySizes:
    """Data, model and training sizes of one round (defaults: the ``default`` scale's)."""

    n_train: int = 3_000
    n_calibration: int = 500
    n_test: int = 300
    n_members: int = 4
    n_filters: int = 16
    hidden: int = 32
    max_epochs: int = 100
    patience: int = 10
    batch_size: int = 128
    augment: float = 0.25
    threshold: float = 3.0
    n_boot: int = 200
    n_population: int = 20_000


@dataclass(frozen=True)
class FidelityBar:
    """What a round's model must reach before its estimates are pooled with the others'.

    ``min_r_ratio``: held-out Pearson r of each output at least this fraction of the
    oracle's r on the same noisy labels (the r of the best prediction from sequence alone,
    :meth:`~deepmr_utils.simulate.CooperativityModel.sequence_oracle`, is the ceiling that
    the noise and the sequence-independent confounder allow).
    ``slope_range``: the slope through the origin of the model's effects on the oracle's,
    over the selected instruments, for the exposure in both sequence types and for the
    outcome in sequences with both motifs (where the outcome effect is large enough to
    measure; in exposure-only sequences it is near zero and reported only).
    """

    min_r_ratio: float = 0.9
    slope_range: tuple[float, float] = (0.8, 1.25)


# the sequence classes of the fidelity checks and the subgroup analysis: name -> the generator's code
CLASSES = {"exposure_only": simulate.SequenceType.EXPOSURE_ONLY, "pair": simulate.SequenceType.PAIR}


def round_seed(seed: int, scenario: str, r: int) -> int:
    """The seed of round ``r`` (0-based) of ``scenario`` in a study seeded with ``seed``."""
    return seed + 1000 * (r + 1) + SCENARIOS.index(scenario)


def fidelity(
    gen: CooperativityModel,
    models: Models,
    test: dict,
    mutated: np.ndarray,
    table: pd.DataFrame,
    bar: FidelityBar = FidelityBar(),
) -> dict:
    """The model against the oracle on held-out sequences; returns a dict of numbers and ``fidelity_ok``.

    ``test``: a :meth:`~deepmr_utils.simulate.CooperativityModel.sample` dict (held out from
    training); ``mutated``: indices of the test sequences that were mutated; ``table``: their
    selected instruments (``locus`` indexes ``mutated``). Reports held-out r of the model and
    of the oracle per output, and per sequence type the slopes of ``bx`` on the oracle's
    exposure change and of ``by`` on its (total) outcome change.
    """
    pred = predict(models, test["X"]).mean(dim=1).numpy()
    oracle = gen.sequence_oracle(test["X"])  # the ceiling: b_conf is not in the sequence
    y = np.asarray(test["y"])
    out = {}
    for j, name in enumerate(("exposure", "outcome")):
        out[f"r_{name}"] = float(np.corrcoef(pred[:, j], y[:, j])[0, 1])
        out[f"r_oracle_{name}"] = float(np.corrcoef(oracle[:, j], y[:, j])[0, 1])
    ok = all(out[f"r_{n}"] >= bar.min_r_ratio * out[f"r_oracle_{n}"] for n in ("exposure", "outcome"))
    truth = gen.variant_truth(test["X"][mutated], table, test["b_conf"][mutated]) if len(table) else None
    kind = test["config"][mutated][table.locus.to_numpy()] if len(table) else np.array([])
    lo, hi = bar.slope_range
    for tname, code in CLASSES.items():
        m = kind == code
        for col, ref in (("bx", "dx"), ("by", "dy")):
            key = f"slope_{col}_{tname}"
            if m.sum() < 3:
                out[key] = np.nan
                continue
            a, b = table[col].to_numpy()[m], truth[ref].to_numpy()[m]
            out[key] = float((a * b).sum() / (b * b).sum())
            gated = col == "bx" or tname == "pair"
            if gated and not lo <= out[key] <= hi:
                ok = False
    for tname, code in CLASSES.items():
        out[f"n_instruments_{tname}"] = int((kind == code).sum())
    out["fidelity_ok"] = bool(ok)
    return out


def _naive_baseline(table: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """The original study's baseline: mean Wald ratio per locus, global mean ± 2 SD."""
    ratios = (table.by / table.bx).groupby(table.locus).agg(["mean", "size"])
    local = ratios[ratios["size"] > 2]["mean"]
    merged = truth.set_index("locus").reindex(local.index)
    est, sd = float(local.mean()), float(local.std(ddof=1)) if len(local) > 1 else np.nan
    return {
        "estimator": NAIVE,
        "estimate": est,
        "tau": sd,
        "truth_sample": float(merged.theta_seq.mean()),
        "truth_instruments": float(merged.theta.mean()),
        "truth_own": float(merged.theta_own.mean()),
        "n_loci": int(len(local)),
        "local_corr": float(np.corrcoef(local, merged.theta)[0, 1]) if len(local) > 2 else np.nan,
    }


_CONTROL = ("estimate", "se", "ci_low", "ci_high", "tau")
# estimators whose exact-effects controls mean something. The control's effects are exact, so robust MR-Egger's
# S-scale (estimated from the residuals, 50 % breakdown) collapses onto the curvature of the outcome's
# response and the fit keeps the best half of the instruments, and the mode's kernel density grid stretches
# to the one Wald ratio whose exposure change is nearly zero (a false-positive instrument): neither is run
CONTROLLED = ("IVW", "MR-Egger", "weighted median")
# a round's control whose SE is this many times the estimate's is degenerate (in the committed study the
# ratio is 0.55-3 in every round but one, where it is 3e4)
_DEGENERATE_SE_RATIO = 10.0
# version of a round's columns, pinned in a study folder: 2 added the first exact-effects control; 3 the
# population estimand, the conditional CI, the crosstalk control, subgroups per sequence class, the user's gate
_ROUND_COLUMNS = 3


def _estimate(table: pd.DataFrame, truth: pd.DataFrame, estimators: dict, sizes: StudySizes, seed: int):
    """Local estimates per estimator and their REML pool, overall and per sequence class.

    ``truth``: one row per locus with ``theta`` (the local truth on the locus's own instruments,
    confounder averaged), ``theta_own`` (the same with the locus's own confounder coin flip),
    ``theta_seq`` (over all substitutions: the model-free local estimand) and ``config``.
    Returns (rows, local frames by name)."""
    rows, local_all = [], {}
    for name, (method, kw) in estimators.items():
        _, local = pairs.estimate_pair(
            table, select=None, method=method, truth=lambda _: truth, n_boot=kw.get("n_boot", sizes.n_boot),
            seed=kw.get("seed", seed), method_options={k: v for k, v in kw.items() if k not in ("n_boot", "seed")},
        )  # fmt: skip
        local_all[name] = local
        scored, ok = against_truth(local)
        scored.pop("local_rmse", None)  # a round's columns stay version 3's, in its order
        row = {"estimator": name}
        for key, value in scored.items():
            row[key] = value
            if key == "local_coverage":  # the same against each locus's own confounder draw
                row["local_coverage_own"] = float(((ok.ci_low <= ok.theta_own) & (ok.theta_own <= ok.ci_high)).mean())
        if len(ok) >= 2:
            # the coin flip no sequence shows: spread of the loci's own truths around what a model can learn
            row["irreducible_sd"] = float((ok.theta_own - ok.theta).std(ddof=0))
            for cls, code in CLASSES.items():
                sub = ok[ok.config == code]
                row[f"{cls}_n_loci"] = int(len(sub))
                if len(sub) >= 2:
                    p = pool_loci(sub)
                    row.update({f"{cls}_{k}": p[k] for k in ("estimate", "se", "truth_sample", "truth_instruments")})
        rows.append(row)
    if len(table):
        rows.append(_naive_baseline(table, truth))
    return rows, local_all


def measured_effects_gate(
    gen: CooperativityModel,
    models: Models,
    test: dict,
    mutated: np.ndarray,
    *,
    seed: int,
    bar: FidelityBar = FidelityBar(),
) -> dict:
    """A gate a user can apply: the model's variant effects against *measured* ones, no oracle.

    One random substitution inside the exposure motif of each mutated test sequence is
    "measured" like an allele-specific experiment: fresh Poisson counts of the mutant,
    with the reference's confounder level (same locus, same cells), against the reference's
    held-out label. Per output, the slope through the origin of the measured change on the
    model's predicted change (1 for a model whose effects are right on average; label noise
    does not attenuate it, since the noise is in the response) and its SE; ``user_gate_ok``
    when both slopes lie in ``bar.slope_range``. Returns a dict of those numbers.
    """
    rng = np.random.default_rng(seed)
    idx = mutated[test["sites"][mutated, 0] >= 0]
    w = gen.pwm("exposure").shape[0]
    pos = test["sites"][idx, 0] + rng.integers(0, w, idx.size)
    X = test["X"][idx]
    ref = X[torch.arange(idx.size), :, torch.as_tensor(pos)].argmax(dim=1).numpy()
    alt = (ref + rng.integers(1, 4, idx.size)) % 4
    Xmut = X.clone()
    Xmut[torch.arange(idx.size), :, torch.as_tensor(pos)] = 0.0
    Xmut[torch.arange(idx.size), torch.as_tensor(alt), torch.as_tensor(pos)] = 1.0
    counts = rng.poisson(gen.expected_counts(Xmut, test["b_conf"][idx])).astype(np.float64)
    measured = simulate.anscombe(counts) - np.asarray(test["y"])[idx]
    predicted = (predict(models, Xmut).mean(dim=1) - predict(models, X).mean(dim=1)).numpy()
    out, ok = {"user_gate_pairs": int(idx.size)}, idx.size >= 3
    lo, hi = bar.slope_range
    for j, name in enumerate(("exposure", "outcome")):
        a, b = predicted[:, j], measured[:, j]
        slope = float((a * b).sum() / (a * a).sum()) if idx.size else np.nan
        resid = b - slope * a
        out[f"user_slope_{name}"] = slope
        out[f"user_slope_se_{name}"] = float(np.sqrt(resid.var(ddof=1) / (a * a).sum())) if idx.size > 2 else np.nan
        ok = ok and lo <= slope <= hi
    out["user_gate_ok"] = bool(ok)
    return out


def fit_calibration(calibration: str, models: Models, cal: dict) -> VarianceScaling | IsotonicCalibration | None:
    """The SE calibration named ``calibration`` (see :func:`run_round`), fitted on the labels of the
    held-out calibration sequences ``cal`` (a ``sample`` dict); ``None`` for ``"none"``."""
    if calibration == "none":
        return None
    members = predict(models, cal["X"]).numpy()  # (n, M, 2)
    calibrator = {
        "variance": VarianceScaling(noise_var=0.0),
        "variance-denoised": VarianceScaling(noise_var="estimate"),
        "isotonic": IsotonicCalibration(),
    }[calibration]
    return calibrator.fit(members, cal["y"], ids=[f"cal{i}" for i in range(len(cal["y"]))])


def _truth_frame(
    gen: CooperativityModel, X, table: pd.DataFrame, b_conf, config: np.ndarray, exact: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Per locus of ``table``: ``theta`` (the local truth on its own instruments, confounder averaged),
    ``theta_own`` (with the locus's own confounder coin flip), ``theta_seq`` (over all substitutions)
    and ``config`` (the sequence class). ``exact``: the table's confounder-averaged
    ``gen.variant_truth``, when the caller has it already."""
    if not len(table):
        return pd.DataFrame({"locus": [], "theta": [], "theta_own": [], "theta_seq": [], "config": []})
    if exact is None:
        exact = gen.variant_truth(X, table, "average")
    averaged = slope_through_origin(table["locus"].to_numpy(), exact.dx.to_numpy(), exact.dy_causal.to_numpy())
    truth = averaged.merge(gen.true_local_effects(X, table, b_conf).rename(columns={"theta": "theta_own"}), on="locus")
    loci = truth.locus.to_numpy().astype(int)
    truth["theta_seq"] = gen.sequence_local_effects(X[loci])
    truth["config"] = config[loci]
    return truth


def _oracle_instruments(gen: CooperativityModel, X, table: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """The instruments a perfect model with the round's typical SEs would select, with exact effects.

    Every substitution of the mutated sequences, its exact (confounder-averaged) effects, and as
    SEs the median ``bxse`` and ``byse`` of the model's instruments; kept where ``|dx| / bxse`` is at
    least ``threshold``, like the model's own selection."""
    if not len(table):
        return table.iloc[:0]
    n, L = X.shape[0], X.shape[2]
    ref = X.argmax(dim=1).numpy() if isinstance(X, torch.Tensor) else np.asarray(X).argmax(axis=1)
    locus = np.repeat(np.arange(n), 3 * L)
    position = np.tile(np.repeat(np.arange(L), 3), n)
    alt = (ref[locus, position] + np.tile(np.arange(1, 4), n * L)) % 4
    every = pd.DataFrame({"locus": locus, "position": position, "alt": np.array(list("ACGT"))[alt]})
    t = gen.variant_truth(X, every, "average")
    sx, sy = float(table.bxse.median()), float(table.byse.median())
    keep = (t.dx.abs() / sx >= threshold).to_numpy()
    return every[keep].assign(bx=t.dx[keep], by=t.dy[keep], bxse=sx, byse=sy).reset_index(drop=True)


@dataclass(frozen=True, repr=False)
class Round:
    """One round of the study, as :func:`run_round` returns it.

    ``rows``: one row per estimator (the study's table). What the round was made of: ``generator`` (the
    world), ``train``, ``calibration_data``, ``test`` (sampled data dicts), ``models`` and ``histories``
    (the trained ensemble), ``calibrator``, ``mutated`` (the test sequences mutated), ``table`` (their
    instruments), ``truth`` (per locus), ``local`` (per-locus estimates by estimator), ``fidelity`` and
    ``user_gate`` (the two gates' numbers), ``population`` (the estimand's sample) and ``sizes``; ``call``: the
    arguments of :func:`run_round` that decide its numbers (scenario, seed, sizes, calibration, estimators,
    bar), so that a round can stand in for another call with the same ones."""

    rows: pd.DataFrame
    generator: CooperativityModel
    train: dict
    calibration_data: dict
    test: dict
    models: list
    histories: list
    calibrator: object
    mutated: np.ndarray
    table: pd.DataFrame
    truth: pd.DataFrame
    local: dict
    fidelity: dict
    user_gate: dict
    population: pd.DataFrame
    sizes: StudySizes
    call: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        return (
            f"Round({self.generator.scenario!r}: {len(self.models)} members, {len(self.mutated)} mutated sequences, "
            f"{len(self.table)} instruments, {len(self.rows)} estimator rows)"
        )


@renamed_keywords(details="run_round returns a Round: its table of estimates is round.rows, the rest its fields")
def run_round(
    scenario: str,
    *,
    seed: int,
    sizes: StudySizes = StudySizes(),
    calibration: str = "variance",
    estimators: dict = ESTIMATORS,
    bar: FidelityBar = FidelityBar(),
    device: str | torch.device | None = None,
) -> Round:
    """One round of the study for ``scenario``: a :class:`Round` whose ``rows`` hold one row per estimator.

    ``calibration`` (fixed before the round; nothing here looks at the oracle to choose):
    ``"variance"`` (the default: one variance multiplier per output so that the members
    cover the held-out *labels*, i.e. every residual counted as model error, which is
    conservative for levels and, for effects, the option that comes closest to nominal
    in the chapter's diagnostics), ``"variance-denoised"`` (the same with the label-noise
    variance estimated and left out, so only the model's share is scaled), ``"isotonic"``
    (Kuleshov et al., as in the original study) or ``"none"``. Every row carries the round's fidelity numbers
    (:func:`fidelity`), so a round whose model missed ``bar`` is visible as such. The
    :class:`Round` also holds the generator, data, models, training histories, calibration,
    variant table and local estimates.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
    if calibration not in CALIBRATIONS:
        raise ValueError(f"calibration must be one of {CALIBRATIONS}, got {calibration!r}")
    rng = np.random.default_rng(seed)
    ratio = simulate.draw_effect_ratio(rng)
    alpha = float(rng.normal(100.0, 3.0))
    gen = simulate.CooperativityModel(alpha=alpha, beta=alpha * ratio).with_scenario(scenario)
    seeds = rng.integers(0, 2**31 - 1, 5)
    seeds_extra = rng.integers(0, 2**31 - 1, 2)  # drawn after the others, which keep their values
    tr = gen.sample(sizes.n_train, seed=int(seeds[0]))
    if sizes.augment:
        aug = gen.augment_variants(tr, sizes.augment, seed=int(seeds[1]))
        X_train = torch.cat([tr["X"], aug["X"]])
        y_train = np.concatenate([tr["y"], aug["y"]])
    else:
        X_train, y_train = tr["X"], tr["y"]
    cal = gen.sample(sizes.n_calibration, seed=int(seeds[2]))
    test = gen.sample(sizes.n_test, seed=int(seeds[3]))

    cfg = train.TrainConfig(max_epochs=sizes.max_epochs, patience=sizes.patience, batch_size=sizes.batch_size)
    # members still improving at max_epochs are counted in the round's row (still_improving), not
    # warned about: a warning raised in a worker process reaches a notebook as an stderr box that
    # no filter in the notebook can silence
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", train.ConvergenceWarning)
        models, hists = train.train_ensemble(
            lambda: PooledRegressor(
                2, n_filters=sizes.n_filters, hidden=sizes.hidden, output_names=["exposure", "outcome"]
            ),
            X_train,
            y_train,
            sizes.n_members,
            config=cfg,
            seed=int(seeds[4]),
            device=device,
            progress=False,
        )
    calibrator = fit_calibration(calibration, models, cal)

    mutate = np.flatnonzero(np.isin(test["config"], simulate.WITH_EXPOSURE))  # test sequences with the exposure motif
    Xm, b_conf = test["X"][mutate], test["b_conf"][mutate]
    table = pipeline.variant_effects(
        models,
        Xm,
        options=ISMOptions(device=device),
        exposure=0,
        outcome=1,
        calibration=calibrator,
        select=Selection(threshold=sizes.threshold),
        progress=False,
    )
    config_m = test["config"][mutate]
    exact = gen.variant_truth(Xm, table, "average") if len(table) else None  # the oracle's, computed once
    truth = _truth_frame(gen, Xm, table, b_conf, config_m, exact)
    fid = fidelity(gen, models, test, mutate, table, bar)
    user = measured_effects_gate(gen, models, test, mutate, seed=int(seeds_extra[0]), bar=bar)
    population = gen.population_effect(sizes.n_population, seed=int(seeds_extra[1]))

    rows, local_all = _estimate(table, truth, estimators, sizes, seed)
    if len(table):
        # two controls, the same estimators on exact effects of the same instruments with the model's SEs
        # as weights (confounder averaged: what a perfect sequence model would predict): "exact" with the
        # oracle's total outcome change, "causal" with only its change through the exposure (crosstalk
        # removed). estimate - exact is the model's error, exact - causal the crosstalk's.
        controlled = {k: v for k, v in estimators.items() if k in CONTROLLED}
        controls = {
            "exact": table.assign(bx=exact.dx, by=exact.dy),
            "causal": table.assign(bx=exact.dx, by=exact.dy_causal),
            "oracle_instruments": _oracle_instruments(gen, Xm, table, sizes.threshold),
        }
        for label, t in controls.items():
            t_truth = truth if label != "oracle_instruments" else _truth_frame(gen, Xm, t, b_conf, config_m)
            control, _ = _estimate(t, t_truth, controlled, sizes, seed) if len(t) else ([], None)
            by_name = {c["estimator"]: c for c in control}
            for row in rows:
                # the naive baseline has none: a Wald ratio over an oracle dx of 0 is unbounded
                ctrl = by_name.get(row["estimator"], {}) if row["estimator"] != NAIVE else {}
                row.update({f"{label}_{k}": ctrl.get(k, np.nan) for k in _CONTROL})
    out = pd.DataFrame(rows)
    out.insert(0, "scenario", scenario)
    out.insert(1, "seed", seed)
    out["ratio"] = ratio
    out["n_instruments"] = len(table)
    out["n_mutated"] = len(mutate)
    out["truth_population"] = float(population.theta.mean())
    out["truth_population_mcse"] = float(population.theta.std(ddof=1) / np.sqrt(len(population)))
    for cls, code in CLASSES.items():
        out[f"{cls}_truth_population"] = float(population.theta[population.config == code].mean())
    for key, value in {**fid, **user}.items():
        out[key] = value
    out["calibration"] = calibration
    if isinstance(calibrator, VarianceScaling):
        out["lam_exposure"], out["lam_outcome"] = calibrator.lams
        out["noise_exposure"], out["noise_outcome"] = calibrator.noise_vars
    out["epochs_max"] = max(len(h.val_loss) for h in hists)
    out["still_improving"] = sum(h.still_improving for h in hists)
    return Round(
        rows=out, generator=gen, train=tr, calibration_data=cal, test=test, models=models, histories=hists,
        calibrator=calibrator, mutated=mutate, table=table, truth=truth, local=local_all, fidelity=fid,
        user_gate=user, population=population, sizes=sizes,
        call=round_call(scenario, seed=seed, sizes=sizes, calibration=calibration, estimators=estimators, bar=bar),
    )  # fmt: skip


def round_call(
    scenario: str,
    *,
    seed: int,
    sizes: StudySizes = StudySizes(),
    calibration: str = "variance",
    estimators: dict = ESTIMATORS,
    bar: FidelityBar = FidelityBar(),
) -> dict:
    """The arguments of :func:`run_round` that decide its numbers (all but the device), as :attr:`Round.call`
    holds them: a round whose ``call`` equals ``round_call(...)`` is what ``run_round(...)`` would return."""
    return {"scenario": scenario, "seed": int(seed), "sizes": sizes, "calibration": calibration,
            "estimators": dict(estimators), "bar": bar}  # fmt: skip


def effect_coverage(details: Round, calibration: str, *, threshold: float = 3.0) -> dict[str, pd.DataFrame]:
    """How well a calibration's effect intervals cover the oracle's effects, in one round.

    ``details``: a :class:`Round`. Refits ``calibration``
    on that round's held-out calibration sequences, recomputes the mutated sequences'
    effects with it, and returns :func:`~deepmr_utils.uncertainty.coverage_curve` frames
    keyed ``"<subset> <output>"`` for subsets ``all`` (every variant with a positive SE)
    and ``selected`` (the instruments at ``threshold``), outputs ``exposure`` (``bx``
    against the oracle's exposure change) and ``outcome`` (``by`` against its total
    outcome change). Only the simulation can do this: it needs the oracle.
    """
    from ..uncertainty import coverage_curve

    gen, models, test, mutated = details.generator, details.models, details.test, details.mutated
    calibrator = fit_calibration(calibration, models, details.calibration_data)
    Xm, b_conf = test["X"][mutated], test["b_conf"][mutated]
    table = pipeline.variant_effects(
        models, Xm, exposure=0, outcome=1, calibration=calibrator, select=Selection("all"), progress=False
    )
    table = table[(table.bxse > 0) & (table.byse > 0)].reset_index(drop=True)
    subsets = {"all": table, "selected": Selection(threshold=threshold).apply(table).instruments}
    out = {}
    for subset, t in subsets.items():
        truth = gen.variant_truth(Xm, t, b_conf)
        out[f"{subset} exposure"] = coverage_curve(mu=t.bx.to_numpy(), sigma=t.bxse.to_numpy(), y=truth.dx.to_numpy())
        out[f"{subset} outcome"] = coverage_curve(mu=t.by.to_numpy(), sigma=t.byse.to_numpy(), y=truth.dy.to_numpy())
    return out


def _one_round(job: tuple) -> pd.DataFrame:
    scenario, seed, sizes, calibration, threads = job
    if threads:
        torch.set_num_threads(threads)
    return run_round(scenario, seed=seed, sizes=sizes, calibration=calibration).rows


def _open_folder(out, seed: int, sizes: StudySizes, calibration: str) -> Path | None:
    """The study folder ``out`` (``None`` stays ``None``), pinned to the settings that change a round's
    numbers and to the round columns; a folder of other settings is refused."""
    # the estimator set is pinned too: a study that gains an estimator (MR-RAPS) must not mix rounds with and
    # without it, which a summary would average over different sets of rounds
    estimators = {name: [method, kw] for name, (method, kw) in ESTIMATORS.items()}
    return open_pinned(
        out,
        "study.json",
        {
            "seed": seed,
            "sizes": asdict(sizes),
            "calibration": calibration,
            "round_columns": _ROUND_COLUMNS,
            "estimators": estimators,
        },
        {},
        refusal="holds rounds of a study with other settings (study.json); use a new folder or delete it",
        unreadable="it was probably cut short by a crash. Delete that file and rerun: the finished rounds are reused",
    )


def _round_path(folder: Path, scenario: str, r: int) -> Path:
    return folder / f"round_{scenario}_{int(r):03d}.csv"


def seed_study_folder(
    out: str | os.PathLike, rounds: pd.DataFrame, *, seed: int, sizes: StudySizes, calibration: str = "variance"
) -> int:
    """Write the finished rounds of ``rounds`` (a frame from :func:`run_study`, e.g. the committed rounds
    file) into the study folder ``out`` as if :func:`run_study` had computed them there, so a longer
    study resumes from them on a fresh clone. The folder is pinned to the given settings (a folder of
    other settings is refused); rounds already in it are kept. Returns how many rounds were written.
    Rounds computed with another set of estimators than :data:`ESTIMATORS` are refused, naming the difference."""
    held = set(rounds.estimator) - {NAIVE}
    if held != set(ESTIMATORS):
        raise ValueError(
            f"the rounds hold estimators {sorted(held)}, this code runs {sorted(ESTIMATORS)} "
            f"(missing: {sorted(set(ESTIMATORS) - held)}; extra: {sorted(held - set(ESTIMATORS))}): "
            "those rounds must be recomputed, not resumed"
        )
    folder = _open_folder(out, seed, sizes, calibration)
    written = 0
    for (scenario, r), frame in rounds.groupby(["scenario", "round"], sort=False):
        path = _round_path(folder, scenario, r)
        if not path.exists():
            write_atomic(path, frame.drop(columns="round").to_csv(index=False).encode())
            written += 1
    return written


def run_study(
    rounds: int | Mapping[str, int],
    *,
    seed: int,
    sizes: StudySizes = StudySizes(),
    scenarios: Sequence[str] = SCENARIOS,
    calibration: str = "variance",
    out: str | os.PathLike | None = None,
    n_jobs: int = 1,
    progress: bool | None = None,
    on_round: Callable[[pd.DataFrame], None] | None = None,
) -> pd.DataFrame:
    """``rounds`` rounds of each scenario (or a ``{scenario: rounds}`` mapping, e.g. more rounds
    where a bar must be pinned down); returns all rounds' rows (see :func:`run_round`).

    Round ``r`` of a scenario uses :func:`round_seed`, so a study is reproducible and a
    longer study extends a shorter one with the same ``seed``. ``out``: a folder where each
    finished round is written at once (``round_<scenario>_<r>.csv``) and read back on a
    rerun, so an interrupted study resumes; the folder's ``study.json`` pins the settings
    and a folder from other settings is refused. ``n_jobs > 1`` runs rounds in that many
    processes with one thread each (small CNNs use cores better that way than with
    intra-op threads); on a GPU keep ``n_jobs=1``. ``on_round`` is called with each
    finished round's frame (e.g. to log it).
    """
    if isinstance(rounds, Mapping):
        scenarios = [s for s in scenarios if s in rounds] + [s for s in rounds if s not in scenarios]
        counts = {s: rounds[s] for s in scenarios}
    else:
        counts = {s: rounds for s in scenarios}
    if any(not isinstance(n, (int, np.integer)) or n < 1 for n in counts.values()) or n_jobs < 1:
        raise ValueError(f"rounds and n_jobs must be integers >= 1, got {rounds} and {n_jobs}")
    bad = [s for s in scenarios if s not in SCENARIOS]
    if bad:
        raise ValueError(f"unknown scenarios {bad}; known: {SCENARIOS}")
    folder = _open_folder(out, seed, sizes, calibration)
    jobs, done = [], {}
    for scenario in scenarios:
        for r in range(counts[scenario]):
            path = _round_path(folder, scenario, r) if folder else None
            if path is not None and path.exists():
                done[(scenario, r)] = pd.read_csv(path)
            else:
                jobs.append((scenario, r, path))
    bar = tqdm(total=len(jobs), desc="rounds", disable=not show_progress(progress) or not jobs, leave=False)

    def finished(key, path, frame):
        if path is not None:
            write_atomic(path, frame.to_csv(index=False).encode())
        done[key] = frame
        bar.update()
        if on_round is not None:
            on_round(frame)

    args = [(s, round_seed(seed, s, r), sizes, calibration, 1 if n_jobs > 1 else 0) for s, r, _ in jobs]
    for (s, r, path), frame in zip(jobs, map_jobs(_one_round, args, n_jobs)):
        finished((s, r), path, frame)
    bar.close()
    order = [(s, r) for s in scenarios for r in range(counts[s])]
    frames = []
    for s, r in order:
        frame = done[(s, r)].copy()
        frame.insert(2, "round", r)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


ANALYSES = ("all rounds", "oracle gate", "user gate")
# the error of a global estimate against the population mean, split into steps that add up to it; each is
# a difference of two columns of a round (see summarize)
STEPS = {
    "model": ("estimate", "exact_estimate"),
    "crosstalk": ("exact_estimate", "causal_estimate"),
    "method": ("causal_estimate", "truth_weighted"),
    "pooling": ("truth_weighted", "truth_instruments"),
    "instruments": ("truth_instruments", "truth_sample"),
    "sampling": ("truth_sample", "truth_population"),
}


def coverage_interval(inside: pd.Series) -> tuple[float, float, float]:
    """Share of True (a coverage) and its exact (Clopper-Pearson) 95 % interval; NaNs for none."""
    from scipy.stats import binomtest

    inside = inside.dropna().astype(bool)
    if not len(inside):
        return np.nan, np.nan, np.nan
    ci = binomtest(int(inside.sum()), len(inside)).proportion_ci()
    return float(inside.mean()), float(ci.low), float(ci.high)


def _gate(rounds: pd.DataFrame, analysis: str) -> pd.Series:
    if analysis == "all rounds":
        return pd.Series(True, index=rounds.index)
    col = {"oracle gate": "fidelity_ok", "user gate": "user_gate_ok"}[analysis]
    return rounds[col].astype(bool) if col in rounds else pd.Series(True, index=rounds.index)


def summarize(rounds: pd.DataFrame, *, analyses: Sequence[str] = ANALYSES) -> pd.DataFrame:
    """The study per analysis, scenario and estimator, scored against the estimand each interval targets.

    ``analysis``: ``"all rounds"`` (the primary analysis), ``"oracle gate"`` (only rounds whose model met
    :class:`FidelityBar`, which needs the oracle) and ``"user gate"`` (only rounds that passed
    :func:`measured_effects_gate`, which a user can apply); ``rounds_excluded`` counts what a gate left out.

    The random-effects CI targets ``truth_population`` (mu, the mean local effect over the world's
    sequences): ``bias``, ``rel_bias`` (over the mean mu), ``rmse``, ``z_sd`` (the SD of
    ``(estimate - mu) / se``; 1 for honest SEs), ``coverage`` with its exact interval
    (``coverage_low``/``_high``) and both tails (``miss_below``: the CI lies below mu; ``miss_above``).
    The conditional CI (same weights, within-locus variance only) targets the analysed loci's own
    truths: ``cond_coverage_sample`` against their plain mean ``truth_sample`` (the issue's target) and
    ``cond_coverage_weighted`` and ``cond_z_sd`` against the weight-matched ``truth_weighted``.
    ``local_ci_coverage`` and ``local_z_sd``: the local CIs against each locus's truth.
    ``coverage_2tau``: the original study's band (estimate ± 2 tau) against mu.

    The error split: ``rel_<step>`` for each step of :data:`STEPS` (model, crosstalk, method, pooling,
    instruments, sampling; their sum is ``rel_bias``), only for :data:`CONTROLLED` estimators and rounds
    whose exact-effects control is not degenerate (SE over 10 times the estimate's:
    ``controls_degenerate``); ``rel_bias_oracle_instruments``: the estimator on the instruments a
    perfect model would select, with exact effects. Per sequence class (``pair``, ``exposure_only``):
    ``<class>_rel_bias`` and ``<class>_coverage`` of the subgroup pool against that class's mu.
    """
    bad = [a for a in analyses if a not in ANALYSES]
    if bad:
        raise ValueError(f"unknown analyses {bad}; known: {ANALYSES}")
    r = rounds.dropna(subset=["estimate", "truth_population"]).reset_index(drop=True)
    mu = r.truth_population
    r["err"] = r.estimate - mu
    r["z"] = r.err / r.se
    r["in_ci"] = ((r.ci_low <= mu) & (mu <= r.ci_high)).where(r.se.notna())
    r["below"], r["above"] = (r.ci_high < mu).where(r.se.notna()), (r.ci_low > mu).where(r.se.notna())
    r["in_2tau"] = (r.estimate - 2 * r.tau <= mu) & (mu <= r.estimate + 2 * r.tau)
    for col in ("cond_ci_low", "cond_ci_high", "truth_weighted", "cond_se", "exact_estimate", "exact_se"):
        if col not in r:
            r[col] = np.nan
    r["cond_in_sample"] = ((r.cond_ci_low <= r.truth_sample) & (r.truth_sample <= r.cond_ci_high)).where(
        r.cond_se.notna()
    )
    r["cond_in_weighted"] = ((r.cond_ci_low <= r.truth_weighted) & (r.truth_weighted <= r.cond_ci_high)).where(
        r.cond_se.notna()
    )
    r["cond_z"] = (r.estimate - r.truth_weighted) / r.cond_se
    controlled = r.estimator.isin(CONTROLLED) & r.exact_estimate.notna()
    r["control_degenerate"] = controlled & (r.exact_se / r.se > _DEGENERATE_SE_RATIO)
    split = controlled & ~r.control_degenerate
    for step, (hi, lo) in STEPS.items():
        r[f"step_{step}"] = (r[hi] - r[lo]).where(split) if hi in r and lo in r else np.nan
    for cls in CLASSES:
        est, se, truth = (f"{cls}_estimate", f"{cls}_se", f"{cls}_truth_population")
        if est in r:
            r[f"{cls}_err"] = r[est] - r[truth]
            r[f"{cls}_in"] = ((r[est] - Z * r[se] <= r[truth]) & (r[truth] <= r[est] + Z * r[se])).where(r[se].notna())

    def agg(g, excluded):
        n, mbar = len(g), g.truth_population.mean()
        cov, lo, hi = coverage_interval(g.in_ci)
        c_s, c_s_lo, c_s_hi = coverage_interval(g.cond_in_sample)
        out = {
            "rounds": n,
            "rounds_excluded": excluded,
            "truth_population": mbar,
            "bias": g.err.mean(),
            "rel_bias": g.err.mean() / mbar,
            "rmse": float(np.sqrt((g.err**2).mean())),
            "z_sd": g.z.std(ddof=1) if g.z.notna().sum() > 1 else np.nan,
            "coverage": cov,
            "coverage_low": lo,
            "coverage_high": hi,
            "miss_below": g.below.mean(),
            "miss_above": g.above.mean(),
            "cond_coverage_sample": c_s,
            "cond_coverage_sample_low": c_s_lo,
            "cond_coverage_sample_high": c_s_hi,
            "cond_coverage_weighted": g.cond_in_weighted.mean(),
            "cond_z_sd": g.cond_z.std(ddof=1) if g.cond_z.notna().sum() > 1 else np.nan,
            "local_ci_coverage": g.local_coverage.mean() if "local_coverage" in g else np.nan,
            "local_z_sd": g.local_z_sd.mean() if "local_z_sd" in g else np.nan,
            "coverage_2tau": g.in_2tau.mean() if g.tau.notna().any() else np.nan,
            "corr": float(np.corrcoef(g.estimate, g.truth_population)[0, 1])
            if n > 2 and g.truth_population.std() > 0 and g.estimate.std() > 0
            else np.nan,
            "controls_degenerate": int(g.control_degenerate.sum()),
        }
        for step in STEPS:
            out[f"rel_{step}"] = g[f"step_{step}"].mean() / mbar
        oi = g.get("oracle_instruments_estimate")
        out["rel_bias_oracle_instruments"] = (oi - g.truth_population).mean() / mbar if oi is not None else np.nan
        for cls in CLASSES:
            if f"{cls}_err" in g:
                out[f"{cls}_rel_bias"] = g[f"{cls}_err"].mean() / g[f"{cls}_truth_population"].mean()
                out[f"{cls}_coverage"] = g[f"{cls}_in"].mean()
        out["median_tau"], out["median_loci"] = g.tau.median(), g.n_loci.median()
        return out

    rows = []
    for analysis in analyses:
        keep = _gate(r, analysis)
        for (scenario, estimator), g in r.groupby(["scenario", "estimator"], sort=False):
            k = keep.loc[g.index]
            rows.append({"analysis": analysis, "scenario": scenario, "estimator": estimator,
                         **agg(g[k], int((~k).sum()))})  # fmt: skip
    out = pd.DataFrame(rows)
    order = {s: i for i, s in enumerate(SCENARIOS)}
    key = out.scenario.map(order) * 10 + out.analysis.map({a: i for i, a in enumerate(ANALYSES)})
    return out.iloc[np.argsort(key.to_numpy(), kind="stable")].reset_index(drop=True)


def scoring_change(rounds: pd.DataFrame) -> pd.DataFrame:
    """Before and after, per scenario and estimator: coverage and SD(z) of the same random-effects CIs
    scored the old way (against ``truth_own``, the plain mean of the analysed loci's truths on their own
    instruments with their own confounder coin flips, rounds that met the oracle gate) and the new way
    (against the population mean ``truth_population``, all rounds), plus the conditional CI against
    the analysed loci's own mean. One row per scenario and estimator."""
    r = rounds.dropna(subset=["estimate", "se"]).copy()
    rows = []
    for (scenario, estimator), g in r.groupby(["scenario", "estimator"], sort=False):
        gated = g[g.fidelity_ok.astype(bool)] if "fidelity_ok" in g else g
        row = {"scenario": scenario, "estimator": estimator}
        for label, h, truth, lo, hi, se in (
            ("before: sample mean, gated", gated, "truth_own", "ci_low", "ci_high", "se"),
            ("sample mean, all rounds", g, "truth_own", "ci_low", "ci_high", "se"),
            ("after: population mean, all rounds", g, "truth_population", "ci_low", "ci_high", "se"),
            ("conditional CI: sample mean, all rounds", g, "truth_sample", "cond_ci_low", "cond_ci_high", "cond_se"),
        ):
            row[f"{label} | rounds"] = len(h)
            row[f"{label} | coverage"] = float(((h[lo] <= h[truth]) & (h[truth] <= h[hi])).mean())
            row[f"{label} | SD(z)"] = float(((h.estimate - h[truth]) / h[se]).std(ddof=1)) if len(h) > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)
