"""MM-regression with Tukey's bisquare, following R ``robustbase::lmrob`` defaults.

``lmrob`` (method "MM") first computes an S-estimate (50 % breakdown, bisquare
rho with ``c = 1.54764`` and ``b = 0.5``) by the fast-S algorithm, then runs
IRWLS for a bisquare M-estimate with ``c = 4.685061`` (95 % Gaussian
efficiency) at the fixed S-scale, and reports the covariance ``.vcov.avar1``
(Croux, Dhaene & Hoorelbeke 2003). Case weights are applied, as in ``lmrob``,
by multiplying rows of ``X`` and ``y`` by ``sqrt(w)``.

Our fast-S differs from robustbase only in how candidates are drawn: every
``p``-subset when there are at most ``n_resample`` of them (deterministic), else
``n_resample`` seeded random subsets. All candidates converge to the same local
minimum on well-behaved data, so the final MM fit agrees with R to R's own
convergence tolerance (``rel.tol = 1e-7``).
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations
from math import comb

import numpy as np
from scipy.optimize import brentq

from ._types import ArrayLike, Sequences

C_CHI = 1.54764  # lmrob.control()$tuning.chi for bisquare (50 % breakdown)
C_PSI = 4.685061  # lmrob.control()$tuning.psi for bisquare (95 % efficiency)
BB = 0.5
# An S-scale at or below this fraction of the (weighted) responses' largest magnitude is an exact
# fit. Exact arithmetic would give 0, but BLAS kernels leave round-off residuals (~1e-14 of the data
# with OpenBLAS's AVX-512 kernels, exactly 0 with others), so "zero" must be relative to the data.
EXACT_FIT_RTOL = 1e-9


def chi(u: ArrayLike, c: float) -> np.ndarray:
    """Bisquare rho normalised to rho(inf) = 1 (robustbase ``Mchi``)."""
    t = np.minimum((u / c) ** 2, 1.0)
    return 1.0 - (1.0 - t) ** 3


def chi_d1(u: ArrayLike, c: float) -> np.ndarray:
    t = (u / c) ** 2
    return np.where(t < 1, 6.0 * u / c**2 * (1.0 - t) ** 2, 0.0)


def psi(u: ArrayLike, c: float) -> np.ndarray:
    """Bisquare psi (robustbase ``Mpsi``): u (1 - (u/c)^2)^2 inside [-c, c]."""
    t = (u / c) ** 2
    return np.where(t < 1, u * (1.0 - t) ** 2, 0.0)


def psi_d1(u: ArrayLike, c: float) -> np.ndarray:
    t = (u / c) ** 2
    return np.where(t < 1, (1.0 - t) * (1.0 - 5.0 * t), 0.0)


def bisquare_weight(u: ArrayLike, c: float) -> np.ndarray:
    t = (u / c) ** 2
    return np.where(t < 1, (1.0 - t) ** 2, 0.0)


def m_scale(r: np.ndarray, p: int, c: float = C_CHI, b: float = BB) -> float:
    """Solve sum(chi(r / s)) / (n - p) = b for s (robustbase's M-scale)."""
    n = r.size
    a = np.abs(r)
    # as s falls to 0 the mean of chi rises to (nonzero residuals) / (n - p): when that is at most b there is no
    # positive root (an exact fit of most points), and halving s below would never end
    if np.count_nonzero(a) <= b * (n - p):
        return 0.0
    f = lambda s: chi(a / s, c).sum() / (n - p) - b  # noqa: E731  (decreasing in s)
    hi = max(a.max(), 1e-300) * 10.0
    while f(hi) > 0:
        hi *= 10.0
    lo = hi
    while f(lo) < 0:
        lo /= 2.0
    return brentq(f, lo, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)


def _m_scale_rows(r: np.ndarray, p: int, c: float = C_CHI, b: float = BB, iters: int = 200, s0=None) -> np.ndarray:
    """M-scale of every row of ``r`` (candidates x observations): the root in ``s`` of
    ``mean_{n-p}(chi(r/s)) = b``, to 1e-12 relative (:func:`m_scale` is the scalar reference).

    Safeguarded Newton: ``mean chi(|r|/s)`` falls as ``s`` grows, so each step keeps a bracket of the
    root and takes the Newton step when it stays inside, else the bracket's geometric midpoint. Five
    to eight steps, where the fixed-point iteration ``s <- s sqrt(mean chi / b)`` it replaces took
    about thirty (robust MR-Egger spent most of its time here). One row (the S-step's IRWLS) or many
    (the candidate fits) go through the same code."""
    n = r.shape[1]
    a = np.abs(r)
    s = np.median(a, axis=1) / 0.6745 if s0 is None else np.full(r.shape[0], float(s0))
    s = np.where(s > 0, s, a.max(axis=1))
    s = np.where(s > 0, s, 1.0)
    lo, hi = np.zeros_like(s), np.full_like(s, np.inf)
    for _ in range(iters):
        u = a / s[:, None]
        t = np.minimum((u / c) ** 2, 1.0)
        g = (1.0 - (1.0 - t) ** 3).sum(axis=1) / (n - p) - b
        # d/ds mean chi(a/s) = -mean(chi'(u) u) / s, with chi'(u) = 6 u / c^2 (1 - t)^2 inside [-c, c]
        slope = -(6.0 * u * u / c**2 * (1.0 - t) ** 2).sum(axis=1) / (n - p) / s
        lo, hi = np.where(g > 0, s, lo), np.where(g > 0, hi, s)  # g > 0: the root lies above s
        with np.errstate(divide="ignore", invalid="ignore"):
            newton = s - g / slope
        mid = np.where(np.isfinite(hi), np.sqrt(np.maximum(lo, 1e-300 * hi) * hi), 2.0 * s)
        # inclusive: at convergence the Newton step falls below one ulp and newton == s == lo or hi
        new = np.where((slope < 0) & (newton >= lo) & (newton <= hi), newton, mid)
        if np.all(np.abs(new - s) <= 1e-12 * s):
            s = new
            break
        s = new
    return np.where(a.max(axis=1) > 0, s, 0.0)


def _wls(x, y, w):
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(x * sw[:, None], y * sw, rcond=None)
    return coef


def _refine_s(x, y, beta, max_iter, tol, zero):
    """IRWLS for the S-estimate: weights chi'(u)/u at the current M-scale (``zero``: the exact-fit scale)."""
    p = x.shape[1]
    s = None
    for _ in range(max_iter):
        r = y - x @ beta
        s = float(_m_scale_rows(r[None], p, s0=s)[0])
        if s <= zero:
            return beta, 0.0
        w = bisquare_weight(r / s, C_CHI)  # chi'(u)/u is proportional to this
        if not np.any(w > 0):
            break
        new = _wls(x, y, w)
        done = np.linalg.norm(new - beta) <= tol * max(tol, np.linalg.norm(beta))
        beta = new
        if done:
            break
    return beta, m_scale(y - x @ beta, p)


@dataclass(frozen=True)
class MMFit:
    coef: np.ndarray
    cov: np.ndarray
    scale: float
    s_coef: np.ndarray
    converged: bool
    iterations: int


def lmrob_mm(
    x: Sequences,
    y: ArrayLike,
    weights: ArrayLike | None = None,
    *,
    n_resample: int = 500,
    seed: int = 0,
    max_iter: int = 500,
    tol: float = 1e-10,
) -> MMFit:
    """MM-estimate of ``y ~ x`` (``x`` includes any intercept column).

    Shapes: ``x`` (n, p), ``y`` (n,), ``weights`` (n,) case weights.
    Returns coefficients, their ``.vcov.avar1`` covariance and the S-scale.
    """
    x = np.asarray(x, float)
    y = np.asarray(y, float)
    n, p = x.shape
    if n <= p:
        raise ValueError(f"MM-regression needs more observations than parameters (n={n}, p={p})")
    if weights is not None:
        sw = np.sqrt(np.asarray(weights, float))
        x = x * sw[:, None]
        y = y * sw

    # fast-S: candidates from exact fits through p points, one refinement step each
    # (vectorised over candidates), then full refinement of the best two
    # (robustbase: k.fast.s = 1, best.r.s = 2)
    if comb(n, p) <= n_resample:
        subsets = np.array(list(combinations(range(n), p)))
    else:
        rng = np.random.default_rng(seed)
        subsets = np.stack([rng.choice(n, p, replace=False) for _ in range(n_resample)])
    xs, ys = x[subsets], y[subsets]  # (c, p, p), (c, p)
    det = np.linalg.det(xs)
    ok = np.abs(det) > 1e-12 * np.maximum(1.0, np.abs(xs).max(axis=(1, 2)) ** p)
    if not ok.any():
        raise ValueError("MM-regression: every elemental subset is singular (collinear design)")
    betas = np.linalg.solve(xs[ok], ys[ok][..., None])[..., 0]  # (c, p)
    scales = _m_scale_rows(y[None, :] - betas @ x.T, p)
    w = bisquare_weight((y[None, :] - betas @ x.T) / np.where(scales > 0, scales, 1.0)[:, None], C_CHI)
    xtwx = np.einsum("ni,cn,nj->cij", x, w, x)
    xtwy = np.einsum("ni,cn,n->ci", x, w, y)
    good = np.linalg.matrix_rank(xtwx) == p
    betas[good] = np.linalg.solve(xtwx[good], xtwy[good][..., None])[..., 0]
    scales = _m_scale_rows(y[None, :] - betas @ x.T, p)
    zero = EXACT_FIT_RTOL * float(np.abs(y).max())
    best = None
    for i in np.argsort(scales)[:2]:
        b, sc = _refine_s(x, y, betas[i], max_iter, tol, zero)
        if best is None or sc < best[1]:
            best = (b, sc)
    s_coef, scale = best
    if not scale > zero:
        raise ValueError(
            f"MM-regression: S-scale is {scale:.3g}, at most {EXACT_FIT_RTOL:g} of the largest |response| "
            "(an exact fit of at least half the points); the data are degenerate"
        )

    # MM step: bisquare M-estimate at the fixed S-scale
    beta = s_coef.copy()
    converged = False
    it = 0
    for it in range(1, max_iter + 1):  # noqa: B007 (reported after the loop)
        w = bisquare_weight((y - x @ beta) / scale, C_PSI)
        new = _wls(x, y, w)
        done = np.linalg.norm(new - beta) <= tol * max(tol, np.linalg.norm(beta))
        beta = new
        if done:
            converged = True
            break
    if not converged:
        raise ValueError(f"MM-regression IRWLS did not converge in {max_iter} iterations")

    cov = _vcov_avar1(x, y - x @ beta, y - x @ s_coef, scale)
    return MMFit(coef=beta, cov=cov, scale=float(scale), s_coef=s_coef, converged=converged, iterations=it)


def _vcov_avar1(x, r, r0, scale):
    """Asymptotic covariance of the MM-estimate (robustbase ``.vcov.avar1``)."""
    n = x.shape[0]
    rs, r0s = r / scale, r0 / scale
    w = psi_d1(rs, C_PSI)
    w0 = chi_d1(r0s, C_CHI)
    A = np.linalg.inv(x.T @ (x * w[:, None])) * scale
    a = A @ (x.T @ (w * rs)) / np.mean(w0 * r0s)
    w = psi(rs, C_PSI)
    w0 = chi(r0s, C_CHI)
    xww = x.T @ (w * w0)
    u1 = A @ (x.T @ (x * (w**2)[:, None])) @ (n * A)
    u2 = np.outer(a, xww @ A)
    u3 = np.outer(A @ xww, a)
    u4 = np.mean(w0**2 - BB**2) * np.outer(a, a)
    cov = (u1 - u2 - u3 + u4) / n
    cov = (cov + cov.T) / 2
    lam, q = np.linalg.eigh(cov)
    if np.any(lam < 0):
        # robustbase's "posdefify": drop negative eigenvalues, keep the diagonal
        d0 = np.diag(cov).copy()
        fixed = (q * np.maximum(lam, 0)) @ q.T
        dd = np.sqrt(np.maximum(d0, 0) / np.diag(fixed))
        cov = dd[:, None] * fixed * dd[None, :]
    return cov
