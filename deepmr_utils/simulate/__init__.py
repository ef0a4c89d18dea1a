"""Simulated worlds with a known truth, one module per world.

* :mod:`~deepmr_utils.simulate.summary` - MR summary statistics for many loci (the method chapter);
* :mod:`~deepmr_utils.simulate.cooperativity` - two TFs, one's binding causes the other's (simulation chapter);
* :mod:`~deepmr_utils.simulate.chipnexus` - ChIP-nexus profiles of four TFs with a causal matrix (BPNet chapter);
* :mod:`~deepmr_utils.simulate.chromatin` - TF binding and accessibility in three cell types (DeepSEA chapter).
"""

from ._common import anscombe, draw_effect_ratio, slope_through_origin
from .chipnexus import OSKN, OSKN_EFFECTS, OSKN_MOTIFS, ChipNexusModel
from .chromatin import ChromatinModel
from .cooperativity import WITH_EXPOSURE, CooperativityModel, SequenceType
from .summary import summary_statistics

__all__ = [
    "summary_statistics",
    "CooperativityModel",
    "SequenceType",
    "WITH_EXPOSURE",
    "ChipNexusModel",
    "ChromatinModel",
    "OSKN",
    "OSKN_MOTIFS",
    "OSKN_EFFECTS",
    "anscombe",
    "draw_effect_ratio",
    "slope_through_origin",
]
