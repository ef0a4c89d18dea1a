"""The original BPNet (Avsec et al. 2021, Nat Genet) as used by DeepMR ("BPNet-OSKN").

Body: a width-25 convolution and 9 residual dilated convolutions (kernel 3,
dilation 2..512), 64 filters, ReLU, 'same' padding, no normalisation. Per task a
profile head (transposed convolution of width 25 to two strands: logits over
positions) and a counts head (global average pool -> dense, log(1 + total counts)
per strand). The bias (control-track) branches of the original have no bias
terms, so with the neutral zero control they contribute exactly zero and are
left out (as in the Kipoi wrapper).

:func:`load_keras_h5` reads the published Keras file with h5py (no TensorFlow)
after checking its MD5. The weights are not distributed with DeepMR.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .._io import md5sum
from .._torch import as_models, eval_mode, model_device
from .._types import ArrayLike, Models
from .dilated import DilatedResidualNet

__all__ = ["BPNet", "bpnet_loss", "counts", "init_counts_bias", "evaluate", "load_keras_h5", "OSKN_MD5", "OSKN_LAYERS"]

# Zenodo record 4294904, bpnet.model.h5 (Kipoi BPNet-OSKN), MIT licence
OSKN_MD5 = "bbe883baef261877bfad07d05feb627d"


class BPNet(DilatedResidualNet):
    """BPNet with ``tasks`` profile and counts heads. Input ``(N, 4, L)``.

    ``forward`` returns ``(profile_logits (N, T, 2, L), log_counts (N, T, 2))``.
    Use :func:`counts` as the ``outputs`` of saturation mutagenesis to get the
    strand-averaged log counts ``(N, T)``; the windowed fast path computes only those.
    """

    def __init__(
        self,
        tasks: Sequence[str] = ("Oct4", "Sox2", "Nanog", "Klf4"),
        *,
        n_filters: int = 64,
        n_layers: int = 9,
        stem_kernel: int = 25,
        tconv_kernel: int = 25,
    ):
        super().__init__(
            n_tasks=len(tasks),
            n_filters=n_filters,
            n_layers=n_layers,
            stem_kernel=stem_kernel,
            output_names=list(tasks),
        )
        if tconv_kernel % 2 != 1:
            raise ValueError(f"tconv_kernel must be odd, got {tconv_kernel}")
        self.tasks = list(tasks)
        T = len(tasks)
        # all tasks' heads stacked: task t uses output channels 2t, 2t + 1 (strands +, -)
        self.profile = nn.ConvTranspose1d(n_filters, 2 * T, tconv_kernel, padding=tconv_kernel // 2)
        self.head = nn.Linear(n_filters, 2 * T)

    def pooled_head(self, pooled: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        return None, self.head(pooled).view(-1, len(self.tasks), 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        prof = self.profile(h).view(x.shape[0], len(self.tasks), 2, -1)
        return prof, self.head(h.mean(dim=-1)).view(-1, len(self.tasks), 2)


def counts(output: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Strand-averaged log counts ``(N, T)`` from a BPNet output (DeepMR's exposure/outcome)."""
    return output[1].mean(dim=-1)


@torch.no_grad()
def init_counts_bias(model: BPNet, profile_counts: torch.Tensor) -> BPNet:
    """Start the counts head at the training data's mean ``log(1 + counts)`` per task and strand.

    The head sits on *averaged* features, so a site's signal is diluted by the sequence
    length and the head's output moves slowly; starting at the mean spares the first epochs
    the job of finding the offset. ``profile_counts``: ``(N, T, 2, L)``. Returns the model.
    """
    T = len(model.tasks)
    if profile_counts.ndim != 4 or profile_counts.shape[1:3] != (T, 2):
        raise ValueError(f"profile_counts must be (N, {T}, 2, L), got {tuple(profile_counts.shape)}")
    model.head.bias.copy_(torch.log1p(profile_counts.double().sum(dim=-1)).mean(dim=0).reshape(-1).float())
    return model


def bpnet_loss(
    output: tuple[torch.Tensor, torch.Tensor], profile_counts: torch.Tensor, *, count_weight: float = 10.0
) -> torch.Tensor:
    """Multinomial NLL of the profiles + ``count_weight`` x MSE of log(1 + total counts).

    ``profile_counts``: observed counts ``(N, T, 2, L)``. Per batch example, as in BPNet.
    """
    logits, log_counts = output
    logp = F.log_softmax(logits, dim=-1)
    total = profile_counts.sum(dim=-1)
    # multinomial log-likelihood without the count-only constant terms that do not depend on the model
    nll = -(profile_counts * logp).sum(dim=-1) - torch.lgamma(total + 1) + torch.lgamma(profile_counts + 1).sum(dim=-1)
    mse = F.mse_loss(log_counts, torch.log1p(total))
    return nll.sum(dim=(1, 2)).mean() + count_weight * mse


@torch.no_grad()
def evaluate(
    models: Models,
    X: torch.Tensor,
    profile_counts: torch.Tensor,
    *,
    tasks: Sequence[str] | None = None,
    batch_size: int = 128,
    reference_shape: ArrayLike | None = None,
) -> pd.DataFrame:
    """Held-out accuracy of a BPNet ensemble, one row per task.

    ``X``: ``(N, 4, L)``; ``profile_counts``: observed reads ``(N, T, 2, L)``. Columns:

    * ``counts_pearson``, ``counts_r2``: ensemble-mean counts head against the strand mean of
      ``log(1 + strand counts)`` (BPNet's counts metric);
    * ``profile_nll``: multinomial negative log-likelihood per read of the observed profiles
      under the ensemble's mean profile (lower is better), next to ``uniform_nll`` (a flat
      profile: the floor a useless model reaches) and, if ``reference_shape`` ``(N, T, 2, L)``
      is given (e.g. the simulator's expected read distribution), ``reference_nll``.
    """

    models = as_models(models)
    dev = model_device(models)
    N, T, _, L = profile_counts.shape
    probs = torch.zeros(N, T, 2 * L, dtype=torch.float64)
    logc = torch.zeros(N, T, dtype=torch.float64)
    with eval_mode(models):
        for m in models:
            for i in range(0, N, batch_size):
                prof, lc = m(X[i : i + batch_size].to(dev).float())
                probs[i : i + batch_size] += torch.softmax(prof.reshape(prof.shape[0], T, -1), dim=-1).double().cpu()
                logc[i : i + batch_size] += lc.mean(dim=-1).double().cpu()
    probs /= len(models)
    logc /= len(models)
    obs = profile_counts.double().reshape(N, T, -1)
    reads = obs.sum(dim=(0, 2))
    y = torch.log1p(profile_counts.double().sum(dim=-1)).mean(dim=-1)

    def nll(p):
        return (-(obs * torch.log(p.clamp_min(1e-300))).sum(dim=(0, 2)) / reads).numpy()

    rows = {
        "task": list(tasks) if tasks is not None else list(range(T)),
        "counts_pearson": [float(np.corrcoef(y[:, t], logc[:, t])[0, 1]) for t in range(T)],
        "counts_r2": (1 - ((y - logc) ** 2).mean(dim=0) / y.var(dim=0, unbiased=False)).numpy(),
        "profile_nll": nll(probs),
        "uniform_nll": np.full(T, np.log(2 * L)),
    }
    if reference_shape is not None:
        ref = torch.as_tensor(np.asarray(reference_shape), dtype=torch.float64).reshape(N, T, -1)
        rows["reference_nll"] = nll(ref)
    return pd.DataFrame(rows)


# Keras layer names of the published file (Kipoi BPNet-OSKN): the body, then per task
# (Oct4, Sox2, Nanog, Klf4) the profile transposed convolution and the counts dense layer.
OSKN_LAYERS = {
    "stem": "conv1d_1",
    "dilated": [f"conv1d_{i}" for i in range(2, 11)],
    "profile": [f"conv2d_transpose_{i}" for i in range(1, 5)],
    "counts": [f"dense_{i}" for i in (1, 3, 5, 7)],
}


def load_keras_h5(
    path: str | Path,
    *,
    md5: str | None = OSKN_MD5,
    layers: dict = OSKN_LAYERS,
    tasks: Sequence[str] = ("Oct4", "Sox2", "Nanog", "Klf4"),
) -> BPNet:
    """Build a :class:`BPNet` from a Keras ``.h5`` model file, without TensorFlow.

    The file's MD5 must equal ``md5`` (the published BPNet-OSKN file by default;
    ``None`` skips the check, e.g. for a model you trained yourself). Keras
    ``Conv1D`` kernels ``(k, in, out)`` become torch ``(out, in, k)``;
    ``Conv2DTranspose`` kernels ``(k, 1, out, in)`` become ``(in, out, k)``;
    ``Dense`` kernels ``(in, out)`` become ``(out, in)``.
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weight file at {path}")
    if md5 is not None:
        got = md5sum(path)
        if got != md5:
            raise ValueError(
                f"{path} has MD5 {got}, expected {md5}: not the published BPNet-OSKN file "
                "(truncated download or a different model); pass md5=None only for your own files"
            )
    try:
        fh = h5py.File(path, "r")
    except OSError as exc:
        raise ValueError(f"{path} is not a readable HDF5 file: {exc}") from None
    with fh:
        root = fh["model_weights"] if "model_weights" in fh else fh

        def weight(layer, name):
            try:
                return np.asarray(root[layer][layer][f"{name}:0"])
            except KeyError:
                raise ValueError(
                    f"{path}: layer {layer!r} has no weight {name!r}; layers in the file: {sorted(root.keys())[:20]}"
                ) from None

        stem_k = weight(layers["stem"], "kernel")
        n_filters, k = stem_k.shape[2], stem_k.shape[0]
        tk = weight(layers["profile"][0], "kernel").shape[0]
        model = BPNet(tasks, n_filters=n_filters, n_layers=len(layers["dilated"]), stem_kernel=k, tconv_kernel=tk)
        sd = {"stem.weight": stem_k.transpose(2, 1, 0), "stem.bias": weight(layers["stem"], "bias")}
        for i, name in enumerate(layers["dilated"]):
            sd[f"convs.{i}.weight"] = weight(name, "kernel").transpose(2, 1, 0)
            sd[f"convs.{i}.bias"] = weight(name, "bias")
        prof_w = [weight(n, "kernel")[:, 0].transpose(2, 1, 0) for n in layers["profile"]]  # (in, 2, k)
        sd["profile.weight"] = np.concatenate(prof_w, axis=1)
        sd["profile.bias"] = np.concatenate([weight(n, "bias") for n in layers["profile"]])
        sd["head.weight"] = np.concatenate([weight(n, "kernel").T for n in layers["counts"]], axis=0)
        sd["head.bias"] = np.concatenate([weight(n, "bias") for n in layers["counts"]])
    expected = model.state_dict()
    for key, arr in sd.items():
        if tuple(arr.shape) != tuple(expected[key].shape):
            raise ValueError(
                f"{path}: {key} has shape {arr.shape}, the architecture needs {tuple(expected[key].shape)}"
            )
    model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)).float() for k, v in sd.items()})
    return model.eval()
