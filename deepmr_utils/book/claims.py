"""The numbers a chapter's text rests on, asserted with their margins.

Chapters end with a hidden cell of claims such as "the rank correlation with the truth
exceeds 0.6". :func:`check` evaluates them all, prints each value next to its bound and
the margin, and raises one ``AssertionError`` naming every claim that failed, so a CI log
shows how close a passing claim came as well as which one broke.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from . import config

__all__ = ["check", "Only", "If"]

_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}


@dataclass(frozen=True)
class Only:
    """A claim asserted only at ``scales``; at any other scale it is still evaluated and written to the
    ledger, with ``why`` (computed or measured, e.g. "3 of 3 seeds fail at quick: 25 loci per TF") as its
    ``scale_note``, so a claim too small to show at one scale is stated, never silently dropped."""

    scales: tuple[str, ...]
    why: str

    def __post_init__(self):
        if not self.scales or not self.why:
            raise ValueError("Only needs at least one scale and a reason")

    def applies(self, scale: str) -> bool:
        return scale in self.scales

    def note(self, scale: str) -> str:
        return f"not asserted at {scale}: {self.why}"


@dataclass(frozen=True)
class If:
    """A claim asserted only where a gate decided *before* looking at the claim's value holds (e.g. the
    model learned the exposure: fidelity before inference). It is evaluated and written to the ledger
    either way, with ``why`` as its ``scale_note`` when the gate is shut."""

    holds: bool
    why: str

    def __post_init__(self):
        if not self.why:
            raise ValueError("If needs a reason")

    def applies(self, scale: str) -> bool:
        return bool(self.holds)

    def note(self, scale: str) -> str:
        return f"not asserted: {self.why}"


def check(
    claims: list[tuple[str, float, str, float]], *, show: bool = True, ledger: str | Path | None = None
) -> pd.DataFrame:
    """Check ``(text, value, op, bound)`` claims; ``op`` is one of ``> >= < <=``.

    Returns a frame with ``claim, value, op, bound, margin, ok``; ``margin`` is how far the
    value is inside its bound, relative to the bound (``(value - bound) / |bound|`` for
    ``>``, the mirror for ``<``), so 0.5 means "50 % away from failing". A NaN value fails.
    ``ledger``: a CSV the rows are written to *before* anything is raised (with the scale and
    seed offset of the run), replacing rows of the same claim text and keeping the others, so a
    chapter with several claim cells keeps one ledger and a failed build still shows its margins.
    """
    scale = config.get_scale()
    rows = []
    for text, value, op, bound, *rest in claims:
        if op not in _OPS:
            raise ValueError(f"claim {text!r}: op must be one of {sorted(_OPS)}, got {op!r}")
        only = rest[0] if rest else None
        if only is not None and not isinstance(only, (Only, If)):
            raise TypeError(
                f"claim {text!r}: a fifth element must be claims.Only or claims.If, got {type(only).__name__}"
            )
        value, bound = float(value), float(bound)
        ok = not math.isnan(value) and _OPS[op](value, bound)
        sign = 1.0 if op in (">", ">=") else -1.0
        margin = sign * (value - bound) / abs(bound) if bound != 0 else sign * (value - bound)
        asserted = only is None or only.applies(scale)
        note = "" if asserted else only.note(scale)
        rows.append(
            {"claim": text, "value": value, "op": op, "bound": bound, "margin": margin, "ok": ok,
             "asserted": asserted, "scale_note": note}
        )  # fmt: skip
    table = pd.DataFrame(rows)
    if ledger is not None:
        _write_ledger(table, Path(ledger), scale)
    if show:
        with pd.option_context("display.width", 160, "display.max_colwidth", 80):
            print(table.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
    failed = table[~table.ok & table.asserted]
    if len(failed):
        raise AssertionError(
            "claims that do not hold: "
            + "; ".join(f"{r.claim}: {r.value:.4g} is not {r.op} {r.bound:.4g}" for r in failed.itertuples())
        )
    return table


def _write_ledger(table: pd.DataFrame, path: Path, scale: str) -> None:
    rows = table.assign(scale=scale, seed_offset=config.chapter_seed(0))  # the offset, validated
    if path.is_file():
        old = pd.read_csv(path)
        rows = pd.concat([old[~old.claim.isin(rows.claim)], rows], ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(path, index=False)
