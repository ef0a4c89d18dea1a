"""ISM -> effects -> instruments over many sequences, in chunks that survive interruption.

``variant_effects(models, X, exposure=..., outcome=..., out="runs/ctcf")`` mutates
the sequences chunk by chunk, turns each chunk's predictions into candidate
variants (all substitutions with their effects and SEs), writes the chunk to
``out/chunk_#####.parquet`` as soon as it is finished, and finally selects the
instruments over all chunks. Run again with the same ``out`` and it resumes
after the last finished chunk; a finished run returns at once.

A run folder checks itself (:mod:`deepmr_utils.runs` owns it): ``manifest.json`` pins a
fingerprint of the inputs' *values* (the sequences, every member's code and state dict, each
option that changes the numbers), so a different run pointed at the same folder is refused,
naming what differs; every chunk carries the fingerprint and its own index, so a chunk copied in
from another run (or another chunk's slot), or one that cannot be read, is recomputed with a
warning instead of used. ``client=`` spreads the chunks over a Dask cluster's workers.

``effects(models, X, out=...)`` does the same up to the effects and SEs of every
output, ``(N, P, 4, O)``, for DeepMR over all output pairs at once
(:func:`deepmr_utils.pairs.all_pairs`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from . import instruments, runs
from ._dask import WORKER_MALLOC, dask_config
from ._torch import as_models, selected_names
from ._types import ArrayLike, Models, Sequences
from ._validate import FAST_HINT, is_integer, renamed_keywords
from .ism import ISMOptions, prepare, resolve_positions
from .progress import show_progress
from .runs import Run, read_effects
from .sequence import as_one_hot
from .uncertainty import IsotonicCalibration, VarianceScaling, paired_correlation, paired_effects

__all__ = ["variant_effects", "two_sample_effects", "effects", "read_effects", "Run", "dask_config", "WORKER_MALLOC"]

# ----------------------------------------------------------------------------- public API


def _resolve(idx, names, what: str) -> int:
    if isinstance(idx, str):
        if names is None:
            raise ValueError(
                f"{what} is given by name ({idx!r}) but the selected outputs have no names; pass "
                "output_names=[...] naming the outputs that `outputs` selects, or an integer index"
            )
        if idx not in names:
            raise ValueError(f"{what} {idx!r} is not an output; the selected outputs are {list(names)}")
        return list(names).index(idx)
    if isinstance(idx, (bool, np.bool_)) or not isinstance(idx, (int, np.integer)):
        raise TypeError(f"{what} must be an output name or an integer index, got {idx!r}")
    if names is not None and not 0 <= int(idx) < len(names):
        raise ValueError(f"{what} index {idx} does not exist: the selected outputs are {list(names)}")
    return int(idx)


def _payload(kind, chunk_size, pos, loci, calibration, options: ISMOptions, **extra):
    # batch size, the engine, ensemble mode and device change how, not what, is computed: not pinned
    return {
        **extra,
        "rc_average": options.rc_average,
        "transform": options.transform,
        "kind": kind,
        "chunk_size": chunk_size,
        "ddof": options.ddof,
        "positions": pos,
        "loci": loci,
        "outputs": runs.describe(options.outputs, options.outputs_key),
        "calibration": calibration,
        "mc_dropout": options.mc_dropout,
        "seed": options.seed,
        "dtype": str(options.dtype),
    }


# the keywords that moved into ISMOptions: calling with one says where it went
MOVED = {
    f.name: f"pass options=ISMOptions({f.name}=...) (deepmr_utils.ism.ISMOptions holds the ISM options)"
    for f in dataclasses.fields(ISMOptions)
}


def _as_options(options) -> ISMOptions:
    if not isinstance(options, ISMOptions):
        raise TypeError(
            f"options must be an ism.ISMOptions (e.g. ISMOptions(outputs=[0, 2], mc_dropout=8)), got "
            f"{type(options).__name__}"
        )
    return options


@renamed_keywords(fast="pass options=ISMOptions(engine=...): " + FAST_HINT, **MOVED)
def variant_effects(
    models: Models,
    X: Sequences,
    *,
    exposure: str | int,
    outcome: str | int,
    options: ISMOptions = ISMOptions(),
    select: instruments.Selection = instruments.Selection(),
    loci: ArrayLike | None = None,
    calibration: VarianceScaling | IsotonicCalibration | None = None,
    output_names: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    chunk_size: int = 64,
    progress: bool | None = None,
    client: object | None = None,
    member_correlation: bool = False,
) -> pd.DataFrame:
    """Variant table of the selected instruments for every sequence of ``X``.

    ``X``: one-hot ``(N, 4, L)`` or sequence strings. ``options``: an :class:`~deepmr_utils.ism.ISMOptions`
    (which outputs and positions, MC-dropout, seed, scale, engine, ...). ``exposure``/``outcome``: indices
    into the *selected* outputs (the columns ``options.outputs`` picks), or their names.
    ``output_names`` names the selected outputs; by default the first model's
    ``output_names`` attribute, subset by ``options.outputs`` (a callable ``outputs`` needs
    ``output_names`` to use names).

    ``select``: an :class:`~deepmr_utils.instruments.Selection` (default: local
    ``|bx|/bxse >= 3``; ``Selection("all")`` returns every candidate). ``calibration``: a fitted
    :class:`~deepmr_utils.uncertainty.VarianceScaling` or
    :class:`~deepmr_utils.uncertainty.IsotonicCalibration`, applied to the member
    predictions before effects are computed. ``client``: a ``dask.distributed.Client``
    to spread the chunks over its workers (see :func:`effects`).

    ``member_correlation=True`` adds a column ``psi``: per variant, the correlation across members
    of the exposure's and the outcome's paired differences
    (:func:`deepmr_utils.uncertainty.paired_correlation`), for IVW's second-order weights
    (``mr.per_locus(table, "ivw", weights="delta", psi="psi")``) when one ensemble measures both.
    """
    select = instruments.as_selection(select)  # before any work, so an old-style argument fails fast
    if not isinstance(member_correlation, bool):
        raise TypeError(f"member_correlation must be True or False, got {type(member_correlation).__name__}")
    options = _as_options(options)
    models, X, loci, chunks, pos = _setup(models, X, loci, chunk_size, options.positions)
    names = selected_names(models, options.outputs, output_names)
    ie, io = _resolve(exposure, names, "exposure"), _resolve(outcome, names, "outcome")
    payload = _payload("variants", chunk_size, pos, loci, calibration, options, member_correlation=member_correlation)
    payload.update(exposure=ie, outcome=io, output_names=names)
    info = {"kind": "variants", "n_chunks": len(chunks), "exposure": ie, "outcome": io, "output_names": names}
    folder, fp = runs.open_run(out, X, models, payload, outputs=options.outputs, loci=loci, positions=pos, info=info)
    variants = {"exposure": ie, "outcome": io, "output_names": names, "psi": member_correlation}
    spec = _Spec(pos, options, calibration, variants)
    frames = _each_chunk(folder, fp, chunks, "chunk_{:05d}.parquet", models, X, loci, spec, progress, client)
    return select.apply(pd.concat(frames, ignore_index=True)).instruments


def two_sample_effects(
    selection_models: Models,
    estimation_models: Models,
    X: Sequences,
    *,
    exposure: str | int,
    outcome: str | int,
    select: instruments.Selection = instruments.Selection(),
    selection_calibration: VarianceScaling | IsotonicCalibration | None = None,
    calibration: VarianceScaling | IsotonicCalibration | None = None,
    out: str | os.PathLike | None = None,
    **kwargs,
) -> pd.DataFrame:
    """Two-sample DeepMR: instruments chosen by one ensemble, their effects measured by another.

    Every candidate of ``X`` is measured by both ensembles (:func:`variant_effects` with
    ``Selection("all")``); ``select`` picks the instruments in the ``selection_models``' table and the
    ``estimation_models``' rows at those variants are returned (:func:`deepmr_utils.instruments.two_sample`:
    the estimation table's columns plus ``bx_selection, bxse_selection``). The two ensembles should
    have independent errors, e.g. members trained on disjoint halves of the training data; members of
    one ensemble share theirs. Each ensemble has its own ``calibration``, fitted on held-out labels
    for its members. ``out``: a folder for the two resumable runs (``out/selection``,
    ``out/estimation``). ``kwargs`` (e.g. ``options=ISMOptions(...)``) go to :func:`variant_effects` for both.
    """
    select = instruments.as_selection(select)
    for bad in ("select", "calibration", "out", "loci"):
        if bad in kwargs:
            raise TypeError(f"two_sample_effects got {bad!r} among the options for both ensembles")
    tables = {}
    for name, models, cal in (
        ("selection", selection_models, selection_calibration),
        ("estimation", estimation_models, calibration),
    ):
        tables[name] = variant_effects(
            models, X, exposure=exposure, outcome=outcome, select=instruments.Selection("all"), calibration=cal,
            out=None if out is None else Path(out) / name, **kwargs,
        )  # fmt: skip
    return instruments.two_sample(tables["selection"], tables["estimation"], select)


@renamed_keywords(fast="pass options=ISMOptions(engine=...): " + FAST_HINT, **MOVED)
def effects(
    models: Models,
    X: Sequences,
    *,
    options: ISMOptions = ISMOptions(),
    calibration: VarianceScaling | IsotonicCalibration | None = None,
    loci: ArrayLike | None = None,
    output_names: Sequence[str] | None = None,
    out: str | os.PathLike | None = None,
    chunk_size: int = 64,
    progress: bool | None = None,
    client: object | None = None,
    record: dict | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Effects and SEs of every substitution on every selected output, ``(N, P, 4, O)`` each.

    What :func:`deepmr_utils.uncertainty.paired_effects` returns for the whole of ``X``,
    computed chunk by chunk; with ``out`` each chunk is written to
    ``out/effects_#####.npz`` as soon as it is done and a rerun resumes after the last
    finished one (a different run in the same folder is refused). This is the input of
    :func:`deepmr_utils.pairs.all_pairs`, for all exposure/outcome pairs at once; name
    its outputs with :func:`deepmr_utils.predict.output_names` ``(models, outputs)``.
    Arguments as for :func:`variant_effects`. A run folder keeps the sequences, their ``loci`` labels
    and the pinned ``output_names`` beside the chunks: :func:`read_effects` reads the whole run back
    (a :class:`~deepmr_utils.runs.Run`). ``record``: what the caller notes in the manifest without
    pinning it (the ``deepmr`` command: its model files and settings).

    ``client``: a ``dask.distributed.Client``. The models are sent to each worker once
    (``scatter``), every unfinished chunk becomes one task that writes its own chunk file as
    soon as it is done, and a task whose worker dies is rerun by Dask on another; finished
    chunks are never recomputed. The result equals a single-process run's bit for bit on a CPU
    (the automatic batch size and engine are rules of the length, the same in every process).
    """
    options = _as_options(options)
    if record is not None and not isinstance(record, dict):
        raise TypeError(f"record must be a dict of what to note in the manifest, got {type(record).__name__}")
    models, X, loci, chunks, pos = _setup(models, X, loci, chunk_size, options.positions)
    names = selected_names(models, options.outputs, output_names)
    payload = _payload("effects", chunk_size, pos, loci, calibration, options, output_names=names)
    info = {"kind": "effects", "n_chunks": len(chunks), "output_names": names, "record": record or {}}
    folder, fp = runs.open_run(out, X, models, payload, outputs=options.outputs, loci=loci, positions=pos, info=info)
    spec = _Spec(pos, options, calibration, None)
    parts = _each_chunk(folder, fp, chunks, "effects_{:05d}.npz", models, X, loci, spec, progress, client)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What every chunk of a run shares besides its sequences: the resolved positions, the options, the
    calibration and ``variants`` (the variant-table arguments, or ``None`` for effects)."""

    pos: np.ndarray
    options: ISMOptions
    calibration: VarianceScaling | IsotonicCalibration | None
    variants: dict | None


def _chunk_task(prepared, X, ids, spec: _Spec, path, fp, index):
    """One chunk, start to finish: ISM on the run's ``prepared`` engine (:func:`deepmr_utils.ism.prepare`),
    effects (and the variant table), written to ``path``. The same function runs in this process or as a Dask
    task; a task writes its own file, so a finished chunk survives whatever happens to the driver.
    ``variants["psi"]``: add the members' correlation."""
    pair, variants = None, spec.variants
    if variants is not None:
        variants = dict(variants)
        if variants.pop("psi"):
            pair = (variants["exposure"], variants["outcome"])
    effect, se, psi = _chunk_effects(prepared, X, spec.pos, spec.options, spec.calibration, ids, pair)
    value = (effect, se) if variants is None else instruments.variant_table(
        effect, se, X, positions=spec.pos, loci=ids, psi=psi, **variants
    )  # fmt: skip
    if path is not None:
        runs.write_chunk(path, fp, index, value)
    return value


def _each_chunk(folder, fp, chunks, pattern, models, X, loci, spec, progress, client=None) -> list:
    """Every chunk's result: read back when this run already finished it, else computed (here, or on
    the workers of a Dask ``client``) and written."""
    paths = [folder / pattern.format(c) if folder is not None else None for c in range(len(chunks))]
    results = [runs.read_chunk(p, fp, c) if p is not None else None for c, p in enumerate(paths)]
    todo = {c: (X[a:b], loci[a:b], spec, paths[c], fp, c) for c, (a, b) in enumerate(chunks) if results[c] is None}
    bar = tqdm(
        total=len(chunks),
        initial=len(chunks) - len(todo),
        desc="ISM",
        unit="chunk",
        disable=not show_progress(progress),
    )
    setup = functools.partial(_prepare, length=X.shape[2], options=spec.options)
    if client is None:
        prepared = setup(models) if todo else None  # the engine traced once for every chunk of the run
        done = ((c, _chunk_task(prepared, *args)) for c, args in todo.items())
    else:
        from ._dask import run_tasks

        done = run_tasks(client, _chunk_task, models, fp, todo, setup=setup) if todo else iter(())
    for c, value in done:
        results[c] = value
        bar.update()
    bar.close()
    return results


def _prepare(models, length, options):
    return prepare(models, length, options, stacklevel=5)


def _chunk_effects(prepared, X, pos, options, calibration, ids, pair=None):
    """Effects and SEs of a chunk, and the members' correlation of the outputs in ``pair`` (or ``None``)."""
    pred = prepared.run(X, positions=pos)
    if calibration is not None:
        pred = calibration.transform_members(pred, axis=1, ids=ids)
    effect, se = paired_effects(pred, X, pos, ddof=options.ddof)
    psi = None if pair is None else paired_correlation(pred, X, pos, exposure=pair[0], outcome=pair[1])
    return effect, se, psi


def _setup(models, X, loci, chunk_size, positions):
    models = as_models(models)
    X = as_one_hot(X)
    N = X.shape[0]
    if not is_integer(chunk_size) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    loci = np.arange(N) if loci is None else np.asarray(loci)
    if loci.size != N:
        raise ValueError(f"loci has {loci.size} labels for {N} sequences")
    if len(set(loci.tolist())) != N:
        raise ValueError("loci labels must be unique")
    # explicit positions: a (start, stop) tuple and the list [start, stop] are different runs
    pos = resolve_positions(positions, X.shape[2]).numpy()
    chunks = [(i, min(i + chunk_size, N)) for i in range(0, N, chunk_size)]
    return models, X, loci, chunks, pos
