"""A small model for the ``deepmr`` command's tests, importable as ``cli_models:factory`` (tests/ is on the path)."""

import torch
from torch import nn


class TwoTrack(nn.Module):
    """Conv -> ReLU -> mean over the length -> two outputs; input (N, 4, 40)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 5, padding=2)
        self.head = nn.Linear(6, 2)
        self.length = 40
        self.output_names = ["tfA", "tfB"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=2))


def factory() -> nn.Module:
    return TwoTrack()


class SlowTwoTrack(TwoTrack):
    """TwoTrack that takes 20 ms per forward pass: a Dask run long enough to kill its workers during it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import time

        time.sleep(0.02)
        return super().forward(x)
