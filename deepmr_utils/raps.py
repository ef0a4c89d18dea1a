"""MR-RAPS: the robust adjusted profile score (Zhao, Wang, Hemani, Bowden & Small, Ann. Statist. 2020).

The profile likelihood of two-sample summary data, with the exposure effects' own noise in every
residual's variance: ``t_j(beta, tau2) = (by_j - beta bx_j) / sqrt(v_j)``, ``v_j = byse_j^2 +
beta^2 bxse_j^2 + tau2``. Without overdispersion ``beta`` minimises ``sum rho(t_j)``; with it ``tau2``
(systematic pleiotropy) solves its own estimating equation, alternating with ``beta``. ``rho`` is the
squared error (``"l2"``, the MLE) or a robust loss (``"huber"``, k = 1.345; ``"tukey"``, k = 4.685),
and the SE is the sandwich of the estimating equations. This is the MLE form of the authors' R
package mr.raps 0.4.2 (``mr.raps.mle``); ``tests/test_raps.py`` checks it against that package's
outputs (``tests/data/raps_reference.json``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import KW_ONLY, dataclass
from functools import cache

import numpy as np
from scipy import integrate, optimize

from ._types import ArrayLike
from ._validate import check_alpha, check_choice, summary_stats
from .results import Estimate, interval

__all__ = ["RAPSResult", "raps"]

_K = {"huber": 1.345, "tukey": 4.685}
_ITERATIONS = 20  # alternating updates of beta and tau2, as in the package
_TOL = math.sqrt(np.finfo(float).eps)
_SQRT_2PI = math.sqrt(2 * math.pi)


@dataclass(frozen=True, repr=False)  # the one-line summary of Estimate
class RAPSResult(Estimate):
    """MR-RAPS: the causal estimate, with ``tau2`` (overdispersion; 0 without it) and its SE."""

    n_instruments: int
    _: KW_ONLY
    tau2: float = 0.0
    tau2_se: float = 0.0
    loss: str = "l2"
    over_dispersion: bool = False
    n_pruned: int = 0

    def _details(self) -> str:
        od = f", tau2={self.tau2:.3g}" if self.over_dispersion else ""
        return f", K={self.n_instruments}, loss={self.loss}{od}"


def _rho(r: np.ndarray, loss: str, deriv: int = 0) -> np.ndarray:
    """The loss (``deriv`` 0) and its first two derivatives; ``l2`` is r^2 / 2."""
    if loss == "l2":
        return (r * r / 2, r, np.ones_like(r))[deriv]
    k = _K[loss]
    a = np.abs(r)
    if loss == "huber":
        if deriv == 0:
            return np.where(a <= k, r * r / 2, k * (a - k / 2))
        return np.where(a <= k, r, k * np.sign(r)) if deriv == 1 else (a <= k).astype(float)
    u = (r / k) ** 2
    if deriv == 0:
        return np.minimum(1 - (1 - u) ** 3, 1.0)
    return np.where(u < 1, r * (1 - u) ** 2, 0.0) if deriv == 1 else np.where(u < 1, (1 - u) * (1 - 5 * u), 0.0)


@cache
def _constants(loss: str) -> tuple[float, float, float, float]:
    """``delta = E[Z rho'(Z)]``, ``c1 = E[rho'(Z)^2]``, ``c2 = E[Z^2 rho'(Z)^2] - delta^2`` and
    ``c3 = E[Z^2 rho''(Z)]`` for a standard normal Z: the scale of the robust estimating equations."""

    def e(f):
        # the normal density written out: scipy.stats' pdf costs 30x more per point, and quad calls it often
        def integrand(z):
            return f(np.asarray(z)) * math.exp(-z * z / 2) / _SQRT_2PI

        return integrate.quad(integrand, -np.inf, np.inf, limit=200)[0]

    delta = e(lambda z: z * _rho(z, loss, 1))
    c1 = e(lambda z: _rho(z, loss, 1) ** 2)
    c2 = e(lambda z: z * z * _rho(z, loss, 1) ** 2) - delta**2
    c3 = e(lambda z: z * z * _rho(z, loss, 2))
    return delta, c1, c2, c3


def _argmin(f, bound: float) -> float:
    """The minimiser of ``f`` on ``[-bound, bound]``, doubling the range while it sits at an edge."""
    for _ in range(_ITERATIONS + 1):
        x = optimize.minimize_scalar(f, bounds=(-bound, bound), method="bounded", options={"xatol": 1e-12 * bound})
        if abs(x.x) <= 0.95 * bound:
            return float(x.x)
        bound *= 2
    raise ValueError(f"raps: no finite estimate (the profile keeps decreasing beyond |beta| = {bound:.3g})")


def _simple(bx, bxse, by, byse, loss):
    """No overdispersion: beta minimising sum rho(t), with the package's SE and its chi-square statistic."""
    bound = 2 * float(np.quantile(np.abs(by / bx), 0.95))
    beta = _argmin(lambda b: float(np.sum(_rho((by - b * bx) / np.sqrt(byse**2 + b * b * bxse**2), loss))), bound)
    delta, c1, _, _ = _constants(loss)
    d2 = (byse**2 + beta**2 * bxse**2) ** 2
    core = (bx**2 - bxse**2) * byse**2 + (by**2 - byse**2) * bxse**2
    score_var = c1 * np.sum((core + bxse**2 * byse**2) / d2)
    info = delta * np.sum(core / d2)
    return beta, 0.0, math.sqrt(score_var / info**2), 0.0


def _tau2_bound(byse):
    return 100 * float(np.quantile(byse**2, 0.95))


def _overdispersed_l2(bx, bxse, by, byse):
    """Overdispersion, squared error: alternate tau2 (its profile likelihood) and beta, then the sandwich."""
    beta, _, _, _ = _simple(bx, bxse, by, byse, "l2")
    tau2, bound_b, bound_t = 0.0, 10 * float(np.quantile(np.abs(by / bx), 0.95)), _tau2_bound(byse)

    def score_tau2(t2):
        # the derivative of tau2's profile log-likelihood (times 2): sum bxse^2 (t^2 - 1) / v; its root is
        # the maximum the package finds by a bounded search (0 when the likelihood falls from tau2 = 0 on)
        v = t2 + byse**2 + bxse**2 * beta**2
        return float(np.sum(bxse**2 * ((by - bx * beta) ** 2 / v - 1) / v))

    for _ in range(_ITERATIONS):
        old = (beta, tau2)
        tau2 = _tau2_root(score_tau2, bound_t)
        beta = _argmin(lambda b, t2=tau2: float(np.sum((by - bx * b) ** 2 / (t2 + byse**2 + bxse**2 * b * b))), bound_b)
        if _converged(old, beta, tau2):
            break
    v = tau2 + byse**2 + bxse**2 * beta**2
    core = (bx**2 - bxse**2) * (tau2 + byse**2) + (by**2 - tau2 - byse**2) * bxse**2
    meat = np.diag([np.sum((core + bxse**2 * (tau2 + byse**2)) / v**2), np.sum(2 * bxse**4 / v**2)])
    bread = np.array([[-np.sum(core / v**2), -np.sum(bxse**2 * beta / v**2)], [0.0, -np.sum(bxse**2 / v**2)]])
    return beta, tau2, *_sandwich(bread, meat)


def _overdispersed_robust(bx, bxse, by, byse, loss):
    """Overdispersion, robust loss: tau2 solves sum bxse^2 (t rho'(t) - delta) / v = 0, beta minimises
    sum rho(t) at that tau2, alternately, from the squared-error fit; then the sandwich.

    Each residual is scaled by its own ``sqrt(v_j)``: the package's code (0.4.2) takes one scalar
    ``max(0, v)`` over the whole vector, i.e. every residual divided by the largest sd, which is not
    what its equations say; this is the elementwise intent, so its robust overdispersed numbers differ
    from the package's (``tests/test_raps.py`` says by how much on the lipid example)."""
    beta, tau2, _, _ = _overdispersed_l2(bx, bxse, by, byse)
    delta, c1, c2, c3 = _constants(loss)
    bound_b, bound_t = 10 * float(np.quantile(np.abs(by / bx), 0.95)), _tau2_bound(byse)

    def t_of(b, t2):
        return (by - b * bx) / np.sqrt(np.maximum(t2 + byse**2 + bxse**2 * b * b, 0.0))

    def tau2_equation(t2):
        t = t_of(beta, t2)
        return float(np.sum(bxse**2 * (t * _rho(t, loss, 1) - delta) / (t2 + byse**2 + bxse**2 * beta**2)))

    for _ in range(_ITERATIONS):
        old = (beta, tau2)
        tau2 = _tau2_root(tau2_equation, bound_t)

        def objective(b, t2=tau2):
            return float(np.sum(_rho(t_of(b, t2), loss)))

        # a local search from the current beta, as the package does (Tukey's loss has other minima)
        fit = optimize.minimize(lambda b: objective(b[0]), [beta], method="L-BFGS-B", bounds=[(-bound_b, bound_b)])
        beta = float(fit.x[0])
        if abs(beta) > 0.95 * bound_b:
            beta = _argmin(objective, 2 * bound_b)
        if _converged(old, beta, tau2):
            break
    v = tau2 + byse**2 + bxse**2 * beta**2
    core = (bx**2 - bxse**2) * (tau2 + byse**2) + (by**2 - tau2 - byse**2) * bxse**2
    meat = np.diag([c1 * np.sum((core + bxse**2 * (tau2 + byse**2)) / v**2), c2 / 2 * np.sum(2 * bxse**4 / v**2)])
    bread = np.array(
        [
            [-delta * np.sum(core / v**2), -delta * np.sum(bxse**2 * beta / v**2)],
            [0.0, -(delta + c3) / 2 * np.sum(bxse**2 / v**2)],
        ]
    )
    return beta, tau2, *_sandwich(bread, meat)


def _tau2_root(f, bound: float) -> float:
    """The root of ``f`` in tau2 >= 0: 0 when ``f`` is already <= 0 there (no overdispersion to fit),
    else searched on ``[0, bound]``, widened while ``f`` keeps its sign."""
    lo = f(0.0)
    if lo <= 0:
        return 0.0
    hi = bound
    for _ in range(60):
        if f(hi) < 0:
            return float(optimize.brentq(f, 0.0, hi, xtol=1e-14 * hi))
        hi *= 2
    raise ValueError("raps: no solution for the overdispersion tau2 (its equation keeps its sign)")


def _converged(old, beta, tau2) -> bool:
    return abs(old[0] - beta) / abs(beta + 1e-10) + abs(old[1] - tau2) / abs(tau2 + 1e-10) <= _TOL


def _sandwich(bread: np.ndarray, meat: np.ndarray) -> tuple[float, float]:
    inv = np.linalg.inv(bread)
    var = inv @ meat @ inv.T
    return math.sqrt(var[0, 0]), math.sqrt(max(var[1, 1], 0.0))


def raps(
    bx: ArrayLike,
    bxse: ArrayLike,
    by: ArrayLike,
    byse: ArrayLike,
    *,
    over_dispersion: bool = True,
    loss: str = "huber",
    alpha: float = 0.05,
    pruning: bool = True,
) -> RAPSResult:
    """MR-RAPS of ``by`` on ``bx`` (1-D arrays of K instruments' effects and SEs).

    ``over_dispersion``: fit ``tau2``, the variance of pleiotropic effects (``False``: tau2 = 0).
    ``loss``: ``"l2"`` (the profile likelihood), ``"huber"`` or ``"tukey"`` (robust to outlying
    instruments). The defaults, overdispersion with the Huber loss, are what the package recommends.
    ``pruning`` (with overdispersion, as in the package): instruments whose ``bxse`` exceeds 10 times
    the median are left out, and counted in ``n_pruned``. CI and p-value are normal.

    With overdispersion and a robust loss each residual is scaled by its own sd, as the method's
    equations say; the package's current code (0.4.2) scales all by the largest one.
    """
    check_choice(loss, "loss", ("l2", "huber", "tukey"))
    alpha = check_alpha(alpha)
    bx, bxse, by, byse = summary_stats(bx, bxse, by, byse, min_k=2, method="raps")
    if np.any(bx == 0):
        raise ValueError(f"raps: bx is 0 at index {int(np.flatnonzero(bx == 0)[0])} (its ratio by/bx is unbounded)")
    n_pruned = 0
    if over_dispersion and pruning:
        keep = bxse <= 10 * np.median(bxse)
        n_pruned = int(np.sum(~keep))
        bx, bxse, by, byse = bx[keep], bxse[keep], by[keep], byse[keep]
        if bx.size < 2:
            raise ValueError("raps: fewer than 2 instruments left after pruning the large bxse")
    if np.sum(bx**2 / bxse**2) < bx.size - math.sqrt(bx.size):
        warnings.warn("raps: the mean F statistic is very small; the causal effect may not be identified", stacklevel=2)
    if not over_dispersion:
        beta, tau2, se, tau2_se = _simple(bx, bxse, by, byse, loss)
    elif loss == "l2":
        beta, tau2, se, tau2_se = _overdispersed_l2(bx, bxse, by, byse)
    else:
        beta, tau2, se, tau2_se = _overdispersed_robust(bx, bxse, by, byse, loss)
    if not math.isfinite(se):
        raise ValueError(f"raps: the sandwich SE is {se}: no interval can be formed")
    lo, hi, p = interval(beta, se, alpha)
    return RAPSResult(
        "MR-RAPS",
        beta,
        se,
        lo,
        hi,
        float(p),
        int(bx.size),
        alpha=alpha,
        tau2=tau2,
        tau2_se=tau2_se,
        loss=loss,
        over_dispersion=over_dispersion,
        n_pruned=n_pruned,
    )
