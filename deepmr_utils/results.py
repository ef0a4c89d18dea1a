"""The base of every result object: a point estimate with its SE, confidence interval and p-value.

MR estimators (:mod:`deepmr_utils.mr`) return one subclass per method, each with only
the fields that method has (as MendelianRandomization does); meta-analyses
(:mod:`deepmr_utils.meta`) return :class:`~deepmr_utils.meta.MetaResult`. All print
in one line and convert with :meth:`Estimate.to_dict` (e.g. into a ``pandas`` row).
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, fields

import numpy as np
from scipy import stats

from ._types import ArrayLike

__all__ = ["Estimate", "interval"]


@dataclass(frozen=True)
class Estimate:
    """``estimate`` with ``se``, the ``1 - alpha`` interval ``ci_low`` to ``ci_high`` and ``pvalue``."""

    method: str
    estimate: float
    se: float
    ci_low: float
    ci_high: float
    pvalue: float
    _: KW_ONLY
    alpha: float = 0.05

    def _details(self) -> str:
        """What a subclass adds to the one-line summary (after the p-value)."""
        return ""

    def __repr__(self) -> str:
        level = round(100 * (1 - self.alpha))
        return (
            f"{self.method}: {self.estimate:.4g} (SE {self.se:.4g}, {level}% CI "
            f"{self.ci_low:.4g} to {self.ci_high:.4g}, p={self.pvalue:.3g}{self._details()})"
        )

    __str__ = __repr__

    def to_dict(self, *names: str) -> dict:
        """Every field by name, in declaration order; or only ``names``, in their order (a row of
        a results table: ``row.update(result.to_dict("estimate", "se", "tau"))``)."""
        known = [f.name for f in fields(self)]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"{type(self).__name__} has no field {unknown[0]!r}; its fields: {', '.join(known)}")
        return {n: getattr(self, n) for n in (names or known)}


def interval(estimate: ArrayLike, se: ArrayLike, alpha: float, df: float | None = None) -> tuple:
    """Two-sided ``1 - alpha`` interval and p-value of ``estimate`` with standard error ``se`` (scalars or
    arrays): from the normal distribution, or from t(``df``). An SE that is not > 0 is an error: an
    interval of width 0 would be a silent lie (e.g. instruments whose ratios agree far more closely
    than their SEs spread, so that every bootstrap draw lands on the same mode)."""
    if not np.all(np.asarray(se) > 0):
        raise ValueError(f"the standard error is {se}: no confidence interval or p-value can be formed")
    dist = stats.norm if df is None else stats.t(df)
    crit = dist.ppf(1 - alpha / 2)
    return estimate - crit * se, estimate + crit * se, 2 * dist.sf(np.abs(estimate / se))
