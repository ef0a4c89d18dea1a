"""File helpers: durable writes shared by the resumable runs (pipeline chunks, simulation-study
rounds) and the checksum that published weights are checked against."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np


def fsync_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` and flush it to disk."""
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def replace(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` onto ``path`` and make the rename itself durable (a file exists only once complete)."""
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, so a crash leaves the old file or none."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    fsync_write(tmp, data)
    replace(tmp, path)


def open_pinned(
    out, manifest: str, pins: dict, info: dict, *, refusal: str, unreadable: str, close: dict | None = None
) -> Path | None:
    """The run folder ``out`` (``None`` stays ``None``), created if needed, whose ``manifest`` file pins
    the run: written atomically with ``pins``, ``close`` and ``info`` on first use; on a later use its
    ``pins`` must match exactly and its ``close`` values (lists of lists of floats: model outputs, which
    round off differently between machines) to rtol 1e-4, else ``ValueError`` naming the folder, the
    fields that differ and ``refusal`` (a crash-truncated manifest: ``unreadable``). ``info`` is recorded
    but not compared."""
    if out is None:
        return None
    close = close or {}
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / manifest
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"{path} is unreadable ({exc}); {unreadable}") from None
        differ = [k for k, v in pins.items() if stored.get(k) != json.loads(json.dumps(v))]
        differ += [k for k, v in close.items() if not _close(stored.get(k), v)]
        if differ:
            raise ValueError(f"{folder} {refusal} (it differs in: {', '.join(differ)})")
    else:
        write_atomic(path, json.dumps({**pins, **close, **info}, indent=1, sort_keys=True).encode())
    return folder


def _close(stored, now) -> bool:
    return (
        stored is not None
        and len(stored) == len(now)
        and all(len(a) == len(b) and np.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(stored, now))
    )


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex MD5 of a file, read in chunks (published weights are checked against it)."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
