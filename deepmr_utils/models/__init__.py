"""Sequence-to-function models used in the book.

One module per model, named for it. ``DilatedResidualNet`` (``dilated``) is a BPNet-style counts model
(stem convolution, residual dilated convolutions, one pooled count head per task); ``BPNet`` (``bpnet``)
the published architecture with its profile and counts heads. ``PooledRegressor`` (``pooled``) is the
simulation chapter's translation-invariant counts CNN, ``CountsRegressor`` (``counts``) the original
study's position-specific one (kept for comparison). Every model runs on the windowed ISM engine of
:func:`deepmr_utils.ism.saturation_mutagenesis` like any model ``torch.fx`` can trace; none needs code
of its own for it.
``DeepSEA`` and ``Beluga`` are the published classifiers (:func:`deepsea.load_kipoi` reads
Kipoi's weight files, which the user provides).
"""

from .bpnet import BPNet
from .counts import CountsRegressor
from .deepsea import Beluga, DeepSEA
from .dilated import DilatedResidualNet
from .pooled import PooledRegressor
from .scale import TargetScale

__all__ = ["BPNet", "Beluga", "CountsRegressor", "DeepSEA", "DilatedResidualNet", "PooledRegressor", "TargetScale"]
