import json
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def ref():
    """Reference data and R outputs (see tests/data/README.md for the sources)."""
    with open(DATA / "mr_reference.json") as fh:
        return json.load(fh)


@pytest.fixture(scope="session")
def lipids(ref):
    d = ref["datasets"]["waterworth_lipids_chd_28"]

    def get(exposure):
        return tuple(np.array(d[k]) for k in (exposure, exposure + "se", "chdlodds", "chdloddsse"))

    return get


@pytest.fixture(scope="session")
def bmi(ref):
    d = ref["datasets"]["twosamplemr_bmi_chd_79"]
    return tuple(np.array(d[k]) for k in ("bx", "bxse", "by", "byse"))


@pytest.fixture
def toy_pred():
    """ISM tensor ``(1, 3, 2, 4, 2)`` for one sequence 'AC' with 3 members and 2 outputs, by hand, and its one-hot."""
    from deepmr_utils import sequence as sq

    X = sq.one_hot("AC")
    pred = np.zeros((1, 3, 2, 4, 2))
    ref = np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0]])  # member x output
    pred[0] = ref[:, None, None, :]
    # position 0, base G (mutant): differences 1, 2, 3 on output 0 and -1, -1, -1 on output 1
    pred[0, :, 0, 2, 0] = ref[:, 0] + [1, 2, 3]
    pred[0, :, 0, 2, 1] = ref[:, 1] - 1
    return pred, X
