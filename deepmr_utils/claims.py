"""The numbers a chapter's text rests on, asserted with their margins.

Chapters end with a hidden cell of claims such as "the rank correlation with the truth
exceeds 0.6". :func:`check` evaluates them all, prints each value next to its bound and
the margin, and raises one ``AssertionError`` naming every claim that failed, so a CI log
shows how close a passing claim came as well as which one broke.
"""

from __future__ import annotations

import math
import operator

import pandas as pd

__all__ = ["check"]

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


def check(claims: list[tuple[str, float, str, float]], *, show: bool = True) -> pd.DataFrame:
    """Check ``(text, value, op, bound)`` claims; ``op`` is one of ``> >= < <=``.

    Returns a frame with ``claim, value, op, bound, margin, ok``; ``margin`` is how far the
    value is inside its bound, relative to the bound (``(value - bound) / |bound|`` for
    ``>``, the mirror for ``<``), so 0.5 means "50 % away from failing". A NaN value fails.
    """
    rows = []
    for text, value, op, bound in claims:
        if op not in _OPS:
            raise ValueError(f"claim {text!r}: op must be one of {sorted(_OPS)}, got {op!r}")
        value, bound = float(value), float(bound)
        ok = not math.isnan(value) and _OPS[op](value, bound)
        sign = 1.0 if op in (">", ">=") else -1.0
        margin = sign * (value - bound) / abs(bound) if bound != 0 else sign * (value - bound)
        rows.append({"claim": text, "value": value, "op": op, "bound": bound, "margin": margin, "ok": ok})
    table = pd.DataFrame(rows)
    if show:
        with pd.option_context("display.width", 160, "display.max_colwidth", 80):
            print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    failed = table[~table.ok]
    if len(failed):
        raise AssertionError(
            "claims that do not hold: "
            + "; ".join(f"{r.claim}: {r.value:.4g} is not {r.op} {r.bound:.4g}" for r in failed.itertuples())
        )
    return table
