"""Whether long steps draw progress bars: one switch for the whole library, read from the call or the
environment (never from the book's settings, which the library does not import)."""

from __future__ import annotations

import os

__all__ = ["PROGRESS_VAR", "show_progress"]

PROGRESS_VAR = "DEEPMR_PROGRESS"


def show_progress(progress: bool | None = None) -> bool:
    """Whether long steps draw progress bars: ``progress`` when given, else ``$DEEPMR_PROGRESS``
    (``0`` / ``false`` / ``no`` turn them off; on by default). The book's builds set it to 0, so bars
    show in an interactive session but never land in a rendered page as stderr boxes."""
    if progress is not None:
        return bool(progress)
    return os.environ.get(PROGRESS_VAR, "1").strip().lower() not in ("0", "false", "no", "off")
