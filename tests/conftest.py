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
