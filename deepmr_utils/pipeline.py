"""ISM -> effects -> instruments over many sequences, in chunks that survive interruption.

``variant_effects(models, X, exposure=..., outcome=..., out="runs/ctcf")`` mutates
the sequences chunk by chunk, turns each chunk's predictions into candidate
variants (all substitutions with their effects and SEs), writes the chunk to
``out/chunk_#####.parquet`` as soon as it is finished, and finally selects the
instruments over all chunks. Run again with the same ``out`` and it resumes
after the last finished chunk; a finished run returns at once. A manifest pins
the inputs (sequences, models, outputs, options): a different run pointed at the
same folder is refused rather than silently mixed.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from . import instruments
from .ism import OutputSpec, _as_models, saturation_mutagenesis
from .sequence import as_one_hot
from .uncertainty import paired_effects

__all__ = ["variant_effects"]


def _resolve(idx, names, what):
    if isinstance(idx, str):
        if names is None:
            raise ValueError(f"{what} is given by name ({idx!r}) but the model has no output_names; "
                             "pass output_names=[...] or an integer index")
        if idx not in names:
            raise ValueError(f"{what} {idx!r} is not an output; outputs are {list(names)}")
        return list(names).index(idx)
    return int(idx)


def _fingerprint(X, models, payload) -> str:
    h = hashlib.sha256()
    h.update(X.detach().cpu().numpy().tobytes())
    for m in models:
        for k, v in m.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    h.update(json.dumps(payload, sort_keys=True, default=str).encode())
    return h.hexdigest()


def variant_effects(models, X, *, exposure, outcome, out=None, chunk_size: int = 64,
                    select: dict | Callable[[pd.DataFrame], pd.DataFrame] | None = None,
                    loci=None, positions=None, output_names=None, outputs: OutputSpec = None,
                    calibration=None, ddof: int = 1, device=None, batch_size: int | None = None,
                    progress: bool = True, **ism_kwargs) -> pd.DataFrame:
    """Variant table of the selected instruments for every sequence of ``X``.

    ``X``: one-hot ``(N, 4, L)`` or sequence strings. ``exposure``/``outcome``:
    output indices, or names from ``output_names`` (default: the first model's
    ``output_names`` attribute). ``select``: keyword arguments for
    :func:`deepmr_utils.instruments.select` (default ``{}``: local ``|bx|/bxse >= 3``),
    a callable on the candidate table, or ``False`` to return all candidates.
    ``calibration``: a fitted :class:`~deepmr_utils.uncertainty.VarianceScaling` or
    :class:`~deepmr_utils.uncertainty.IsotonicCalibration`, applied to the member
    predictions before effects are computed. ``device``: ``None`` = CUDA when present.
    Further keyword arguments go to :func:`deepmr_utils.ism.saturation_mutagenesis`.
    """
    models = _as_models(models)
    X = as_one_hot(X)
    N = X.shape[0]
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    names = output_names if output_names is not None else getattr(models[0], "output_names", None)
    ie, io = _resolve(exposure, names, "exposure"), _resolve(outcome, names, "outcome")
    loci = np.arange(N) if loci is None else np.asarray(loci)
    if loci.size != N:
        raise ValueError(f"loci has {loci.size} labels for {N} sequences")
    if len(set(loci.tolist())) != N:
        raise ValueError("loci labels must be unique")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else None

    chunks = [(i, min(i + chunk_size, N)) for i in range(0, N, chunk_size)]
    folder = None
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        payload = {"exposure": ie, "outcome": io, "chunk_size": chunk_size, "ddof": ddof,
                   "positions": None if positions is None else np.asarray(positions).tolist(),
                   "loci": loci.tolist(), "outputs": repr(outputs), "calibration": repr(calibration),
                   "ism": {k: repr(v) for k, v in ism_kwargs.items() if k not in ("fast", "ensemble", "block")}}
        fp = _fingerprint(X, models, payload)
        manifest = folder / "manifest.json"
        if manifest.exists():
            old = json.loads(manifest.read_text())
            if old.get("fingerprint") != fp:
                raise ValueError(f"{folder} holds a different run (other sequences, models or options); "
                                 "use a new out folder or delete it")
        else:
            manifest.write_text(json.dumps({"fingerprint": fp, "n_sequences": N, "n_chunks": len(chunks),
                                            "exposure": ie, "outcome": io}, indent=1))

    names_list = list(names) if names is not None else None
    pos = None if positions is None else _pos_array(positions)
    frames = []
    bar = tqdm(chunks, desc="ISM", unit="chunk", disable=not progress)
    for c, (a, b) in enumerate(bar):
        path = folder / f"chunk_{c:05d}.parquet" if folder is not None else None
        if path is not None and path.exists():
            frames.append(pd.read_parquet(path))
            continue
        pred = saturation_mutagenesis(models, X[a:b], outputs=outputs, positions=positions,
                                      batch_size=batch_size, device=device, **ism_kwargs)
        if calibration is not None:
            pred = calibration.transform_members(pred, axis=1, ids=loci[a:b])
        effect, se = paired_effects(pred, X[a:b], pos, ddof=ddof)
        table = instruments.variant_table(effect, se, X[a:b], exposure=ie, outcome=io, positions=pos,
                                          loci=loci[a:b], output_names=names_list)
        if path is not None:
            tmp = path.with_suffix(".tmp")
            table.to_parquet(tmp, index=False)
            os.replace(tmp, path)  # a chunk file exists only once it is complete
        frames.append(table)
    candidates = pd.concat(frames, ignore_index=True)
    if select is False:
        return candidates
    if callable(select):
        return select(candidates)
    return instruments.select(candidates, **(select or {}))


def _pos_array(positions):
    if isinstance(positions, tuple) and len(positions) == 2:
        return np.arange(*positions)
    return np.unique(np.asarray(positions))
