"""Helpers shared by the simulated worlds: count transforms, true local slopes, effect draws."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._types import ArrayLike


def anscombe(c: float) -> np.ndarray:
    """Variance-stabilising transform of Poisson counts, ``2 sqrt(c + 3/8)``."""
    return 2.0 * np.sqrt(np.asarray(c, dtype=np.float64) + 0.375)


def slope_through_origin(locus: ArrayLike, dx: ArrayLike, dy: ArrayLike) -> pd.DataFrame:
    """Per-locus ``sum(dx * dy) / sum(dx^2)``: the true local effect over a locus's instruments
    (NaN where the instruments do not move the exposure)."""
    g = pd.DataFrame({"locus": locus, "xy": dx * dy, "xx": dx * dx}).groupby("locus", sort=False).sum()
    theta = np.where(g.xx > 1e-12, g.xy / g.xx.where(g.xx > 1e-12, 1.0), np.nan)
    return pd.DataFrame({"locus": g.index, "theta": theta}).reset_index(drop=True)


def draw_effect_ratio(
    rng: np.random.Generator, *, p_large: float = 0.5, large: float = 10.0, small: float = 1.0, sd: float = 0.5
) -> float:
    """The study's per-round effect ratio beta/alpha: a two-component normal mixture, clipped at 0."""
    mean = large if rng.random() < p_large else small
    return float(max(0.0, rng.normal(mean, sd)))
