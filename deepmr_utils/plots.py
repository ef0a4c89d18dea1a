"""Figures: MR scatter with fitted lines, forest and funnel plots, and the chapters' panels.

Each function draws on an existing ``matplotlib`` Axes (or a new one) and
returns it, so chapters can compose panels. Nothing is shown or saved here.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from ._types import ArrayLike
from ._validate import as_1d
from .mr import MRResult, ratio_se
from .train import History
from .uncertainty import miscalibration_area

__all__ = [
    "book_style",
    "mr_scatter",
    "forest",
    "funnel",
    "estimate_vs_truth",
    "loss_curves",
    "binding_tracks",
    "ism_heatmap",
    "coverage",
    "profiles",
    "effect_matrix",
    "table",
    "sweep",
]

# Okabe & Ito's palette, distinguishable with every common form of colour blindness (black moved last)
OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"]
_COLORS = OKABE_ITO


def book_style() -> None:
    """The book's one look, set by every chapter's first cell: the Okabe-Ito palette as the colour
    cycle (so ``"C0"``, ``"C1"``... are colour-blind safe too), fonts readable at page width, no top
    and right spines, and high-DPI (2x) PNG figures in notebooks."""
    plt.rcParams.update({
        "axes.prop_cycle": plt.cycler(color=OKABE_ITO),
        "font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11, "legend.fontsize": 9,
        "xtick.labelsize": 9.5, "ytick.labelsize": 9.5, "axes.spines.top": False, "axes.spines.right": False,
        "figure.dpi": 100, "savefig.dpi": 200,
    })  # fmt: skip
    try:  # inline figures at twice the pixel density: sharp on high-DPI screens and in print
        from matplotlib_inline.backend_inline import set_matplotlib_formats

        set_matplotlib_formats("retina")
    except ImportError:  # not in a notebook environment: nothing to set
        pass


def _axes(ax, figsize):
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
    ax = _axes(ax, (5.5, 4.5))
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
    ax = _axes(ax, (5.5, 0.22 * n + 1.2))
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


def loss_curves(histories: Sequence[History], *, ax: Axes | None = None, loss: str = "loss") -> Axes:
    """Training and validation loss of every ensemble member (``train.History`` objects); ``loss``
    names the loss on the y axis (the training code knows which it was, this function does not)."""
    ax = _axes(ax, (5, 3.5))
    for i, h in enumerate(histories):
        f = h.to_frame()
        c = _COLORS[i % len(_COLORS)]
        ax.plot(f.epoch, f.train, color=c, lw=1, alpha=0.6)
        ax.plot(f.epoch, f.validation, color=c, lw=2, label=f"member {i + 1}")
        ax.plot(h.best_epoch + 1, h.best_val_loss, "o", color=c)
    ax.set_xlabel("epoch")
    ax.set_ylabel(f"{loss} (thin: training, thick: validation)")
    ax.legend(frameon=False, fontsize="x-small")
    return ax


def binding_tracks(
    tracks: pd.DataFrame, *, sites: ArrayLike | None = None, widths: Sequence[int] | None = None, ax: Axes | None = None
) -> Axes:
    """Per-window binding probability of each TF along one sequence.

    ``tracks``: a frame with ``role, name, position, p_bound`` (one row per role and
    window centre), e.g. :meth:`deepmr_utils.simulate.CooperativityModel.binding_tracks`.
    ``sites`` (a start per role in the frame's order, -1 = none) and ``widths`` shade the
    embedded motifs.
    """
    ax = _axes(ax, (9, 2.6))
    for j, ((role, name), g) in enumerate(tracks.groupby(["role", "name"], sort=False)):
        ax.plot(g.position, g.p_bound, color=_COLORS[j], lw=1.5, label=f"{role}: {name}")
        if sites is not None and widths is not None and sites[j] >= 0:
            ax.axvspan(sites[j], sites[j] + widths[j], color=_COLORS[j], alpha=0.15)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("position")
    ax.set_ylabel("P(site bound)")
    ax.legend(frameon=False, fontsize="x-small", loc="upper right")
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


def coverage(frames: dict, *, ax: Axes | None = None) -> Axes:
    """Expected vs observed coverage curves (``uncertainty.coverage_curve`` frames), one per label."""
    ax = _axes(ax, (4, 4))
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1)
    for i, (label, f) in enumerate(frames.items()):
        ax.plot(
            f.expected,
            f.observed,
            color=_COLORS[i % len(_COLORS)],
            lw=2,
            label=f"{label} (area {miscalibration_area(f):.2f})",
        )
    ax.set_xlabel("expected coverage")
    ax.set_ylabel("observed coverage")
    ax.legend(frameon=False, fontsize="x-small")
    return ax


def profiles(
    observed: ArrayLike,
    predicted: ArrayLike | None = None,
    *,
    names: Sequence[str] | None = None,
    sites: ArrayLike | None = None,
    widths: Sequence[int] | None = None,
    axes: Sequence[Axes] | None = None,
) -> Sequence[Axes]:
    """Two-strand base-resolution profiles ``(T, 2, L)``, one panel per task.

    Observed counts are drawn as bars (+ strand up, - strand down); ``predicted``
    (same shape, expected counts) as lines. Motif instances (``sites``: start per
    motif, -1 = none; ``widths``) are shaded in every panel.
    """
    observed = np.asarray(observed, dtype=float)
    if observed.ndim != 3 or observed.shape[1] != 2:
        raise ValueError(f"observed must be (T, 2, L), got {observed.shape}")
    T, _, L = observed.shape
    if axes is None:
        _, axes = plt.subplots(T, 1, figsize=(10, 1.5 * T + 0.5), sharex=True)
    axes = np.atleast_1d(axes)
    x = np.arange(L)
    for t, ax in enumerate(axes):
        c = _COLORS[t % len(_COLORS)]
        ax.bar(x, observed[t, 0], width=1.0, color=c, alpha=0.45, lw=0)
        ax.bar(x, -observed[t, 1], width=1.0, color=c, alpha=0.45, lw=0)
        if predicted is not None:
            ax.plot(x, predicted[t, 0], color=c, lw=1.2)
            ax.plot(x, -np.asarray(predicted)[t, 1], color=c, lw=1.2)
        ax.axhline(0, color="0.6", lw=0.5)
        ax.set_ylabel(names[t] if names is not None else f"task {t}")
        if sites is not None and widths is not None:
            for j, s in enumerate(sites):
                if s >= 0:
                    ax.axvspan(s - 0.5, s + widths[j] - 0.5, color=_COLORS[j % len(_COLORS)], alpha=0.12, lw=0)
    axes[-1].set_xlabel("position (+ strand up, - strand down)")
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
    ax = _axes(ax, (5.2, 4.6))
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


# returns a pandas Styler; typed Any because importing the Styler needs jinja2, which only the book installs
def table(frame: pd.DataFrame, *, digits: int = 2, columns: Sequence[str] | None = None) -> Any:
    """A results table for the page: the chosen ``columns`` (default all), floats to ``digits``
    decimals, integers as integers, no index (a page has no use for row numbers)."""
    f = frame if columns is None else frame[list(columns)]
    floats = [c for c in f.columns if pd.api.types.is_float_dtype(f[c])]
    return f.style.hide(axis="index").format(precision=digits, subset=floats, na_rep="–")


def sweep(
    summary: pd.DataFrame,
    *,
    x: str,
    y: str,
    hue: str = "estimator",
    ax: Axes | None = None,
    reference: float | None = None,
    xlabel: str | None = None,
    ylabel: str | None = None,
) -> Axes:
    """One line per ``hue`` level of ``y`` against ``x`` from a tidy summary frame, with an optional
    dashed ``reference`` line (e.g. 0 for a bias, 0.95 for a coverage) and a legend."""
    ax = _axes(ax, (4.5, 3.2))
    for i, (level, g) in enumerate(summary.groupby(hue, sort=False)):
        g = g.sort_values(x)
        ax.plot(g[x], g[y], "o-", color=_COLORS[i % len(_COLORS)], ms=4, lw=1.2, label=str(level))
    if reference is not None:
        ax.axhline(reference, color="0.5", ls="--", lw=0.8)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.legend(fontsize=8, frameon=False)
    return ax
