"""Input checks shared by the statistical modules.

Every public estimator funnels its arrays through here so that bad input fails
loudly, with the name of the argument and the first offending index, instead of
propagating a NaN into a book table.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from ._types import ArrayLike, Sequences


def as_1d(x: Sequences, name: str) -> np.ndarray:
    """Return ``x`` as a 1-D float64 array or raise ``TypeError``/``ValueError``."""
    if isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be numeric, got a string")
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be numeric: {exc}") from None
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def first_bad(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def check_finite(arr: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        i = first_bad(bad)
        raise ValueError(f"{name} contains a non-finite value ({arr[i]}) at index {i}")


def check_positive(arr: np.ndarray, name: str) -> None:
    bad = arr <= 0
    if bad.any():
        i = first_bad(bad)
        raise ValueError(f"{name} must be > 0, got {arr[i]} at index {i}")


def summary_stats(
    bx: ArrayLike, bxse: ArrayLike, by: ArrayLike, byse: ArrayLike, *, min_k: int, method: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate MR summary statistics and return them as float arrays.

    Checks: 1-D, equal lengths, finite, standard errors > 0, at least ``min_k``
    instruments, and not all ``bx`` equal to zero.
    """
    arrays = {n: as_1d(v, n) for n, v in (("bx", bx), ("bxse", bxse), ("by", by), ("byse", byse))}
    lengths = {n: a.size for n, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"bx, bxse, by, byse must have the same length, got {lengths}")
    for n, a in arrays.items():
        check_finite(a, n)
    check_positive(arrays["bxse"], "bxse")
    check_positive(arrays["byse"], "byse")
    check_weights(arrays["byse"], "byse")
    with np.errstate(over="ignore", invalid="ignore"):  # the estimators square ratios like these
        scaled = np.concatenate([arrays["bx"] / arrays["byse"], arrays["by"] / arrays["byse"]]) ** 2
    if not np.isfinite(scaled).all():
        i = first_bad(~np.isfinite(scaled)) % arrays["bx"].size
        raise ValueError(
            f"the effects are too large for their SEs at index {i} (bx={arrays['bx'][i]:.3g}, "
            f"by={arrays['by'][i]:.3g}, "
            f"byse={arrays['byse'][i]:.3g}): their squared ratios overflow float64; rescale the effects"
        )
    k = arrays["bx"].size
    if k < min_k:
        raise ValueError(f"{method} needs at least {min_k} instrument(s), got {k}")
    if not np.any(arrays["bx"] != 0):
        raise ValueError("all bx are zero: the instruments carry no information on the exposure")
    if not np.any(scaled[:k] > 0):  # sum (bx/byse)^2 is every estimator's information on the exposure
        largest = np.max(np.abs(arrays["bx"] / arrays["byse"]))
        raise ValueError(
            f"every bx is so small against its byse (largest |bx/byse| {largest:.3g}) that (bx/byse)^2 underflows "
            "float64 to 0: no information on the exposure; rescale the effects"
        )
    return arrays["bx"], arrays["bxse"], arrays["by"], arrays["byse"]


def weights_finite(se: np.ndarray) -> np.ndarray:
    """Where the inverse-variance weight 1/se^2 is finite (a tiny SE overflows it to inf)."""
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return np.isfinite(1.0 / (se * se))


def check_weights(se: np.ndarray, name: str) -> None:
    """Inverse-variance weights 1/se^2 must be finite."""
    bad = ~weights_finite(se)
    if bad.any():
        i = first_bad(bad)
        raise ValueError(
            f"{name} is {se[i]} at index {i}: so small that its weight 1/{name}^2 overflows; "
            "rescale the effects or drop that instrument"
        )


def check_nonzero_bx(bx: np.ndarray, method: str) -> None:
    """Ratio-based estimators divide by bx: a zero makes the ratio undefined."""
    bad = bx == 0
    if bad.any():
        raise ValueError(
            f"{method}: bx is zero at index {first_bad(bad)}, so its ratio estimate by/bx "
            "is undefined; drop that instrument"
        )


def check_alpha(alpha: float) -> float:
    if not (0 < float(alpha) < 1):
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    return float(alpha)


def is_integer(value: object) -> bool:
    """An int or NumPy integer, and not a bool (True is an int to Python, never a count to us)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_choice(value: str, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def renamed_keywords(**hints: str) -> Callable:
    """Decorator: calling the function with a retired keyword raises a ``TypeError`` that names
    its replacement (``hints``: old keyword -> what to write instead), not Python's bare
    "unexpected keyword argument"."""

    def wrap(f: Callable) -> Callable:
        @functools.wraps(f)
        def inner(*args, **kwargs):
            for old, hint in hints.items():
                if old in kwargs:
                    raise TypeError(f"{f.__name__}() no longer takes {old}=; {hint}")
            return f(*args, **kwargs)

        return inner

    return wrap


ENGINES = ("auto", "windowed", "plain")
# the one hint for the retired ISM switch, shared by every function that had it
FAST_HINT = "use engine='windowed' (was fast=True), 'plain' (fast=False) or 'auto' (fast=None)"


def check_psi(psi, k: int | None = None):
    """``psi``, the correlation of the exposure and outcome estimates: a float in [-1, 1], or, when
    ``k`` is given, also one value per instrument (a 1-D array of ``k`` values in [-1, 1]), as an
    ensemble's members give for each variant."""
    if k is not None and not np.isscalar(psi) and not isinstance(psi, bool):
        arr = np.asarray(psi)
        if arr.dtype.kind not in "iuf":
            raise TypeError(f"psi must be numbers (correlations), got dtype {arr.dtype}")
        arr = arr.astype(np.float64).ravel()
        if arr.size != k:
            raise ValueError(f"psi has {arr.size} values for {k} instruments (one per instrument, or one number)")
        bad = ~((arr >= -1) & (arr <= 1))  # NaN fails too
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"psi is a correlation and must lie in [-1, 1], got {arr[i]} at index {i}")
        return arr
    if isinstance(psi, bool) or not isinstance(psi, (int, float, np.integer, np.floating)):
        what = "a number (a correlation)" if k is None else "a number or one correlation per instrument"
        raise TypeError(f"psi must be {what}, got {type(psi).__name__}")
    if not -1 <= float(psi) <= 1:
        raise ValueError(f"psi is a correlation and must lie in [-1, 1], got {psi}")
    return float(psi)


def first_line(err: BaseException, limit: int = 400) -> str:
    """An exception's first non-empty line (its type's name when it has no message), for one-line errors."""
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return (lines[0] if lines else type(err).__name__)[:limit]
