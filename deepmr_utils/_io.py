"""Durable file writes shared by the resumable runs (pipeline chunks, simulation-study rounds)."""

from __future__ import annotations

import os
from pathlib import Path


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
