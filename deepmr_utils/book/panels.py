"""The chapters' own figures and tables: the book's look, loss curves, binding tracks, coverage curves,
base-resolution profiles, results tables and sweep lines. The library's figures (MR scatter, forest,
funnel, ISM heatmap, effect matrix) are in :mod:`deepmr_utils.plots`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from .._types import ArrayLike
from ..plots import OKABE_ITO, axes_or_new
from ..train import History
from ..uncertainty import miscalibration_area

__all__ = ["book_style", "loss_curves", "binding_tracks", "coverage", "profiles", "table", "sweep"]


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


def loss_curves(histories: Sequence[History], *, ax: Axes | None = None, loss: str = "loss") -> Axes:
    """Training and validation loss of every ensemble member (``train.History`` objects); ``loss``
    names the loss on the y axis (the training code knows which it was, this function does not)."""
    ax = axes_or_new(ax, (5, 3.5))
    for i, h in enumerate(histories):
        f = h.to_frame()
        c = OKABE_ITO[i % len(OKABE_ITO)]
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
    ax = axes_or_new(ax, (9, 2.6))
    for j, ((role, name), g) in enumerate(tracks.groupby(["role", "name"], sort=False)):
        ax.plot(g.position, g.p_bound, color=OKABE_ITO[j], lw=1.5, label=f"{role}: {name}")
        if sites is not None and widths is not None and sites[j] >= 0:
            ax.axvspan(sites[j], sites[j] + widths[j], color=OKABE_ITO[j], alpha=0.15)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("position")
    ax.set_ylabel("P(site bound)")
    ax.legend(frameon=False, fontsize="x-small", loc="upper right")
    return ax


def coverage(frames: dict, *, ax: Axes | None = None) -> Axes:
    """Expected vs observed coverage curves (``uncertainty.coverage_curve`` frames), one per label."""
    ax = axes_or_new(ax, (4, 4))
    ax.plot([0, 1], [0, 1], color="0.5", ls="--", lw=1)
    for i, (label, f) in enumerate(frames.items()):
        ax.plot(
            f.expected,
            f.observed,
            color=OKABE_ITO[i % len(OKABE_ITO)],
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
        c = OKABE_ITO[t % len(OKABE_ITO)]
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
                    ax.axvspan(s - 0.5, s + widths[j] - 0.5, color=OKABE_ITO[j % len(OKABE_ITO)], alpha=0.12, lw=0)
    axes[-1].set_xlabel("position (+ strand up, - strand down)")
    return axes


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
    ax = axes_or_new(ax, (4.5, 3.2))
    for i, (level, g) in enumerate(summary.groupby(hue, sort=False)):
        g = g.sort_values(x)
        ax.plot(g[x], g[y], "o-", color=OKABE_ITO[i % len(OKABE_ITO)], ms=4, lw=1.2, label=str(level))
    if reference is not None:
        ax.axhline(reference, color="0.5", ls="--", lw=0.8)
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    ax.legend(fontsize=8, frameon=False)
    return ax
