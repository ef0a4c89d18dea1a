"""A BPNet-style multi-task counts model with an exact windowed ISM path."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class DilatedResidualNet(nn.Module):
    """Stem conv + residual dilated convs + pooled linear count heads.

    Input ``(N, 4, L)`` one-hot; output ``(N, n_tasks)`` (e.g. log counts per TF).
    Layer ``i`` (1-based) has dilation ``2**i`` and kernel 3, as in BPNet; all
    convolutions are zero-padded to keep length ``L``. Optional eval-mode
    BatchNorm after every convolution and dropout before the heads.

    The model implements :meth:`ism_reference` / :meth:`ism_block`, so
    saturation mutagenesis recomputes only the window a mutation can change.
    """

    def __init__(self, n_tasks: int = 4, n_filters: int = 64, n_layers: int = 9, stem_kernel: int = 25,
                 *, batchnorm: bool = False, dropout: float = 0.0,
                 output_names: Sequence[str] | None = None):
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(self.trunk(x).mean(dim=-1)))

    # ------------------------------------------------------------------ fast ISM
    @torch.no_grad()
    def ism_reference(self, x: torch.Tensor):
        """Cache every layer's activations of one reference ``(1, 4, L)``."""
        if self.training:
            raise RuntimeError("the windowed ISM path needs eval mode")
        acts = [x]
        h = F.relu(self.stem_bn(self.stem(x)))
        acts.append(h)
        for conv, bn in zip(self.convs, self.bns):
            h = h + F.relu(bn(conv(h)))
            acts.append(h)
        return {"acts": acts, "sum": h.sum(dim=-1), "L": x.shape[-1]}

    @staticmethod
    def _window_input(ref: torch.Tensor, mut: torch.Tensor, s_mut: int, lo: int, hi: int) -> torch.Tensor:
        """Layer input over [lo, hi): reference values, mutant values on [s_mut, s_mut + width), zeros off the sequence."""
        L = ref.shape[-1]
        B = mut.shape[0]
        e_mut = s_mut + mut.shape[-1]
        parts = []
        if lo < 0:
            parts.append(ref.new_zeros(B, ref.shape[1], -lo))
        a = max(lo, 0)
        if a < s_mut:
            parts.append(ref[:, :, a:s_mut].expand(B, -1, -1))
        parts.append(mut)
        b = min(hi, L)
        if e_mut < b:
            parts.append(ref[:, :, e_mut:b].expand(B, -1, -1))
        if hi > L:
            parts.append(ref.new_zeros(B, ref.shape[1], hi - L))
        return torch.cat(parts, dim=-1)

    @torch.no_grad()
    def ism_block(self, cache, x_mut: torch.Tensor, start: int) -> torch.Tensor:
        """Predictions for ``B`` mutants that differ from the reference only on ``[start, start + w)``.

        ``x_mut``: ``(B, 4, w)`` the mutants' one-hot over that window. Returns ``(B, n_tasks)``.
        """
        acts, L = cache["acts"], cache["L"]
        s, e = start, start + x_mut.shape[-1]
        k = self.stem.kernel_size[0] // 2
        # stem: output changes on [s - k, e + k)
        so, eo = max(0, s - k), min(L, e + k)
        inp = self._window_input(acts[0], x_mut, s, so - k, eo + k)
        h = F.relu(self.stem_bn(F.conv1d(inp, self.stem.weight, self.stem.bias)))
        s, e = so, eo
        for i, (conv, bn, d) in enumerate(zip(self.convs, self.bns, self.dilations)):
            so, eo = max(0, s - d), min(L, e + d)
            inp = self._window_input(acts[i + 1], h, s, so - d, eo + d)
            z = F.relu(bn(F.conv1d(inp, conv.weight, conv.bias, dilation=d)))
            h = inp[:, :, d:-d] + z  # residual: the layer input over [so, eo)
            s, e = so, eo
        ref_last = acts[-1]
        total = cache["sum"] + (h - ref_last[:, :, s:e]).sum(dim=-1)
        return self.head(self.dropout(total / L))
