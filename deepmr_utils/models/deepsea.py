"""DeepSEA (Zhou & Troyanskaya 2015) and Beluga (Zhou et al. 2018), exact, in the package's layout.

Both take the package's ACGT one-hot ``(N, 4, L)``. The published models read AGCT;
the first convolution's input channels are reordered once, when weights are loaded
(:func:`load_kipoi`), instead of recoding every input, and the Kipoi ``Conv2d``
kernels ``(out, in, 1, 8)`` become ``Conv1d`` kernels ``(out, in, 8)``. Same numbers,
and the windowed ISM engine (:mod:`deepmr_utils.ism`) sees plain 1-D convolutions and
a dense layer over the flattened features, which it updates from the changed window.

``output="probability"`` (default, like the original) ends in a sigmoid; ``"logit"``
stops before it (what DeepMR uses as exposure and outcome: effects on the log-odds
scale). ``rc_average=True`` returns the mean of the forward and reverse-complement
predictions (Kipoi's DeepSEA "predict" model averages probabilities). Layouts, key
names and checksums: Kipoi ``DeepSEA`` and ``DeepSEA/beluga`` (``models_and_weights``
notes §1.3-1.5). Weights are never shipped: the user provides the files.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from .._io import md5sum

__all__ = ["DeepSEA", "Beluga", "load_kipoi", "output_names", "output_index", "KIPOI_MD5"]

# Kipoi's published files (model.yaml): deepsea_predict.pth, deepsea_variant_effects.pth, deepsea.beluga.pth
KIPOI_MD5 = {
    "deepsea": "89e640bf6bdbe1ff165f484d9796efc7",
    "deepsea-variant-effects": "35956ab9c28960b5a3693f470fe980c1",
    "beluga": "62360f2db4ac96554d28d058b50ab654",
}
_AGCT_TO_ACGT = [0, 2, 1, 3]  # ACGT channel c reads the published kernel's AGCT channel _AGCT_TO_ACGT[c]


class _Head(nn.Module):
    """Shared by both models: input length, output names, optional sigmoid and reverse-complement
    averaging around ``body``."""

    def _init_head(self, output: str, rc_average: bool, length: int, output_names: Sequence[str] | None):
        if output not in ("probability", "logit"):
            raise ValueError(f"output must be 'probability' or 'logit', got {output!r}")
        self.output, self.rc_average = output, bool(rc_average)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self._finish(self.body(x))
        if self.rc_average:  # ACGT: flipping channels complements, flipping positions reverses
            y = (y + self._finish(self.body(x.flip(1).flip(2)))) / 2
        return y

    def _finish(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(z) if self.output == "probability" else z


class DeepSEA(_Head):
    """DeepSEA: three conv blocks (kernel 8, ``Threshold(0, 1e-6)``, max-pool 4, dropout), dense, outputs.

    Input ``(N, 4, length)`` ACGT one-hot; output ``(N, n_outputs)``. The defaults are the
    published model (1000 bp, widths 320/480/960, hidden 925, 919 outputs: 52,843,119
    parameters); smaller ``widths`` / ``length`` / ``hidden`` give the same architecture at
    a size a chapter can train. ``batch_norm=True`` (not in the published model) adds a
    ``BatchNorm1d`` after each convolution, for small models trained from scratch: a multi-task
    model on binary labels can leave an output that no other task's label helps to find at its
    baseline, and standardised convolution outputs can let its gradient reach the filters. In
    eval mode it is a fixed per-channel affine map, which ISM, MC-dropout (dropout masks only)
    and the windowed engine handle as such.
    """

    def __init__(
        self,
        n_outputs: int = 919,
        *,
        length: int = 1000,
        widths: Sequence[int] = (320, 480, 960),
        hidden: int = 925,
        kernel: int = 8,
        pool: int = 4,
        dropout: Sequence[float] = (0.2, 0.2, 0.5),
        output: str = "probability",
        rc_average: bool = False,
        output_names: Sequence[str] | None = None,
        batch_norm: bool = False,
    ):
        super().__init__()
        self._init_head(output, rc_average, length, output_names)
        if not isinstance(batch_norm, bool):
            raise TypeError(f"batch_norm must be True or False, got {batch_norm!r}")
        if len(widths) != 3 or len(dropout) != 3:
            raise ValueError("DeepSEA has three conv blocks: give three widths and three dropout rates")
        n = length
        for i in range(3):
            n = n - kernel + 1
            n = n // pool if i < 2 else n
        if n < 1:
            raise ValueError(f"length {length} is too short for three blocks of kernel {kernel} and pool {pool}")
        w1, w2, w3 = widths
        self.conv1, self.conv2, self.conv3 = (
            nn.Conv1d(4, w1, kernel),
            nn.Conv1d(w1, w2, kernel),
            nn.Conv1d(w2, w3, kernel),
        )
        # not in the published model (Identity: no parameters, the Kipoi layout is unchanged); with it, each
        # convolution's channels are standardised over the batch in training, a fixed affine map in eval
        self.norm1, self.norm2, self.norm3 = (nn.BatchNorm1d(w) if batch_norm else nn.Identity() for w in widths)
        self.act = nn.Threshold(0, 1e-6)
        self.pool = nn.MaxPool1d(pool, pool)
        self.drop1, self.drop2, self.drop3 = (nn.Dropout(p) for p in dropout)
        self.fc = nn.Linear(w3 * n, hidden)
        self.out = nn.Linear(hidden, n_outputs)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid outputs ``(N, n_outputs)`` of one strand."""
        h = self.drop1(self.pool(self.act(self.norm1(self.conv1(x)))))
        h = self.drop2(self.pool(self.act(self.norm2(self.conv2(h)))))
        h = self.drop3(self.act(self.norm3(self.conv3(h))))
        return self.out(self.act(self.fc(h.flatten(1))))


class Beluga(_Head):
    """Beluga: three blocks of two convolutions (kernel 8, ReLU), max-pool 4 after the first two,
    dropout, dense 2003, outputs 2002. Input ``(N, 4, 2000)`` ACGT one-hot (149,536,251 parameters)."""

    def __init__(
        self,
        n_outputs: int = 2002,
        *,
        length: int = 2000,
        widths: Sequence[int] = (320, 480, 640),
        hidden: int = 2003,
        output: str = "probability",
        rc_average: bool = False,
        output_names: Sequence[str] | None = None,
    ):
        super().__init__()
        self._init_head(output, rc_average, length, output_names)
        k, layers, c, n = 8, [], 4, length
        for i, w in enumerate(widths):
            layers += [nn.Conv1d(c, w, k), nn.ReLU(), nn.Conv1d(w, w, k), nn.ReLU()]
            n -= 2 * (k - 1)
            if i < 2:
                layers += [nn.Dropout(0.2), nn.MaxPool1d(4, 4)]
                n //= 4
            c = w
        if n < 1:
            raise ValueError(f"length {length} is too short for Beluga's six convolutions and two pools")
        self.conv = nn.Sequential(*layers)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(c * n, hidden)
        self.out = nn.Linear(hidden, n_outputs)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-sigmoid outputs ``(N, n_outputs)`` of one strand."""
        return self.out(torch.relu(self.fc(self.drop(self.conv(x)).flatten(1))))


def _kipoi_keys(model: nn.Module) -> dict[str, str]:
    """Kipoi state-dict key -> this model's key."""
    if isinstance(model, DeepSEA):
        pairs = {"0": "conv1", "4": "conv2", "8": "conv3", "12.1": "fc", "14.1": "out"}
    else:
        convs = [i for i, m in enumerate(model.conv) if isinstance(m, nn.Conv1d)]
        pairs = {f"model.0.{i}": f"conv.{i}" for i in convs} | {"model.1.2.1": "fc", "model.1.4.1": "out"}
    return {f"{k}.{p}": f"{v}.{p}" for k, v in pairs.items() for p in ("weight", "bias")}


def load_kipoi(
    path: str | Path,
    arch: str = "deepsea",
    *,
    md5: str | None = "published",
    output: str = "probability",
    rc_average: bool = False,
    **sizes,
) -> DeepSEA | Beluga:
    """A :class:`DeepSEA` or :class:`Beluga` with the weights of a Kipoi PyTorch file.

    ``path``: a plain state dict (DeepSEA ``0.weight`` ... ``14.1.bias``; Beluga
    ``model.0.0.weight`` ... ``model.1.4.1.bias``) or Kipoi's DeepSEA "predict" file,
    whose keys carry a ``2.`` prefix. ``md5="published"`` checks the file against Kipoi's
    checksum for ``arch`` (either DeepSEA file is accepted); a string checks against that;
    ``None`` skips the check (your own checkpoints). Loaded with ``weights_only=True``;
    keys and shapes must match exactly, else the first mismatch is named. ``sizes`` go to
    the constructor (``length``, ``widths``, ``hidden``, ``n_outputs``), for smaller models
    saved in the same layout. Output names come from the package's Kipoi name tables
    when the model has the published number of outputs.
    """
    if arch not in ("deepsea", "beluga"):
        raise ValueError(f"arch must be 'deepsea' or 'beluga', got {arch!r}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file (DeepMR never downloads weights; see the README)")
    if md5 is not None:
        allowed = (
            [KIPOI_MD5["deepsea"], KIPOI_MD5["deepsea-variant-effects"]] if arch == "deepsea" else [KIPOI_MD5["beluga"]]
        )
        allowed = allowed if md5 == "published" else [md5]
        got = md5sum(path)
        if got not in allowed:
            raise ValueError(
                f"{path} has MD5 {got}, expected {' or '.join(allowed)}: not the published {arch} file "
                "(a truncated download or another model); pass md5=None only for your own checkpoints"
            )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise TypeError(f"{path} holds a {type(state).__name__}, not a state dict")
    if all(k.startswith("2.") for k in state):  # Kipoi "predict": Sequential(recode, concat RC, model, average)
        state = {k[2:]: v for k, v in state.items()}
    model = (DeepSEA if arch == "deepsea" else Beluga)(output=output, rc_average=rc_average, **sizes)
    keys = _kipoi_keys(model)
    own = model.state_dict()
    missing = [k for k in keys if k not in state]
    extra = [k for k in state if k not in keys]
    if missing or extra:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise ValueError(
            f"{path} is not a Kipoi {arch} state dict: {first} ({len(missing)} missing, {len(extra)} unexpected)"
        )
    converted = {}
    for theirs, ours in keys.items():
        t = state[theirs]
        if t.ndim == 4:  # Conv2d (out, in, 1, k) -> Conv1d (out, in, k)
            t = t[:, :, 0, :]
        if theirs in ("0.weight", "model.0.0.weight"):  # the first convolution reads the one-hot
            t = t[:, _AGCT_TO_ACGT, :]
        if t.shape != own[ours].shape:
            raise ValueError(
                f"{path}: {theirs} has shape {tuple(state[theirs].shape)}, expected {tuple(own[ours].shape)} for {arch}"
            )
        converted[ours] = t.to(own[ours].dtype)
    model.load_state_dict(converted)
    if model.out.out_features == (919 if arch == "deepsea" else 2002):
        model.output_names = output_names(arch)
    return model.eval()


def output_names(arch: str = "deepsea") -> list[str]:
    """The published model's output names in order (Kipoi's ``predictor_names.txt``, MIT)."""
    if arch not in ("deepsea", "beluga"):
        raise ValueError(f"arch must be 'deepsea' or 'beluga', got {arch!r}")
    text = resources.files("deepmr_utils.data").joinpath(f"{arch}_predictor_names.txt").read_text()
    return [line for line in text.splitlines() if line.strip()]


def output_index(name: str, arch: str = "deepsea") -> list[int]:
    """Every output index named ``name`` (CTCF has several tracks per cell line, e.g.
    ``GM12878_CTCF_None`` -> ``[127, 415, 726, 781]``)."""
    names = output_names(arch)
    idx = [i for i, n in enumerate(names) if n == name]
    if not idx:
        close = sorted({n for n in names if name.split("_")[0] in n})[:5]
        raise ValueError(
            f"{name!r} is not a {arch} output" + (f"; names of that cell line include {close}" if close else "")
        )
    return idx
