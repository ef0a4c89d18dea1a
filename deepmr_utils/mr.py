"""Mendelian randomization estimators on summary statistics.

Every estimator takes the K instruments' summary statistics as 1-D arrays
``bx, bxse, by, byse`` (effect on exposure and outcome, with standard errors)
and returns a frozen :class:`MRResult`. Conventions follow the R package
MendelianRandomization 0.10.0 (Yavorska & Burgess) unless stated otherwise;
``tests/test_mr.py`` checks them against that package's outputs.

:func:`per_locus` applies IVW or MR-Egger to thousands of loci at once with
segment sums (no Python loop per locus). In DeepMR a *locus* is one input
sequence and its instruments are in-silico mutations of it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from . import _robust
from ._types import ArrayLike
from ._validate import (
    as_1d,
    check_alpha,
    check_choice,
    check_finite,
    check_nonzero_bx,
    check_positive,
    check_psi,
    summary_stats,
    weights_finite,
)
from .conmix import ConMixResult, conmix
from .divw import DEGENERATE as DIVW_DEGENERATE
from .divw import DIVWResult, divw, divw_sums
from .presso import PRESSOResult, presso
from .raps import RAPSResult, raps, raps_loci
from .results import Estimate, interval

__all__ = [
    "MRResult",
    "WaldResult",
    "IVWResult",
    "EggerResult",
    "MedianResult",
    "ModeResult",
    "MultivariableResult",
    "multivariable",
    "conditional_f",
    "Heterogeneity",
    "wald_ratio",
    "ivw",
    "egger",
    "weighted_median",
    "mbe",
    "heterogeneity",
    "per_locus",
    "ratio_se",
    "raps",
    "RAPSResult",
    "Estimator",
    "ESTIMATORS",
    "divw",
    "DIVWResult",
    "conmix",
    "ConMixResult",
    "presso",
    "PRESSOResult",
]

_NAN = float("nan")


@dataclass(frozen=True, repr=False)  # the one-line summary of Estimate
class MRResult(Estimate):
    """Result of an MR estimator: the causal estimate from ``n_instruments`` instruments.

    Each estimator returns its own subclass with only the fields it has:
    :class:`WaldResult`, :class:`IVWResult`, :class:`EggerResult`, :class:`MedianResult`,
    :class:`ModeResult`. ``model`` says which variant of the method ran.
    """

    n_instruments: int
    _: KW_ONLY
    model: str = ""

    def _details(self) -> str:
        return f", K={self.n_instruments}"


@dataclass(frozen=True, repr=False)  # the one-line summary of Estimate
class WaldResult(MRResult):
    """The ratio estimate of a single instrument (``model``: the order of its SE)."""


@dataclass(frozen=True, repr=False)  # the one-line summary of Estimate
class _Regression(MRResult):
    """What the two regression estimators share: the t or normal reference and residual heterogeneity."""

    _: KW_ONLY
    distribution: str = "normal"
    q: float = _NAN
    q_df: int = 0
    q_pvalue: float = _NAN
    rse: float = _NAN

    def _details(self) -> str:
        q = f", Q={self.q:.4g} on {self.q_df} df" if np.isfinite(self.q) else ""
        return super()._details() + q


@dataclass(frozen=True, repr=False)  # the one-line summary of Estimate
class IVWResult(_Regression):
    """Inverse-variance weighted estimate, with Cochran's Q, I^2 and the mean F statistic."""

    _: KW_ONLY
    i2: float = _NAN
    f_stat: float = _NAN


@dataclass(frozen=True, repr=False)  # the one-line summary of Estimate
class EggerResult(_Regression):
    """MR-Egger: slope (the causal estimate) and intercept (directional pleiotropy), with I^2_GX."""

    _: KW_ONLY
    intercept: float = _NAN
    intercept_se: float = _NAN
    intercept_ci_low: float = _NAN
    intercept_ci_high: float = _NAN
    intercept_pvalue: float = _NAN
    i2_gx: float = _NAN

    def _details(self) -> str:
        icpt = f", intercept {self.intercept:.3g} (SE {self.intercept_se:.3g}, p={self.intercept_pvalue:.3g})"
        return MRResult._details(self) + icpt + (f", Q={self.q:.4g} on {self.q_df} df" if np.isfinite(self.q) else "")


@dataclass(frozen=True, repr=False)  # the one-line summary of Estimate
class MedianResult(MRResult):
    """Weighted (or simple, penalised) median of the ratio estimates, bootstrap SE."""


@dataclass(frozen=True, repr=False)  # the one-line summary of Estimate
class ModeResult(MRResult):
    """Mode-based estimate (MBE) of the ratio estimates, bootstrap SE."""


# --------------------------------------------------------------------------- Wald


def wald_ratio(
    bx: ArrayLike,
    bxse: ArrayLike,
    by: ArrayLike,
    byse: ArrayLike,
    *,
    order: int = 1,
    psi: float = 0.0,
    alpha: float = 0.05,
) -> MRResult:
    """Ratio estimate ``by / bx`` of a single instrument.

    ``order=1`` gives the first-order SE ``byse/|bx|``; ``order=2`` the delta-method
    SE that also propagates ``bxse`` (``psi`` is the correlation of the two estimates,
    0 for non-overlapping samples).
    """
    bx, bxse, by, byse = summary_stats(bx, bxse, by, byse, min_k=1, method="wald_ratio")
    if bx.size != 1:
        raise ValueError(f"wald_ratio takes one instrument, got {bx.size}; use ivw() for several")
    if order not in (1, 2):
        raise ValueError(f"order must be 1 or 2, got {order}")
    alpha = check_alpha(alpha)
    psi = check_psi(psi)
    est = float(by[0] / bx[0])
    se = float(ratio_se(bx, bxse, by, byse, order, psi)[0])
    lo, hi, p = interval(est, se, alpha)
    return WaldResult("Wald ratio", est, se, lo, hi, p, 1, alpha=alpha, model=f"order {order}")


def ratio_se(
    bx: ArrayLike, bxse: ArrayLike, by: ArrayLike, byse: ArrayLike, order: int = 1, psi: float | ArrayLike = 0.0
) -> np.ndarray:
    """SEs of the ratio estimates ``by / bx`` of many instruments: first-order (``byse / |bx|``)
    or second-order (delta method, also propagating ``bxse``; ``psi`` their correlation, one number
    or one per instrument)."""
    psi = check_psi(psi, np.size(bx))
    if order == 1:
        return byse / np.abs(bx)
    return np.sqrt(byse**2 / bx**2 + by**2 * bxse**2 / bx**4 - 2 * psi * by * bxse * byse / bx**3)


# --------------------------------------------------------------------------- IVW


def _delta_variance(bx, bxse, by, byse, psi):
    """The second-order variance of ``by - theta bx`` on the regression scale (MendelianRandomization's
    ``weights = "delta"``): the inverse of IVW's second-order weights, for :func:`ivw` and ``per_locus``."""
    return byse**2 + by**2 * bxse**2 / bx**2 - 2 * psi * by * bxse * byse / bx


def ivw(
    bx: ArrayLike,
    bxse: ArrayLike,
    by: ArrayLike,
    byse: ArrayLike,
    *,
    model: str = "default",
    weights: str = "simple",
    distribution: str = "normal",
    alpha: float = 0.05,
    psi: float | ArrayLike = 0.0,
) -> MRResult:
    """Inverse-variance weighted estimate (regression of ``by`` on ``bx`` through 0).

    ``model``: ``"fixed"`` (SE = 1/sqrt(sum bx^2 w)), ``"random"`` (multiplicative
    random effects: fixed SE x max(1, RSE)), or ``"default"`` = fixed below 4
    instruments, random otherwise (MendelianRandomization's rule).
    ``weights``: ``"simple"`` (w = byse^-2) or ``"delta"`` (second-order weights;
    Q then uses them too). ``distribution="t"`` takes CI and p from t(K-1).
    ``psi``: the correlation of each instrument's ``bx`` and ``by`` errors, one number or one per
    instrument (e.g. the per-variant correlation of an ensemble's members, the ``psi`` column of
    :func:`deepmr_utils.pipeline.variant_effects` with ``member_correlation=True``); the second-order
    weights use it, the simple ones do not (MendelianRandomization's ``psi`` is one number).
    """
    check_choice(model, "model", ("default", "fixed", "random"))
    check_choice(weights, "weights", ("simple", "delta"))
    check_choice(distribution, "distribution", ("normal", "t"))
    alpha = check_alpha(alpha)
    bx, bxse, by, byse = summary_stats(bx, bxse, by, byse, min_k=1, method="ivw")
    psi = check_psi(psi, bx.size)
    k = bx.size
    if distribution == "t" and k < 2:
        raise ValueError("ivw with distribution='t' needs at least 2 instruments (df = K-1)")
    if weights == "simple":
        w = byse**-2
    else:
        check_nonzero_bx(bx, "ivw(weights='delta')")
        w = 1.0 / _delta_variance(bx, bxse, by, byse, psi)
    sxx = np.sum(w * bx * bx)
    est = float(np.sum(w * bx * by) / sxx)
    se_fixed = float(1 / np.sqrt(sxx))
    q = float(np.sum(w * (by - est * bx) ** 2)) if k > 1 else _NAN
    rse = float(np.sqrt(q / (k - 1))) if k > 1 else 1.0
    if model == "default":
        model = "fixed" if k < 4 else "random"
    se = se_fixed * max(1.0, rse) if model == "random" else se_fixed
    lo, hi, p = interval(est, se, alpha, df=(k - 1) if distribution == "t" else None)
    return IVWResult(
        "IVW",
        est,
        se,
        lo,
        hi,
        float(p),
        k,
        alpha=alpha,
        model=model,
        distribution=distribution,
        q=q,
        q_df=k - 1,
        q_pvalue=float(stats.chi2.sf(q, k - 1)) if k > 1 else _NAN,
        rse=rse,
        i2=max(0.0, (q - (k - 1)) / q) if k > 1 and q > 0 else _NAN,
        f_stat=float(np.mean((bx / bxse) ** 2)),
    )


# --------------------------------------------------------------------------- Egger


def _i2_gx(bx, bxse, byse):
    """I^2_GX of Bowden et al. 2016 on oriented (absolute) bx, scaled by byse."""
    y = np.abs(bx) / byse
    s = bxse / byse
    v = s**-2
    ybar = np.sum(v * y) / np.sum(v)
    q = np.sum(v * (y - ybar) ** 2)
    return float(max(0.0, (q - (bx.size - 1)) / q)) if q > 0 else 0.0


# Egger's slope and intercept are separable only if the oriented |bx| vary: the weighted
# design's determinant, relative to its scale, must exceed this (one rule for egger and per_locus).
_EGGER_SINGULAR = 1e-10
# values that differ by at most this fraction of their size are equal: computed ratios and residuals carry
# round-off that depends on the CPU's kernels, so "equal" is never decided by exact float equality
_EQUAL_RTOL = 1e-9


def _egger_design_ok(sw, sx, sxx):
    """True where the weighted Egger design [1, |bx|] has full rank (relative determinant)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return (sw * sxx - sx * sx) > _EGGER_SINGULAR * sw * sxx


def _egger_rule(est, se_fixed, rse, alpha, distribution, df):
    """MendelianRandomization's Egger SE, CI and p-value, elementwise over loci (or one fit).

    SE = fixed-effect SE x max(1, rse). R computes ``se_lm / min(1, sigma)`` with
    ``se_lm = sigma * se_fixed``: the same number for sigma > 0; written this way an exact
    fit (sigma = 0) gets the fixed-effect SE, its limit, instead of 0/0. With
    ``distribution="t"`` the interval uses the unfloored ``se_lm`` on t(df), and when
    RSE < 1 the wider of that and the normal interval (an exact fit: the normal one).
    Returns ``(se, ci_low, ci_high, pvalue)``.
    """
    est, se_fixed, rse = np.asarray(est, float), np.asarray(se_fixed, float), np.asarray(rse, float)
    se = se_fixed * np.maximum(1.0, rse)
    zcrit = stats.norm.ppf(1 - alpha / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        lo, hi, p = est - zcrit * se, est + zcrit * se, 2 * stats.norm.sf(np.abs(est / se))
        if distribution == "normal":
            return se, lo, hi, p
        t = stats.t(np.asarray(df, float))
        se_lm = se_fixed * rse
        tcrit = t.ppf(1 - alpha / 2)
        p_t = np.where(se_lm > 0, 2 * t.sf(np.abs(est / np.where(se_lm > 0, se_lm, 1.0))), 0.0)
    wide = rse >= 1  # then se_lm is the reported SE and t alone decides
    lo = np.where(wide, est - tcrit * se_lm, np.minimum(est - tcrit * se_lm, lo))
    hi = np.where(wide, est + tcrit * se_lm, np.maximum(est + tcrit * se_lm, hi))
    return se, lo, hi, np.where(wide, p_t, np.maximum(p_t, p))


def egger(
    bx: ArrayLike,
    bxse: ArrayLike,
    by: ArrayLike,
    byse: ArrayLike,
    *,
    robust: bool = False,
    distribution: str = "normal",
    alpha: float = 0.05,
    seed: int = 0,
) -> MRResult:
    """MR-Egger regression: ``by ~ intercept + bx`` weighted by ``byse^-2``.

    Instruments are first oriented so that ``bx >= 0`` (``by`` takes the sign of
    ``bx``; a zero ``bx`` keeps sign 0, as in MendelianRandomization). The slope
    is the causal estimate, the intercept measures directional pleiotropy.
    SEs are multiplied by max(1, residual SE). ``robust=True`` fits the
    MM-estimator of R ``robustbase::lmrob`` (bisquare, 95 % efficiency) instead of
    least squares; ``seed`` only matters when there are more than 500 elemental
    subsets to draw from. ``distribution="t"`` uses t(K-2) with
    MendelianRandomization's "wider of normal and t" rule when RSE < 1.
    """
    check_choice(distribution, "distribution", ("normal", "t"))
    alpha = check_alpha(alpha)
    bx, bxse, by, byse = summary_stats(bx, bxse, by, byse, min_k=3, method="egger")
    k = bx.size
    sgn = np.sign(bx)
    ox, oy = np.abs(bx), by * sgn
    w = byse**-2
    X = np.column_stack([np.ones(k), ox])
    if not _egger_design_ok(w.sum(), np.sum(w * ox), np.sum(w * ox * ox)):
        raise ValueError(
            "egger: all |bx| are (nearly) equal, or one instrument's weight 1/byse^2 outweighs the rest, so the "
            "intercept and the slope cannot be separated (singular design); use ivw, or instruments of different "
            "strength"
        )
    if robust:
        with np.errstate(invalid="ignore", divide="ignore"):  # an exact fit is reported below
            try:
                fit = _robust.lmrob_mm(X, oy, w, seed=seed)
            except ValueError as exc:
                raise ValueError(f"egger(robust=True): {exc}; use robust=False") from exc
        coef, sigma = fit.coef, fit.scale
        if not (np.isfinite(sigma) and sigma > 0 and np.isfinite(fit.cov).all()):
            raise ValueError(
                f"egger(robust=True): the MM fit is exact or degenerate (robust scale {sigma}), "
                "so it has no standard error; use robust=False"
            )
        se_fixed = np.sqrt(np.diag(fit.cov)) / sigma
    else:
        sw = np.sqrt(w)
        coef, *_ = np.linalg.lstsq(X * sw[:, None], oy * sw, rcond=None)
        resid = oy - X @ coef
        sigma = float(np.sqrt(np.sum(w * resid**2) / (k - 2)))
        se_fixed = np.sqrt(np.diag(np.linalg.inv(X.T @ (X * w[:, None]))))
    q = float(np.sum(w * (oy - X @ coef) ** 2))
    (se, ise), (lo, ilo), (hi, ihi), (p, ip) = _egger_rule(
        coef[::-1], se_fixed[::-1], sigma, alpha, distribution, k - 2
    )
    return EggerResult(
        "MR-Egger (robust)" if robust else "MR-Egger",
        float(coef[1]),
        float(se),
        float(lo),
        float(hi),
        float(p),
        k,
        alpha=alpha,
        model="MM (bisquare)" if robust else "random",
        distribution=distribution,
        q=q,
        q_df=k - 2,
        q_pvalue=float(stats.chi2.sf(q, k - 2)),
        rse=float(sigma),
        intercept=float(coef[0]),
        intercept_se=float(ise),
        intercept_ci_low=float(ilo),
        intercept_ci_high=float(ihi),
        intercept_pvalue=float(ip),
        i2_gx=_i2_gx(bx, bxse, byse),
    )


# --------------------------------------------------------------------------- heterogeneity


@dataclass(frozen=True)
class Heterogeneity:
    """Cochran's Q (IVW), Rücker's Q' (Egger) and their difference (TwoSampleMR rules)."""

    q_ivw: float
    q_ivw_df: int
    q_ivw_pvalue: float
    q_egger: float
    q_egger_df: int
    q_egger_pvalue: float
    q_diff: float
    q_diff_pvalue: float

    def __repr__(self) -> str:
        return (
            f"Heterogeneity(Q_IVW={self.q_ivw:.4g} [df {self.q_ivw_df}, p={self.q_ivw_pvalue:.3g}], "
            f"Q_Egger={self.q_egger:.4g} [df {self.q_egger_df}, p={self.q_egger_pvalue:.3g}], "
            f"Q_diff={self.q_diff:.4g} [p={self.q_diff_pvalue:.3g}])"
        )


def heterogeneity(bx: ArrayLike, bxse: ArrayLike, by: ArrayLike, byse: ArrayLike) -> Heterogeneity:
    """Heterogeneity statistics with first-order weights ``byse^-2``.

    Q_diff = max(0, Q_IVW - Q_Egger) on 1 df; a small p says the Egger intercept
    explains part of the heterogeneity, i.e. directional pleiotropy.
    """
    bx, bxse, by, byse = summary_stats(bx, bxse, by, byse, min_k=3, method="heterogeneity")
    k = bx.size
    qi = ivw(bx, bxse, by, byse).q
    qe = egger(bx, bxse, by, byse).q
    qd = max(0.0, qi - qe)
    return Heterogeneity(
        qi,
        k - 1,
        float(stats.chi2.sf(qi, k - 1)),
        qe,
        k - 2,
        float(stats.chi2.sf(qe, k - 2)),
        qd,
        float(stats.chi2.sf(qd, 1)),
    )


# --------------------------------------------------------------------------- median


def _ratio_inputs(bx, bxse, by, byse, n_boot, method):
    """Checks shared by the bootstrap estimators built on the ratios by/bx."""
    bx, bxse, by, byse = summary_stats(bx, bxse, by, byse, min_k=3, method=method)
    if n_boot < 2:
        raise ValueError(f"n_boot must be at least 2, got {n_boot}")
    check_nonzero_bx(bx, method)
    return bx, bxse, by, byse


def _weighted_median_rows(r: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Bowden's interpolated weighted median of each row of ``r`` (shape (B, K))."""
    order = np.argsort(r, axis=1)
    rs = np.take_along_axis(r, order, axis=1)
    ws = np.take_along_axis(np.broadcast_to(w, r.shape), order, axis=1)
    ws = ws / ws.sum(axis=1, keepdims=True)
    pcum = np.cumsum(ws, axis=1) - 0.5 * ws
    below = np.clip((pcum < 0.5).sum(axis=1) - 1, 0, r.shape[1] - 2)
    rows = np.arange(r.shape[0])
    r0, r1 = rs[rows, below], rs[rows, below + 1]
    p0, p1 = pcum[rows, below], pcum[rows, below + 1]
    return r0 + (r1 - r0) * (0.5 - p0) / (p1 - p0)


def weighted_median(
    bx: ArrayLike,
    bxse: ArrayLike,
    by: ArrayLike,
    byse: ArrayLike,
    *,
    weighting: str = "weighted",
    n_boot: int = 10000,
    seed: int | None = None,
    alpha: float = 0.05,
) -> MRResult:
    """Weighted (Bowden 2016), simple or penalized median of the ratio estimates.

    Weights are first-order, ``(bx/byse)^2`` (MendelianRandomization). Penalized
    weights are multiplied by min(1, 20 p_j), p_j the chi^2_1 tail of the
    instrument's heterogeneity contribution. The SE is the SD of a parametric
    bootstrap (``n_boot`` draws of bx and by, weights held fixed), so it depends
    on ``seed``; the estimate does not.
    """
    check_choice(weighting, "weighting", ("weighted", "simple", "penalized"))
    alpha = check_alpha(alpha)
    bx, bxse, by, byse = _ratio_inputs(bx, bxse, by, byse, n_boot, "weighted_median")
    k = bx.size
    r = by / bx
    w1 = (bx / byse) ** 2
    w = np.ones(k) if weighting == "simple" else w1
    est = float(_weighted_median_rows(r[None], w)[0])
    if weighting == "penalized":
        pen = stats.chi2.sf(w1 * (r - est) ** 2, 1)
        w = w1 * np.minimum(1.0, 20 * pen)
        est = float(_weighted_median_rows(r[None], w)[0])
    rng = np.random.default_rng(seed)
    se = float(
        _bootstrap(lambda bxb, byb: _weighted_median_rows(byb / bxb, w), bx, bxse, by, byse, n_boot, rng).std(ddof=1)
    )
    lo, hi, p = interval(est, se, alpha)
    return MedianResult(f"{weighting.capitalize()} median", est, se, lo, hi, float(p), k, alpha=alpha, model=weighting)


def _bootstrap(stat, bx, bxse, by, byse, n_boot, rng, chunk=2000):
    out = []
    for start in range(0, n_boot, chunk):
        b = min(chunk, n_boot - start)
        bxb = rng.normal(bx, bxse, size=(b, bx.size))
        byb = rng.normal(by, byse, size=(b, by.size))
        out.append(stat(bxb, byb))
    return np.concatenate(out)


# --------------------------------------------------------------------------- mode


def _mode_rows(r: np.ndarray, w: np.ndarray, phi: float, chunk: int = 256) -> np.ndarray:
    """Mode of the weighted Gaussian KDE of each row of ``r`` (B, K) on R's grid.

    Bandwidth h = phi * 0.9 * min(sd, mad) / K^(1/5) (Hartwig 2017); the KDE is
    evaluated exactly on density()'s 512 points seq(min - 3h, max + 3h).
    """
    b, k = r.shape
    w = w / w.sum()
    sd = r.std(axis=1, ddof=1)
    med = np.median(r, axis=1, keepdims=True)
    mad = 1.4826 * np.median(np.abs(r - med), axis=1)
    h = phi * 0.9 * np.minimum(sd, mad) / k**0.2
    h = np.maximum(h, 1e-8)  # TwoSampleMR's floor: identical ratios would give h = 0
    out = np.empty(b)
    t = np.linspace(0.0, 1.0, 512)
    for s in range(0, b, chunk):
        rr, hh = r[s : s + chunk], h[s : s + chunk, None]
        lo = rr.min(axis=1, keepdims=True) - 3 * hh
        hi = rr.max(axis=1, keepdims=True) + 3 * hh
        grid = lo + (hi - lo) * t  # (c, 512)
        z = (grid[:, :, None] - rr[:, None, :]) / hh[:, :, None]
        dens = np.exp(-0.5 * z * z) @ w  # (c, 512); constant factors do not move the argmax
        out[s : s + chunk] = grid[np.arange(grid.shape[0]), dens.argmax(axis=1)]
    return out


def mbe(
    bx: ArrayLike,
    bxse: ArrayLike,
    by: ArrayLike,
    byse: ArrayLike,
    *,
    weighting: str = "weighted",
    stderror: str = "delta",
    phi: float = 1.0,
    n_boot: int = 10000,
    seed: int | None = None,
    alpha: float = 0.05,
) -> MRResult:
    """Mode-based estimate (Hartwig, Davey Smith & Bowden 2017).

    Weights are inverse delta-method variances of the ratios (``"weighted"``) or
    equal (``"simple"``); the estimate is the highest point of the weighted KDE on
    R's 512-point density grid. The SE is the MAD of a bootstrap in which each
    ratio is drawn from N(ratio, se_j) with ``se_j`` first-order (``stderror="simple"``,
    assumes no measurement error in bx) or delta (default).
    """
    check_choice(weighting, "weighting", ("weighted", "simple"))
    check_choice(stderror, "stderror", ("delta", "simple"))
    alpha = check_alpha(alpha)
    if not phi > 0:
        raise ValueError(f"phi must be > 0, got {phi}")
    bx, bxse, by, byse = _ratio_inputs(bx, bxse, by, byse, n_boot, "mbe")
    k = bx.size
    r = by / bx
    if np.ptp(r) <= _EQUAL_RTOL * np.abs(r).max():
        # equal ratios: the KDE's bandwidth sits at its floor, and whether the bootstrap's modes land on
        # one grid point or its neighbour is decided by round-off (SE 0 on some CPUs, ~1e-10 on others)
        raise ValueError(
            f"mbe: all {k} ratio estimates are equal (to {_EQUAL_RTOL:g} of their size), so the mode's "
            "bootstrap has no spread to measure; use ivw"
        )
    se_delta = ratio_se(bx, bxse, by, byse, 2)
    w = se_delta**-2 if weighting == "weighted" else np.ones(k)
    est = float(_mode_rows(r[None], w, phi)[0])
    se_draw = se_delta if stderror == "delta" else ratio_se(bx, bxse, by, byse, 1)
    rng = np.random.default_rng(seed)
    draws = np.concatenate(
        [_mode_rows(rng.normal(r, se_draw, size=(min(2000, n_boot - s), k)), w, phi) for s in range(0, n_boot, 2000)]
    )
    se = float(stats.median_abs_deviation(draws, scale="normal"))
    lo, hi, p = interval(est, se, alpha)
    return ModeResult(
        f"{weighting.capitalize()} mode",
        est,
        se,
        lo,
        hi,
        float(p),
        k,
        alpha=alpha,
        model=f"{weighting}, {stderror} SE, phi={phi:g}",
    )


# --------------------------------------------------------------------------- multivariable


@dataclass(frozen=True, repr=False)
class MultivariableResult(Estimate):
    """Multivariable MR: ``estimate``, ``se``, ``ci_low``, ``ci_high`` and ``pvalue`` are arrays with one
    direct effect per exposure (named in ``exposures``), each adjusted for the others;
    ``conditional_f`` per exposure when the exposures' SEs were given (else empty)."""

    n_instruments: int
    exposures: tuple[str, ...]
    _: KW_ONLY
    model: str = ""
    distribution: str = "normal"
    q: float = _NAN
    q_df: int = 0
    q_pvalue: float = _NAN
    rse: float = _NAN
    intercept: float = _NAN
    intercept_se: float = _NAN
    intercept_pvalue: float = _NAN
    orientate: int = 0
    conditional_f: tuple[float, ...] = ()

    def __repr__(self) -> str:
        level = round(100 * (1 - self.alpha))
        parts = "; ".join(
            f"{name} {e:.4g} (SE {s:.4g}, {level}% CI {lo:.4g} to {hi:.4g}, p={p:.3g})"
            for name, e, s, lo, hi, p in zip(
                self.exposures, self.estimate, self.se, self.ci_low, self.ci_high, self.pvalue
            )
        )
        icpt = f", intercept {self.intercept:.3g} (SE {self.intercept_se:.3g})" if np.isfinite(self.intercept) else ""
        return f"{self.method}: {parts} (K={self.n_instruments}{icpt}, Q={self.q:.4g} on {self.q_df} df)"

    __str__ = __repr__

    def to_frame(self) -> pd.DataFrame:
        """One row per exposure: ``exposure, estimate, se, ci_low, ci_high, pvalue`` (and
        ``conditional_f`` when known)."""
        frame = pd.DataFrame(
            {
                "exposure": self.exposures,
                "estimate": self.estimate,
                "se": self.se,
                "ci_low": self.ci_low,
                "ci_high": self.ci_high,
                "pvalue": self.pvalue,
            }
        )
        if self.conditional_f:
            frame["conditional_f"] = self.conditional_f
        return frame


def multivariable(
    bx: ArrayLike,
    by: ArrayLike,
    byse: ArrayLike,
    *,
    bxse: ArrayLike | None = None,
    method: str = "ivw",
    model: str = "default",
    distribution: str = "normal",
    orientate: int = 1,
    exposures: Sequence[str] | None = None,
    alpha: float = 0.05,
) -> MultivariableResult:
    """Multivariable MR (Burgess & Thompson 2015; MVMR-Egger, Rees et al. 2017) of ``by`` on several exposures.

    ``bx``: ``(n_variants, n_exposures)`` variant-exposure associations; ``by``, ``byse``:
    ``(n_variants,)``. The direct effect of each exposure is the coefficient of a weighted
    regression of ``by`` on the columns of ``bx`` (weights ``byse^-2``), without an intercept
    for ``method="ivw"`` (R ``mr_mvivw``) and with one for ``"egger"`` (``mr_mvegger``, after
    orienting every variant so that its association with exposure ``orientate`` (1-based) is
    positive). SEs follow MendelianRandomization: ``model="fixed"`` is the fixed-effect SE,
    ``"random"`` multiplies it by max(1, residual SE); ``"default"`` is fixed with fewer than 4
    variants (IVW, whatever the number of exposures, as R's ``mr_mvivw``) and random otherwise
    (always random for Egger).
    ``distribution="t"`` takes intervals and p-values from t(n - parameters).
    In DeepMR, a second exposure is e.g. the model's output for a confounding TF: adjusting
    for it removes the part of the outcome effect that flows through it.

    ``bxse`` (the SEs of ``bx``, same shape): when given, the result carries each exposure's
    conditional F statistic (:func:`conditional_f`), its instruments' strength for that exposure
    given the others; below about 10 the direct effects suffer weak-instrument bias.
    """
    check_choice(method, "method", ("ivw", "egger"))
    check_choice(model, "model", ("default", "fixed", "random"))
    check_choice(distribution, "distribution", ("normal", "t"))
    alpha = check_alpha(alpha)
    X = np.asarray(bx, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"bx must be (n_variants, n_exposures), got shape {X.shape}")
    n, m = X.shape
    y, s = as_1d(by, "by"), as_1d(byse, "byse")
    if y.size != n or s.size != n:
        raise ValueError(f"bx has {n} variants but by has {y.size} and byse {s.size}")
    for arr, name in ((X.ravel(), "bx (flattened row by row)"), (y, "by"), (s, "byse")):
        check_finite(arr, name)
    check_positive(s, "byse")
    cond_f = tuple(float(f) for f in conditional_f(X, bxse)) if bxse is not None else ()
    names = tuple(exposures) if exposures is not None else tuple(f"exposure {j + 1}" for j in range(m))
    if len(names) != m:
        raise ValueError(f"exposures has {len(names)} names for {m} columns of bx")
    p = m + (method == "egger")
    if n <= p:
        raise ValueError(f"multivariable {method} needs more variants ({n}) than parameters ({p})")
    if method == "egger":
        if not 1 <= orientate <= m:
            raise ValueError(f"orientate must be an exposure number in 1..{m}, got {orientate}")
        sign = np.where(X[:, orientate - 1] < 0, -1.0, 1.0)
        X, y = X * sign[:, None], y * sign
        X = np.column_stack([np.ones(n), X])
    w = s**-2
    xtwx = X.T @ (X * w[:, None])
    if np.linalg.cond(xtwx) > 1e12:
        raise ValueError("the exposures' associations are (nearly) collinear: their effects cannot be separated")
    coef = np.linalg.solve(xtwx, X.T @ (w * y))
    q = float(np.sum(w * (y - X @ coef) ** 2))
    df = n - p
    rse = float(np.sqrt(q / df))
    if model == "default":  # MendelianRandomization: fixed below 4 variants, whatever the number of exposures
        model = "random" if method == "egger" or n >= 4 else "fixed"
    se = np.sqrt(np.diag(np.linalg.inv(xtwx))) * (max(1.0, rse) if model == "random" else 1.0)
    lo, hi, pv = interval(coef, se, alpha, df=df if distribution == "t" else None)
    k = 1 if method == "egger" else 0
    return MultivariableResult(
        "Multivariable MR-Egger" if method == "egger" else "Multivariable IVW",
        coef[k:],
        se[k:],
        lo[k:],
        hi[k:],
        np.asarray(pv)[k:],
        n,
        names,
        alpha=alpha,
        model=model,
        distribution=distribution,
        q=q,
        q_df=df,
        q_pvalue=float(stats.chi2.sf(q, df)),
        rse=rse,
        intercept=float(coef[0]) if k else _NAN,
        intercept_se=float(se[0]) if k else _NAN,
        intercept_pvalue=float(np.asarray(pv)[0]) if k else _NAN,
        orientate=orientate if k else 0,
        conditional_f=cond_f,
    )


def conditional_f(bx: ArrayLike, bxse: ArrayLike) -> np.ndarray:
    """Conditional F statistic of each exposure's instruments given the other exposures, from summary
    data with uncorrelated exposure estimates (Sanderson, Spiller & Bowden, Stat. Med. 2021, eq. for
    ``F_{TS,k}``; Sanderson & Windmeijer 2016 for individual data).

    ``bx``, ``bxse``: ``(L variants, K exposures)``. For exposure k, ``delta`` regresses ``bx[:, k]`` on
    the other columns (least squares through the origin, as the MVMR package does), and
    ``F_k = sum_j (bx_jk - bx_j,-k delta)^2 / sigma2_jk / (L - K + 1)`` with
    ``sigma2_jk = bxse_jk^2 + sum_l delta_l^2 bxse_jl^2``. Returns ``(K,)``; with one exposure it is the
    mean of ``(bx / bxse)^2``, the usual F statistic. The MVMR package's ``strength_mvmr`` (0.4.x)
    divides by ``L`` instead of ``L - K + 1``: multiply by ``(L - K + 1) / L`` to compare.
    """
    X, S = np.asarray(bx, dtype=np.float64), np.asarray(bxse, dtype=np.float64)
    if X.ndim != 2 or S.shape != X.shape:
        raise ValueError(f"bx and bxse must both be (n_variants, n_exposures), got {X.shape} and {S.shape}")
    check_finite(X.ravel(), "bx (flattened row by row)")
    check_finite(S.ravel(), "bxse (flattened row by row)")
    check_positive(S.ravel(), "bxse (flattened row by row)")
    n, m = X.shape
    if n <= m - 1:
        raise ValueError(f"conditional_f needs more variants ({n}) than other exposures ({m - 1})")
    out = np.empty(m)
    for k in range(m):
        others = np.delete(np.arange(m), k)
        delta = np.linalg.lstsq(X[:, others], X[:, k], rcond=None)[0] if m > 1 else np.zeros(0)
        sigma2 = S[:, k] ** 2 + (S[:, others] ** 2) @ (delta**2)
        out[k] = np.sum((X[:, k] - X[:, others] @ delta) ** 2 / sigma2) / (n - m + 1)
    return out


# --------------------------------------------------------------------------- per locus

_PER_LOCUS_COLUMNS = [
    "locus",
    "method",
    "n_instruments",
    "estimate",
    "se",
    "ci_low",
    "ci_high",
    "pvalue",
    "q",
    "q_df",
    "q_pvalue",
    "rse",
    "intercept",
    "intercept_se",
    "intercept_pvalue",
    "status",
]


@dataclass(frozen=True)
class Estimator:
    """One per-locus estimator: its ``key`` (``per_locus(method=key)``), the ``name`` tables and figures
    show, the ``cli`` spelling (``deepmr mr --estimator``), the fewest instruments it needs, and how
    :func:`per_locus` runs it: a vectorised ``kernel`` over all loci at once, or ``scalar``, called
    per locus as ``scalar((bx, bxse, by, byse), options)`` with the ``per_locus`` options as a dict.
    ``bootstrap``: whether it takes ``n_boot`` and ``seed``."""

    key: str
    name: str
    cli: str
    min_instruments: int
    kernel: str | None = None
    scalar: Callable | None = None
    bootstrap: bool = False


# The one table of estimators: per_locus, the deepmr command and the book's studies read it. Adding an
# estimator = its function, one record here, and its reference test. ConMix is not here: it has no SE to
# pool (its confidence set comes from the likelihood and can be a union of intervals).
ESTIMATORS: dict[str, Estimator] = {
    e.key: e
    for e in (
        Estimator("ivw", "IVW", "ivw", 2, kernel="ivw"),
        Estimator("egger", "MR-Egger", "egger", 3, kernel="egger"),
        Estimator("divw", "dIVW", "divw", 2, kernel="divw"),
        Estimator(
            "egger_robust",
            "robust MR-Egger",
            "egger-robust",
            3,
            scalar=lambda a, o: egger(*a, robust=True, distribution=o["distribution"], alpha=o["alpha"]),
        ),
        Estimator(
            "weighted_median",
            "weighted median",
            "median",
            3,
            scalar=lambda a, o: weighted_median(
                *a, weighting=o["weighting"], n_boot=o["n_boot"], seed=o["seed"], alpha=o["alpha"]
            ),
            bootstrap=True,
        ),
        Estimator(
            "mbe",
            "mode",
            "mode",
            3,
            scalar=lambda a, o: mbe(*a, weighting=o["weighting"], n_boot=o["n_boot"], seed=o["seed"], alpha=o["alpha"]),
            bootstrap=True,
        ),
        # overdispersed, Huber loss (raps()'s defaults), solved for all loci at once by raps_loci
        Estimator("raps", "MR-RAPS", "raps", 3, kernel="raps"),
        # n_boot is the number of simulated datasets here; the outlier-corrected estimate is pooled
        Estimator(
            "presso",
            "MR-PRESSO",
            "presso",
            4,
            scalar=lambda a, o: presso(*a, n_sim=o["n_boot"], seed=o["seed"] or 0, alpha=o["alpha"]),
            bootstrap=True,
        ),
    )
}


def per_locus(
    frame: pd.DataFrame,
    method: str = "ivw",
    *,
    locus: str = "locus",
    model: str = "default",
    distribution: str = "normal",
    alpha: float = 0.05,
    min_instruments: int | None = None,
    weighting: str = "weighted",
    n_boot: int = 10000,
    seed: int | None = None,
    weights: str = "simple",
    psi: float | str = 0.0,
) -> pd.DataFrame:
    """MR for every locus of a variant table in one pass.

    ``frame`` has one row per instrument with columns ``locus, bx, bxse, by, byse``.
    Returns one row per locus (in order of first appearance) with
    ``estimate, se, ci_low, ci_high, pvalue, n_instruments, q, q_df, q_pvalue, rse``
    and, for Egger, ``intercept, intercept_se, intercept_pvalue``, plus ``status``:
    ``"ok"`` or the reason the locus has no estimate (too few instruments,
    non-finite or non-positive input, all bx zero, a degenerate fit). One bad locus
    never affects the others, and no locus is ``"ok"`` with a NaN.

    ``method`` is a key of :data:`ESTIMATORS`. ``"ivw"``, ``"egger"`` and ``"divw"`` are vectorised
    kernels over segment sums and match :func:`ivw` / :func:`egger` / :func:`divw` with the same options
    (``model`` applies to IVW, ``distribution`` to both). The others (``"egger_robust"``,
    ``"weighted_median"``, ``"mbe"``, ``"raps"``: overdispersed, Huber loss) run the scalar
    estimator per locus, with ``weighting``, ``n_boot`` and ``seed`` for the bootstrap ones.

    ``weights="delta"`` (IVW only) uses :func:`ivw`'s second-order weights, with ``psi`` the
    correlation of each instrument's ``bx`` and ``by`` errors: one number, or the name of a column
    of ``frame`` holding one per instrument (``"psi"`` from
    :func:`deepmr_utils.pipeline.variant_effects` with ``member_correlation=True``).
    """
    check_choice(method, "method", tuple(ESTIMATORS))
    spec = ESTIMATORS[method]
    check_choice(model, "model", ("default", "fixed", "random"))
    check_choice(distribution, "distribution", ("normal", "t"))
    check_choice(weights, "weights", ("simple", "delta"))
    if weights == "delta" and spec.kernel != "ivw":
        raise ValueError(f"weights='delta' is IVW's second-order weighting; method {method!r} does not take it")
    alpha = check_alpha(alpha)
    loci = _Loci.from_frame(frame, locus, max(spec.min_instruments, min_instruments or 0))
    if weights == "delta":
        loci.delta_weights(_psi_rows(frame, psi))
    out = pd.DataFrame({locus: loci.labels, "method": method, "n_instruments": loci.k})
    for c in _PER_LOCUS_COLUMNS[3:-1]:
        out[c] = np.nan
    if spec.kernel == "ivw":
        _ivw_kernel(loci, out, model, distribution, alpha)
    elif spec.kernel == "egger":
        _egger_kernel(loci, out, distribution, alpha)
    elif spec.kernel == "divw":
        _divw_kernel(loci, out, alpha)
    elif spec.kernel == "raps":
        _raps_kernel(loci, out, alpha)
    else:
        options = {"distribution": distribution, "alpha": alpha, "weighting": weighting, "n_boot": n_boot, "seed": seed}
        _scalar_kernel(loci, out, lambda *a: spec.scalar(a, options))
    out["status"] = loci.status
    return _flag_degenerate(out)


@dataclass
class _Loci:
    """A variant table cut into loci: the rows' locus codes, the four columns, and each locus's status."""

    codes: np.ndarray
    labels: np.ndarray
    k: np.ndarray
    bx: np.ndarray
    bxse: np.ndarray
    by: np.ndarray
    byse: np.ndarray
    status: np.ndarray
    ok: np.ndarray
    var: np.ndarray | None = None  # the weights' variances when not byse^2 (delta_weights)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, locus: str, min_k: int) -> _Loci:
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"frame must be a pandas DataFrame, got {type(frame).__name__}")
        need = [locus, "bx", "bxse", "by", "byse"]
        missing = [c for c in need if c not in frame.columns]
        if missing:
            raise ValueError(f"frame is missing column(s) {missing}; it needs {need}")
        if len(frame) == 0:
            raise ValueError("frame is empty: no instruments to analyse")
        codes, labels = pd.factorize(frame[locus], sort=False)
        if (codes < 0).any():
            raise ValueError(f"column {locus!r} has missing values at row {int(np.flatnonzero(codes < 0)[0])}")
        n = len(labels)
        bx, bxse, by, byse = (
            frame[c].to_numpy(dtype=np.float64, na_value=np.nan) for c in ("bx", "bxse", "by", "byse")
        )
        k = np.bincount(codes, minlength=n)
        loci = cls(codes, np.asarray(labels), k, bx, bxse, by, byse, np.full(n, "ok", dtype=object), np.ones(n, bool))
        finite = np.isfinite(bx) & np.isfinite(by) & np.isfinite(bxse) & np.isfinite(byse)
        positive = (bxse > 0) & (byse > 0)
        weighable = weights_finite(byse)
        valid_row = finite & positive & weighable
        # the first offending row of each locus is reported; non-finite values take precedence
        for mask, text in (
            (finite & positive & ~weighable, "byse so small that 1/byse^2 overflows"),
            (finite & ~positive, "bxse/byse must be > 0"),
            (~finite, "non-finite bx/bxse/by/byse"),
        ):
            loci.fail_rows(mask, text)
        loci.fail(loci.ok & (np.bincount(codes[valid_row & (bx != 0)], minlength=n) == 0), "all bx are zero")
        few = loci.ok & (k < min_k)
        loci.fail(few, [f"too few instruments ({m} < {min_k})" for m in k[few]])
        return loci

    def fail(self, mask: np.ndarray, reason) -> None:
        """Give the loci in ``mask`` the status ``reason`` (one string, or one per locus)."""
        self.status[mask] = reason
        self.ok &= ~mask

    def fail_rows(self, rows: np.ndarray, text: str) -> None:
        """Fail every locus with a row in the row mask ``rows``, its status ``text`` naming its first such row."""
        if rows.any():
            first = np.full(self.k.size, -1)
            bad = np.flatnonzero(rows)[::-1]
            first[self.codes[bad]] = bad  # reversed, so the first row of a locus wins
            self.fail(first >= 0, [f"{text} (row {r})" for r in first[first >= 0]])

    def seg(self, v: np.ndarray) -> np.ndarray:
        """Per-locus sums of a per-row quantity."""
        return np.bincount(self.codes, weights=v, minlength=self.k.size)

    def usable_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``bx, by`` and the IVW weights (``1/byse^2``, or the second-order ones after
        :meth:`delta_weights`), zero on rows of failed loci (they add nothing to sums)."""
        var = self.byse * self.byse if self.var is None else self.var
        if self.ok.all():
            return self.bx, self.by, 1.0 / var
        use = self.ok[self.codes]
        w = np.where(use, 1.0 / np.where(use, var, 1.0), 0.0)
        return np.where(use, self.bx, 0.0), np.where(use, self.by, 0.0), w

    def delta_weights(self, psi: np.ndarray | float) -> None:
        """Use :func:`ivw`'s second-order variances ``byse^2 + (by bxse / bx)^2 - 2 psi by bxse byse / bx``;
        a locus with a zero ``bx`` or a variance that is not positive has no estimate, said why."""
        with np.errstate(divide="ignore", invalid="ignore"):
            var = _delta_variance(self.bx, self.bxse, self.by, self.byse, psi)
        for mask, text in (
            (self.bx == 0, "bx is zero (second-order weights divide by it)"),
            (~(np.isfinite(var) & (var > 0)), "second-order variance not positive"),
        ):
            self.fail_rows(mask & self.ok[self.codes], text)  # the first reason of a locus wins
        self.var = np.where(np.isfinite(var) & (var > 0), var, 1.0)


def _psi_rows(frame: pd.DataFrame, psi: float | str) -> np.ndarray | float:
    """``psi`` for :meth:`_Loci.delta_weights`: a number, or a column of ``frame`` checked row by row."""
    if isinstance(psi, str):
        if psi not in frame.columns:
            raise ValueError(f"psi names column {psi!r}, which frame does not have")
        return check_psi(frame[psi].to_numpy(dtype=np.float64, na_value=np.nan), len(frame))
    return check_psi(psi)


def _fill(out: pd.DataFrame, m: np.ndarray, **columns: np.ndarray) -> None:
    for name, values in columns.items():
        out.loc[m, name] = values[m]


def _ivw_kernel(loci: _Loci, out: pd.DataFrame, model: str, distribution: str, alpha: float) -> None:
    """IVW for every locus from segment sums (the same numbers as :func:`ivw`)."""
    x, y, w = loci.usable_rows()
    kk = np.where(loci.ok, loci.k, 0)
    sxx, sxy = loci.seg(w * x * x), loci.seg(w * x * y)
    with np.errstate(divide="ignore", invalid="ignore"):
        est = sxy / sxx
        q = loci.seg(w * (y - est[loci.codes] * x) ** 2)
        rse = np.sqrt(q / (kk - 1))
        se = 1 / np.sqrt(sxx)
    rand = (kk >= 4) if model == "default" else np.full(kk.size, model == "random")
    se = np.where(rand, se * np.maximum(1.0, rse), se)
    df = kk - 1
    dist = stats.norm if distribution == "normal" else stats.t(np.where(loci.ok, df, 1))
    crit = dist.ppf(1 - alpha / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = 2 * dist.sf(np.abs(est / se))
    m = loci.ok
    _fill(out, m, estimate=est, se=se, ci_low=est - crit * se, ci_high=est + crit * se, pvalue=p, q=q, q_df=df, rse=rse)
    out.loc[m, "q_pvalue"] = stats.chi2.sf(q[m], df[m])


def _egger_kernel(loci: _Loci, out: pd.DataFrame, distribution: str, alpha: float) -> None:
    """MR-Egger (least squares) for every locus from segment sums (the same numbers as :func:`egger`)."""
    x, y, w = loci.usable_rows()
    x, y = np.abs(x), y * np.sign(x)  # orient every instrument to raise the exposure
    sw, sx, sxx = loci.seg(w), loci.seg(w * x), loci.seg(w * x * x)
    sy, sxy = loci.seg(w * y), loci.seg(w * x * y)
    loci.fail(loci.ok & ~_egger_design_ok(sw, sx, sxx), "degenerate: all |bx| are equal (singular Egger design)")
    kk = np.where(loci.ok, loci.k, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        det = sw * sxx - sx * sx
        est = (sw * sxy - sx * sy) / det
        icpt = (sy - est * sx) / sw
        q = loci.seg(w * (y - icpt[loci.codes] - est[loci.codes] * x) ** 2)
        rse = np.sqrt(q / (kk - 2))
        se_fixed, ise_fixed = np.sqrt(sw / det), np.sqrt(sxx / det)
    df = np.where(loci.ok, kk - 2, 1)
    se, lo, hi, p = _egger_rule(est, se_fixed, rse, alpha, distribution, df)
    ise, _, _, ip = _egger_rule(icpt, ise_fixed, rse, alpha, distribution, df)
    m = loci.ok
    _fill(out, m, estimate=est, se=se, ci_low=lo, ci_high=hi, pvalue=p, q=q, q_df=df, rse=rse)
    _fill(out, m, intercept=icpt, intercept_se=ise, intercept_pvalue=ip)
    out.loc[m, "q_pvalue"] = stats.chi2.sf(q[m], df[m])


def _divw_kernel(loci: _Loci, out: pd.DataFrame, alpha: float) -> None:
    """dIVW (overdispersed SE) for every locus from segment sums (the same formula as :func:`divw`)."""
    use = loci.ok[loci.codes]
    # rows of failed loci get harmless values: they only enter their own (failed) locus's sums
    bx, by = np.where(use, loci.bx, 1.0), np.where(use, loci.by, 1.0)
    bxse, byse = np.where(use, loci.bxse, 1.0), np.where(use, loci.byse, 1.0)
    est, se, _, _ = divw_sums(bx, bxse, by, byse, loci.codes, loci.k.size)
    loci.fail(loci.ok & ~np.isfinite(est), f"degenerate: {DIVW_DEGENERATE}")
    crit = stats.norm.ppf(1 - alpha / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = 2 * stats.norm.sf(np.abs(est / se))
    _fill(out, loci.ok, estimate=est, se=se, ci_low=est - crit * se, ci_high=est + crit * se, pvalue=p)


def _raps_kernel(loci: _Loci, out: pd.DataFrame, alpha: float) -> None:
    """MR-RAPS (overdispersed, Huber loss) for every usable locus at once."""
    use = loci.ok[loci.codes]
    renumber = np.cumsum(loci.ok) - 1
    rows = [a[use] for a in (loci.bx, loci.bxse, loci.by, loci.byse)]
    fit = raps_loci(renumber[loci.codes[use]], int(loci.ok.sum()), *rows, alpha=alpha)
    idx = np.flatnonzero(loci.ok)
    failed = fit["status"] != "ok"
    loci.status[idx[failed]] = [f"degenerate: {m}" for m in fit["status"][failed]]
    m = np.zeros(loci.k.size, bool)
    m[idx[~failed]] = True
    columns = {c: np.full(loci.k.size, np.nan) for c in ("estimate", "se", "ci_low", "ci_high", "pvalue")}
    for c, v in columns.items():
        v[idx] = fit[c]
    loci.ok &= m
    _fill(out, m, **columns)


def _scalar_kernel(loci: _Loci, out: pd.DataFrame, fn: Callable) -> None:
    """Estimators without a closed form: one call per usable locus, a failed fit marks only its locus.
    Results are gathered in arrays and written once (a pandas cell write per value cost more than some fits)."""
    order = np.argsort(loci.codes, kind="stable")
    bounds = np.searchsorted(loci.codes[order], np.arange(loci.k.size + 1))
    names = ("estimate", "se", "ci_low", "ci_high", "pvalue", "q", "q_pvalue", "rse", "intercept", "intercept_se")
    names += ("intercept_pvalue", "q_df")
    values = {c: np.full(loci.k.size, np.nan) for c in names}
    m = np.zeros(loci.k.size, bool)
    for i in np.flatnonzero(loci.ok):
        idx = order[bounds[i] : bounds[i + 1]]
        try:
            res = fn(loci.bx[idx], loci.bxse[idx], loci.by[idx], loci.byse[idx])
        except ValueError as exc:  # inputs passed the checks, so this is a degenerate fit
            loci.status[i] = f"degenerate: {exc}"
            continue
        if not (np.isfinite(res.se) and res.se > 1e-12 * max(1.0, abs(res.estimate))):
            # e.g. every bootstrap draw gave the same mode: no usable uncertainty
            loci.status[i] = f"degenerate: SE is {res.se}"
            continue
        m[i] = True
        for c in names[:-1]:
            values[c][i] = getattr(res, c, np.nan)  # fields a method does not have stay NaN in the table
        if np.isfinite(getattr(res, "q", np.nan)):
            values["q_df"][i] = res.q_df
    loci.ok &= m
    _fill(out, m, **values)


def _flag_degenerate(out: pd.DataFrame) -> pd.DataFrame:
    """Never "ok" with a NaN: a locus whose estimate, SE, CI or p-value is not usable is degenerate."""
    ok = out.status == "ok"
    cols = ["estimate", "se", "ci_low", "ci_high", "pvalue"]
    vals = out.loc[ok, cols].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(vals).all(axis=1) | ~(vals[:, 1] > 0)
    if bad.any():
        idx = out.index[ok][bad]
        out.loc[idx, "status"] = [
            "degenerate: "
            + ", ".join(f"{c}={v:.3g}" for c, v in zip(cols, row) if not np.isfinite(v) or (c == "se" and not v > 0))
            for row in vals[bad]
        ]
        out.loc[idx, cols] = np.nan
    return out
