"""A translation-invariant counts CNN: convolutions, then global max and mean pooling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx
from torch import nn

from ._check import check_input
from .scale import TargetScale

torch.fx.wrap("check_input")  # a leaf for the windowed ISM engine (see _check)


class PooledRegressor(nn.Module):
    """Conv blocks [Conv1d(same) -> BatchNorm -> ReLU] -> global max and mean pooling -> dense -> outputs.

    Input ``(N, 4, L)`` one-hot (any ``L`` at least ``kernel``); output ``(N, n_outputs)``.
    Pooling over positions makes the model translation invariant: a motif's effect
    does not depend on where it sits, which is how the simulation's counts are made
    (occupancies are sums over windows). A flatten -> dense head has to learn every
    position separately and needs far more data for the same fit.
    ``dropout > 0`` adds dropout after each dense layer (for MC-dropout). The last
    layer is a :class:`~deepmr_utils.models.scale.TargetScale` that
    :func:`deepmr_utils.train.fit` sets to the targets' mean and SD, so the network
    trains on standardised targets and predicts in the targets' units.
    """

    def __init__(
        self,
        n_outputs: int = 2,
        *,
        n_conv: int = 3,
        n_filters: int = 32,
        kernel: int = 7,
        hidden: int = 32,
        dropout: float = 0.0,
        output_names: Sequence[str] | None = None,
    ):
        super().__init__()
        if n_conv < 1 or n_filters < 1 or kernel < 1 or hidden < 1:
            raise ValueError("n_conv, n_filters, kernel and hidden must be >= 1")
        blocks, c = [], 4
        for _ in range(n_conv):
            blocks += [nn.Conv1d(c, n_filters, kernel, padding="same"), nn.BatchNorm1d(n_filters), nn.ReLU()]
            c = n_filters
        self.conv = nn.Sequential(*blocks)
        dense = [nn.Linear(2 * n_filters, hidden), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
        self.dense = nn.Sequential(*dense, nn.Linear(hidden, n_outputs))
        self.target_scale = TargetScale(n_outputs)
        self.kernel = kernel
        self.output_names = list(output_names) if output_names is not None else [f"out{i}" for i in range(n_outputs)]
        if len(self.output_names) != n_outputs:
            raise ValueError(f"output_names has {len(self.output_names)} names for {n_outputs} outputs")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, min_length=self.kernel)
        h = self.conv(x)
        pooled = torch.cat([h.amax(dim=-1), h.mean(dim=-1)], dim=1)
        return self.target_scale(self.dense(pooled))
