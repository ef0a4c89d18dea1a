"""Type aliases for the public signatures (annotations only; nothing here runs at import time)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

#: numbers in any array form the functions accept (lists, NumPy arrays, tensors)
ArrayLike: TypeAlias = npt.ArrayLike | torch.Tensor
#: one-hot sequences ``(N, 4, L)`` as a tensor or array (some functions also take strings)
Sequences: TypeAlias = torch.Tensor | np.ndarray
#: one model or an ensemble of models
Models: TypeAlias = nn.Module | Sequence[nn.Module]
#: where to compute: ``None`` for the package's rule (CUDA when visible), else a device or its name
Device: TypeAlias = str | torch.device | None
#: which positions to mutate: ``None`` (all), a ``(start, end)`` window or a list of positions
Positions: TypeAlias = tuple[int, int] | Sequence[int] | np.ndarray | torch.Tensor | None
