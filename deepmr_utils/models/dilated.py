"""A BPNet-style multi-task counts model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DilatedResidualNet(nn.Module):
    """Stem conv + residual dilated convs + pooled linear count heads.

    Input ``(N, 4, L)`` one-hot; output ``(N, n_tasks)`` (e.g. log counts per TF).
    Layer ``i`` (1-based) has dilation ``2**i`` and kernel 3, as in BPNet; all
    convolutions are zero-padded to keep length ``L``. Optional eval-mode
    BatchNorm after every convolution and dropout before the heads.
    """

    def __init__(
        self,
        n_tasks: int = 4,
        n_filters: int = 64,
        n_layers: int = 9,
        stem_kernel: int = 25,
        *,
        batchnorm: bool = False,
        dropout: float = 0.0,
        output_names: Sequence[str] | None = None,
    ):
        super().__init__()
        if stem_kernel % 2 != 1:
            raise ValueError(f"stem_kernel must be odd, got {stem_kernel}")
        if output_names is not None and len(output_names) != n_tasks:
            raise ValueError(f"output_names has {len(output_names)} names for {n_tasks} tasks")
        self.stem = nn.Conv1d(4, n_filters, stem_kernel, padding=stem_kernel // 2)
        self.stem_bn = nn.BatchNorm1d(n_filters) if batchnorm else nn.Identity()
        self.dilations = [2 ** (i + 1) for i in range(n_layers)]
        self.convs = nn.ModuleList(nn.Conv1d(n_filters, n_filters, 3, dilation=d, padding=d) for d in self.dilations)
        self.bns = nn.ModuleList((nn.BatchNorm1d(n_filters) if batchnorm else nn.Identity()) for _ in self.dilations)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(n_filters, n_tasks)
        self.output_names = list(output_names) if output_names is not None else [f"task{i}" for i in range(n_tasks)]

    @property
    def receptive_field(self) -> int:
        return self.stem.kernel_size[0] + 2 * sum(self.dilations)

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem_bn(self.stem(x)))
        for conv, bn in zip(self.convs, self.bns):
            h = h + F.relu(bn(conv(h)))
        return h

    def pooled_head(self, pooled: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """Outputs from the length-averaged trunk features ``(N, n_filters)``."""
        return self.head(self.dropout(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pooled_head(self.trunk(x).mean(dim=-1))
