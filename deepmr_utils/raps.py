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
from scipy import integrate, optimize, stats

from ._types import ArrayLike
from ._validate import check_alpha, check_choice, summary_stats
from .results import Estimate, interval

__all__ = ["RAPSResult", "raps", "raps_loci"]

_K = {"huber": 1.345, "tukey": 4.685}
_ITERATIONS = 20  # alternating updates of beta and tau2, as in the package
_TOL = math.sqrt(np.finfo(float).eps)
_SQRT_2PI = math.sqrt(2 * math.pi)
# beta to the precision of its equation, not scipy's default gradient tolerance of 1e-5 (which left it ~1e-6 off)
_LBFGS = {"gtol": 1e-13, "ftol": 1e-15}


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


def _sandwich_se(total, bx, bxse, by, byse, b, t2, loss: str, over_dispersion: bool):
    """The sandwich SEs ``(se of beta, se of tau2)`` of the estimating equations at ``(b, t2)`` (per row,
    or scalars). ``total`` sums a per-row quantity: ``np.sum`` for one locus, a segment sum for many
    (then the results are per locus). Without overdispersion, the SE of beta alone at tau2 = 0."""
    delta, c1, c2, c3 = _constants(loss)
    s, e = bxse**2, t2 + byse**2
    v = e + s * b * b
    core = (bx**2 - s) * e + (by**2 - e) * s
    m1 = c1 * total((core + s * e) / v**2)
    a = -delta * total(core / v**2)
    if not over_dispersion:
        return np.sqrt(m1) / np.abs(a), 0.0 * a
    m2 = c2 / 2 * total(2 * s * s / v**2)
    off = -delta * total(s * b / v**2)
    d = -(delta + c3) / 2 * total(s / v**2)
    # the bread is upper triangular, inv = [[1/a, -off/(a d)], [0, 1/d]]; the meat is diagonal
    with np.errstate(divide="ignore", invalid="ignore"):
        var_b = m1 / a**2 + (off / (a * d)) ** 2 * m2
        var_t = m2 / d**2
    return np.sqrt(var_b), np.sqrt(np.maximum(var_t, 0.0))


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
    se, _ = _sandwich_se(np.sum, bx, bxse, by, byse, beta, 0.0, loss, False)
    return beta, 0.0, float(se), 0.0


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
    se, tau2_se = _sandwich_se(np.sum, bx, bxse, by, byse, beta, tau2, "l2", True)
    return beta, tau2, float(se), float(tau2_se)


def _overdispersed_robust(bx, bxse, by, byse, loss):
    """Overdispersion, robust loss: tau2 solves sum bxse^2 (t rho'(t) - delta) / v = 0, beta minimises
    sum rho(t) at that tau2, alternately, from the squared-error fit; then the sandwich.

    Each residual is scaled by its own ``sqrt(v_j)``: the package's code (0.4.2) takes one scalar
    ``max(0, v)`` over the whole vector, i.e. every residual divided by the largest sd, which is not
    what its equations say; this is the elementwise intent, so its robust overdispersed numbers differ
    from the package's (``tests/test_raps.py`` says by how much on the lipid example)."""
    beta, tau2, _, _ = _overdispersed_l2(bx, bxse, by, byse)
    delta = _constants(loss)[0]
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
        fit = optimize.minimize(
            lambda b: objective(b[0]), [beta], method="L-BFGS-B", bounds=[(-bound_b, bound_b)], options=_LBFGS
        )
        beta = float(fit.x[0])
        if abs(beta) > 0.95 * bound_b:
            beta = _argmin(objective, 2 * bound_b)
        if _converged(old, beta, tau2):
            break
    se, tau2_se = _sandwich_se(np.sum, bx, bxse, by, byse, beta, tau2, loss, True)
    return beta, tau2, float(se), float(tau2_se)


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


# ---------------------------------------------------------------------------------------------------------
# Many loci at once. The same estimating equations, solved for every locus together: each root search and
# each minimisation is a Newton iteration whose sums over a locus's instruments are segment sums over all
# rows (np.bincount), safeguarded by a bracket (tau2) or by backtracking (beta). A locus whose iteration does
# not settle, or whose beta lands at the edge of the scalar path's search range, is handed to :func:`raps`
# itself, so every locus gets the scalar estimator's answer (to its root-finding tolerance).

_NEWTON_STEPS = 60


@dataclass(frozen=True)
class _Rows:
    """The instruments of ``n`` loci: ``codes`` maps each row to its locus (0..n-1)."""

    codes: np.ndarray
    n: int
    bx: np.ndarray
    bxse: np.ndarray
    by: np.ndarray
    byse: np.ndarray

    def sum(self, v: np.ndarray) -> np.ndarray:
        return np.bincount(self.codes, weights=v, minlength=self.n)

    def take(self, keep: np.ndarray) -> _Rows:
        """The loci in the boolean mask ``keep``, renumbered in order."""
        rows = keep[self.codes]
        renumber = np.cumsum(keep) - 1
        return _Rows(renumber[self.codes[rows]], int(keep.sum()), *(a[rows] for a in self.arrays))

    @property
    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.bx, self.bxse, self.by, self.byse

    def sorted_within(self, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``v`` sorted within each locus, each locus's first row in that order, and its row count."""
        k = np.bincount(self.codes, minlength=self.n)
        start = np.concatenate([[0], np.cumsum(k)[:-1]])
        return v[np.lexsort((v, self.codes))], start, k

    def quantile(self, v: np.ndarray, q: float) -> np.ndarray:
        """Each locus's ``q`` quantile of ``v`` (numpy's default, linear interpolation)."""
        s, start, k = self.sorted_within(v)
        pos = q * (k - 1)
        lo = np.floor(pos).astype(int)
        frac = pos - lo
        hi = np.minimum(lo + 1, k - 1)
        return s[start + lo] + frac * (s[start + hi] - s[start + lo])


def _profile(rows: _Rows, b: np.ndarray, t2: np.ndarray, loss: str, order: int):
    """``h(b) = sum rho(t_j)`` per locus at ``(b, t2)``, and with ``order`` 2 its first two derivatives in b."""
    bb = b[rows.codes]
    s = rows.bxse**2
    r = rows.by - bb * rows.bx
    w = t2[rows.codes] + rows.byse**2 + s * bb * bb
    sw = np.sqrt(w)
    t = r / sw
    h = rows.sum(_rho(t, loss))
    if order == 0:
        return h
    dw = 2 * s * bb
    dt = -rows.bx / sw - r * dw / (2 * w * sw)
    d2t = rows.bx * dw / (w * sw) + r * (0.75 * dw * dw / (w * w * sw) - s / (w * sw))
    psi = _rho(t, loss, 1)
    return h, rows.sum(psi * dt), rows.sum(_rho(t, loss, 2) * dt * dt + psi * d2t)


def _minimise(rows: _Rows, b: np.ndarray, t2: np.ndarray, loss: str, scale: np.ndarray):
    """Newton with backtracking from ``b``, per locus, to a local minimum of :func:`_profile` in b: the
    minimiser and whether it settled. ``scale`` sets the size of a step where the curvature is not positive."""
    b = b.copy()
    settled = np.zeros(rows.n, bool)
    for _ in range(_NEWTON_STEPS):
        todo = ~settled
        if not todo.any():
            break
        sub, idx = rows.take(todo), np.flatnonzero(todo)
        bi, ti = b[idx], t2[idx]
        h, g, H = _profile(sub, bi, ti, loss, 2)
        step = np.where(H > 0, -g / np.where(H > 0, H, 1.0), -np.sign(g) * 0.1 * scale[idx])
        tiny = np.abs(step) <= 1e-13 * np.maximum(np.abs(bi), 1e-9 * scale[idx])
        accepted = tiny | (g == 0)
        for _ in range(50):  # halve the step while it does not lower h
            open_ = ~accepted
            if not open_.any():
                break
            h_new = _profile(sub, bi + step, ti, loss, 0)
            ok = open_ & (h_new <= h + 4 * np.finfo(float).eps * np.abs(h))
            accepted |= ok
            step = np.where(accepted, step, step / 2)
        step = np.where(accepted, step, 0.0)
        b[idx] = bi + step
        done = tiny | (g == 0) | (accepted & (np.abs(step) <= 1e-11 * np.maximum(np.abs(bi), 1e-9 * scale[idx])))
        settled[idx[done]] = True
    return b, settled


def _tau2_equation(rows: _Rows, b: np.ndarray, t2: np.ndarray, loss: str, delta: float):
    """tau2's estimating equation per locus, ``sum bxse^2 (t rho'(t) - delta) / v``, and its derivative in tau2."""
    bb = b[rows.codes]
    s = rows.bxse**2
    r = rows.by - bb * rows.bx
    v = t2[rows.codes] + rows.byse**2 + s * bb * bb
    t = r / np.sqrt(v)
    psi = _rho(t, loss, 1)
    f = rows.sum(s * (t * psi - delta) / v)
    df = rows.sum(s * ((psi + t * _rho(t, loss, 2)) * (-t / (2 * v)) / v - (t * psi - delta) / (v * v)))
    return f, df


def _tau2_roots(rows: _Rows, b: np.ndarray, loss: str, delta: float, bound: np.ndarray, start: np.ndarray):
    """The root in tau2 >= 0 of :func:`_tau2_equation` per locus, as the scalar path finds it (0 where the
    equation is <= 0 at 0; else on [0, hi], hi doubled from ``bound`` until the equation is negative):
    Newton steps inside the bracket, bisection where a step leaves it. Returns the roots and a mask of
    the loci without one."""
    n = rows.n
    t2 = np.zeros(n)
    f0, _ = _tau2_equation(rows, b, t2, loss, delta)
    need = f0 > 0
    lo, hi = np.zeros(n), bound.copy()
    pending = need.copy()
    for _ in range(60):
        if not pending.any():
            break
        idx = np.flatnonzero(pending)
        f_hi, _ = _tau2_equation(rows.take(pending), b[idx], hi[idx], loss, delta)
        grow = f_hi >= 0
        hi[idx[grow]] *= 2
        pending[idx[~grow]] = False
    failed = pending
    active = need & ~failed
    tol = 1e-14 * hi
    x = np.where((start > lo) & (start < hi), start, (lo + hi) / 2)
    for _ in range(200):
        if not active.any():
            break
        idx = np.flatnonzero(active)
        f, df = _tau2_equation(rows.take(active), b[idx], x[idx], loss, delta)
        pos = f > 0
        lo[idx[pos]] = x[idx[pos]]
        hi[idx[~pos]] = x[idx[~pos]]
        with np.errstate(divide="ignore", invalid="ignore"):
            nxt = x[idx] - f / df
        bad = ~np.isfinite(nxt) | (nxt <= lo[idx]) | (nxt >= hi[idx])
        nxt = np.where(bad, (lo[idx] + hi[idx]) / 2, nxt)
        done = (f == 0) | (np.abs(nxt - x[idx]) <= tol[idx] + 4 * np.finfo(float).eps * np.abs(x[idx]))
        done |= hi[idx] - lo[idx] <= tol[idx]
        x[idx] = np.where(f == 0, x[idx], nxt)
        active[idx[done]] = False
    t2 = np.where(need & ~failed, x, 0.0)
    return t2, failed | active


def _alternate(rows, b, t2, loss, delta, bound_b, bound_t):
    """Alternate tau2 (its root) and beta (a local minimum from the current one), as the scalar path does:
    at most ``_ITERATIONS`` rounds, each locus stopping at the scalar path's convergence rule. Returns
    ``b, t2`` and the loci the vectorised path cannot vouch for."""
    unsure = np.zeros(rows.n, bool)
    live = np.ones(rows.n, bool)
    for _ in range(_ITERATIONS):
        if not live.any():
            break
        idx = np.flatnonzero(live)
        sub = rows.take(live)
        old_b, old_t = b[idx], t2[idx]
        new_t, no_root = _tau2_roots(sub, old_b, loss, delta, bound_t[idx], old_t)
        new_b, settled = _minimise(sub, old_b, new_t, loss, bound_b[idx])
        b[idx], t2[idx] = new_b, new_t
        unsure[idx] |= no_root | ~settled | (np.abs(new_b) > 0.95 * bound_b[idx])
        conv = np.abs(old_b - new_b) / np.abs(new_b + 1e-10) + np.abs(old_t - new_t) / np.abs(new_t + 1e-10) <= _TOL
        live[idx[conv | unsure[idx]]] = False
    return b, t2, unsure


def raps_loci(
    codes: ArrayLike,
    n_loci: int,
    bx: ArrayLike,
    bxse: ArrayLike,
    by: ArrayLike,
    byse: ArrayLike,
    *,
    over_dispersion: bool = True,
    loss: str = "huber",
    alpha: float = 0.05,
    pruning: bool = True,
) -> dict[str, np.ndarray]:
    """:func:`raps` for many loci at once: rows of instruments with ``codes`` (their locus, 0..n_loci-1).

    Inputs are assumed checked (finite, SEs > 0; :func:`deepmr_utils.mr.per_locus` does it). Returns per
    locus ``estimate, se, ci_low, ci_high, pvalue, tau2, tau2_se, n_instruments`` (after pruning),
    ``n_pruned``, ``status`` (``"ok"`` or why the locus has no estimate: what :func:`raps` would raise)
    and ``scalar`` (True where the locus was solved by :func:`raps` itself because the vectorised Newton
    iterations did not settle or beta sat at the edge of the search range). The mean-F warning of
    :func:`raps` is given once, with the number of loci it concerns.
    """
    check_choice(loss, "loss", ("l2", "huber", "tukey"))
    alpha = check_alpha(alpha)
    codes = np.asarray(codes, dtype=np.intp)
    arrays = [np.asarray(a, dtype=np.float64) for a in (bx, bxse, by, byse)]
    rows = _Rows(codes, int(n_loci), *arrays)
    n = rows.n
    status = np.full(n, "ok", dtype=object)
    k0 = np.bincount(codes, minlength=n)
    status[k0 < 2] = "raps: fewer than 2 instruments"
    zero = rows.bx == 0
    if zero.any():
        # the scalar path's message names the first such row of the locus
        first = np.full(n, -1)
        order = np.flatnonzero(zero)[::-1]
        first[codes[order]] = order
        start = np.concatenate([[0], np.cumsum(k0)[:-1]])
        sorted_rows = np.argsort(codes, kind="stable")
        position = np.empty_like(sorted_rows)
        position[sorted_rows] = np.arange(codes.size)
        for i in np.flatnonzero(first >= 0):
            status[i] = f"raps: bx is 0 at index {position[first[i]] - start[i]} (its ratio by/bx is unbounded)"
    n_pruned = np.zeros(n, int)
    if over_dispersion and pruning:
        s, start, k = rows.sorted_within(rows.bxse)
        safe = np.maximum(k, 1)
        median = np.where(
            k > 0, (s[start + (safe - 1) // 2] + s[np.minimum(start + safe // 2, s.size - 1)]) / 2, np.inf
        )
        keep = rows.bxse <= 10 * median[codes]
        n_pruned = np.bincount(codes[~keep], minlength=n)
        left = np.bincount(codes[keep], minlength=n)
        status[(status == "ok") & (left < 2)] = "raps: fewer than 2 instruments left after pruning the large bxse"
        rows = _Rows(codes[keep], n, *(a[keep] for a in rows.arrays))
    k = np.bincount(rows.codes, minlength=n)
    good = status == "ok"
    out = {c: np.full(n, np.nan) for c in ("estimate", "se", "tau2", "tau2_se")}
    scalar = np.zeros(n, bool)
    if good.any():
        sub, idx = rows.take(good), np.flatnonzero(good)
        weak = sub.sum(sub.bx**2 / sub.bxse**2) < k[idx] - np.sqrt(k[idx])
        if weak.any():
            warnings.warn(
                f"raps: the mean F statistic is very small at {int(weak.sum())} loci; the causal effect may not "
                "be identified there",
                stacklevel=2,
            )
        fit = _solve(sub, over_dispersion, loss)
        scalar[idx] = fit.pop("unsure")
        for c, v in fit.items():
            out[c][idx] = v
    for i in np.flatnonzero(scalar):
        m = codes == i
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # counted above
                res = raps(*(a[m] for a in arrays), over_dispersion=over_dispersion, loss=loss, pruning=pruning)
        except ValueError as exc:
            status[i] = str(exc)
            continue
        for c in out:
            out[c][i] = getattr(res, c)
    finite = np.isfinite(out["se"]) | (status != "ok")
    status[~finite] = [f"raps: the sandwich SE is {v}: no interval can be formed" for v in out["se"][~finite]]
    ok = status == "ok"
    for c in out:
        out[c][~ok] = np.nan
    with np.errstate(invalid="ignore"):
        crit = stats.norm.ppf(1 - alpha / 2)
        out["ci_low"], out["ci_high"] = out["estimate"] - crit * out["se"], out["estimate"] + crit * out["se"]
        out["pvalue"] = 2 * stats.norm.sf(np.abs(out["estimate"] / out["se"]))
    out.update(n_instruments=k, n_pruned=n_pruned, status=status, scalar=scalar)
    return out


def _solve(rows: _Rows, over_dispersion: bool, loss: str) -> dict[str, np.ndarray]:
    """Every stage of :func:`raps` on loci with at least 2 instruments, none of them with bx = 0."""
    n = rows.n
    ratio95 = rows.quantile(np.abs(rows.by / rows.bx), 0.95)
    w = 1 / rows.byse**2
    start = rows.sum(w * rows.bx * rows.by) / rows.sum(w * rows.bx**2)  # IVW: a start near the minimum
    zeros = np.zeros(n)
    b, settled = _minimise(rows, start, zeros, "l2" if over_dispersion else loss, 2 * ratio95)
    unsure = ~settled | (np.abs(b) > 0.95 * 2 * ratio95)
    if not over_dispersion:
        se, _ = _sandwich_se(rows.sum, *rows.arrays, b[rows.codes], 0.0, loss, False)
        return {"estimate": b, "se": se, "tau2": zeros, "tau2_se": zeros, "unsure": unsure}
    bound_b, bound_t = 10 * ratio95, 100 * rows.quantile(rows.byse**2, 0.95)
    t2 = zeros.copy()
    b, t2, more = _alternate(rows, b, t2, "l2", 1.0, bound_b, bound_t)
    unsure |= more
    if loss != "l2":
        b, t2, more = _alternate(rows, b, t2, loss, _constants(loss)[0], bound_b, bound_t)
        unsure |= more
    se, tau2_se = _sandwich_se(rows.sum, *rows.arrays, b[rows.codes], t2[rows.codes], loss, True)
    return {"estimate": b, "se": se, "tau2": t2, "tau2_se": tau2_se, "unsure": unsure}
