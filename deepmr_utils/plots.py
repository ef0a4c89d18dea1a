"""The library's figures: MR scatter with fitted lines, forest and funnel plots, estimates against truths,
the ISM heatmap and the pairwise effect matrix (the chapters' own panels are in ``deepmr_utils.book.panels``).

Each function draws on an existing ``matplotlib`` Axes (or a new one) and
returns it, so chapters can compose panels. Nothing is shown or saved here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from ._types import ArrayLike
from ._validate import as_1d
from .mr import MRResult, ratio_se

__all__ = [
    "OKABE_ITO",
    "axes_or_new",
    "mr_scatter",
    "forest",
    "funnel",
    "estimate_vs_truth",
    "ism_heatmap",
    "effect_matrix",
]

# Okabe & Ito's palette, distinguishable with every common form of colour blindness (black moved last)
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
_COLORS = OKABE_ITO


def axes_or_new(ax: Axes | None, figsize: tuple[float, float]) -> Axes:
    """``ax``, or the Axes of a new figure of ``figsize`` (inches) when ``ax`` is None."""
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def mr_scatter(
    bx: ArrayLike,
    bxse: ArrayLike,
    by: ArrayLike,
    byse: ArrayLike,
    results: Iterable[MRResult] = (),
    *,
    ax: Axes | None = None,
    orient: bool = True,
    xlabel: str = "effect on exposure (bx)",
    ylabel: str = "effect on outcome (by)",
) -> Axes:
    """Instrument effects with 95 % error bars and one line per MR result.

    With ``orient=True`` the instruments are re-signed so that ``bx >= 0`` (the
    convention under which MR-Egger's intercept is defined). IVW, median and mode
    lines pass through the origin; Egger lines use their intercept.
    """
    bx, bxse, by, byse = (as_1d(a, n) for a, n in ((bx, "bx"), (bxse, "bxse"), (by, "by"), (byse, "byse")))
    if orient:
        s = np.where(bx < 0, -1.0, 1.0)
        bx, by = bx * s, by * s
    ax = axes_or_new(ax, (5.5, 4.5))
    ax.errorbar(
        bx,
        by,
        xerr=1.96 * bxse,
        yerr=1.96 * byse,
        fmt="o",
        ms=4,
        color="0.35",
        ecolor="0.75",
        elinewidth=1,
        capsize=0,
        zorder=2,
        label="instruments",
    )
    lo = min(0.0, float(np.min(bx - 1.96 * bxse)))
    hi = float(np.max(bx + 1.96 * bxse))
    xs = np.linspace(lo, hi, 50)
    for i, res in enumerate(results):
        icpt = getattr(res, "intercept", 0.0)  # only Egger has one
        ax.plot(
            xs,
            icpt + res.estimate * xs,
            color=_COLORS[i % len(_COLORS)],
            lw=2,
            zorder=3,
            label=f"{res.method}: {res.estimate:.2f}",
        )
    ax.axhline(0, color="0.85", lw=0.8, zorder=1)
    ax.axvline(0, color="0.85", lw=0.8, zorder=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(frameon=False, fontsize="small")
    return ax


def forest(
    bx: ArrayLike,
    bxse: ArrayLike,
    by: ArrayLike,
    byse: ArrayLike,
    results: Iterable[MRResult] = (),
    *,
    labels: Sequence[str] | None = None,
    order: int = 1,
    ax: Axes | None = None,
    sort: bool = True,
    xlim: tuple[float, float] | None = None,
    xlabel: str = "causal effect (ratio estimate)",
) -> Axes:
    """Per-instrument Wald ratios with 95 % CIs, and the pooled results beneath them.

    Weak instruments (tiny ``bx``) give huge ratios; pass ``xlim`` to keep the
    bulk readable: estimates beyond it are drawn as triangles at the edge.
    """
    bx, bxse, by, byse = (as_1d(a, n) for a, n in ((bx, "bx"), (bxse, "bxse"), (by, "by"), (byse, "byse")))
    results = list(results)
    r = by / bx
    se = ratio_se(bx, bxse, by, byse, order)
    labels = np.asarray(labels if labels is not None else [f"variant {i + 1}" for i in range(r.size)])
    idx = np.argsort(r) if sort else np.arange(r.size)
    n = r.size + len(results)
    ax = axes_or_new(ax, (5.5, 0.22 * n + 1.2))
    y = np.arange(n)[::-1]
    ax.errorbar(r[idx], y[: r.size], xerr=1.96 * se[idx], fmt="s", ms=3, color="0.3", ecolor="0.6", lw=1)
    for j, res in enumerate(results):
        yy = y[r.size + j]
        c = _COLORS[j % len(_COLORS)]
        ax.errorbar(
            [res.estimate],
            [yy],
            xerr=[[res.estimate - res.ci_low], [res.ci_high - res.estimate]],
            fmt="D",
            ms=6,
            color=c,
            ecolor=c,
            lw=2,
        )
    ax.set_yticks(y, list(labels[idx]) + [res.method for res in results], fontsize="x-small")
    _clip_marks(ax, r[idx], y[: r.size], xlim)
    ax.axvline(0, color="0.8", lw=0.8)
    if results:
        ax.axhline(y[r.size - 1] - 0.5, color="0.85", lw=0.8)
    ax.set_xlabel(xlabel)
    return ax


def funnel(
    bx: ArrayLike,
    bxse: ArrayLike,
    by: ArrayLike,
    byse: ArrayLike,
    results: Iterable[MRResult] = (),
    *,
    order: int = 1,
    ax: Axes | None = None,
    xlim: tuple[float, float] | None = None,
) -> Axes:
    """Ratio estimate against its precision (1/SE); asymmetry hints at pleiotropy."""
    bx, bxse, by, byse = (as_1d(a, n) for a, n in ((bx, "bx"), (bxse, "bxse"), (by, "by"), (byse, "byse")))
    r = by / bx
    prec = 1 / ratio_se(bx, bxse, by, byse, order)
    ax = axes_or_new(ax, (5, 4))
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


def estimate_vs_truth(
    truth: ArrayLike,
    estimate: ArrayLike,
    se: ArrayLike = None,
    *,
    ax: Axes | None = None,
    label: str = "",
    color: str | None = None,
) -> Axes:
    """Local estimates against the true local effects, with the identity line."""
    truth, estimate = as_1d(truth, "truth"), as_1d(estimate, "estimate")
    ax = axes_or_new(ax, (4.5, 4.5))
    if se is not None:
        ax.errorbar(truth, estimate, yerr=1.96 * as_1d(se, "se"), fmt="none", ecolor="0.85", lw=0.8, zorder=1)
    ax.scatter(truth, estimate, s=10, alpha=0.7, color=color, label=label or None, zorder=2)
    lo = float(np.nanmin([truth.min(), np.nanmin(estimate)]))
    hi = float(np.nanmax([truth.max(), np.nanmax(estimate)]))
    ax.plot([lo, hi], [lo, hi], color="0.4", lw=1, ls="--", zorder=3)
    ax.set_xlabel("true local effect")
    ax.set_ylabel("estimated local effect")
    return ax


def ism_heatmap(
    effect: ArrayLike,
    *,
    names: Sequence[str] | None = ("exposure", "outcome"),
    sites: ArrayLike | None = None,
    widths: Sequence[int] | None = None,
    axes: Sequence[Axes] | None = None,
    shared_scale: bool = True,
) -> Sequence[Axes]:
    """Heatmaps of ISM effects ``(P, 4, O)`` (NaN at reference bases), one panel per output.

    ``shared_scale``: one colour scale for every panel, so that rows can be compared (a small effect
    on one output is not drawn as strongly as a large one on another); ``False`` scales each panel to
    its own largest effect."""
    effect = np.asarray(effect)
    n_out = effect.shape[-1]
    if axes is None:
        _, axes = plt.subplots(n_out, 1, figsize=(10, 1.6 * n_out + 0.6), sharex=True)
    axes = np.atleast_1d(axes)
    shared = np.nanmax(np.abs(effect)) or 1.0
    for o, ax in enumerate(axes):
        m = effect[:, :, o].T
        lim = shared if shared_scale else (np.nanmax(np.abs(m)) or 1.0)
        im = ax.imshow(m, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_yticks(range(4), list("ACGT"))
        ax.set_ylabel(names[o] if o < len(names) else f"output {o}")
        plt.colorbar(im, ax=ax, fraction=0.02, pad=0.01, label="effect")
        if sites is not None:
            for j, s in enumerate(sites):
                if s >= 0 and widths is not None:
                    ax.add_patch(plt.Rectangle((s - 0.5, -0.5), widths[j], 4, fill=False, edgecolor=_COLORS[j], lw=2))
    axes[-1].set_xlabel("position (bp)")
    return axes


def effect_matrix(
    matrix: pd.DataFrame,
    *,
    low: ArrayLike | None = None,
    high: ArrayLike | None = None,
    ax: Axes | None = None,
    title: str = "",
    vmax: float | None = None,
    cmap: str = "RdBu_r",
    fontsize: float = 10,
) -> Axes:
    """Heatmap of an exposure x outcome effect matrix (a DataFrame), annotated with the values.

    ``low``/``high`` (same shape) add the CI to each annotation; ``fontsize`` is the annotations'.
    """
    m = matrix.to_numpy(dtype=float)
    ax = axes_or_new(ax, (5.2, 4.6))
    lim = vmax if vmax is not None else (np.nanmax(np.abs(m)) or 1.0)
    im = ax.imshow(m, cmap=cmap, vmin=-lim, vmax=lim)
    ax.set_xticks(range(m.shape[1]), matrix.columns, rotation=45, ha="right")
    ax.set_yticks(range(m.shape[0]), matrix.index)
    ax.set_xlabel("outcome")
    ax.set_ylabel("exposure")
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if np.isnan(m[i, j]):
                continue
            text = f"{m[i, j]:.2f}"
            if low is not None and high is not None:
                text += f"\n[{low.iloc[i, j]:.2f}, {high.iloc[i, j]:.2f}]"
            ink = "white" if abs(m[i, j]) > 0.6 * lim else "black"
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize, color=ink)
    ax.set_title(title)
    plt.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax
