"""Architectures from the wild, written the way their authors write them (no library code, no ISM hooks).

The windowed engine was tuned on the book's models; these are the shapes readers bring, used by
``bench_ism.py`` (full size) and by ``tests/test_windowed.py`` (small, for exactness):

* :class:`BassetLike`     Kelley et al. 2016: three valid convolutions with BatchNorm and max-pooling,
  a dense head over the flattened features (the DeepSEA pattern with BatchNorm and wider pools);
* :class:`ChromBPNetLike` bpnet-lite / ChromBPNet: valid dilated convolutions whose residual skips are
  centre-cropped by an amount computed from the tensors' shapes, a profile head and a counts head;
* :class:`EnformerLike`   Enformer's shape at toy size: a convolutional stem, softmax attention pooling
  (a reshape into pairs of positions), transformer layers over the length, a centre crop and a
  pointwise head; global attention means every mutant needs the full length after it.

All take one-hot ``(N, 4, L)`` and return ``(N, n_outputs)`` (ChromBPNetLike: a ``(profile, counts)``
tuple; select with :func:`chrombpnet_outputs`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BassetLike(nn.Module):
    """Basset: conv(19) / conv(11) / conv(7), each BatchNorm, ReLU and a max-pool; two dense layers."""

    def __init__(self, length=1000, n_outputs=164, filters=(300, 200, 200), hidden=1000, pools=(3, 4, 4)):
        super().__init__()
        kernels, layers, c, n = (19, 11, 7), [], 4, length
        for f, k, p in zip(filters, kernels, pools, strict=True):
            layers += [nn.Conv1d(c, f, k), nn.BatchNorm1d(f), nn.ReLU(), nn.MaxPool1d(p)]
            c, n = f, (n - k + 1) // p
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c * n, hidden),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Dropout(0.3),
            nn.Linear(hidden, n_outputs),
        )

    def forward(self, x):
        return torch.sigmoid(self.classifier(self.features(x)))


class ChromBPNetLike(nn.Module):
    """bpnet-lite's BPNet as ChromBPNet uses it: valid convolutions, skips cropped to the conv's length."""

    def __init__(self, n_filters=64, n_layers=7, n_outputs=2, stem=21, profile_kernel=75):
        super().__init__()
        self.iconv = nn.Conv1d(4, n_filters, stem)
        self.rconvs = nn.ModuleList(nn.Conv1d(n_filters, n_filters, 3, dilation=2**i) for i in range(1, n_layers + 1))
        self.fconv = nn.Conv1d(n_filters, n_outputs, profile_kernel)
        self.linear = nn.Linear(n_filters, n_outputs)

    def forward(self, X):
        X = F.relu(self.iconv(X))
        for conv in self.rconvs:
            X_conv = F.relu(conv(X))
            crop = (X.shape[-1] - X_conv.shape[-1]) // 2  # bpnet-lite's own line: a crop from the shapes
            X = X[:, :, crop:-crop] + X_conv
        profile = self.fconv(X)
        counts = self.linear(X.mean(dim=-1))
        return profile, counts


def chrombpnet_outputs(y, n_bins=4):
    """The counts heads and the ``n_bins`` central profile bins of every task, ``(N, T * (n_bins + 1))``."""
    profile, counts = y
    mid = profile.shape[-1] // 2
    return torch.cat([counts, profile[:, :, mid - n_bins // 2 : mid + (n_bins + 1) // 2].flatten(1)], dim=1)


class _AttentionPool(nn.Module):
    """Enformer's softmax pooling over pairs of positions."""

    def __init__(self, c):
        super().__init__()
        self.logits = nn.Conv1d(c, c, 1, bias=False)

    def forward(self, x):
        b, c, n = x.shape
        x = x[:, :, : n - n % 2].reshape(b, c, n // 2, 2)
        w = self.logits.weight[:, :, 0] @ x.flatten(2)  # (b, c, n)
        return (x * w.reshape(b, c, n // 2, 2).softmax(-1)).sum(-1)


class EnformerLike(nn.Module):
    """Conv stem + attention pooling, a conv tower, transformer layers, a centre crop, a pointwise head."""

    def __init__(self, channels=32, n_tower=2, n_transformer=1, heads=4, n_outputs=4, crop=4):
        super().__init__()
        self.stem = nn.Conv1d(4, channels, 15, padding=7)
        self.stem_res = nn.Conv1d(channels, channels, 1)
        self.pools = nn.ModuleList(_AttentionPool(channels) for _ in range(n_tower + 1))
        self.tower = nn.ModuleList(nn.Conv1d(channels, channels, 5, padding=2) for _ in range(n_tower))
        layer = nn.TransformerEncoderLayer(channels, heads, 2 * channels, dropout=0.0, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, n_transformer, enable_nested_tensor=False)
        self.crop = crop
        self.head = nn.Conv1d(channels, n_outputs, 1)

    def forward(self, x):
        x = self.stem(x)
        x = self.pools[0](x + self.stem_res(F.gelu(x)))
        for conv, pool in zip(self.tower, self.pools[1:], strict=True):
            x = pool(x + conv(F.gelu(x)))
        x = self.transformer(x.transpose(1, 2)).transpose(1, 2)
        x = x[:, :, self.crop : -self.crop]
        return F.softplus(self.head(F.gelu(x))).mean(-1)
