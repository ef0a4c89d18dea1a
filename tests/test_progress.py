"""The one progress-bar switch (deepmr_utils.progress)."""

import pytest

from deepmr_utils.progress import PROGRESS_VAR, show_progress


@pytest.mark.parametrize("value, shown", [("0", False), ("false", False), (" No ", False), ("off", False),
                                          ("1", True), ("yes", True), ("", True)])  # fmt: skip
def test_the_environment_sets_the_default(monkeypatch, value, shown):
    monkeypatch.setenv(PROGRESS_VAR, value)
    assert show_progress() is shown
    assert show_progress(True) is True and show_progress(False) is False  # the call wins


def test_bars_are_on_by_default(monkeypatch):
    monkeypatch.delenv(PROGRESS_VAR, raising=False)
    assert show_progress() is True
