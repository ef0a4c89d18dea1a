"""Run folders: what a resumable run (:mod:`deepmr_utils.pipeline`) writes, and how it checks itself.

One owner for one folder. A run folder holds

* ``manifest.json``, the one record of the run (written atomically): a fingerprint of the inputs'
  *values* field by field (:func:`fingerprint`: the sequences, every member's state dict and code,
  each option that changes the numbers), the models' outputs on a probe batch (:func:`probe`,
  compared with a tolerance), the run's shape and output names, and what the caller records beside
  them (the ``deepmr`` command: its model files and settings). A different run pointed at the
  folder is refused, naming the fields that differ;
* ``sequences.npz``: the run's sequences, locus labels and mutated positions, so the folder alone
  is enough to analyse it (:func:`read_effects` checks them against the manifest);
* one file per chunk (``chunk_#####.parquet`` variant tables, ``effects_#####.npz`` effects), each
  stamped with the run's fingerprint and its own index (:func:`write_chunk`, :func:`read_chunk`), so a
  foreign, misplaced or unreadable chunk is recomputed with a warning instead of used.

``FORMAT`` numbers the layout. A folder of another format (format 1 kept the ``deepmr`` command's
settings in ``deepmr.json`` and its sequences beside, in files of the command's own) is refused with
a message that says what changed.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from ._io import open_pinned, replace, write_atomic
from ._torch import OutputSpec, eval_mode, model_device, select_outputs
from ._types import ArrayLike
from .sequence import random_sequences

__all__ = [
    "FORMAT", "MANIFEST", "SEQUENCES", "Run", "describe", "fingerprint", "model_code", "probe", "open_run",
    "write_chunk", "read_chunk", "read_effects",
]  # fmt: skip

FORMAT = 2
MANIFEST = "manifest.json"
SEQUENCES = "sequences.npz"
_PINNED = ("format", "sequences", "weights", "model_code")
_FP_KEY = b"deepmr_fingerprint"
_CHUNK_KEY = b"deepmr_chunk"
_CHANGES = {
    1: "format 1 kept the deepmr command's settings in deepmr.json and its sequences in a file of the command's "
    "own; format 2 keeps both in the run's own manifest.json and sequences.npz, with one digest per option",
}


# ----------------------------------------------------------------------------- fingerprints


def describe(obj: Any, key: str | None = None, what: str = "outputs") -> str:
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
        return "[" + ",".join(describe(v, None, what) for v in obj) + "]"
    if isinstance(obj, dict):
        return "{" + ",".join(f"{k!r}:{describe(v, None, what)}" for k, v in sorted(obj.items())) + "}"
    if isinstance(obj, functools.partial):
        return (
            f"partial({describe(obj.func, None, what)}, {describe(list(obj.args), None, what)}, "
            f"{describe(dict(obj.keywords), None, what)})"
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
        h.update(describe(obj, what="a calibration field").encode())


def fingerprint(X: torch.Tensor, models: list[torch.nn.Module], payload: dict) -> dict:
    """What pins a run, field by field (a refusal names the field that differs), and ``fingerprint``,
    the hash of them all that every chunk carries:

    * ``sequences``: the bases (not the float dtype they came in);
    * ``weights``: every member's state dict;
    * ``model_code``: what the weights run through (:func:`model_code`): an edited ``forward``
      with the same weights is another run;
    * ``options.<name>``: one digest per entry of ``payload`` (positions, outputs, output names,
      calibration, transform, ...), so a refusal names the option that changed.

    ``model_outputs`` (:func:`probe`) is pinned beside them and compared with a tolerance.
    """
    parts = {"format": FORMAT, "sequences": _bases_digest(X)}
    h = hashlib.sha256()
    for m in models:
        for k, v in m.state_dict().items():
            h.update(k.encode())
            h.update(f"{tuple(v.shape)}{v.dtype}".encode())
            h.update(v.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    parts["weights"] = h.hexdigest()
    parts["model_code"] = hashlib.sha256("\n".join(model_code(m) for m in models).encode()).hexdigest()
    for name, value in payload.items():
        h = hashlib.sha256()
        _digest(value, h)
        parts[f"options.{name}"] = h.hexdigest()
    return {"fingerprint": _stamp(parts), **parts}


def _bases_digest(X: torch.Tensor) -> str:
    """The pinned ``sequences`` field: the shape and the bases (which entries are set), not the float dtype."""
    h = hashlib.sha256(f"X{tuple(X.shape)}".encode())
    h.update((X != 0).cpu().numpy().tobytes())
    return h.hexdigest()


def _stamp(parts: dict) -> str:
    """The fingerprint: the hash of the pinned fields (a manifest's other entries are left out)."""
    pinned = {k: v for k, v in parts.items() if k in _PINNED or k.startswith("options.")}
    return hashlib.sha256(json.dumps(pinned, sort_keys=True).encode()).hexdigest()


def model_code(model: torch.nn.Module) -> str:
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
def probe(models: list[torch.nn.Module], X: torch.Tensor, outputs: OutputSpec) -> list[list[float]]:
    """Each member's selected outputs on two fixed random sequences of the run's length (eval mode),
    up to ``_PROBE_VALUES`` numbers per member: the model's behaviour, compared with a tolerance
    (float round-off differs between machines), so a changed model is caught even when its code
    and weights read the same."""
    x = random_sequences(2, X.shape[2], seed=20240607)
    values = []
    with eval_mode(models), torch.inference_mode():
        for m in models:
            y = select_outputs(m(x.to(model_device([m]))), outputs).float().flatten().cpu()
            values.append(y[:: max(1, y.numel() // _PROBE_VALUES)][:_PROBE_VALUES].tolist())
    return values


# ----------------------------------------------------------------------------- the run folder


def open_run(
    out: str | os.PathLike | None,
    X: torch.Tensor,
    models: list[torch.nn.Module],
    payload: dict,
    *,
    outputs: OutputSpec,
    loci: ArrayLike,
    positions: ArrayLike,
    info: dict,
) -> tuple[Path | None, str]:
    """``(folder, fingerprint)``: the run folder ``out`` opened for this run, and the stamp its chunks carry.

    A new folder gets the manifest (the :func:`fingerprint`, the models' :func:`probe` outputs and
    ``info``, recorded but not compared) and ``sequences.npz`` (``X``, the ``loci`` labels and the
    resolved ``positions``). An existing one must hold this run: another format, or any pinned field
    that differs, raises ``ValueError`` naming them; a missing or damaged ``sequences.npz`` is rewritten.
    ``out=None``: no folder and nothing hashed (a large ensemble's weights cost about a second per
    gigabyte); a fresh name only keeps the run's Dask tasks apart.
    """
    if out is None:
        return None, uuid.uuid4().hex
    folder = Path(out)
    _check_format(folder)
    pins = fingerprint(X, models, payload)
    fp = pins.pop("fingerprint")  # the hash of the pinned fields: comparing them names the ones that differ
    folder = open_pinned(
        folder,
        MANIFEST,
        pins,
        {**info, "fingerprint": fp, "n_sequences": int(X.shape[0])},
        close={"model_outputs": probe(models, X, outputs)},
        refusal="holds a different run (other sequences, models, outputs or options); "
        "use a new out folder or delete it",
        unreadable="it was probably cut short by a crash. Delete that file and rerun: finished chunks carry their "
        "run's fingerprint, so only matching ones are reused",
    )
    if _read_sequences(folder, fp, pins["sequences"]) is None:
        _write_sequences(folder, fp, X, loci, positions)
    return folder, fp


def _check_format(folder: Path) -> None:
    path = folder / MANIFEST
    try:
        stored = json.loads(path.read_text()).get("format", 1)
    except (OSError, ValueError, AttributeError):  # no manifest, or an unreadable one: open_pinned says which
        return
    if stored != FORMAT:
        raise ValueError(
            f"{folder} is a run folder of format {stored}, written by another version of deepmr_utils; this one "
            f"reads format {FORMAT} ({_CHANGES.get(stored, 'an unknown layout')}): rerun into a new folder"
        )


def _write_sequences(folder: Path, fp: str, X: torch.Tensor, loci, positions) -> None:
    x = X.detach().cpu().numpy()
    as_bytes = x.astype(np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(
        buf, fingerprint=np.array(fp), X=as_bytes if np.array_equal(as_bytes, x) else x, loci=np.asarray(loci),
        positions=np.asarray(positions, dtype=np.int64),
    )  # fmt: skip
    write_atomic(folder / SEQUENCES, buf.getvalue())


def _read_sequences(folder: Path, fp: str, sequences: str):
    """``(X, loci, positions)`` from ``sequences.npz`` when it belongs to this run and holds the pinned bases,
    else ``None``."""
    try:
        with np.load(folder / SEQUENCES, allow_pickle=False) as f:
            stamp, x, loci, positions = str(f["fingerprint"]), f["X"], f["loci"], f["positions"]
    except Exception:  # missing or unreadable: the fix is the same, write it again (or say so)
        return None
    X = torch.from_numpy(x.astype(np.float32))
    if stamp != fp or _bases_digest(X) != sequences or len(loci) != X.shape[0]:
        return None
    return X, loci.tolist(), positions


def write_chunk(path: Path, fp: str, index: int, value: pd.DataFrame | tuple[np.ndarray, np.ndarray]) -> None:
    """Write a chunk (a variant table, or an ``(effect, se)`` pair) atomically, stamped with the
    run's fingerprint and the chunk's index; :func:`read_chunk` reads either back."""
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


def read_chunk(path: Path, fp: str, index: int) -> pd.DataFrame | tuple[np.ndarray, np.ndarray] | None:
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


# ----------------------------------------------------------------------------- reading a finished run


@dataclasses.dataclass(frozen=True, repr=False)
class Run:
    """A finished :func:`deepmr_utils.pipeline.effects` run, read back by :func:`read_effects`.

    ``effect``, ``se``: ``(N, P, 4, O)``; ``X``: the sequences ``(N, 4, L)``; ``loci``: their labels;
    ``positions``: the ``P`` mutated positions; ``output_names``: the ``O`` outputs (``None`` when
    unnamed); ``manifest``: the folder's record (fingerprint, options' digests, what the caller recorded).
    """

    folder: Path
    effect: np.ndarray
    se: np.ndarray
    X: torch.Tensor
    loci: list
    positions: np.ndarray
    output_names: list[str] | None
    manifest: dict

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]

    def __repr__(self) -> str:
        n, p, _, o = self.effect.shape
        return f"Run({str(self.folder)!r}: {n} sequences x {p} positions x {o} outputs {self.output_names})"


def read_effects(out: str | os.PathLike) -> Run:
    """The finished :func:`deepmr_utils.pipeline.effects` run in folder ``out`` as a :class:`Run`: its
    chunks, each checked against the manifest, and its sequences. Raises ``ValueError`` naming what is
    wrong: not a run folder, another format or kind of run, missing chunks (the run is not finished),
    sequences that no longer match the run."""
    folder = Path(out)
    path = folder / MANIFEST
    if not path.is_file():
        raise ValueError(f"{folder} is not a run folder of pipeline.effects or `deepmr effects` (no {MANIFEST})")
    _check_format(folder)
    try:
        info = json.loads(path.read_text())
        fp, kind, n_chunks = info["fingerprint"], info.get("kind"), int(info["n_chunks"])
    except (ValueError, UnicodeDecodeError, KeyError, TypeError) as err:
        why = f"{type(err).__name__}: {err}"
        raise ValueError(f"{path} is unreadable or incomplete ({why}); rerun into a new folder") from None
    if kind != "effects":
        raise ValueError(f"{folder} holds a {kind or 'variant-table'} run, not an effects run")
    if _stamp(info) != fp:
        raise ValueError(f"{path}: its fingerprint does not match the fields it pins: the manifest was edited; "
                         "rerun effects in a new folder")  # fmt: skip
    parts = [read_chunk(folder / f"effects_{c:05d}.npz", fp, c) for c in range(n_chunks)]
    missing = [c for c, p in enumerate(parts) if p is None]
    if missing:
        raise ValueError(
            f"{folder}: {len(missing)} of {n_chunks} chunks are not finished ({missing[:10]}); "
            "rerun the same effects command to resume"
        )
    effect, se = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if effect.shape[0] != info.get("n_sequences"):
        raise ValueError(
            f"{path} says {info.get('n_sequences')} sequences in {n_chunks} chunks, but the "
            f"chunks hold {effect.shape[0]}: the manifest was edited; rerun effects in a new folder"
        )
    seqs = _read_sequences(folder, fp, info.get("sequences"))
    if seqs is None:
        raise ValueError(
            f"{folder / SEQUENCES} is missing, unreadable or not this run's sequences; rerun the same effects "
            "command to rewrite it"
        )
    X, loci, positions = seqs
    if X.shape[0] != effect.shape[0] or len(positions) != effect.shape[1]:
        raise ValueError(f"{folder}: the chunks hold {effect.shape[:2]} sequences x positions, {SEQUENCES} "
                         f"{(X.shape[0], len(positions))}; rerun effects in a new folder")  # fmt: skip
    return Run(folder, effect, se, X, loci, positions, info.get("output_names"), info)
