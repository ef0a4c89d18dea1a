"""Scoring an estimate against its truth: the book's one helper for every experiment that knows the answer.

:func:`against_truth` turns the per-locus rows of :func:`deepmr_utils.pairs.estimate_pair` (given a
``truth``, so each locus has its true local effect ``theta``) into the pooled estimate with both of its
intervals (:func:`pool_loci`) and the local estimates' coverage, spread and error against their truths;
:func:`judged` says whether an interval covers a scalar truth and recovers its sign. (The experiments
that repeat a job, rounds, replicates or training sizes, run it through the package's one process
pool, ``deepmr_utils._parallel.map_jobs``, as ``train.train_ensemble`` does its members.)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from .. import meta

__all__ = ["Z", "pool_loci", "against_truth", "judged"]

Z = 1.959963984540054  # the normal 97.5 % quantile of every 95 % interval the book draws


def pool_loci(ok: pd.DataFrame) -> dict:
    """REML pool of usable loci ``ok`` (columns ``estimate``, ``se``, ``theta``; optional ``theta_seq``, ``theta_own``).

    Two intervals from one fit, each for its own estimand: the random-effects CI (``ci_low``,
    ``ci_high``; SE ``1/sqrt(sum w)``) for the population mean mu, and the conditional CI
    (``cond_ci_low``, ``cond_ci_high``; SE ``sqrt(sum w^2 s^2) / sum w``, the same weights
    ``w = 1/(s^2 + tau^2)`` and only the within-locus variance) for the weighted mean of these
    loci's own truths, ``truth_weighted``. Also the plain means ``truth_sample`` (of ``theta_seq``, or
    of ``theta`` without it), ``truth_instruments`` (of ``theta``) and ``truth_own`` (of ``theta_own``)."""
    g = meta.random_effects(ok.estimate.to_numpy(), ok.se.to_numpy())
    w = 1.0 / (ok.se.to_numpy() ** 2 + g.tau2)
    cond_se = float(np.sqrt(np.sum(w**2 * ok.se.to_numpy() ** 2)) / w.sum())
    theta = ok.theta.to_numpy()
    return {
        **g.to_dict("estimate", "se", "ci_low", "ci_high", "tau", "converged"),
        "cond_se": cond_se,
        "cond_ci_low": g.estimate - Z * cond_se,
        "cond_ci_high": g.estimate + Z * cond_se,
        "truth_sample": float(ok.theta_seq.mean()) if "theta_seq" in ok else float(theta.mean()),
        "truth_instruments": float(theta.mean()),
        "truth_weighted": float(np.sum(w * theta) / w.sum()),
        "truth_own": float(ok.theta_own.mean()) if "theta_own" in ok else np.nan,
    }


def against_truth(local: pd.DataFrame | None, *, min_loci: int = 2) -> tuple[dict, pd.DataFrame]:
    """``(row, ok)``: the loci of ``local`` with an estimate and a truth (``status == "ok"``, ``theta`` known)
    scored against their truths, and those loci.

    ``row`` has ``n_loci`` and, with at least ``min_loci`` of them, :func:`pool_loci`'s pooled estimate,
    intervals and truths, ``n_excluded`` (the loci left out), and the local estimates against their
    truths: ``local_coverage`` (their 95 % CIs), ``local_rmse``, ``local_corr`` and ``local_z_sd`` (the SD
    of ``(estimate - theta) / se``; NaN with fewer than three loci). ``local``: per-locus rows with
    ``locus, estimate, se, ci_low, ci_high, status, theta`` (``None``: nothing was estimated)."""
    if local is None or len(local) == 0:
        return {"n_loci": 0}, pd.DataFrame()
    ok = local[(local.status == "ok") & local.theta.notna()]
    row: dict[str, Any] = {"n_loci": int(len(ok))}
    if len(ok) < min_loci:
        return row, ok
    row.update(pool_loci(ok))
    row["n_excluded"] = int(len(local) - len(ok))
    row["local_coverage"] = float(((ok.ci_low <= ok.theta) & (ok.theta <= ok.ci_high)).mean())
    row["local_rmse"] = float(np.sqrt(((ok.estimate - ok.theta) ** 2).mean()))
    row["local_corr"] = float(np.corrcoef(ok.estimate, ok.theta)[0, 1]) if len(ok) > 2 else np.nan
    row["local_z_sd"] = float(((ok.estimate - ok.theta) / ok.se).std(ddof=1)) if len(ok) > 2 else np.nan
    return row, ok


def judged(lo: float, hi: float, truth: float) -> dict:
    """Whether the interval ``(lo, hi)`` covers ``truth`` (``covered``), and whether it recovers the truth's
    sign (``sign_recovered``: it excludes 0 on that side; NaN for a truth of 0)."""
    sign = bool(lo > 0) if truth > 0 else bool(hi < 0) if truth < 0 else np.nan
    return {"covered": bool(lo <= truth <= hi), "sign_recovered": sign}
