"""Plain predictions of one model or an ensemble, in batches, on the package's device rule."""

from __future__ import annotations

import torch

from ._torch import (
    OutputSpec,
    as_models,
    check_outputs,
    eval_mode,
    on_device,
    prepare_input,
    resolve_device,
    select_outputs,
    selected_names,
)
from ._types import Models, Sequences

__all__ = ["predict", "output_names"]


def predict(
    models: Models,
    X: Sequences,
    *,
    outputs: OutputSpec = None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Predictions ``(N, M, O)`` of every member for every sequence (eval mode, no grad).

    ``models``: an ``nn.Module`` or a list of them (an ensemble); ``X``: one-hot
    ``(N, 4, L)`` or sequence strings; ``outputs`` as in
    :func:`deepmr_utils.ism.saturation_mutagenesis`; ``device``: ``None`` = CUDA when
    visible, else the CPU (models elsewhere are copied, never moved). Returns float32 on
    the CPU.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    models = as_models(models)
    outputs = check_outputs(outputs)
    dev = resolve_device(device)
    models = on_device(models, dev)
    X = prepare_input(X, models, dev)
    with eval_mode(models), torch.inference_mode():
        ys = []
        for i in range(0, X.shape[0], batch_size):
            xb = X[i : i + batch_size]
            ys.append(torch.stack([select_outputs(m(xb), outputs) for m in models], dim=1).float().cpu())
    return torch.cat(ys)


def output_names(models: Models, outputs: OutputSpec = None) -> list[str] | None:
    """Names of the outputs that ``outputs`` selects, from the first model's ``output_names``.

    ``None`` when the model has no names or ``outputs`` is a callable (then name the
    selected outputs yourself). Use these, not the model's full list, to label the
    columns of an ISM tensor computed with ``outputs``.
    """
    return selected_names(as_models(models), check_outputs(outputs))
