"""The output layer that lets a model train on standardised targets and predict in their units."""

from __future__ import annotations

import torch
from torch import nn


class TargetScale(nn.Module):
    """``out = z * std + mean`` per output, with ``mean`` and ``std`` stored as buffers.

    Starts as the identity. :func:`deepmr_utils.train.fit` sets it from the training
    targets before the first step, so the layers below it see targets of mean 0 and
    SD 1 (well-scaled gradients whatever the counts' size), while predictions, and so
    ISM effects, stay in the targets' units. The buffers are saved with the model.
    """

    def __init__(self, n_outputs: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_outputs))
        self.register_buffer("std", torch.ones(n_outputs))

    def set(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Store per-output ``mean`` and ``std`` ``(n_outputs,)``; ``std`` must be positive."""
        mean = torch.as_tensor(mean, dtype=self.mean.dtype).reshape(-1)
        std = torch.as_tensor(std, dtype=self.std.dtype).reshape(-1)
        if mean.shape != self.mean.shape or std.shape != self.std.shape:
            raise ValueError(f"expected {self.mean.numel()} means and SDs, got {mean.numel()} and {std.numel()}")
        if not (torch.isfinite(std).all() and (std > 0).all() and torch.isfinite(mean).all()):
            raise ValueError("target means must be finite and SDs positive (is a target constant?)")
        self.mean.copy_(mean)
        self.std.copy_(std)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.std + self.mean
