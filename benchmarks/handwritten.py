"""The hand-written windowed ISM the library used for ``DilatedResidualNet`` until 2026-11-28.

Kept here, outside the library, as a baseline for ``bench_ism.py``: the generic engine
(``deepmr_utils._windowed``) replaced it once it measured as fast on the book's model, and
the benchmark goes on showing that it still is. Convolutions are linear, so a mutant's
pre-activation is the reference's plus the convolution of the input's *difference*, which
is zero outside the mutated window; tensors are ``(B, C, 1, W)`` channels-last throughout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from deepmr_utils import sequence as sq
from deepmr_utils.models import DilatedResidualNet


def _cl(t):
    return t[:, :, None, :].contiguous(memory_format=torch.channels_last)


def _bn(bn, z):
    if isinstance(bn, nn.BatchNorm1d):  # eval-mode affine map, valid for any rank
        return F.batch_norm(z, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)
    return z


def _reference(m: DilatedResidualNet, x):
    """Each layer's pre-activation and activation increment for references ``x`` ``(1, 4, L)``."""
    layers, weights = [], [_cl(m.stem.weight)]
    h = _cl(x)
    z = F.conv2d(h, weights[0], m.stem.bias, padding=(0, m.stem.padding[0]))
    h = F.relu(_bn(m.stem_bn, z))
    layers.append((z, h))
    for conv, bn, d in zip(m.convs, m.bns, m.dilations):
        weights.append(_cl(conv.weight))
        z = F.conv2d(h, weights[-1], conv.bias, dilation=(1, d), padding=(0, d))
        a = F.relu(_bn(bn, z))
        h = h + a
        layers.append((z, a))
    return {"layers": layers, "weights": weights, "sum": h.sum(dim=(2, 3)), "L": x.shape[-1], "x": _cl(x)}


def _block(m: DilatedResidualNet, cache, x_mut, start):
    """Outputs ``(B, n_tasks)`` of mutants equal to the reference except on ``[start, start + w)``."""
    L, layers, weights = cache["L"], cache["layers"], cache["weights"]
    s, e = start, start + x_mut.shape[-1]
    delta = _cl(x_mut) - cache["x"][..., s:e]
    k = m.stem.kernel_size[0] // 2
    for i, (z_ref, a_ref) in enumerate(layers):
        half, dil = (k, 1) if i == 0 else (m.dilations[i - 1], m.dilations[i - 1])
        bn = m.stem_bn if i == 0 else m.bns[i - 1]
        so, eo = max(0, s - half), min(L, e + half)
        dz = F.conv2d(delta, weights[i], None, dilation=(1, dil), padding=(0, 2 * half))
        dz = dz[..., so - (s - half) : so - (s - half) + (eo - so)]  # the cone, clipped to the sequence
        da = F.relu(_bn(bn, z_ref[..., so:eo] + dz)) - a_ref[..., so:eo]
        delta = da if i == 0 else F.pad(delta, (s - so, eo - e)) + da  # the stem has no residual
        s, e = so, eo
    return m.pooled_head((cache["sum"] + delta.sum(dim=(2, 3))) / L)


@torch.inference_mode()
def handwritten_ism(models: list[DilatedResidualNet], X: torch.Tensor, block: int = 12) -> torch.Tensor:
    """``(N, M, L, 4, O)`` like ``ism.saturation_mutagenesis``: one reference at a time, mutants at
    ``block`` neighbouring positions per call (the library's CPU layout)."""
    N, _, L = X.shape
    out = None
    for n in range(N):
        x = X[n : n + 1]
        for k, m in enumerate(models):
            cache = _reference(m, x)
            ref = m(x)[0]
            if out is None:
                out = torch.empty(N, len(models), L, 4, ref.shape[-1])
            out[n, k] = ref[None, None, :]
            for a in range(0, L, block):
                window = x[:, :, a : a + block]
                bb, pp = torch.nonzero(window[0] == 0, as_tuple=True)  # (base, position in block)
                xm = sq.substitute(window.expand(pp.numel(), -1, -1), pp, bb)
                out[n, k, a + pp, bb] = _block(m, cache, xm, a)
    return out
