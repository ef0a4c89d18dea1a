"""Summary statistics for many loci with a known local effect (no sequence model).

:func:`summary_statistics` draws MR summary statistics directly, to show how local MR
estimates and the random-effects meta-analysis behave before any deep learning is involved.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["summary_statistics"]


def summary_statistics(
    n_loci: int = 200,
    variants_per_locus: int = 30,
    *,
    effect: float = 0.5,
    tau: float = 0.1,
    pleiotropy_sd: float = 0.0,
    pleiotropy_mean: float = 0.0,
    bx_sd: float = 1.0,
    se_x: float = 0.1,
    se_y: float = 0.1,
    seed: int | None = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-variant summary statistics for ``n_loci`` loci with known local effects.

    Each locus ``i`` has a local causal effect ``theta_i ~ N(effect, tau^2)``.
    Variant ``j`` of locus ``i`` has true exposure effect ``gx ~ N(0, bx_sd^2)`` and
    outcome effect ``theta_i * gx + sign(gx) * alpha_j``, where the pleiotropic term
    ``alpha_j ~ N(pleiotropy_mean, pleiotropy_sd^2)`` breaks the exclusion
    restriction when non-zero. It is signed with the exposure-raising allele, as
    MR conventions orient instruments, so a non-zero mean is *directional*
    pleiotropy (for ISM: a mutation that destroys a motif lowers both marks). Observed
    ``bx, by`` add Gaussian noise with standard errors ``se_x, se_y``.

    Returns ``(variants, truth)``: the variant table (``locus, bx, bxse, by, byse``)
    and one row per locus with its true ``theta``.
    """
    if n_loci < 1 or variants_per_locus < 1:
        raise ValueError("n_loci and variants_per_locus must be >= 1")
    if min(se_x, se_y) <= 0 or tau < 0 or pleiotropy_sd < 0:
        raise ValueError("standard errors must be > 0, tau and pleiotropy_sd >= 0")
    rng = np.random.default_rng(seed)
    k = variants_per_locus
    theta = rng.normal(effect, tau, n_loci)
    gx = rng.normal(0.0, bx_sd, (n_loci, k))
    alpha = rng.normal(pleiotropy_mean, pleiotropy_sd, (n_loci, k)) if pleiotropy_sd or pleiotropy_mean else 0.0
    gy = theta[:, None] * gx + np.sign(gx) * alpha
    variants = pd.DataFrame(
        {
            "locus": np.repeat(np.arange(n_loci), k),
            "bx": (gx + rng.normal(0, se_x, gx.shape)).ravel(),
            "bxse": np.full(n_loci * k, se_x),
            "by": (gy + rng.normal(0, se_y, gy.shape)).ravel(),
            "byse": np.full(n_loci * k, se_y),
        }
    )
    return variants, pd.DataFrame({"locus": np.arange(n_loci), "theta": theta})
