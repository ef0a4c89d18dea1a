"""The contamination mixture estimate (ConMix; Burgess, Foley, Allara, Staley & Howson, Nat. Commun. 2020).

Each instrument's ratio ``r_j = by_j / bx_j`` (SE ``s_j = |byse_j / bx_j|``) is either valid, ``r_j ~
N(theta, s_j^2)``, or invalid, ``r_j ~ N(0, psi^2 + s_j^2)``; the profile likelihood takes, at each
``theta``, the likelier of the two per instrument. The estimate is the best point of a grid, and the
confidence set ``{theta : 2 l(theta) > 2 max l - chi2_{1, 1-alpha} phi^2}`` can be a **union of
intervals** when valid instruments cluster around more than one value: :class:`ConMixResult` keeps
every piece (``intervals``) next to the overall ``ci_low``/``ci_high``. ``phi`` (>= 1) widens the set
for over-dispersion of the valid instruments. There is no standard error. Conventions of
MendelianRandomization 0.10.0's ``mr_conmix`` (``psi`` 1.5 SD of the ratios, grid step 0.01 between
the smallest and largest ``(by -+ 2 byse) / bx``); ``tests/test_conmix.py`` checks it against that
package's outputs.
"""

from __future__ import annotations

import math
from dataclasses import KW_ONLY, dataclass

import numpy as np
from scipy import stats

from ._types import ArrayLike
from ._validate import check_alpha, check_nonzero_bx, summary_stats
from .results import Estimate

__all__ = ["ConMixResult", "conmix"]

_MAX_GRID = 5_000_000  # grid points x instruments held at once
_MIN_POINTS, _MAX_POINTS = 3, 50_000_000  # a grid that can hold an estimate and an interval; ~400 MB of theta


@dataclass(frozen=True, repr=False)  # the one-line summary of Estimate
class ConMixResult(Estimate):
    """ConMix: the estimate (a grid point), its confidence set as ``intervals`` (``ci_low``/``ci_high``
    span all of them), ``psi``, ``phi``, and the instruments judged valid at the estimate (0-based).
    ``se`` is NaN: the method has none (its set comes from the likelihood, not from an SE)."""

    n_instruments: int
    _: KW_ONLY
    intervals: tuple[tuple[float, float], ...] = ()
    psi: float = float("nan")
    phi: float = 1.0
    valid: tuple[int, ...] = ()
    grid_step: float = 0.01

    def __repr__(self) -> str:
        level = round(100 * (1 - self.alpha))
        pieces = " U ".join(f"[{a:.4g}, {b:.4g}]" for a, b in self.intervals)
        return (
            f"{self.method}: {self.estimate:.4g} ({level}% CI {pieces}, p={self.pvalue:.3g}, "
            f"K={self.n_instruments}, {len(self.valid)} valid, psi={self.psi:.4g})"
        )

    __str__ = __repr__


def _loglik(theta: np.ndarray, ratio: np.ndarray, s: np.ndarray, psi: float) -> tuple[np.ndarray, np.ndarray]:
    """Profile log-likelihood at each ``theta`` and, per theta, which instruments count as valid."""
    inc = -((theta[:, None] - ratio) ** 2) / (2 * s**2) - np.log(np.sqrt(2 * np.pi * s**2))
    exc = -(ratio**2) / (2 * (psi**2 + s**2)) - np.log(np.sqrt(2 * np.pi * (psi**2 + s**2)))
    valid = inc > exc
    return np.where(valid, inc, exc).sum(axis=1), valid


def conmix(
    bx: ArrayLike,
    bxse: ArrayLike,
    by: ArrayLike,
    byse: ArrayLike,
    *,
    psi: float | None = None,
    ci_min: float | None = None,
    ci_max: float | None = None,
    ci_step: float = 0.01,
    alpha: float = 0.05,
) -> ConMixResult:
    """ConMix of ``by`` on ``bx`` (1-D arrays of K instruments).

    ``psi``: the SD of the invalid instruments' ratios (default 1.5 x the SD of all ratios).
    ``ci_min``, ``ci_max``, ``ci_step``: the grid searched (the estimate and interval ends are grid points,
    so their resolution is ``ci_step``). The default range is every ratio +- 2 of its SEs, the package's
    ``min((by - 2 byse) / bx)`` to ``max((by + 2 byse) / bx)`` when every ``bx > 0``; with negative ``bx``
    the package's range shrinks or is reversed (an error in R), which orienting the instruments avoids.

    The p-value is the package's: ``P(chi2_1 > 2 (max l - l(0)) phi^2)``. Its confidence set divides
    the likelihood ratio by ``phi^2`` and its p-value multiplies by it, so with ``phi > 1`` the p-value
    is smaller than the set implies; it is kept to match the package, and ``phi`` is reported.
    """
    alpha = check_alpha(alpha)
    bx, bxse, by, byse = summary_stats(bx, bxse, by, byse, min_k=2, method="conmix")
    check_nonzero_bx(bx, "conmix")
    if not (ci_step > 0 and math.isfinite(ci_step)):
        raise ValueError(f"conmix: ci_step must be a positive number, got {ci_step}")
    with np.errstate(over="ignore"):  # a ratio beyond float64 is named below
        ratio, s = by / bx, np.abs(byse / bx)
    # the package's default grid is min((by - 2 byse) / bx) to max((by + 2 byse) / bx), which assumes bx > 0:
    # with a negative bx those are the ratio's upper and lower ends, and the grid shrinks, can miss the
    # best point, or is reversed (R's seq() then stops). ISM instruments are mostly losses of binding (bx < 0),
    # so the grid here is every ratio +- 2 of its SEs: the package's grid when every bx > 0, whatever the signs
    lo = float(np.min(ratio - 2 * s)) if ci_min is None else float(ci_min)
    hi = float(np.max(ratio + 2 * s)) if ci_max is None else float(ci_max)
    if not lo < hi:
        raise ValueError(f"conmix: the grid needs ci_min < ci_max, got {lo} and {hi}")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"conmix: a ratio by/bx or its SE overflows float64 (grid {lo} to {hi}); drop the instrument")
    psi = 1.5 * float(np.std(ratio, ddof=1)) if psi is None or psi <= 0 else float(psi)
    # R's seq(from, to, by): floor((to - from) / by + 1e-10) + 1 points. The package's step is absolute (0.01),
    # so ratios on a scale far from 1 give a grid of one point (a silent non-answer) or of billions (no memory)
    points = math.floor((hi - lo) / ci_step + 1e-10) + 1
    if not _MIN_POINTS <= points <= _MAX_POINTS:
        raise ValueError(
            f"conmix: the grid from {lo:.4g} to {hi:.4g} in steps of ci_step={ci_step:g} has {points:.3g} points "
            f"(allowed {_MIN_POINTS} to {_MAX_POINTS:.0e}); pass a ci_step near (ci_max - ci_min) / 2000"
        )
    theta = lo + ci_step * np.arange(points)
    rows = max(1, _MAX_GRID // bx.size)
    loglik = np.concatenate([_loglik(theta[i : i + rows], ratio, s, psi)[0] for i in range(0, theta.size, rows)])
    best = int(np.argmax(loglik))  # the first maximum, as R's which.max
    valid = _loglik(theta[best : best + 1], ratio, s, psi)[1][0]
    if valid.sum() < 2:
        phi = 1.0
    else:
        rv, wv = ratio[valid], s[valid] ** -2
        phi = max(math.sqrt(np.sum((rv - np.average(rv, weights=wv)) ** 2 * wv) / (valid.sum() - 1)), 1.0)
    crit = stats.chi2.ppf(1 - alpha, df=1)
    inside = np.flatnonzero(2 * loglik > 2 * loglik[best] - crit * phi**2)
    breaks = np.flatnonzero(np.diff(inside) > 1)
    starts, ends = np.r_[inside[0], inside[breaks + 1]], np.r_[inside[breaks], inside[-1]]
    intervals = tuple((float(theta[a]), float(theta[b])) for a, b in zip(starts, ends))
    loglik0 = float(_loglik(np.zeros(1), ratio, s, psi)[0][0])
    p = float(stats.chi2.sf(2 * (loglik[best] - loglik0) * phi**2, df=1))
    return ConMixResult(
        "ConMix",
        float(theta[best]),
        float("nan"),
        intervals[0][0],
        intervals[-1][1],
        p,
        int(bx.size),
        alpha=alpha,
        intervals=intervals,
        psi=psi,
        phi=phi,
        valid=tuple(int(i) for i in np.flatnonzero(valid)),
        grid_step=ci_step,
    )
