"""ISM -> effects -> instruments over many sequences, in chunks that survive interruption.

``variant_effects(models, X, exposure=..., outcome=..., out="runs/ctcf")`` mutates
the sequences chunk by chunk, turns each chunk's predictions into candidate
variants (all substitutions with their effects and SEs), writes the chunk to
``out/chunk_#####.parquet`` as soon as it is finished, and finally selects the
instruments over all chunks. Run again with the same ``out`` and it resumes
after the last finished chunk; a finished run returns at once.

A run folder checks itself. ``manifest.json`` (written atomically) pins a
fingerprint of the inputs' *values*: the sequences, every member's class and
state dict, the explicit mutated positions, the output choice, the calibration's
fitted arrays and the options that change the numbers. A different run pointed at
the same folder is refused. Every chunk file carries the fingerprint and its own
index too, so a chunk copied in from another run (or another chunk's slot), or
one that cannot be read, is recomputed with a warning instead of used.

``effects(models, X, out=...)`` does the same up to the effects and SEs of every
output, ``(N, P, 4, O)``, for DeepMR over all output pairs at once
(:func:`deepmr_utils.pairs.all_pairs`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from . import instruments
from ._io import open_pinned, replace
from ._torch import as_models, selected_names
from ._types import ArrayLike, Models, Sequences
from ._validate import FAST_HINT, is_integer, renamed_keywords
from .ism import ISMOptions, resolve_positions, saturation_mutagenesis
from .progress import show_progress
from .sequence import as_one_hot
from .uncertainty import IsotonicCalibration, VarianceScaling, paired_correlation, paired_effects

__all__ = ["variant_effects", "two_sample_effects", "effects", "read_effects", "dask_config", "WORKER_MALLOC"]

_FP_KEY = b"deepmr_fingerprint"
_CHUNK_KEY = b"deepmr_chunk"


# ----------------------------------------------------------------------------- fingerprints


def _describe(obj, key: str | None = None, what: str = "outputs") -> str:
    """A description of ``obj`` that is the same in every process and differs between different values.

    A function is pinned by module and name, a ``functools.partial`` by its function and
    arguments. Anonymous callables (lambdas, nested functions) and objects whose repr is
    a memory address cannot be told apart between runs: they need ``key=``.
    """
    if key is not None:
        return f"key:{key}"
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return repr(obj)
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(_describe(v, None, what) for v in obj) + "]"
    if isinstance(obj, dict):
        return "{" + ",".join(f"{k!r}:{_describe(v, None, what)}" for k, v in sorted(obj.items())) + "}"
    if isinstance(obj, functools.partial):
        return (
            f"partial({_describe(obj.func, None, what)}, {_describe(list(obj.args), None, what)}, "
            f"{_describe(dict(obj.keywords), None, what)})"
        )
    qual = getattr(obj, "__qualname__", None)
    if callable(obj) and qual is not None:
        if "<lambda>" in qual or "<locals>" in qual:
            raise ValueError(
                f"{what} is an anonymous function ({qual}): two of them cannot be told apart between runs, "
                f"so a run folder cannot check it; define it at module level or pass key='a name for it'"
            )
        return f"{getattr(obj, '__module__', '')}.{qual}"
    text = repr(obj)
    if " at 0x" in text:
        raise ValueError(
            f"{what} ({text}) is known only by its memory address, which changes between runs; "
            "pass key='a name for it' to pin it in the run folder"
        )
    return text


def _digest(obj, h) -> None:
    """Feed the *values* of ``obj`` (arrays, dataclass fields, containers) into the hash ``h``."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        h.update(repr(obj).encode())
    elif isinstance(obj, torch.Tensor):
        _digest(obj.detach().cpu().numpy(), h)
    elif isinstance(obj, np.ndarray):
        h.update(f"array{obj.shape}{obj.dtype}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, (list, tuple)):
        h.update(f"seq{len(obj)}".encode())
        for v in obj:
            _digest(v, h)
    elif isinstance(obj, (set, frozenset)):
        _digest(sorted(obj, key=repr), h)
    elif isinstance(obj, dict):
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _digest(obj[k], h)
    elif dataclasses.is_dataclass(obj):
        h.update(type(obj).__qualname__.encode())
        for f in dataclasses.fields(obj):
            h.update(f.name.encode())
            _digest(getattr(obj, f.name), h)
    else:
        h.update(_describe(obj, what="a calibration field").encode())


def _fingerprint(X: torch.Tensor, models, payload: dict) -> dict:
    """What pins a run, field by field (a refusal names the field that differs), and ``fingerprint``,
    the hash of them all that every chunk carries:

    * ``sequences``: the bases (not the float dtype they came in);
    * ``weights``: every member's state dict;
    * ``model_code``: what the weights run through (:func:`_model_code`): an edited ``forward``
      with the same weights is another run;
    * ``options``: positions, outputs, calibration, transform and everything else in ``payload``.

    ``model_outputs`` (:func:`_probe`) is pinned beside them and compared with a tolerance.
    """
    parts = {}
    h = hashlib.sha256(f"X{tuple(X.shape)}".encode())
    h.update((X != 0).cpu().numpy().tobytes())
    parts["sequences"] = h.hexdigest()
    h = hashlib.sha256()
    for m in models:
        for k, v in m.state_dict().items():
            h.update(k.encode())
            h.update(f"{tuple(v.shape)}{v.dtype}".encode())
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    parts["weights"] = h.hexdigest()
    parts["model_code"] = hashlib.sha256("\n".join(_model_code(m) for m in models).encode()).hexdigest()
    h = hashlib.sha256()
    _digest(payload, h)
    parts["options"] = h.hexdigest()
    return {"fingerprint": hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest(), **parts}


def _pins(out, X: torch.Tensor, models, payload: dict) -> dict:
    """:func:`_fingerprint` for a run folder; without one, nothing is pinned (hashing a large ensemble's
    weights costs about a second per gigabyte) and a fresh name only keeps the run's Dask tasks apart."""
    if out is None:
        import uuid

        return {"fingerprint": uuid.uuid4().hex}
    return _fingerprint(X, models, payload)


def _model_code(model: torch.nn.Module) -> str:
    """The code a model's weights run through, as text: a TorchScript module's compiled code, an
    exported program's graph, or the source of every Python class in it, with each submodule's plain
    attributes (``DeepSEA(output="logit")`` and ``output="probability"`` share weights, not numbers)."""
    import inspect

    parts = [f"torch {torch.__version__.split('+')[0]}"]
    for name, mod in model.named_modules():
        cls = type(mod)
        parts.append(f"{name}:{cls.__module__}.{cls.__qualname__}")
        if isinstance(mod, torch.jit.ScriptModule):
            try:
                parts.append(mod.code)
            except (RuntimeError, AttributeError):  # a module without a forward of its own
                pass
            continue
        if isinstance(mod, torch.fx.GraphModule):
            parts.append(mod.code)
        elif not cls.__module__.startswith("torch."):  # torch's own layers are pinned by its version
            try:
                parts.append(inspect.getsource(cls))
            except (OSError, TypeError):  # defined in a notebook or REPL: its attributes still count
                parts.append("<source unavailable>")
        plain = (bool, int, float, str, tuple, type(None))
        attrs = {
            k: v for k, v in vars(mod).items() if not k.startswith("_") and k != "training" and isinstance(v, plain)
        }
        parts.append(repr(sorted(attrs.items())))
    return "\n".join(parts)


_PROBE_VALUES = 64


@torch.no_grad()
def _probe(models, X: torch.Tensor, outputs) -> list[list[float]]:
    """Each member's selected outputs on two fixed random sequences of the run's length (eval mode),
    up to ``_PROBE_VALUES`` numbers per member: the model's behaviour, compared with a tolerance
    (float round-off differs between machines), so a changed model is caught even when its code
    and weights read the same."""
    from ._torch import eval_mode, model_device, select_outputs
    from .sequence import random_sequences

    x = random_sequences(2, X.shape[2], seed=20240607)
    values = []
    with eval_mode(models), torch.inference_mode():
        for m in models:
            y = select_outputs(m(x.to(model_device([m]))), outputs).float().flatten().cpu()
            values.append(y[:: max(1, y.numel() // _PROBE_VALUES)][:_PROBE_VALUES].tolist())
    return values


# ----------------------------------------------------------------------------- the run folder


def _open_run(out, pins: dict, info: dict, probe) -> Path | None:
    """The run folder, with a manifest that pins the inputs; a different run there is refused, naming
    what differs. ``probe``: a callable giving the models' outputs on the probe batch (run only when
    there is a folder), pinned with a tolerance."""
    if out is None:
        return None
    return open_pinned(
        out,
        "manifest.json",
        pins,
        info,
        close={"model_outputs": probe()},
        refusal="holds a different run (other sequences, models, outputs or options); "
        "use a new out folder or delete it",
        unreadable="it was probably cut short by a crash. Delete that file and rerun: finished chunks carry their "
        "run's fingerprint, so only matching ones are reused",
    )


def _write_chunk(path: Path, fp: str, index: int, value) -> None:
    """Write a chunk (a variant table, or an ``(effect, se)`` pair) atomically, stamped with the
    run's fingerprint and the chunk's index; :func:`_read_chunk` reads either back."""
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(value, pd.DataFrame):
        t = pa.Table.from_pandas(value, preserve_index=False)
        meta = dict(t.schema.metadata or {})
        meta.update({_FP_KEY: fp.encode(), _CHUNK_KEY: str(index).encode()})
        pq.write_table(t.replace_schema_metadata(meta), tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    else:
        with open(tmp, "wb") as fh:  # a file object, so numpy does not append ".npz" to the temporary name
            np.savez(fh, fingerprint=np.array(fp), chunk=np.array(index), effect=value[0], se=value[1])
            fh.flush()
            os.fsync(fh.fileno())
    replace(tmp, path)  # a chunk file exists only once it is complete


def _read_chunk(path: Path, fp: str, index: int):
    """A finished chunk of this run, or None (with a warning saying why) if it must be recomputed."""
    if not path.exists():
        return None
    try:
        if path.suffix == ".parquet":
            t = pq.read_table(path)
            meta = t.schema.metadata or {}
            stamp, chunk = meta.get(_FP_KEY, b"").decode(), meta.get(_CHUNK_KEY, b"-1").decode()
            value = t.to_pandas()
        else:
            with np.load(path) as f:
                stamp, chunk = str(f["fingerprint"]), str(f["chunk"])
                value = (f["effect"], f["se"])
    except Exception as exc:  # any unreadable file: the fix is the same, recompute it
        warnings.warn(f"{path} is unreadable ({type(exc).__name__}: {exc}); recomputing that chunk", stacklevel=3)
        return None
    if stamp != fp or chunk != str(index):
        why = "another run" if stamp != fp else f"chunk {chunk}, not chunk {index}"
        warnings.warn(f"{path} belongs to {why}; recomputing that chunk", stacklevel=3)
        return None
    return value


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
    # batch size, the engine, ensemble mode and device change how, not what, is computed; strand averaging,
    # the output transform and the extras (e.g. the members' correlation) change what, and are pinned only
    # when set, so run folders made before these options existed still resume
    numbers = {"rc_average": options.rc_average, "transform": options.transform, **extra}
    return {
        **{k: v for k, v in numbers.items() if v not in (None, False, "none")},
        "kind": kind,
        "chunk_size": chunk_size,
        "ddof": options.ddof,
        "positions": pos,
        "loci": loci,
        "outputs": _describe(options.outputs, options.outputs_key),
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
    pins = _pins(out, X, models, payload)
    fp = pins["fingerprint"]
    folder = _open_run(
        out,
        pins,
        {"n_sequences": X.shape[0], "n_chunks": len(chunks), "exposure": ie, "outcome": io, "output_names": names},
        lambda: _probe(models, X, options.outputs),
    )
    variants = {"exposure": ie, "outcome": io, "output_names": names, "psi": member_correlation}
    job = _Job(X, loci, pos, options, calibration, variants)
    frames = _each_chunk(folder, fp, chunks, "chunk_{:05d}.parquet", models, job, progress, client)
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
    out: str | os.PathLike | None = None,
    chunk_size: int = 64,
    progress: bool | None = None,
    client: object | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Effects and SEs of every substitution on every selected output, ``(N, P, 4, O)`` each.

    What :func:`deepmr_utils.uncertainty.paired_effects` returns for the whole of ``X``,
    computed chunk by chunk; with ``out`` each chunk is written to
    ``out/effects_#####.npz`` as soon as it is done and a rerun resumes after the last
    finished one (a different run in the same folder is refused). This is the input of
    :func:`deepmr_utils.pairs.all_pairs`, for all exposure/outcome pairs at once; name
    its outputs with :func:`deepmr_utils.predict.output_names` ``(models, outputs)``.
    Arguments as for :func:`variant_effects`.

    ``client``: a ``dask.distributed.Client``. The models are sent to each worker once
    (``scatter``), every unfinished chunk becomes one task that writes its own chunk file as
    soon as it is done, and a task whose worker dies is rerun by Dask on another; finished
    chunks are never recomputed. The result equals a single-process run's bit for bit on a CPU
    (the automatic batch size and engine are rules of the length, the same in every process).
    """
    options = _as_options(options)
    models, X, loci, chunks, pos = _setup(models, X, None, chunk_size, options.positions)
    payload = _payload("effects", chunk_size, pos, loci, calibration, options)
    pins = _pins(out, X, models, payload)
    fp = pins["fingerprint"]
    folder = _open_run(
        out,
        pins,
        {
            "n_sequences": X.shape[0],
            "n_chunks": len(chunks),
            "kind": "effects",
            "output_names": selected_names(models, options.outputs),
        },
        lambda: _probe(models, X, options.outputs),
    )
    job = _Job(X, loci, pos, options, calibration, None)
    parts = _each_chunk(folder, fp, chunks, "effects_{:05d}.npz", models, job, progress, client)
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


@dataclasses.dataclass
class _Job:
    """What every chunk shares: the sequences, resolved positions, options and calibration (``variants``: the
    variant-table arguments, or ``None`` for effects)."""

    X: torch.Tensor
    loci: np.ndarray
    pos: np.ndarray
    options: ISMOptions
    calibration: VarianceScaling | IsotonicCalibration | None
    variants: dict | None

    def args(self, a: int, b: int) -> tuple:
        """This chunk's arguments of :func:`_chunk_task`, after the models."""
        return (self.X[a:b], self.loci[a:b], self.pos, self.options, self.calibration, self.variants)


def _chunk_task(models, X, ids, pos, options, calibration, variants, path, fp, index):
    """One chunk, start to finish: ISM, effects (and the variant table), written to ``path``. The same
    function runs in this process or as a Dask task; a task writes its own file, so a finished chunk
    survives whatever happens to the driver. ``variants["psi"]``: add the members' correlation."""
    pair = None
    if variants is not None:
        variants = dict(variants)
        if variants.pop("psi"):
            pair = (variants["exposure"], variants["outcome"])
    effect, se, psi = _chunk_effects(models, X, pos, options, calibration, ids, pair)
    value = (effect, se) if variants is None else instruments.variant_table(
        effect, se, X, positions=pos, loci=ids, psi=psi, **variants
    )  # fmt: skip
    if path is not None:
        _write_chunk(path, fp, index, value)
    return value


# glibc's allocator settings for an ISM worker process (see dask_config)
WORKER_MALLOC = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(2**30),
}


def dask_config() -> dict:
    """Dask settings for the worker processes of an ISM cluster: ``with dask.config.set(pipeline.dask_config()):``
    around ``LocalCluster(...)`` (or the same keys in a cluster's Dask configuration).

    A Dask task runs in a worker thread, not the main thread, and glibc gives that thread its own
    malloc arena, whose heap is trimmed back to the kernel as soon as ISM frees its activation
    buffers: every batch then faults them in again (measured: 15x the page faults, ISM 1.6x slower
    than the same call on the main thread, and two such workers on two cores contend in the kernel).
    These settings keep every thread on one arena (``MALLOC_ARENA_MAX=1``; ISM workers run one task
    at a time), serve buffers up to 32 MiB from the heap and trim it only past 1 GiB free, so a
    worker keeps its working set instead of returning it after every batch. They replace Dask's
    ``MALLOC_TRIM_THRESHOLD_=65536`` (about four times slower) and keep its other worker variables
    (one OpenMP / MKL thread per worker); the workers' statistical profiler, which samples every
    thread's stack every 10 ms and takes the GIL from the windowed engine's many small operations,
    is switched off."""
    import dask

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    env.update(WORKER_MALLOC)
    return {"distributed.nanny.pre-spawn-environ": env, "distributed.worker.profile.enabled": False}


def _check_worker_allocator(client) -> None:
    try:
        values = client.run(lambda: {k: os.environ.get(k) for k in WORKER_MALLOC})
    except Exception:  # a client whose workers cannot run this (e.g. restricted): nothing to advise
        return
    if any(env != WORKER_MALLOC for env in values.values()):
        warnings.warn(
            "the Dask workers run without pipeline.WORKER_MALLOC's allocator settings (MALLOC_ARENA_MAX=1, ...), "
            "which makes ISM 1.5 to 4 times slower; start the cluster inside "
            "`with dask.config.set(pipeline.dask_config()):`",
            stacklevel=4,
        )


def _to_wire(model):
    if isinstance(model, torch.jit.ScriptModule):
        buf = io.BytesIO()
        torch.jit.save(model, buf)
        return ("torchscript", buf.getvalue())
    return ("module", model)


def _from_wire(item):
    kind, value = item
    return torch.jit.load(io.BytesIO(value), map_location="cpu") if kind == "torchscript" else value


def _identity(value):
    return value


# per worker process: the models of the run it is working on (rebuilt once, not per task); one run at a time
_WORKER_MODELS: dict[str, list] = {}


def _remote_chunk_task(wire, X, ids, pos, options, calibration, variants, path, fp, index):
    models = _WORKER_MODELS.get(fp)
    if models is None:
        _WORKER_MODELS.clear()
        models = _WORKER_MODELS[fp] = [_from_wire(w) for w in wire]
    return _chunk_task(models, X, ids, pos, options, calibration, variants, path, fp, index)


def _each_chunk(folder, fp, chunks, pattern, models, job, progress, client=None) -> list:
    """Every chunk's result: read back when this run already finished it, else computed (here, or on
    the workers of a Dask ``client``) and written."""
    paths = [folder / pattern.format(c) if folder is not None else None for c in range(len(chunks))]
    results = [_read_chunk(p, fp, c) if p is not None else None for c, p in enumerate(paths)]
    todo = [c for c, v in enumerate(results) if v is None]
    bar = tqdm(
        total=len(chunks),
        initial=len(chunks) - len(todo),
        desc="ISM",
        unit="chunk",
        disable=not show_progress(progress),
    )
    if client is None:
        for c in todo:
            results[c] = _chunk_task(models, *job.args(*chunks[c]), paths[c], fp, c)
            bar.update()
    elif todo:
        from distributed import as_completed

        # the models travel once per worker, not once per task (TorchScript modules as their saved bytes:
        # they cannot be pickled), and each worker rebuilds them once per run. They are the result of a
        # task, not scattered data: the scheduler keeps the task, so when every worker holding them has
        # died it reruns it on a live one (scattered data would be lost, and every chunk after it)
        _check_worker_allocator(client)
        wire = [_to_wire(m) for m in models]
        shared = client.submit(_identity, wire, key=f"deepmr-models-{fp[:16]}", pure=False)
        futures = {
            client.submit(
                _remote_chunk_task, shared, *job.args(*chunks[c]), paths[c], fp, c, key=f"deepmr-{fp[:16]}-{c}"
            ): c
            for c in todo
        }
        for future in as_completed(futures):
            results[futures[future]] = future.result()
            bar.update()
    bar.close()
    return results


def read_effects(out: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """The effects and SEs ``(N, P, 4, O)`` of a finished :func:`effects` run folder, read back from
    its chunk files (each checked against the folder's manifest). Raises ``ValueError`` naming the
    missing chunks when the run is not finished."""
    folder = Path(out)
    manifest = folder / "manifest.json"
    if not manifest.is_file():
        raise ValueError(f"{folder} is not a run folder of pipeline.effects (no manifest.json)")
    info = json.loads(manifest.read_text())
    if info.get("kind") != "effects":
        raise ValueError(f"{folder} holds a {info.get('kind', 'variant-table')} run, not an effects run")
    parts = [_read_chunk(folder / f"effects_{c:05d}.npz", info["fingerprint"], c) for c in range(info["n_chunks"])]
    missing = [c for c, p in enumerate(parts) if p is None]
    if missing:
        raise ValueError(
            f"{folder}: {len(missing)} of {info['n_chunks']} chunks are not finished ({missing[:10]}); "
            "rerun the same effects command to resume"
        )
    effect, se = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if effect.shape[0] != info.get("n_sequences"):
        raise ValueError(
            f"{manifest} says {info.get('n_sequences')} sequences in {info['n_chunks']} chunks, but the "
            f"chunks hold {effect.shape[0]}: the manifest was edited; rerun effects in a new folder"
        )
    return effect, se


def _chunk_effects(models, X, pos, options, calibration, ids, pair=None):
    """Effects and SEs of a chunk, and the members' correlation of the outputs in ``pair`` (or ``None``)."""
    pred = saturation_mutagenesis(models, X, outputs=options.outputs, positions=pos, **options.mutagenesis())
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
