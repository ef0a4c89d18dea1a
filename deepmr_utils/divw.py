"""The debiased inverse-variance weighted estimate (dIVW; Ye, Shao & Kang, Ann. Statist. 2021).

IVW's denominator ``sum bx^2 / byse^2`` counts the exposure effects' own noise as signal, which pulls
the estimate towards 0 when instruments are weak (DeepMR's regime: hundreds of ISM variants per
sequence, most of them weak). dIVW subtracts that noise, ``sum (bx^2 - bxse^2) / byse^2``, and its
SE allows for overdispersion (balanced pleiotropy, ``tau2``). The instrument-strength statistic
``condition = (mean (bx/bxse)^2 - 1) sqrt(K)`` should be large (the authors suggest > 20) for the
estimate to be trusted. Conventions of MendelianRandomization 0.10.0's ``mr_divw`` (its defaults:
``over.dispersion = TRUE``); ``tests/test_divw.py`` checks it against that package's output.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass

import numpy as np

from ._types import ArrayLike
from ._validate import check_alpha, summary_stats
from .results import Estimate, interval

__all__ = ["DIVWResult", "divw", "divw_sums"]

DEGENERATE = "sum of (bx^2 - bxse^2) / byse^2 <= 0: the instruments are weaker than their own noise"


@dataclass(frozen=True, repr=False)  # the one-line summary of Estimate
class DIVWResult(Estimate):
    """dIVW: the causal estimate, its overdispersion ``tau2`` (0 when not fitted) and the
    instrument-strength statistic ``condition``."""

    n_instruments: int
    _: KW_ONLY
    tau2: float = 0.0
    condition: float = float("nan")
    over_dispersion: bool = True

    def _details(self) -> str:
        return f", K={self.n_instruments}, condition={self.condition:.4g}"


def divw_sums(
    bx: np.ndarray,
    bxse: np.ndarray,
    by: np.ndarray,
    byse: np.ndarray,
    codes: np.ndarray | None = None,
    n_groups: int = 1,
    *,
    over_dispersion: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(estimate, se, tau2, condition)``, arrays of ``n_groups``, from per-row arrays and each row's
    group (``codes``; all rows one group when None): the one formula that :func:`divw` and
    ``mr.per_locus`` share, as sums within groups."""
    codes = np.zeros(bx.size, dtype=np.intp) if codes is None else codes

    def seg(v):
        return np.bincount(codes, weights=v, minlength=n_groups)

    w = byse**-2
    k = np.bincount(codes, minlength=n_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        den = seg(w * (bx * bx - bxse * bxse))
        # no signal left once the noise is taken out: no estimate (NaN), never a sign-flipped one
        est = np.where(den > 0, seg(w * bx * by) / den, np.nan)
        b = np.nan_to_num(est[codes])
        if over_dispersion:
            tau2 = np.maximum(0.0, seg(((by - b * bx) ** 2 - byse**2 - b**2 * bxse**2) * w) / seg(w))
        else:
            tau2 = np.zeros(n_groups)
        r2, mu2 = (bxse / byse) ** 2, (bx / bxse) ** 2
        v1 = seg(r2 * mu2 + b**2 * r2 * r2 * (mu2 + 1) + tau2[codes] * r2 * w * mu2)
        se = np.sqrt(v1) / np.abs(seg(r2 * (mu2 - 1)))
        condition = (seg(mu2) / k - 1) * np.sqrt(k)
    return est, se, tau2, condition


def divw(
    bx: ArrayLike,
    bxse: ArrayLike,
    by: ArrayLike,
    byse: ArrayLike,
    *,
    over_dispersion: bool = True,
    alpha: float = 0.05,
) -> DIVWResult:
    """dIVW of ``by`` on ``bx`` (1-D arrays of K instruments). ``over_dispersion``: the SE allows
    for balanced pleiotropy of variance ``tau2`` (estimated, floored at 0). CI and p are normal."""
    alpha = check_alpha(alpha)
    bx, bxse, by, byse = summary_stats(bx, bxse, by, byse, min_k=2, method="divw")
    est, se, tau2, condition = (float(v[0]) for v in divw_sums(bx, bxse, by, byse, over_dispersion=over_dispersion))
    if not (math.isfinite(est) and math.isfinite(se) and se > 0):
        raise ValueError(f"divw: no estimate: {DEGENERATE} (estimate {est}, SE {se})")
    lo, hi, p = interval(est, se, alpha)
    return DIVWResult(
        "dIVW",
        est,
        se,
        lo,
        hi,
        float(p),
        int(bx.size),
        alpha=alpha,
        tau2=tau2,
        condition=condition,
        over_dispersion=over_dispersion,
    )
