"""Figures for MR results: scatter with fitted lines, forest plot, funnel plot.

Each function draws on an existing ``matplotlib`` Axes (or a new one) and
returns it, so chapters can compose panels. Nothing is shown or saved here.
"""
from __future__ import annotations

from typing import Iterable

import matplotlib.pyplot as plt
import numpy as np

from ._validate import as_1d
from .mr import MRResult, _ratio_se

__all__ = ["mr_scatter", "forest", "funnel", "estimate_vs_truth"]

_COLORS = plt.rcParams["axes.prop_cycle"].by_key()["color"]


def _axes(ax, figsize):
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def mr_scatter(bx, bxse, by, byse, results: Iterable[MRResult] = (), *, ax=None,
               orient: bool = True, xlabel: str = "effect on exposure (bx)",
               ylabel: str = "effect on outcome (by)"):
    """Instrument effects with 95 % error bars and one line per MR result.

    With ``orient=True`` the instruments are re-signed so that ``bx >= 0`` (the
    convention under which MR-Egger's intercept is defined). IVW, median and mode
    lines pass through the origin; Egger lines use their intercept.
    """
    bx, bxse, by, byse = (as_1d(a, n) for a, n in ((bx, "bx"), (bxse, "bxse"), (by, "by"), (byse, "byse")))
    if orient:
        s = np.where(bx < 0, -1.0, 1.0)
        bx, by = bx * s, by * s
    ax = _axes(ax, (5.5, 4.5))
    ax.errorbar(bx, by, xerr=1.96 * bxse, yerr=1.96 * byse, fmt="o", ms=4, color="0.35",
                ecolor="0.75", elinewidth=1, capsize=0, zorder=2, label="instruments")
    lo = min(0.0, float(np.min(bx - 1.96 * bxse)))
    hi = float(np.max(bx + 1.96 * bxse))
    xs = np.linspace(lo, hi, 50)
    for i, res in enumerate(results):
        icpt = res.intercept if np.isfinite(res.intercept) else 0.0
        ax.plot(xs, icpt + res.estimate * xs, color=_COLORS[i % len(_COLORS)], lw=2, zorder=3,
                label=f"{res.method}: {res.estimate:.2f}")
    ax.axhline(0, color="0.85", lw=0.8, zorder=1)
    ax.axvline(0, color="0.85", lw=0.8, zorder=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False, fontsize="small")
    return ax


def forest(bx, bxse, by, byse, results: Iterable[MRResult] = (), *, labels=None, order: int = 1,
           ax=None, sort: bool = True, xlim=None, xlabel: str = "causal effect (ratio estimate)"):
    """Per-instrument Wald ratios with 95 % CIs, and the pooled results beneath them.

    Weak instruments (tiny ``bx``) give huge ratios; pass ``xlim`` to keep the
    bulk readable: estimates beyond it are drawn as triangles at the edge.
    """
    bx, bxse, by, byse = (as_1d(a, n) for a, n in ((bx, "bx"), (bxse, "bxse"), (by, "by"), (byse, "byse")))
    results = list(results)
    r = by / bx
    se = _ratio_se(bx, bxse, by, byse, order)
    labels = np.asarray(labels if labels is not None else [f"variant {i + 1}" for i in range(r.size)])
    idx = np.argsort(r) if sort else np.arange(r.size)
    n = r.size + len(results)
    ax = _axes(ax, (5.5, 0.22 * n + 1.2))
    y = np.arange(n)[::-1]
    ax.errorbar(r[idx], y[: r.size], xerr=1.96 * se[idx], fmt="s", ms=3, color="0.3", ecolor="0.6", lw=1)
    for j, res in enumerate(results):
        yy = y[r.size + j]
        c = _COLORS[j % len(_COLORS)]
        ax.errorbar([res.estimate], [yy], xerr=[[res.estimate - res.ci_low], [res.ci_high - res.estimate]],
                    fmt="D", ms=6, color=c, ecolor=c, lw=2)
    ax.set_yticks(y, list(labels[idx]) + [res.method for res in results], fontsize="x-small")
    _clip_marks(ax, r[idx], y[: r.size], xlim)
    ax.axvline(0, color="0.8", lw=0.8)
    if results:
        ax.axhline(y[r.size - 1] - 0.5, color="0.85", lw=0.8)
    ax.set_xlabel(xlabel)
    return ax


def funnel(bx, bxse, by, byse, results: Iterable[MRResult] = (), *, order: int = 1, ax=None, xlim=None):
    """Ratio estimate against its precision (1/SE); asymmetry hints at pleiotropy."""
    bx, bxse, by, byse = (as_1d(a, n) for a, n in ((bx, "bx"), (bxse, "bxse"), (by, "by"), (byse, "byse")))
    r = by / bx
    prec = 1 / _ratio_se(bx, bxse, by, byse, order)
    ax = _axes(ax, (5, 4))
    ax.scatter(r, prec, s=18, color="0.35", zorder=2)
    for i, res in enumerate(results):
        ax.axvline(res.estimate, color=_COLORS[i % len(_COLORS)], lw=2, label=f"{res.method}: {res.estimate:.2f}")
    ax.set_xlabel("ratio estimate")
    ax.set_ylabel("precision (1 / SE)")
    _clip_marks(ax, r, prec, xlim)
    if results:
        ax.legend(frameon=False, fontsize="small")
    return ax


def _clip_marks(ax, x, y, xlim):
    """Set ``xlim`` and mark points beyond it with edge triangles."""
    if xlim is None:
        return
    lo, hi = xlim
    ax.set_xlim(lo, hi)
    pad = 0.01 * (hi - lo)
    for xi, yi in zip(x, y):
        if xi < lo:
            ax.plot(lo + pad, yi, marker="<", color="C3", ms=6, clip_on=False)
        elif xi > hi:
            ax.plot(hi - pad, yi, marker=">", color="C3", ms=6, clip_on=False)


def estimate_vs_truth(truth, estimate, se=None, *, ax=None, label: str = "", color=None):
    """Local estimates against the true local effects, with the identity line."""
    truth, estimate = as_1d(truth, "truth"), as_1d(estimate, "estimate")
    ax = _axes(ax, (4.5, 4.5))
    if se is not None:
        ax.errorbar(truth, estimate, yerr=1.96 * as_1d(se, "se"), fmt="none", ecolor="0.85", lw=0.8, zorder=1)
    ax.scatter(truth, estimate, s=10, alpha=0.7, color=color, label=label or None, zorder=2)
    lo = float(np.nanmin([truth.min(), np.nanmin(estimate)]))
    hi = float(np.nanmax([truth.max(), np.nanmax(estimate)]))
    ax.plot([lo, hi], [lo, hi], color="0.4", lw=1, ls="--", zorder=3)
    ax.set_xlabel("true local effect")
    ax.set_ylabel("estimated local effect")
    return ax
