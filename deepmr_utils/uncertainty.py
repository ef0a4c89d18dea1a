"""Variant effects with standard errors from paired ensemble predictions, and their calibration.

**Effect and SE convention.** For variant ``v`` and output ``o``, each member
``c`` (ensemble model or MC-dropout pass) gives a paired difference
``d_c = f_c(mutant) - f_c(reference)``. The effect is the mean of ``d_c``; the
SE is their standard deviation across members (``ddof=1`` by default), **not**
the SE of the mean. The members stand for draws of the model itself, so their
spread is the uncertainty about what "the" model predicts; dividing by
``sqrt(M)`` would only measure Monte-Carlo error of the mean and would shrink to
zero with more members. (The original DeepMR code used the same spread with
``ddof=0``, which with five members underestimates the variance by 20 %.)
Pairing matters: the reference and the mutant are predicted by the same member,
so shared model error cancels.

**Calibration** is fitted on predictions of *held-out* sequences against their
observed labels, and applied to the member predictions of the sequences being
mutated, in the same (one-sided, predictive-CDF) semantics it was fitted in:

* :class:`VarianceScaling` - the MLE of one variance multiplier ``lambda`` in
  ``y ~ N(mu, lambda sigma^2 + noise_var)`` (label noise estimated or given);
  members are spread by ``sqrt(lambda)``.
* :class:`IsotonicCalibration` - Kuleshov et al. (2018): an isotonic map ``R`` of
  the probability integral transform ``u = Phi((y - mu)/sigma)`` to its empirical
  CDF; member ``c`` becomes ``mu + sigma * Phi^-1(R(Phi((f_c - mu)/sigma)))``.

Both refuse to be applied to sequences they were fitted on (pass ``ids``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from scipy import stats
from scipy.optimize import isotonic_regression

from ._types import ArrayLike, Positions, Sequences

__all__ = [
    "paired_effects",
    "paired_correlation",
    "VarianceScaling",
    "IsotonicCalibration",
    "coverage_curve",
    "miscalibration_area",
]

# float32 predictions agree to about 1e-7 of their size when they are the same computation
_ROUND_OFF = 1e-6


def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def paired_effects(
    pred: ArrayLike, X: Sequences, positions: Positions = None, *, ddof: int = 1, reference: ArrayLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Effects and SEs of every substitution from an ISM tensor.

    ``pred``: ``(N, M, P, 4, O)`` from :func:`deepmr_utils.ism.saturation_mutagenesis`;
    ``X``: the one-hot ``(N, 4, L)`` it was computed from; ``positions``: the ``P``
    positions (default all ``L``).

    Every substitution is measured against the prediction for the unmutated sequence,
    which ISM stores in the reference base's slot of every known position. At an
    unknown base (an all-zero ``N`` column) all four slots hold mutants, so all four
    get an effect against that same reference prediction. A sequence whose mutated
    positions are all ``N`` has no reference slot: pass ``reference`` ``(N, M, O)``
    (e.g. from :func:`deepmr_utils.predict.predict`).

    Returns ``(effect, se)``, each ``(N, P, 4, O)`` float64 arrays with NaN in the
    reference base's slot.
    """
    d, is_ref = _paired_differences(pred, X, positions, reference)
    M = d.shape[1]
    if not 0 <= ddof < M:
        raise ValueError(f"ddof must lie in [0, {M - 1}], got {ddof}")
    effect = np.where(is_ref, np.nan, d.mean(axis=1))
    se = np.where(is_ref, np.nan, d.std(axis=1, ddof=ddof))
    return effect, se


def paired_correlation(
    pred: ArrayLike,
    X: Sequences,
    positions: Positions = None,
    *,
    exposure: int,
    outcome: int,
    reference: ArrayLike | None = None,
) -> np.ndarray:
    """Per substitution, the correlation across members of the exposure's and the outcome's paired
    differences: the ``psi`` of IVW's second-order weights (:func:`deepmr_utils.mr.ivw`) when both
    effects come from the same ensemble, whose members share their errors.

    Arguments as for :func:`paired_effects`; ``exposure``, ``outcome``: output indices. Returns
    ``(N, P, 4)`` float64 with NaN in the reference base's slot, and 0 where either output does not
    vary across members (its SE is 0 and the variant cannot be an instrument). With ``M`` members
    each value is a sample correlation of ``M`` pairs (SE about ``1/sqrt(M - 3)`` near 0): noisy for a
    small ensemble, exactly +-1 for two members.
    """
    d, is_ref = _paired_differences(pred, X, positions, reference)
    O = d.shape[-1]
    for name, idx in (("exposure", exposure), ("outcome", outcome)):
        if isinstance(idx, bool) or not isinstance(idx, (int, np.integer)) or not 0 <= idx < O:
            raise ValueError(f"{name} must be an output index in [0, {O}), got {idx!r}")
    a = d[..., exposure] - d[..., exposure].mean(axis=1, keepdims=True)
    b = d[..., outcome] - d[..., outcome].mean(axis=1, keepdims=True)
    sab, saa, sbb = (a * b).sum(axis=1), (a * a).sum(axis=1), (b * b).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where((saa > 0) & (sbb > 0), sab / np.sqrt(saa * sbb), 0.0)
    return np.where(is_ref[..., 0], np.nan, np.clip(rho, -1.0, 1.0))


def _paired_differences(pred, X, positions, reference) -> tuple[np.ndarray, np.ndarray]:
    """``d = pred - reference prediction``, ``(N, M, P, 4, O)``, and the reference slots ``(N, P, 4, 1)``."""
    pred = _np(pred).astype(np.float64)
    if pred.ndim != 5 or pred.shape[3] != 4:
        raise ValueError(f"pred must have shape (N, M, P, 4, O), got {pred.shape}")
    N, M, P, _, O = pred.shape
    if M < 2:
        raise ValueError(f"standard errors need at least 2 ensemble members or MC passes, got {M}")
    Xn = _np(X)
    if Xn.ndim != 3 or Xn.shape[0] != N or Xn.shape[1] != 4:
        raise ValueError(f"X must be (N={N}, 4, L), got {Xn.shape}")
    pos = np.arange(Xn.shape[2]) if positions is None else np.asarray(positions)
    if pos.size != P:
        raise ValueError(f"positions has {pos.size} entries but pred has {P} positions")
    ref_oh = Xn[:, :, pos].transpose(0, 2, 1)  # (N, P, 4)
    known = ref_oh.sum(axis=2) == 1  # (N, P); False at N positions
    if reference is not None:
        ref_pred = _np(reference).astype(np.float64)
        if ref_pred.shape != (N, M, O):
            raise ValueError(f"reference must be (N, M, O) = {(N, M, O)}, got {ref_pred.shape}")
    else:
        no_ref = ~known.any(axis=1)
        if no_ref.any():
            raise ValueError(
                f"sequence {int(np.flatnonzero(no_ref)[0])} has no known base (A/C/G/T) among the "
                "mutated positions, so pred holds no reference prediction; pass reference=(N, M, O)"
            )
        # the unmutated sequence's prediction, from its first known position
        first = known.argmax(axis=1)
        base = ref_oh[np.arange(N), first].argmax(axis=1)
        ref_pred = pred[np.arange(N), :, first, base, :]  # (N, M, O)
    d = pred - ref_pred[:, :, None, None, :]
    return d, (ref_oh == 1)[..., None]


def _mu_sigma(members: np.ndarray, ddof: int):
    mu = members.mean(axis=-1)
    sigma = members.std(axis=-1, ddof=ddof)
    return mu, sigma


@dataclass
class _Calibration:
    """Shared fitting/application logic; subclasses implement ``_fit1`` and ``_transform1``."""

    ddof: int = 1
    fitted_ids: frozenset = field(default_factory=frozenset)
    per_output: list | None = None
    n_flat: int = 0  # held-out examples left out of the fit: their members agreed to round-off

    def fit(self, members, y, *, ids):
        """Fit on held-out predictions ``members`` ``(n, M)`` or ``(n, M, O)`` and labels ``y`` ``(n,)`` / ``(n, O)``.

        ``ids`` (required) names the ``n`` held-out sequences, so that applying the
        calibration to any of them later raises: a calibration must not see the
        sequences it corrects. Pass the same kind of labels to ``transform_members``.
        """
        if ids is None:
            raise TypeError(
                "fit needs ids=: the labels of the held-out sequences, so the calibration can refuse "
                "to be applied to them later"
            )
        members = _np(members).astype(np.float64)
        y = _np(y).astype(np.float64)
        self.n_flat = 0
        if members.ndim == 3:
            if y.ndim != 2 or y.shape[1] != members.shape[2]:
                raise ValueError(f"y must be (n, {members.shape[2]}) for members of shape {members.shape}")
            self.per_output = [
                self._blank()._fit1(*self._checked(members[:, :, o], y[:, o])) for o in range(members.shape[2])
            ]
        else:
            self.per_output = None
            self._fit1(*self._checked(members, y))
        ids = np.asarray(ids).ravel()
        if ids.size != members.shape[0]:
            raise ValueError(f"ids has {ids.size} labels for {members.shape[0]} held-out sequences")
        self.fitted_ids = frozenset(ids.tolist())
        return self

    def _blank(self):
        """An unfitted copy with the same settings, for one output."""
        return type(self)(**{k: v for k, v in self.__dict__.items() if k in ("ddof", "noise_var", "eps")})

    def _checked(self, members, y):
        if members.ndim != 2 or members.shape[1] < 2:
            raise ValueError(f"members must be (n, M) with M >= 2 predictions per example, got {members.shape}")
        if y.shape != (members.shape[0],):
            raise ValueError(f"y must have shape ({members.shape[0]},), got {y.shape}")
        if not (np.isfinite(members).all() and np.isfinite(y).all()):
            raise ValueError("members and y must be finite")
        mu, sigma = _mu_sigma(members, self.ddof)
        # members agreeing to float32 round-off (1e-6 of the example's own scale) do not disagree: whether
        # their spread is exactly 0 or a few ulps depends on the CPU's kernels, so the test is relative
        flat = sigma <= _ROUND_OFF * np.abs(members).max(axis=1)
        if flat.mean() > 0.5:  # a degenerate ensemble (copies of one model, dropout that drops nothing)
            raise ValueError(
                f"{int(flat.sum())} of {flat.size} examples (first: example {int(np.flatnonzero(flat)[0])}) have zero "
                f"ensemble spread (at most {_ROUND_OFF:g} of their scale); calibration needs members that disagree"
            )
        # a few examples on which real members happen to agree (two members, many examples) carry no
        # information on how their spread relates to their error: left out of the fit and counted
        self.n_flat += int(flat.sum())
        return mu[~flat], sigma[~flat], y[~flat]

    def _check_ids(self, ids):
        if ids is None:
            return
        overlap = self.fitted_ids & set(np.asarray(ids).tolist())
        if overlap:
            raise ValueError(
                f"calibration was fitted on {len(overlap)} of these sequences (e.g. {sorted(overlap)[0]!r}); "
                "fit it on held-out sequences only"
            )

    def transform_members(self, members, *, axis: int = 1, ids=None):
        """Recalibrate member predictions along ``axis`` (e.g. an ISM tensor's model axis).

        A calibration fitted on several outputs expects them on the last axis.
        """
        self._check_ids(ids)
        was_tensor = isinstance(members, torch.Tensor)
        arr = _np(members).astype(np.float64)
        axis = axis % arr.ndim
        if self.per_output is not None:
            if arr.shape[-1] != len(self.per_output) or axis == arr.ndim - 1:
                raise ValueError(f"expected {len(self.per_output)} outputs on the last axis, got shape {arr.shape}")
            out = np.stack(
                [
                    np.moveaxis(c._transform1(np.moveaxis(arr[..., o], axis, -1)), -1, axis)
                    for o, c in enumerate(self.per_output)
                ],
                axis=-1,
            )
        else:
            out = np.moveaxis(self._transform1(np.moveaxis(arr, axis, -1)), -1, axis)
        return torch.from_numpy(out) if was_tensor else out  # float64: effects are small differences


@dataclass
class VarianceScaling(_Calibration):
    """One variance multiplier (per output) fitted by maximum likelihood on held-out data.

    Held-out labels are noisy, so their residuals mix the model's (epistemic)
    uncertainty with measurement noise. The model is ``y ~ N(mu, lambda sigma^2 +
    noise_var)`` with ``mu, sigma`` the ensemble's mean and spread; only ``lambda``
    is applied to the members, because the SE of a *difference* of model
    predictions has no label noise in it.

    ``noise_var``: ``"estimate"`` (default) fits it jointly with ``lambda`` (it is
    identified because ``sigma`` varies between sequences; the estimate is in
    ``noise_var_hat``); a number fixes it (e.g. 1 for Anscombe-transformed
    Poisson counts, *if* nothing else in the labels is unpredictable from
    sequence); ``0`` gives ``lambda = mean((y - mu)^2 / sigma^2)``, which spreads
    the members to cover the labels themselves.
    """

    lam: float = float("nan")
    noise_var: float | str = "estimate"
    noise_var_hat: float = float("nan")

    def __post_init__(self):
        if isinstance(self.noise_var, str):
            if self.noise_var != "estimate":
                raise ValueError(f"noise_var must be a number >= 0 or 'estimate', got {self.noise_var!r}")
        elif not (np.isfinite(self.noise_var) and self.noise_var >= 0):
            raise ValueError(f"noise_var must be >= 0, got {self.noise_var}")

    def _fit1(self, mu, sigma, y):
        from scipy.optimize import minimize, minimize_scalar

        r2, s2 = (y - mu) ** 2, sigma**2
        if self.noise_var == "estimate":

            def nll2(p):
                v = np.exp(p[0]) * s2 + np.exp(p[1])
                return float(np.sum(np.log(v) + r2 / v))

            # start from the two extremes' midpoint: all spread, or all noise
            start = np.log([max(np.mean(r2 / s2) / 2, 1e-8), max(np.mean(r2) / 2, 1e-8)])
            res = minimize(nll2, start, method="Nelder-Mead", options={"xatol": 1e-8, "fatol": 1e-10, "maxiter": 4000})
            self.lam, self.noise_var_hat = (float(v) for v in np.exp(res.x))
            return self
        self.noise_var_hat = float(self.noise_var)
        if self.noise_var == 0:
            self.lam = float(np.mean(r2 / s2))
            return self

        def nll(log_lam):
            v = np.exp(log_lam) * s2 + self.noise_var
            return float(np.sum(np.log(v) + r2 / v))

        res = minimize_scalar(nll, bounds=(-20.0, 20.0), method="bounded", options={"xatol": 1e-10})
        self.lam = float(np.exp(res.x))
        return self

    @property
    def lams(self) -> list[float]:
        """The fitted variance multiplier of each output."""
        return [c.lam for c in self.per_output] if self.per_output is not None else [self.lam]

    @property
    def noise_vars(self) -> list[float]:
        """The label-noise variance of each output (estimated, or as given)."""
        return [c.noise_var_hat for c in self.per_output] if self.per_output is not None else [self.noise_var_hat]

    def _transform1(self, m):
        if not np.isfinite(self.lam):
            raise RuntimeError("VarianceScaling is not fitted")
        mu = m.mean(axis=-1, keepdims=True)
        return mu + np.sqrt(self.lam) * (m - mu)


@dataclass
class IsotonicCalibration(_Calibration):
    """Kuleshov et al. (2018) recalibration of the predictive CDF by isotonic regression."""

    eps: float = 1e-4
    _u: np.ndarray | None = None
    _r: np.ndarray | None = None

    def _fit1(self, mu, sigma, y):
        u = np.sort(stats.norm.cdf((y - mu) / sigma))
        emp = np.arange(1, u.size + 1) / u.size  # empirical CDF of the PIT values
        self._u, self._r = u, isotonic_regression(emp, increasing=True).x
        return self

    def recalibrate_cdf(self, u: ArrayLike, output: int | None = None) -> np.ndarray:
        """Calibrated probability for predictive-CDF values ``u`` (of ``output`` if fitted per output)."""
        if self.per_output is not None:
            return self.per_output[output or 0].recalibrate_cdf(u)
        if self._u is None:
            raise RuntimeError("IsotonicCalibration is not fitted")
        return np.interp(u, np.r_[0.0, self._u, 1.0], np.r_[0.0, self._r, 1.0])

    def _transform1(self, m):
        mu, sigma = _mu_sigma(m, self.ddof)
        mu, sigma = mu[..., None], sigma[..., None]
        with np.errstate(divide="ignore", invalid="ignore"):
            z = np.where(sigma > 0, (m - mu) / sigma, 0.0)
        u = np.clip(self.recalibrate_cdf(stats.norm.cdf(z)), self.eps, 1 - self.eps)
        return mu + sigma * stats.norm.ppf(u)


def coverage_curve(
    members: ArrayLike | None = None,
    y: ArrayLike = None,
    *,
    mu: ArrayLike | None = None,
    sigma: ArrayLike | None = None,
    ddof: int = 1,
    levels: ArrayLike | None = None,
) -> pd.DataFrame:
    """Expected vs observed coverage of central Gaussian predictive intervals.

    Give either ``members`` ``(n, M)`` or ``mu``/``sigma``, and observed ``y``.
    Returns a frame with ``expected`` and ``observed`` coverage per level; summarise it
    with :func:`miscalibration_area`.
    """
    if members is not None:
        members = _np(members).astype(np.float64)
        mu, sigma = _mu_sigma(members, ddof)
    mu, sigma, y = (_np(a).astype(np.float64) for a in (mu, sigma, y))
    if not (mu.shape == sigma.shape == y.shape):
        raise ValueError(f"mu, sigma and y must have the same shape, got {mu.shape}, {sigma.shape}, {y.shape}")
    if (sigma <= 0).any():
        raise ValueError("sigma must be > 0 everywhere")
    levels = np.linspace(0.01, 0.99, 99) if levels is None else np.asarray(levels)
    z = np.abs(y - mu) / sigma
    half = stats.norm.ppf(0.5 + levels / 2)
    observed = (z[None, :] <= half[:, None]).mean(axis=1)
    frame = pd.DataFrame({"expected": levels, "observed": observed})
    return frame


def miscalibration_area(curve: pd.DataFrame) -> float:
    """Mean absolute gap between observed and expected coverage of a :func:`coverage_curve` frame
    (0 for perfect calibration; Kuleshov et al. 2018, Tran et al. 2020)."""
    return float(np.mean(np.abs(curve.observed.to_numpy() - curve.expected.to_numpy())))
