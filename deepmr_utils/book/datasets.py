"""Small example datasets shipped with the package (no downloads)."""

from __future__ import annotations

from importlib import resources

import pandas as pd

__all__ = ["lipids_chd"]


def lipids_chd() -> pd.DataFrame:
    """The 28 lipid variants of MendelianRandomization's example data.

    Columns: ``variant``; ``ldlc, hdlc, trig`` (effects on LDL-c, HDL-c and
    triglycerides, SD units) with ``*se``; ``chdlodds, chdloddsse`` (log odds of
    coronary heart disease); alleles and effect-allele frequency. Source:
    Waterworth et al. 2010 (ATVB 30:2264) via MendelianRandomization 0.10.0.
    """
    with resources.files("deepmr_utils.data").joinpath("lipids_chd.csv").open() as fh:
        return pd.read_csv(fh, comment="#")
