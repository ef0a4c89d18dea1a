"""MR-PRESSO: pleiotropy residual sum and outlier (Verbanck, Chen, Neale & Do, Nat. Genet. 2018).

The **global test** asks whether the instruments scatter around the IVW line more than their SEs
allow: each instrument's residual from the leave-one-out IVW fit, squared and weighted (``RSSobs``),
against the same statistic in ``n_sim`` datasets simulated from the fit without that instrument. The
**outlier test** compares each instrument's own squared residual with its simulated ones (Bonferroni
over K), the **outlier-corrected** estimate is IVW without the outliers, and the **distortion test**
asks whether removing them moved the estimate more than removing random instruments would. All
draws are vectorised (``n_sim x K`` at once) and seeded. Conventions of the authors' R package
MRPRESSO 1.0 (``mr_presso``, one exposure): instruments oriented to positive ``bx``, weights
``1/byse^2``, regression through the origin with the residual-scaled SE and t(K - 1) p-values
(``lm``), empirical p-values as counts over ``n_sim``. ``tests/test_presso.py`` checks it against
that package's outputs.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass

import numpy as np

from ._types import ArrayLike
from ._validate import check_alpha, summary_stats
from .results import Estimate, interval

__all__ = ["PRESSOResult", "presso"]


@dataclass(frozen=True, repr=False)  # the one-line summary of Estimate
class PRESSOResult(Estimate):
    """MR-PRESSO. The estimate is the **outlier-corrected** IVW; it is the raw one when no outlier is
    found (``outliers`` empty) or fewer than 2 instruments would remain (then ``distortion`` is NaN);
    ``raw_*`` is IVW on every instrument. ``global_pvalue`` is a count
    over ``n_sim`` draws (0 means below ``1 / n_sim``); ``outlier_pvalues`` are Bonferroni-corrected
    per instrument; ``distortion`` is ``100 (raw - corrected) / |corrected|`` (percent) with its
    p-value (NaN when no outlier was found, or every instrument was one)."""

    n_instruments: int
    _: KW_ONLY
    raw_estimate: float = float("nan")
    raw_se: float = float("nan")
    raw_pvalue: float = float("nan")
    rss_obs: float = float("nan")
    global_pvalue: float = float("nan")
    outlier_pvalues: tuple[float, ...] = ()
    outliers: tuple[int, ...] = ()
    distortion: float = float("nan")
    distortion_pvalue: float = float("nan")
    n_sim: int = 1000

    def _details(self) -> str:
        return (
            f", K={self.n_instruments}, {len(self.outliers)} outlier(s), global p={self.global_pvalue:.3g} "
            f"({self.n_sim} draws), raw {self.raw_estimate:.4g}"
        )


def _loo(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Leave-one-out IVW slopes, ``(..., K)``: each instrument's slope from all the others."""
    sxy, sxx = (w * x * y).sum(axis=-1, keepdims=True), (w * x * x).sum(axis=-1, keepdims=True)
    return (sxy - w * x * y) / (sxx - w * x * x)


def _rss(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    return (w * (y - _loo(x, y, w) * x) ** 2).sum(axis=-1)


def _wls(x: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float) -> tuple[float, float, float, float, float]:
    """``lm(y ~ -1 + x, weights = w)``: slope, residual-scaled SE, t(K - 1) CI and p-value."""
    k = x.size
    sxx = float(np.sum(w * x * x))
    b = float(np.sum(w * x * y)) / sxx
    sigma = float(np.sqrt(np.sum(w * (y - b * x) ** 2) / (k - 1)))
    se = sigma / np.sqrt(sxx)
    lo, hi, p = interval(b, se, alpha, df=k - 1)
    return b, se, lo, hi, float(p)


def presso(
    bx: ArrayLike,
    bxse: ArrayLike,
    by: ArrayLike,
    byse: ArrayLike,
    *,
    n_sim: int = 1000,
    threshold: float = 0.05,
    seed: int = 0,
    alpha: float = 0.05,
) -> PRESSOResult:
    """MR-PRESSO of ``by`` on ``bx`` (1-D arrays of K instruments): global test, outlier test and
    outlier-corrected estimate, distortion test. ``n_sim`` simulated datasets (more than K), drawn
    from ``numpy.random.default_rng(seed)``; outliers are instruments whose corrected p-value is at
    most ``threshold``, looked for only when the global test is below it (as the package does).
    ``alpha`` sets the CIs (t with K - 1 df, or K - n_outliers - 1 for the corrected estimate)."""
    alpha = check_alpha(alpha)
    bx, bxse, by, byse = summary_stats(bx, bxse, by, byse, min_k=4, method="presso (K > 3: one exposure + 2)")
    k = bx.size
    if not (isinstance(n_sim, (int, np.integer)) and n_sim > k):
        raise ValueError(f"presso: n_sim must be an integer larger than the number of instruments ({k}), got {n_sim}")
    if not 0 < threshold <= 1:
        raise ValueError(f"presso: threshold must be in (0, 1], got {threshold}")
    sign = np.where(bx < 0, -1.0, 1.0)  # R: sign(0) = 0 would zero a row; bx = 0 keeps its by
    x, y, w = bx * sign, by * sign, byse**-2
    rng = np.random.default_rng(seed)

    loo = _loo(x, y, w)
    rss_obs = float(_rss(x, y, w))
    # null datasets: each exposure effect redrawn around its estimate, each outcome effect around the
    # leave-one-out fit's prediction at the observed exposure effect
    x_sim = x + bxse * rng.standard_normal((n_sim, k))
    y_sim = loo * x + byse * rng.standard_normal((n_sim, k))
    global_p = float(np.mean(_rss(x_sim, y_sim, w) > rss_obs))

    raw = _wls(x, y, w, alpha)
    outliers, outlier_p = np.array([], dtype=int), np.full(k, np.nan)
    distortion, distortion_p = float("nan"), float("nan")
    if global_p < threshold:
        dif2 = (y - x * loo) ** 2
        exp2 = (y_sim - x_sim * loo) ** 2
        outlier_p = np.minimum(np.mean(exp2 > dif2, axis=0) * k, 1.0)
        outliers = np.flatnonzero(outlier_p <= threshold)
    corrected = raw
    if 0 < outliers.size < k - 1:
        keep = np.setdiff1d(np.arange(k), outliers)
        corrected = _wls(x[keep], y[keep], w[keep], alpha)
        # the package's null for the distortion: fits on the outliers plus K - 2 n_out instruments
        # drawn with replacement from the others (its index vector starts with the outliers)
        n_out = outliers.size
        draws = rng.choice(keep, size=(n_sim, k - n_out))
        idx = np.concatenate([np.broadcast_to(outliers, (n_sim, n_out)), draws], axis=1)[:, : k - n_out]
        xs, ys, ws = x[idx], y[idx], w[idx]
        b_rand = (ws * xs * ys).sum(axis=1) / (ws * xs * xs).sum(axis=1)
        bias_obs = (raw[0] - corrected[0]) / abs(corrected[0])
        bias_exp = (raw[0] - b_rand) / np.abs(b_rand)
        distortion, distortion_p = 100 * bias_obs, float(np.mean(np.abs(bias_exp) > abs(bias_obs)))
    est, se, lo, hi, p = corrected
    return PRESSOResult(
        "MR-PRESSO",
        est,
        se,
        lo,
        hi,
        p,
        k,
        alpha=alpha,
        raw_estimate=raw[0],
        raw_se=raw[1],
        raw_pvalue=raw[4],
        rss_obs=rss_obs,
        global_pvalue=global_p,
        outlier_pvalues=tuple(float(v) for v in outlier_p),
        outliers=tuple(int(i) for i in outliers),
        distortion=float(distortion),
        distortion_pvalue=distortion_p,
        n_sim=int(n_sim),
    )
