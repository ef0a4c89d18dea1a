"""``CountsRegressor``: the original DeepMR study's position-specific multi-task CNN regressor."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.fx
from torch import nn

from ._check import check_input

torch.fx.wrap("check_input")  # a leaf for the windowed ISM engine (see _check)


class CountsRegressor(nn.Module):
    """Conv blocks [Conv1d(valid) -> BatchNorm -> ReLU] -> flatten -> dense ReLU layers -> outputs.

    Input ``(N, 4, length)`` one-hot; output ``(N, n_outputs)``. The defaults are the
    original study's: 3 conv blocks of 15 filters of width 7, two dense layers of 30
    units, two outputs (Anscombe-transformed exposure and outcome counts).
    ``dropout > 0`` adds dropout after each dense layer (for MC-dropout).
    """

    def __init__(
        self,
        length: int = 100,
        n_outputs: int = 2,
        *,
        n_conv: int = 3,
        n_filters: int = 15,
        kernel: int = 7,
        n_dense: int = 2,
        hidden: int = 30,
        dropout: float = 0.0,
        output_names: Sequence[str] | None = None,
    ):
        super().__init__()
        out_len = length - n_conv * (kernel - 1)
        if out_len < 1:
            raise ValueError(f"length {length} is too short for {n_conv} convolutions of width {kernel}")
        blocks, c = [], 4
        for _ in range(n_conv):
            blocks += [nn.Conv1d(c, n_filters, kernel), nn.BatchNorm1d(n_filters), nn.ReLU()]
            c = n_filters
        self.conv = nn.Sequential(*blocks)
        if n_dense < 1:
            raise ValueError(f"n_dense must be >= 1, got {n_dense}")
        dense, d = [], n_filters * out_len
        for _ in range(n_dense):
            dense += [nn.Linear(d, hidden), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
            d = hidden
        self.dense = nn.Sequential(*dense)
        self.out = nn.Linear(hidden, n_outputs)
        self.length = length
        self.output_names = list(output_names) if output_names is not None else [f"out{i}" for i in range(n_outputs)]
        if len(self.output_names) != n_outputs:
            raise ValueError(f"output_names has {len(self.output_names)} names for {n_outputs} outputs")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, length=self.length)
        return self.out(self.dense(self.conv(x).flatten(1)))
