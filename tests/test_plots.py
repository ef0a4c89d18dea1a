"""The library's plots (deepmr_utils.plots): each draws what it is given on the axes it is given."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from deepmr_utils import mr, plots  # noqa: E402


@pytest.fixture
def instruments():
    rng = np.random.default_rng(0)
    bx = rng.uniform(0.2, 1.0, 12) * rng.choice([-1, 1], 12)
    return bx, np.full(12, 0.05), 0.5 * bx + rng.normal(0, 0.02, 12), np.full(12, 0.05)


def test_scatter_orients_instruments_and_draws_one_line_per_result(instruments):
    bx, bxse, by, byse = instruments
    fig, ax = plt.subplots()
    res = [mr.ivw(bx, bxse, by, byse), mr.egger(bx, bxse, by, byse)]
    assert plots.mr_scatter(bx, bxse, by, byse, res, ax=ax) is ax
    assert len(ax.get_lines()) >= 2
    xs = np.concatenate([c.get_offsets()[:, 0] for c in ax.collections if len(c.get_offsets())])
    assert (xs >= 0).all()  # orient=True: every bx re-signed to be positive
    plt.close(fig)


def test_forest_funnel_and_truth_plots_draw_on_given_axes(instruments):
    bx, bxse, by, byse = instruments
    fig, axes = plt.subplots(1, 3)
    assert plots.forest(bx, bxse, by, byse, [mr.ivw(bx, bxse, by, byse)], ax=axes[0]) is axes[0]
    assert len(axes[0].get_yticks()) >= 12
    assert plots.funnel(bx, bxse, by, byse, ax=axes[1]) is axes[1]
    assert plots.estimate_vs_truth([0.1, 0.5, 1.0], [0.2, 0.4, 1.1], [0.1, 0.1, 0.1], ax=axes[2]) is axes[2]
    plt.close(fig)


def test_effect_matrix_and_ism_heatmap():
    m = pd.DataFrame([[np.nan, 0.5], [0.0, np.nan]], index=["a", "b"], columns=["a", "b"])
    fig, ax = plt.subplots()
    assert plots.effect_matrix(m, ax=ax, title="t") is ax and ax.get_title() == "t"
    plt.close(fig)
    axes = plots.ism_heatmap(np.random.default_rng(1).normal(size=(20, 4, 2)))
    assert len(axes) == 2
    plt.close("all")
    assert plots.OKABE_ITO[0] == "#0072B2" and len(plots.OKABE_ITO) == 8
