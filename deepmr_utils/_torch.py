"""Model handling shared by prediction, mutagenesis, training and the model zoo.

One home for: the device rule, ensembles as lists of modules, eval mode with
each submodule's flag restored, and how a model's raw output becomes the
``(batch, n_outputs)`` tensor the analysis uses. Private to the package (like
tangermeme's ``_compat``); the public entry points are :mod:`deepmr_utils.predict`
and :mod:`deepmr_utils.ism`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from ._types import ArrayLike, Models, Sequences
from .sequence import as_one_hot

OutputSpec = Callable[[torch.Tensor], torch.Tensor] | Sequence[int] | int | None


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The package's one device rule: ``device`` if given, else CUDA when visible, else the CPU.

    A device that does not exist here (``"foo"``, ``"cuda"`` on a CPU-only build or machine,
    ``"cuda:3"`` with two GPUs) raises a ``ValueError`` naming it, before any work starts."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(device, (str, torch.device)):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda:0', or a torch.device, not {type(device)}")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"device {device!r} is not a device name (use cpu, cuda or cuda:N)") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available here (torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r} asked for, but only {torch.cuda.device_count()} GPU(s) are visible")
    elif dev.type not in ("cpu", "mps", "meta"):
        raise ValueError(f"device {device!r} is not supported (use cpu, cuda or cuda:N)")
    return dev


def as_models(models: Models) -> list[nn.Module]:
    """One module or an iterable of them as a non-empty list (an ensemble)."""
    if isinstance(models, nn.Module):
        models = [models]
    try:
        models = list(models)
    except TypeError:
        raise TypeError(f"models must be a torch.nn.Module or a list of them, got {type(models).__name__}") from None
    if not models:
        raise ValueError("models is empty: pass one nn.Module or a non-empty list of them")
    for i, m in enumerate(models):
        if not isinstance(m, nn.Module):
            raise TypeError(f"models[{i}] is a {type(m).__name__}, not a torch.nn.Module")
    return models


def model_device(models: list[nn.Module]) -> torch.device:
    """The one device all members live on (CPU for a model without tensors)."""
    devs = []
    for i, m in enumerate(models):
        ds = {p.device for p in m.parameters()} | {b.device for b in m.buffers()}
        if len(ds) > 1:
            raise ValueError(f"models[{i}] has tensors on several devices: {sorted(map(str, ds))}")
        devs.append(ds.pop() if ds else torch.device("cpu"))
    if len(set(devs)) > 1:
        raise ValueError(
            "ensemble members are on different devices: " + ", ".join(f"models[{i}] on {d}" for i, d in enumerate(devs))
        )
    return devs[0]


def model_dtype(models: list[nn.Module]) -> torch.dtype:
    """The floating dtype of the members' parameters (float32 for a model without any)."""
    dts = []
    for i, m in enumerate(models):
        ds = {p.dtype for p in m.parameters() if p.is_floating_point()}
        if len(ds) > 1:
            raise TypeError(f"models[{i}] mixes parameter dtypes {sorted(map(str, ds))}; cast it with .float()")
        dts.append(ds.pop() if ds else torch.float32)
    if len(set(dts)) > 1:
        raise TypeError(
            "ensemble members have different dtypes: "
            + ", ".join(f"models[{i}] is {d}" for i, d in enumerate(dts))
            + "; cast them all with .float()"
        )
    return dts[0]


def on_device(models: list[nn.Module], device: torch.device) -> list[nn.Module]:
    """The members on ``device``; copies when they live elsewhere, so the caller's models never move."""
    if model_device(models) == device:
        return models
    return [copy.deepcopy(m).to(device) for m in models]


def prepare_input(X: Sequences, models: list[nn.Module], device: torch.device) -> torch.Tensor:
    """A checked one-hot ``(N, 4, L)`` tensor in the models' dtype on ``device``.

    One-hot values are exact in every float dtype, so a float64 batch for a float32
    model (or the reverse) is cast rather than refused.
    """
    X = as_one_hot(X)
    return X.to(device=device, dtype=model_dtype(models))


@contextmanager
def eval_mode(models: list[nn.Module]) -> Iterator[None]:
    """Eval mode for the forward pass, each submodule's own flag restored afterwards."""
    saved = [[(mod, mod.training) for mod in m.modules()] for m in models]
    try:
        for m in models:
            m.eval()
        yield
    finally:
        for group in saved:
            for mod, flag in group:  # the flag itself: train() would recurse, and some modules refuse it
                mod.training = flag


def check_outputs(outputs: OutputSpec) -> OutputSpec:
    """Validate an ``outputs`` spec before any work: None, a callable, an int or non-empty ints."""
    if outputs is None or callable(outputs):
        return outputs
    if isinstance(outputs, (bool, np.bool_)):
        raise TypeError("outputs must be None, an index, a list of indices or a callable, got a bool")
    if isinstance(outputs, (int, np.integer)):
        return int(outputs)
    if isinstance(outputs, (str, bytes)):
        raise TypeError(
            f"outputs={outputs!r}: pass integer indices (names go to exposure=/outcome= with output_names=)"
        )
    if isinstance(outputs, torch.Tensor):
        outputs = outputs.tolist()
    try:
        idx = list(outputs)
    except TypeError:
        raise TypeError(
            f"outputs must be None, an index, a list of indices or a callable, got {type(outputs).__name__}"
        ) from None
    if not idx:
        raise ValueError("outputs is empty: pass None for every output, or at least one index")
    for i in idx:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"outputs must hold integer indices, got {i!r} ({type(i).__name__})")
    return [int(i) for i in idx]


def select_outputs(y: ArrayLike, outputs: OutputSpec) -> torch.Tensor:
    """The model's raw output as ``(batch, n_outputs)`` according to ``outputs``."""
    if callable(outputs):
        y = outputs(y)
    elif isinstance(y, (tuple, list, dict)):
        raise TypeError(
            "the model returns a tuple/list/dict; pass outputs=callable that maps it to a (batch, n_outputs) tensor"
        )
    if not isinstance(y, torch.Tensor):
        raise TypeError(f"outputs must produce a tensor, got {type(y).__name__}")
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2:
        raise ValueError(f"selected outputs must have shape (batch, n_outputs), got {tuple(y.shape)}")
    if outputs is None or callable(outputs):
        return y
    idx = [outputs] if isinstance(outputs, int) else list(outputs)
    bad = [i for i in idx if not -y.shape[1] <= i < y.shape[1]]
    if bad:
        raise ValueError(f"outputs index {bad[0]} does not exist: the model has {y.shape[1]} outputs")
    return y[:, idx]


def selected_names(
    models: list[nn.Module], outputs: OutputSpec, output_names: Sequence[str] | None = None
) -> list[str] | None:
    """Names of the *selected* outputs (the columns ISM returns), or None when unknown.

    ``output_names`` given by the caller name the selected outputs and win. Otherwise the
    first model's ``output_names`` attribute names its raw outputs and is subset by
    ``outputs``; with a callable ``outputs`` the raw names say nothing about the columns,
    so there are none.
    """
    if output_names is not None:
        return [str(n) for n in output_names]
    names = getattr(models[0], "output_names", None)
    if names is None or callable(outputs):
        return None
    names = [str(n) for n in names]
    if outputs is None:
        return names
    idx = [outputs] if isinstance(outputs, int) else list(outputs)
    bad = [i for i in idx if not -len(names) <= i < len(names)]
    if bad:
        raise ValueError(f"outputs index {bad[0]} does not exist: the model has {len(names)} outputs {names}")
    return [names[i] for i in idx]


def same_architecture(models: list[nn.Module]) -> bool:
    """Whether the members share one class and state-dict layout (names, shapes, dtypes): what
    stacking their weights for ``torch.func.vmap`` needs."""
    ref = [(k, v.shape, v.dtype) for k, v in models[0].state_dict().items()]
    return all(
        type(m) is type(models[0]) and [(k, v.shape, v.dtype) for k, v in m.state_dict().items()] == ref
        for m in models[1:]
    )
