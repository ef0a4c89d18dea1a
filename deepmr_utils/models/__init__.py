"""Sequence-to-function models used in the book.

``DilatedResidualNet`` is a BPNet-style counts model (stem convolution, residual
dilated convolutions, one pooled count head per task) that also implements the
receptive-field fast path of :func:`deepmr_utils.ism.saturation_mutagenesis`.
``PooledRegressor`` is the simulation chapter's translation-invariant counts CNN;
``CountsRegressor`` the original study's position-specific one (kept for comparison).
``DeepSEA`` and ``Beluga`` are the published classifiers (:func:`deepsea.load_kipoi` reads
Kipoi's weight files, which the user provides).
"""

from .bpnet import BPNet
from .cnn import CountsRegressor
from .deepsea import Beluga, DeepSEA
from .dilated import DilatedResidualNet
from .pooled import PooledRegressor
from .scale import TargetScale

__all__ = ["BPNet", "Beluga", "CountsRegressor", "DeepSEA", "DilatedResidualNet", "PooledRegressor", "TargetScale"]
