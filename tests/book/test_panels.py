"""The chapters' panels (deepmr_utils.book.panels): tables without an index, one line per estimator."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from deepmr_utils.book import panels  # noqa: E402
from deepmr_utils.train import History  # noqa: E402


def test_table_rounds_floats_only_and_hides_the_index():
    frame = pd.DataFrame({"name": ["a", "b"], "n": [3, 4], "x": [0.12345, float("nan")]})
    html = panels.table(frame, columns=["name", "x"]).to_html()
    assert "0.12" in html and "0.123" not in html and "–" in html and ">n<" not in html


def test_sweep_draws_one_line_per_estimator_and_the_reference():
    summary = pd.DataFrame({"estimator": ["IVW"] * 3 + ["mode"] * 3, "value": [3, 1, 2] * 2, "bias": range(6)})
    ax = panels.sweep(summary, x="value", y="bias", reference=0.0)
    lines = ax.get_lines()
    assert len(lines) == 3 and list(lines[0].get_xdata()) == [1, 2, 3]  # two estimators + the reference
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["IVW", "mode"]
    plt.close("all")


def test_loss_curves_one_per_member():
    hists = [History([1.1, 0.6], [1.0, 0.5], best_epoch=1), History([1.3, 0.5, 0.2], [1.2, 0.4, 0.3], best_epoch=2)]
    ax = panels.loss_curves(hists, loss="MSE")
    assert len(ax.get_lines()) == 6 and "MSE" in ax.get_ylabel()  # training, validation and best epoch per member
    plt.close("all")
