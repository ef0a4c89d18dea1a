"""The shared input checks (deepmr_utils._validate) that every estimator and option relies on."""

import numpy as np
import pytest

from deepmr_utils import _validate as v


def test_is_integer_refuses_bools_and_floats():
    assert v.is_integer(3) and v.is_integer(np.int64(3)) and v.is_integer(np.uint8(0))
    assert not any(v.is_integer(x) for x in (True, np.bool_(False), 3.0, "3", None))


def test_renamed_keywords_name_the_replacement_and_pass_everything_else():
    @v.renamed_keywords(old="write new= instead")
    def f(a, *, new=1):
        return a + new

    assert f(1, new=2) == 3 and f.__name__ == "f"
    with pytest.raises(TypeError, match=r"^f\(\) no longer takes old=; write new= instead$"):
        f(1, old=2)


def test_psi_is_a_correlation_or_one_per_instrument():
    assert v.check_psi(0.5) == 0.5 and v.check_psi(np.float32(-1)) == -1.0
    np.testing.assert_array_equal(v.check_psi([0.1, 0.2], k=2), [0.1, 0.2])
    for bad, err, msg in [(1.5, ValueError, r"\[-1, 1\]"), (True, TypeError, "a number"),
                          ([0.1], TypeError, "a number"), ([np.nan, 0.2], ValueError, "at index 0")]:  # fmt: skip
        with pytest.raises(err, match=msg):
            v.check_psi(bad, k=2 if bad == [np.nan, 0.2] else None)
    with pytest.raises(ValueError, match="psi has 3 values for 2 instruments"):
        v.check_psi([0.1, 0.2, 0.3], k=2)


def test_alpha_and_choices():
    assert v.check_alpha(0.05) == 0.05
    for bad in (0, 1, -0.1):
        with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\)"):
            v.check_alpha(bad)
    assert v.check_choice("a", "mode", ("a", "b")) == "a"
    with pytest.raises(ValueError, match=r"mode must be one of \('a', 'b'\), got 'c'"):
        v.check_choice("c", "mode", ("a", "b"))
