"""Input checks the models run in ``forward``, kept as ``torch.fx`` leaves.

A Python ``if`` on a tensor's shape cannot be traced, so a model that checks its input
inline could not use the windowed ISM engine. Each model module that calls
:func:`check_input` declares it a leaf with ``torch.fx.wrap("check_input")`` (fx patches the
calling module's globals): the check is recorded as one call, runs on the real references,
and the engine skips it for mutants (they have the references' shape).
"""

from __future__ import annotations

import torch
import torch.fx


def check_input(x: torch.Tensor, length: int | None = None, min_length: int | None = None) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(N, 4, L)`` with ``L == length`` / ``L >= min_length``."""
    if x.ndim != 3 or x.shape[1] != 4:
        raise ValueError(f"expected (N, 4, L) one-hot sequences, got {tuple(x.shape)}")
    if length is not None and x.shape[-1] != length:
        raise ValueError(f"expected sequences of length {length}, got {x.shape[-1]}")
    if min_length is not None and x.shape[-1] < min_length:
        raise ValueError(f"expected (N, 4, L >= {min_length}) one-hot sequences, got {tuple(x.shape)}")
