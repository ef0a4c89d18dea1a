"""Sequence-to-function models used in the book.

``DilatedResidualNet`` is a BPNet-style counts model (stem convolution, residual
dilated convolutions, one pooled count head per task) that also implements the
receptive-field fast path of :func:`deepmr_utils.ism.saturation_mutagenesis`.
"""

from .bpnet import BPNet
from .cnn import CountsRegressor
from .dilated import DilatedResidualNet

__all__ = ["BPNet", "CountsRegressor", "DilatedResidualNet"]
