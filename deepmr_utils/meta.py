"""Fixed- and random-effects meta-analysis of per-locus estimates.

DeepMR's *global* causal effect is a random-effects meta-analysis of the local
(per-sequence) MR estimates. Conventions are those of R ``metafor::rma.uni``:
REML by Fisher scoring started at the Hedges estimate (threshold 1e-5, at most
100 iterations, step halving at the boundary, the ``ll0check`` for tau^2 = 0),
DerSimonian-Laird truncated at 0, I^2 = tau^2 / (tau^2 + typical within-study
variance), optional Knapp-Hartung adjustment, and the prediction interval of
``predict.rma``. ``tests/test_meta.py`` checks them against metafor's outputs.

Note the difference from :func:`deepmr_utils.mr.ivw`'s "random" model: that one
is *multiplicative* (SE scaled by the residual SE); this one is *additive*
(tau^2 added to every variance).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy import stats

from ._types import ArrayLike
from ._validate import (
    as_1d,
    check_alpha,
    check_choice,
    check_finite,
    check_positive,
    check_weights,
    first_bad,
    is_integer,
)
from .results import Estimate

__all__ = ["MetaResult", "random_effects", "fixed_effect", "pool"]


@dataclass(frozen=True)
class MetaResult(Estimate):
    """Pooled estimate of ``k`` studies (loci) with heterogeneity statistics (I^2 and H^2 as
    fractions/ratios), the prediction interval ``pi_low`` to ``pi_high`` and the REML fit's status."""

    k: int
    tau2: float
    tau: float
    se_tau2: float
    i2: float
    h2: float
    q: float
    q_df: int
    q_pvalue: float
    pi_low: float
    pi_high: float
    test: str = "z"
    converged: bool = True
    iterations: int = 0
    n_excluded: int = 0

    def __repr__(self) -> str:
        level = round(100 * (1 - self.alpha))
        return (
            f"{self.method} meta-analysis ({self.test}): {self.estimate:.4g} (SE {self.se:.4g}, "
            f"{level}% CI {self.ci_low:.4g} to {self.ci_high:.4g}, p={self.pvalue:.3g}, k={self.k}; "
            f"tau^2={self.tau2:.4g}, I^2={100 * self.i2:.1f}%, Q={self.q:.4g} on {self.q_df} df, "
            f"PI {self.pi_low:.4g} to {self.pi_high:.4g}"
            + ("" if self.converged else f"; NOT CONVERGED after {self.iterations} iterations")
            + (f"; {self.n_excluded} loci excluded" if self.n_excluded else "")
            + ")"
        )

    __str__ = __repr__


def _inputs(estimates, ses, min_k):
    y = as_1d(estimates, "estimates")
    s = as_1d(ses, "ses")
    if y.size != s.size:
        raise ValueError(f"estimates and ses must have the same length, got {y.size} and {s.size}")
    check_finite(y, "estimates")
    check_finite(s, "ses")
    check_positive(s, "ses")
    check_weights(s, "ses")
    with np.errstate(over="ignore"):
        v = s**2
    if not np.isfinite(v).all():  # a weight 1/se^2 of 0 would turn every weighted mean into 0/0
        i = first_bad(~np.isfinite(v))
        raise ValueError(f"ses is {s[i]:.3g} at index {i}: its square overflows float64; rescale the estimates")
    with np.errstate(over="ignore"):
        z2 = (y / s) ** 2
    if not np.isfinite(z2).all():  # Cochran's Q and the weighted residuals square these
        i = first_bad(~np.isfinite(z2))
        raise ValueError(
            f"estimate {y[i]:.3g} at index {i} is too large for its SE {s[i]:.3g}: its squared ratio overflows "
            "float64; rescale the estimates"
        )
    if y.size < min_k:
        raise ValueError(f"meta-analysis needs at least {min_k} estimate(s), got {y.size}")
    return y, v


def _cochran_q(y, v):
    w = 1 / v
    mu = np.sum(w * y) / np.sum(w)
    return float(np.sum(w * (y - mu) ** 2))


def _leave_one_out(a):
    """``sum(a) - a[i]`` for each ``i`` of a positive ``a``, as sums of positive terms (no cancellation)."""
    before = np.concatenate(([0.0], np.cumsum(a)[:-1]))
    after = np.concatenate((np.cumsum(a[::-1])[::-1][1:], [0.0]))
    return before + after


def _traces(w):
    """tr(P) and tr(PP) for P = W - w w' / sum(w), the intercept-only model's projection.

    The textbook forms (sum(w) - sum(w^2)/sum(w), and sum(w^2) - 2 sum(w^3)/sum(w) + (sum(w^2)/sum(w))^2)
    cancel to 0 or below when one weight dominates (SEs 1e5 and 3 gave tr(PP) = 0 and a Fisher step of -inf
    that never ended): here each term is a product of positive numbers, P_ii = w_i sum_{j!=i} w_j / sum(w) and
    sum_{i!=j} P_ij^2 = sum_i w_i^2 sum_{j!=i} w_j^2 / sum(w)^2."""
    sw = w.sum()
    p_ii = w * _leave_one_out(w) / sw
    return p_ii.sum(), np.sum(p_ii**2) + np.sum(w**2 * _leave_one_out(w**2)) / sw**2


def _reml(y, v, tau2, threshold, max_iter):
    """metafor's Fisher scoring for the REML tau^2 (intercept-only model)."""

    def parts(t2):
        w = 1 / (v + t2)
        py = w * (y - np.sum(w * y) / w.sum())  # P y with P = W - w w' / sum(w)
        return py, *_traces(w)

    it, change = 0, threshold + 1
    converged = True
    while change > threshold:
        it += 1
        old = tau2
        py, tr_p, tr_pp = parts(tau2)
        adj = (py @ py - tr_p) / tr_pp if tr_pp > 0 else np.nan
        if not np.isfinite(adj):  # tr(PP) underflowed (weights below ~1e-160): no step to take
            converged = False
            break
        while tau2 + adj < 0:
            adj /= 2
        tau2 += adj
        change = abs(old - tau2)
        if it > max_iter:
            converged = False
            break
    return tau2, converged, it


def _reml_loglik(y, v, t2):
    w = 1 / (v + t2)
    mu = np.sum(w * y) / np.sum(w)
    return -0.5 * (np.sum(np.log(v + t2)) + np.log(np.sum(w)) + np.sum(w * (y - mu) ** 2))


def random_effects(
    estimates: ArrayLike,
    ses: ArrayLike,
    *,
    method: str = "REML",
    knapp_hartung: bool = False,
    alpha: float = 0.05,
    threshold: float = 1e-5,
    max_iter: int = 100,
) -> MetaResult:
    """Random-effects meta-analysis of ``estimates`` (k,) with standard errors ``ses`` (k,).

    ``method``: ``"REML"`` (default, metafor's) or ``"DL"`` (DerSimonian-Laird).
    ``knapp_hartung=True`` scales the SE by the weighted residual SD (no floor,
    metafor's ``test="knha"``) and uses t(k-1) for the CI, p-value and the
    prediction interval ``[pi_low, pi_high]``.
    """
    check_choice(method, "method", ("REML", "DL"))
    alpha = check_alpha(alpha)
    if not (isinstance(threshold, (int, float, np.floating)) and 0 < threshold < np.inf):  # NaN: no step was taken
        raise ValueError(f"threshold must be a positive number, got {threshold!r}")
    if not is_integer(max_iter) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    y, v = _inputs(estimates, ses, min_k=2)
    k = y.size
    q = _cochran_q(y, v)
    w = 1 / v
    converged, it = True, 0
    tr_p0, tr_pp0 = _traces(w)  # P at the fixed-effect weights
    if method == "DL":
        tau2 = max(0.0, (q - (k - 1)) / tr_p0)
    else:
        he = (np.sum((y - y.mean()) ** 2) - np.sum(v) * (1 - 1 / k)) / (k - 1)
        tau2, converged, it = _reml(y, v, max(0.0, he), threshold, max_iter)
        if tau2 > 0 and _reml_loglik(y, v, 0.0) > _reml_loglik(y, v, tau2):
            tau2 = 0.0
    ws = 1 / (v + tau2)
    sws = ws.sum()
    mu = float(np.sum(ws * y) / sws)
    se = float(1 / np.sqrt(sws))
    if method == "REML":
        se_tau2 = float(np.sqrt(2 / _traces(ws)[1]))
    else:
        # variance of the DL moment estimator (metafor): Var = (2(k-1) + 4 tau2 tr P + 2 tau2^2 tr PP) / (tr P)^2
        se_tau2 = float(np.sqrt(2 * (k - 1) + 4 * tau2 * tr_p0 + 2 * tau2**2 * tr_pp0) / tr_p0)
    if knapp_hartung:
        s2 = float(np.sum(ws * (y - mu) ** 2) / (k - 1))
        se = se * np.sqrt(s2)
        dist, test = stats.t(k - 1), "t"
    else:
        dist, test = stats.norm, "z"
    crit = dist.ppf(1 - alpha / 2)
    vtyp = (k - 1) / tr_p0  # (k - 1) sum(w) / (sum(w)^2 - sum(w^2)), without its cancellation
    pi_half = crit * np.sqrt(se**2 + tau2)
    return MetaResult(
        method=method,
        estimate=mu,
        se=se,
        ci_low=mu - crit * se,
        ci_high=mu + crit * se,
        pvalue=float(2 * dist.sf(abs(mu / se))),
        k=k,
        tau2=float(tau2),
        tau=float(np.sqrt(tau2)),
        se_tau2=se_tau2,
        i2=float(tau2 / (tau2 + vtyp)),
        h2=float(tau2 / vtyp + 1),
        q=q,
        q_df=k - 1,
        q_pvalue=float(stats.chi2.sf(q, k - 1)),
        pi_low=mu - pi_half,
        pi_high=mu + pi_half,
        test=test,
        alpha=alpha,
        converged=converged,
        iterations=it,
    )


def fixed_effect(estimates: ArrayLike, ses: ArrayLike, *, alpha: float = 0.05) -> MetaResult:
    """Inverse-variance fixed-effect (metafor "EE") meta-analysis; I^2 from Q."""
    alpha = check_alpha(alpha)
    y, v = _inputs(estimates, ses, min_k=1)
    k = y.size
    w = 1 / v
    mu = float(np.sum(w * y) / w.sum())
    se = float(1 / np.sqrt(w.sum()))
    q = _cochran_q(y, v) if k > 1 else 0.0
    crit = stats.norm.ppf(1 - alpha / 2)
    i2 = max(0.0, (q - (k - 1)) / q) if q > 0 else 0.0
    return MetaResult(
        method="EE",
        estimate=mu,
        se=se,
        ci_low=mu - crit * se,
        ci_high=mu + crit * se,
        pvalue=float(2 * stats.norm.sf(abs(mu / se))),
        k=k,
        tau2=0.0,
        tau=0.0,
        se_tau2=float("nan"),
        i2=float(i2),
        h2=float(q / (k - 1)) if k > 1 else float("nan"),
        q=q,
        q_df=k - 1,
        q_pvalue=float(stats.chi2.sf(q, k - 1)) if k > 1 else float("nan"),
        pi_low=mu - crit * se,
        pi_high=mu + crit * se,
        alpha=alpha,
    )


def pool(
    local: pd.DataFrame,
    *,
    method: str = "REML",
    knapp_hartung: bool = False,
    alpha: float = 0.05,
    min_loci: int = 2,
    estimate: str = "estimate",
    se: str = "se",
) -> MetaResult:
    """The global effect: random-effects meta-analysis of the usable loci of a per-locus table.

    ``local``: a frame from :func:`deepmr_utils.mr.per_locus` (columns ``estimate``,
    ``se`` and ``status``). Loci whose status is not ``"ok"`` (too few instruments,
    degenerate fits, bad input) are left out and counted in ``n_excluded``; a result
    whose REML did not converge says so in ``converged`` and in its one-line summary.
    Raises ``ValueError`` when fewer than ``min_loci`` loci are usable.
    """
    if not isinstance(local, pd.DataFrame):
        raise TypeError(f"local must be a pandas DataFrame from mr.per_locus, got {type(local).__name__}")
    missing = [c for c in (estimate, se, "status") if c not in local.columns]
    if missing:
        raise ValueError(f"local is missing column(s) {missing}; pass the output of mr.per_locus")
    ok = (local.status == "ok").to_numpy()
    need = max(min_loci, 2)  # random effects need two estimates whatever min_loci says
    if int(ok.sum()) < need:
        reasons = local.status[~ok].str.split(":").str[0].value_counts().to_dict()
        raise ValueError(
            f"only {int(ok.sum())} of {len(local)} loci have an estimate (need {need}); the others: {reasons}"
        )
    use = local[ok]
    res = random_effects(
        use[estimate].to_numpy(), use[se].to_numpy(), method=method, knapp_hartung=knapp_hartung, alpha=alpha
    )
    return replace(res, n_excluded=int((~ok).sum()))
