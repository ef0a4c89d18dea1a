"""The simulation study: DeepMR against a known truth, one round at a time.

A round draws an effect ratio, simulates training / calibration / test data from
:class:`deepmr_utils.simulate.CooperativityModel`, trains an ensemble, fits the
SE calibration on the held-out calibration sequences, mutates the test sequences
that carry the exposure motif, selects instruments, and estimates local effects
with several MR estimators and the global effect with a REML meta-analysis. The
truth is computed by the oracle on exactly the same sequences and instruments
(:meth:`~deepmr_utils.simulate.CooperativityModel.true_local_effects`).

Fixes relative to the original study (``deepmr_method.md`` §A, §C, §G): truth
on the estimate's own instruments with confounder terms included, eval-mode
BatchNorm at prediction time, calibration fitted on sequences that are never
mutated and applied in the semantics it was fitted in, and the coverage of the
global 95 % CI reported next to the paper's ±2τ band.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch

from . import meta, mr, pipeline, simulate, train
from .models import CountsRegressor
from .predict import predict
from .uncertainty import IsotonicCalibration, VarianceScaling

__all__ = ["StudySizes", "ESTIMATORS", "SCENARIOS", "run_round", "summarize"]

SCENARIOS = ("none", "sequence-independent", "sequence-dependent", "both")

# display name -> (per_locus method, extra keyword arguments)
ESTIMATORS = {
    "IVW": ("ivw", {}),
    "MR-Egger": ("egger", {}),
    "robust MR-Egger": ("egger_robust", {}),
    "weighted median": ("weighted_median", {}),
    "mode": ("mbe", {}),
}


@dataclass(frozen=True)
class StudySizes:
    n_train: int = 10_000
    n_calibration: int = 1_000
    n_test: int = 1_000
    n_members: int = 5
    max_epochs: int = 100
    patience: int = 10
    batch_size: int = 256
    augment: float = 0.25
    threshold: float = 3.0
    n_boot: int = 300


def _naive_baseline(table: pd.DataFrame, truth: pd.DataFrame) -> dict:
    """The original study's baseline: mean Wald ratio per locus, global mean ± 2 SD."""
    ratios = (table.by / table.bx).groupby(table.locus).agg(["mean", "size"])
    local = ratios[ratios["size"] > 2]["mean"]
    merged = truth.set_index("locus").theta.reindex(local.index)
    est, sd = float(local.mean()), float(local.std(ddof=1)) if len(local) > 1 else np.nan
    return {
        "estimator": "naive (mean Wald ratio)",
        "estimate": est,
        "se": np.nan,
        "ci_low": np.nan,
        "ci_high": np.nan,
        "tau": sd,
        "truth": float(merged.mean()),
        "n_loci": int(len(local)),
        "local_coverage": np.nan,
        "local_corr": float(np.corrcoef(local, merged)[0, 1]) if len(local) > 2 else np.nan,
    }


def run_round(
    scenario: str,
    *,
    seed: int,
    sizes: StudySizes = StudySizes(),
    calibration: str = "variance",
    estimators: dict = ESTIMATORS,
    device=None,
    details: bool = False,
):
    """One round of the study for ``scenario``; returns a frame with one row per estimator.

    ``calibration``: ``"variance"`` (variance scaling with the known Anscombe noise
    variance 1, the default), ``"isotonic"`` (Kuleshov et al., as in the original
    study) or ``"none"``. With
    ``details=True`` also returns a dict with the generator, data, models,
    training histories, calibration, variant table and local estimates.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"scenario must be one of {SCENARIOS}, got {scenario!r}")
    if calibration not in ("isotonic", "variance", "none"):
        raise ValueError(f"calibration must be 'isotonic', 'variance' or 'none', got {calibration!r}")
    rng = np.random.default_rng(seed)
    ratio = simulate.draw_effect_ratio(rng)
    alpha = float(rng.normal(100.0, 3.0))
    gen = simulate.CooperativityModel(alpha=alpha, beta=alpha * ratio).with_scenario(scenario)
    seeds = rng.integers(0, 2**31 - 1, 5)
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
    models, hists = train.train_ensemble(
        lambda: CountsRegressor(gen.length, 2, output_names=["exposure", "outcome"]),
        X_train,
        y_train,
        sizes.n_members,
        config=cfg,
        seed=int(seeds[4]),
        device=device,
        progress=False,
    )
    accuracy = train.accuracy(models, test["X"], test["y"], names=["exposure", "outcome"])

    calibrator = None
    if calibration != "none":
        members = predict(models, cal["X"]).numpy()  # (n, M, 2)
        # labels are Anscombe-transformed Poisson counts: their noise variance is ~1
        calibrator = IsotonicCalibration() if calibration == "isotonic" else VarianceScaling(noise_var=1.0)
        calibrator.fit(members, cal["y"], ids=[f"cal{i}" for i in range(sizes.n_calibration)])

    mutate = np.flatnonzero(np.isin(test["config"], (1, 3)))  # test sequences with the exposure motif
    Xm, b_conf = test["X"][mutate], test["b_conf"][mutate]
    table = pipeline.variant_effects(
        models,
        Xm,
        exposure=0,
        outcome=1,
        calibration=calibrator,
        select={"threshold": sizes.threshold},
        progress=False,
        device=device,
    )
    truth = gen.true_local_effects(Xm, table, b_conf) if len(table) else pd.DataFrame({"locus": [], "theta": []})

    rows, local_all = [], {}
    for name, (method, kw) in estimators.items():
        kw = dict(kw)
        if method in ("weighted_median", "mbe"):
            kw.setdefault("n_boot", sizes.n_boot)
            kw.setdefault("seed", seed)
        local = mr.per_locus(table, method, **kw).merge(truth, on="locus", how="left") if len(table) else None
        ok = local[(local.status == "ok") & local.theta.notna()] if local is not None else pd.DataFrame()
        local_all[name] = local
        row = {"estimator": name, "n_loci": int(len(ok))}
        if len(ok) >= 2:
            g = meta.pool(local[local.theta.notna()])
            row.update(
                estimate=g.estimate,
                se=g.se,
                ci_low=g.ci_low,
                ci_high=g.ci_high,
                tau=g.tau,
                converged=g.converged,
                n_excluded=g.n_excluded,
                truth=float(ok.theta.mean()),
                local_coverage=float(((ok.ci_low <= ok.theta) & (ok.theta <= ok.ci_high)).mean()),
                local_corr=float(np.corrcoef(ok.estimate, ok.theta)[0, 1]) if len(ok) > 2 else np.nan,
            )
        rows.append(row)
    if len(table):
        rows.append(_naive_baseline(table, truth))
    out = pd.DataFrame(rows)
    out.insert(0, "scenario", scenario)
    out.insert(1, "seed", seed)
    out["ratio"] = ratio
    out["n_instruments"] = len(table)
    out["n_mutated"] = len(mutate)
    out["r_exposure"] = float(accuracy.pearson_r[0])
    out["r_outcome"] = float(accuracy.pearson_r[1])
    if not details:
        return out
    return out, {
        "generator": gen,
        "train": tr,
        "calibration_data": cal,
        "test": test,
        "models": models,
        "histories": hists,
        "accuracy": accuracy,
        "calibrator": calibrator,
        "mutated": mutate,
        "table": table,
        "truth": truth,
        "local": local_all,
        "sizes": asdict(sizes),
    }


def summarize(rounds: pd.DataFrame) -> pd.DataFrame:
    """Per scenario and estimator: bias, RMSE, correlation with the truth across rounds,
    coverage of the global 95 % CI and of the paper's ±2τ band, mean local-CI coverage."""
    r = rounds.dropna(subset=["estimate", "truth"]).copy()
    r["err"] = r.estimate - r.truth
    r["in_ci"] = (r.ci_low <= r.truth) & (r.truth <= r.ci_high)
    r["in_2tau"] = (r.estimate - 2 * r.tau <= r.truth) & (r.truth <= r.estimate + 2 * r.tau)

    def agg(g):
        return pd.Series(
            {
                "rounds": len(g),
                "bias": g.err.mean(),
                "rmse": float(np.sqrt((g.err**2).mean())),
                "corr": float(np.corrcoef(g.estimate, g.truth)[0, 1]) if len(g) > 2 and g.truth.std() > 0 else np.nan,
                "coverage_95ci": g.in_ci.mean() if g.se.notna().any() else np.nan,
                "coverage_2tau": g.in_2tau.mean(),
                "local_ci_coverage": g.local_coverage.mean(),
                "median_tau": g.tau.median(),
                "median_loci": g.n_loci.median(),
            }
        )

    order = {s: i for i, s in enumerate(SCENARIOS)}
    out = r.groupby(["scenario", "estimator"], sort=False).apply(agg, include_groups=False).reset_index()
    return out.sort_values("scenario", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
