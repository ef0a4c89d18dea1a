"""ISM -> effects -> instruments over many sequences, in chunks that survive interruption.

``variant_effects(models, X, exposure=..., outcome=..., out="runs/ctcf")`` mutates
the sequences chunk by chunk, turns each chunk's predictions into candidate
variants (all substitutions with their effects and SEs), writes the chunk to
``out/chunk_#####.parquet`` as soon as it is finished, and finally selects the
instruments over all chunks. Run again with the same ``out`` and it resumes
after the last finished chunk; a finished run returns at once. A manifest pins
the inputs (sequences, models, outputs, options): a different run pointed at the
same folder is refused rather than silently mixed.

``effects(models, X, out=...)`` does the same up to the effects and SEs of every
output, ``(N, P, 4, O)``, for DeepMR over all output pairs at once
(:func:`deepmr_utils.pairs.all_pairs`).
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

__all__ = ["variant_effects", "effects"]


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


def _open_run(out, X, models, payload: dict, info: dict) -> Path | None:
    """The run folder, with a manifest that pins the inputs; a different run there is refused."""
    if out is None:
        return None
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    fp = _fingerprint(X, models, payload)
    manifest = folder / "manifest.json"
    if manifest.exists():
        if json.loads(manifest.read_text()).get("fingerprint") != fp:
            raise ValueError(f"{folder} holds a different run (other sequences, models or options); "
                             "use a new out folder or delete it")
    else:
        manifest.write_text(json.dumps({"fingerprint": fp, **info}, indent=1))
    return folder


def _chunk_effects(models, X, positions, pos, outputs, calibration, ids, ddof, batch_size, device, ism_kwargs):
    pred = saturation_mutagenesis(models, X, outputs=outputs, positions=positions,
                                  batch_size=batch_size, device=device, **ism_kwargs)
    if calibration is not None:
        pred = calibration.transform_members(pred, axis=1, ids=ids)
    return paired_effects(pred, X, pos, ddof=ddof)


def _describe(obj) -> str:
    """A description that is the same in every process: a function by its name, not its address."""
    if callable(obj) and hasattr(obj, "__qualname__"):
        return f"{getattr(obj, '__module__', '')}.{obj.__qualname__}"
    return repr(obj)


def _payload(chunk_size, ddof, positions, loci, outputs, calibration, ism_kwargs, **extra) -> dict:
    # the fast path, ensemble mode and window size change how, not what, is computed
    return {"chunk_size": chunk_size, "ddof": ddof,
            "positions": None if positions is None else np.asarray(positions).tolist(),
            "loci": loci.tolist(), "outputs": _describe(outputs), "calibration": repr(calibration),
            "ism": {k: repr(v) for k, v in ism_kwargs.items() if k not in ("fast", "ensemble", "block")}, **extra}


def _save(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)  # a chunk file exists only once it is complete


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
    models, X, loci, chunks, device = _setup(models, X, loci, chunk_size, device)
    names = output_names if output_names is not None else getattr(models[0], "output_names", None)
    ie, io = _resolve(exposure, names, "exposure"), _resolve(outcome, names, "outcome")
    folder = _open_run(out, X, models,
                       _payload(chunk_size, ddof, positions, loci, outputs, calibration, ism_kwargs,
                                exposure=ie, outcome=io),
                       {"n_sequences": X.shape[0], "n_chunks": len(chunks), "exposure": ie, "outcome": io})
    names_list = list(names) if names is not None else None
    pos = None if positions is None else _pos_array(positions)
    frames = []
    for c, (a, b) in enumerate(tqdm(chunks, desc="ISM", unit="chunk", disable=not progress)):
        path = folder / f"chunk_{c:05d}.parquet" if folder is not None else None
        if path is not None and path.exists():
            frames.append(pd.read_parquet(path))
            continue
        effect, se = _chunk_effects(models, X[a:b], positions, pos, outputs, calibration, loci[a:b], ddof,
                                    batch_size, device, ism_kwargs)
        table = instruments.variant_table(effect, se, X[a:b], exposure=ie, outcome=io, positions=pos,
                                          loci=loci[a:b], output_names=names_list)
        if path is not None:
            _save(path, lambda p: table.to_parquet(p, index=False))
        frames.append(table)
    candidates = pd.concat(frames, ignore_index=True)
    if select is False:
        return candidates
    if callable(select):
        return select(candidates)
    return instruments.select(candidates, **(select or {}))


def effects(models, X, *, out=None, chunk_size: int = 64, positions=None, outputs: OutputSpec = None,
            calibration=None, ddof: int = 1, device=None, batch_size: int | None = None,
            progress: bool = True, **ism_kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Effects and SEs of every substitution on every output, ``(N, P, 4, O)`` each.

    What :func:`deepmr_utils.uncertainty.paired_effects` returns for the whole of ``X``,
    computed chunk by chunk; with ``out`` each chunk is written to
    ``out/effects_#####.npz`` as soon as it is done and a rerun resumes after the last
    finished one (a different run in the same folder is refused). This is the input of
    :func:`deepmr_utils.pairs.all_pairs`, for all exposure/outcome pairs at once.
    Arguments as for :func:`variant_effects`.
    """
    models, X, loci, chunks, device = _setup(models, X, None, chunk_size, device)
    folder = _open_run(out, X, models,
                       _payload(chunk_size, ddof, positions, loci, outputs, calibration, ism_kwargs, kind="effects"),
                       {"n_sequences": X.shape[0], "n_chunks": len(chunks), "kind": "effects"})
    pos = None if positions is None else _pos_array(positions)
    parts = []
    for c, (a, b) in enumerate(tqdm(chunks, desc="ISM", unit="chunk", disable=not progress)):
        path = folder / f"effects_{c:05d}.npz" if folder is not None else None
        if path is not None and path.exists():
            with np.load(path) as f:
                parts.append((f["effect"], f["se"]))
            continue
        effect, se = _chunk_effects(models, X[a:b], positions, pos, outputs, calibration, loci[a:b], ddof,
                                    batch_size, device, ism_kwargs)
        if path is not None:
            _save(path, lambda p: _savez(p, effect=effect, se=se))
        parts.append((effect, se))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _savez(path: Path, **arrays) -> None:
    with open(path, "wb") as fh:  # a file object, so numpy does not append ".npz" to the temporary name
        np.savez(fh, **arrays)


def _setup(models, X, loci, chunk_size, device):
    models = _as_models(models)
    X = as_one_hot(X)
    N = X.shape[0]
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    loci = np.arange(N) if loci is None else np.asarray(loci)
    if loci.size != N:
        raise ValueError(f"loci has {loci.size} labels for {N} sequences")
    if len(set(loci.tolist())) != N:
        raise ValueError("loci labels must be unique")
    if device is None:
        device = "cuda" if torch.cuda.is_available() else None
    chunks = [(i, min(i + chunk_size, N)) for i in range(0, N, chunk_size)]
    return models, X, loci, chunks, device


def _pos_array(positions):
    if isinstance(positions, tuple) and len(positions) == 2:
        return np.arange(*positions)
    return np.unique(np.asarray(positions))
