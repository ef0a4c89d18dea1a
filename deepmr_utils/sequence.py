"""DNA sequences as one-hot tensors of shape ``(N, 4, L)`` in ACGT order.

Non-ACGT characters (N, IUPAC codes) are never guessed: ``non_acgt="error"``
(the default) raises, ``non_acgt="zero"`` encodes them as an all-zero column,
which most sequence models treat as "unknown".
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from ._types import ArrayLike, Positions, Sequences
from ._validate import is_integer

__all__ = [
    "ALPHABET",
    "one_hot",
    "decode",
    "reverse_complement",
    "random_sequences",
    "dinucleotide_shuffle",
    "read_fasta",
    "check_one_hot",
    "substitute",
    "base_indices",
    "from_codes",
]

ALPHABET = "ACGT"
_LUT = np.full(256, -1, dtype=np.int8)
for _i, _c in enumerate(ALPHABET):
    _LUT[ord(_c)] = _i
    _LUT[ord(_c.lower())] = _i


def _codes(seq: str, non_acgt: str, index: int) -> np.ndarray:
    if not isinstance(seq, str):
        raise TypeError(f"sequence {index} must be a str, got {type(seq).__name__}")
    raw = np.frombuffer(seq.encode("ascii", errors="replace"), dtype=np.uint8)
    codes = _LUT[raw]
    bad = codes < 0
    if bad.any() and non_acgt == "error":
        j = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"sequence {index} has non-ACGT character {seq[j]!r} at position {j}; "
            "pass non_acgt='zero' to encode such positions as all-zero columns"
        )
    return codes


def one_hot(
    seqs: str | Sequence[str], *, non_acgt: str = "error", dtype: torch.dtype | None = torch.float32
) -> torch.Tensor:
    """One-hot encode one sequence or a list of equal-length sequences to ``(N, 4, L)``."""
    if non_acgt not in ("error", "zero"):
        raise ValueError(f"non_acgt must be 'error' or 'zero', got {non_acgt!r}")
    if isinstance(seqs, str):
        seqs = [seqs]
    seqs = list(seqs)
    if not seqs:
        raise ValueError("no sequences to encode")
    lengths = {len(s) for s in seqs if isinstance(s, str)}
    if len(lengths) > 1:
        raise ValueError(f"sequences must have equal length to stack into (N, 4, L), got lengths {sorted(lengths)}")
    if lengths == {0}:
        raise ValueError("sequences are empty (length 0): nothing to encode")
    codes = np.stack([_codes(s, non_acgt, i) for i, s in enumerate(seqs)])
    return from_codes(codes.astype(np.int64), dtype=dtype)


def check_one_hot(X: Sequences, name: str = "X", *, allow_zero_columns: bool = True) -> torch.Tensor:
    """Validate a one-hot batch: a floating tensor ``(N, 4, L)`` whose columns are one-hot (or zero)."""
    if not isinstance(X, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, 4, L), got {type(X).__name__}")
    if X.ndim != 3 or X.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4, L), got {tuple(X.shape)}")
    if X.shape[0] == 0 or X.shape[2] == 0:
        raise ValueError(f"{name} is empty: shape {tuple(X.shape)}")
    if not X.is_floating_point():
        raise TypeError(f"{name} must be a floating tensor (one-hot), got dtype {X.dtype}")
    col = X.sum(dim=1)
    binary = ((X == 0) | (X == 1)).all()
    ok = (col == 1) | (col == 0) if allow_zero_columns else (col == 1)
    if not binary or not ok.all():
        bad = torch.nonzero(~(ok & ((X == 0) | (X == 1)).all(dim=1)))[0].tolist()
        raise ValueError(
            f"{name} is not one-hot: sequence {bad[0]}, position {bad[1]} has values {X[bad[0], :, bad[1]].tolist()}"
        )
    return X


def from_codes(codes: ArrayLike, *, dtype: torch.dtype | None = torch.float32) -> torch.Tensor:
    """One-hot ``(N, 4, L)`` from integer base codes ``(N, L)`` (0-3 in ACGT order; -1 or 4 = N)."""
    codes = np.asarray(codes.cpu() if isinstance(codes, torch.Tensor) else codes)
    if codes.ndim == 1:
        codes = codes[None]
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be an integer array (N, L), got {codes.dtype} of shape {codes.shape}")
    bad = (codes < -1) | (codes > 4)
    if bad.any():
        n, p = np.argwhere(bad)[0]
        raise ValueError(f"codes must lie in 0..3 (ACGT) or be -1/4 (N); sequence {n}, position {p} has {codes[n, p]}")
    out = np.zeros((codes.shape[0], 4, codes.shape[1]), dtype=np.float32)
    n, pos = np.nonzero((codes >= 0) & (codes < 4))
    out[n, codes[n, pos], pos] = 1.0
    return torch.from_numpy(out).to(dtype)


def base_indices(letters: Iterable[str]) -> np.ndarray:
    """Base letters (``"A"``, ``"c"``, ...) to their ACGT indices 0-3, an ``int64`` array of the same
    length (an empty input gives an empty integer array, so it can still index a tensor).

    Raises ``ValueError`` naming the first letter that is not one of ACGT.
    """
    letters = [str(b) for b in letters]
    out = np.array([_LUT[ord(b)] if len(b) == 1 and ord(b) < 256 else -1 for b in letters], dtype=np.int64)
    bad = np.flatnonzero(out < 0)
    if bad.size:
        raise ValueError(f"base {letters[bad[0]]!r} at index {bad[0]} is not one of {ALPHABET}")
    return out


def substitute(X: Sequences, positions: Positions, bases: ArrayLike, *, inplace: bool = False) -> Sequences:
    """Row ``i`` of ``X`` with base ``bases[i]`` at position ``positions[i]`` (one substitution per row).

    ``X``: one-hot ``(B, 4, L)``, a torch tensor or a NumPy array; ``positions`` and
    ``bases`` (0-3, ACGT): ``(B,)``. Returns a new array unless ``inplace=True``.
    """
    out = X if inplace else (X.clone() if isinstance(X, torch.Tensor) else np.array(X, copy=True))
    # integer indices even for no rows: an empty float array cannot index
    # writable copies (astype copies): a read-only view, as pandas hands out, makes torch warn when it wraps one
    positions = np.asarray(positions).astype(np.int64).reshape(-1)
    bases = np.asarray(bases).astype(np.int64).reshape(-1)
    if positions.size != out.shape[0] or bases.size != out.shape[0]:
        raise ValueError(f"substitute: {out.shape[0]} sequences but {positions.size} positions and {bases.size} bases")
    if isinstance(out, torch.Tensor):
        positions, bases = torch.as_tensor(positions, device=out.device), torch.as_tensor(bases, device=out.device)
        rows = torch.arange(out.shape[0], device=out.device)
    else:
        rows = np.arange(out.shape[0])
    out[rows, :, positions] = 0
    out[rows, bases, positions] = 1
    return out


def decode(X: torch.Tensor) -> list[str]:
    """Inverse of :func:`one_hot`: ``(N, 4, L)`` to strings; all-zero columns become ``N``."""
    X = check_one_hot(X)
    idx = X.argmax(dim=1).cpu().numpy()
    zero = (X.sum(dim=1) == 0).cpu().numpy()
    letters = np.array(list(ALPHABET + "N"))
    idx = np.where(zero, 4, idx)
    return ["".join(letters[row]) for row in idx]


def reverse_complement(X: torch.Tensor) -> torch.Tensor:
    """Reverse complement of a one-hot batch: in ACGT order, flip both the base and length axes."""
    check_one_hot(X)
    return X.flip(dims=(1, 2))


def random_sequences(n: int, length: int, *, gc: float = 0.5, seed: int | None = None) -> torch.Tensor:
    """``n`` i.i.d. random sequences with GC content ``gc``, one-hot ``(n, 4, length)``."""
    if n < 1 or length < 1:
        raise ValueError(f"n and length must be >= 1, got n={n}, length={length}")
    if not 0 <= gc <= 1:
        raise ValueError(f"gc must lie in [0, 1], got {gc}")
    rng = np.random.default_rng(seed)
    p = np.array([(1 - gc) / 2, gc / 2, gc / 2, (1 - gc) / 2])
    return from_codes(rng.choice(4, size=(n, length), p=p))


def _dinuc_shuffle_one(codes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Altschul-Erickson dinucleotide shuffle (a random Eulerian walk on the transition graph)."""
    n = codes.size
    if n < 3:
        return codes.copy()
    succ = [list(codes[1:][codes[:-1] == b]) for b in range(4)]
    last = int(codes[-1])
    others = [v for v in range(4) if v != last and succ[v]]
    # each vertex's final exit edge must form a tree towards the last base, or the walk strands
    while True:
        exit_edge = {v: int(succ[v][rng.integers(len(succ[v]))]) for v in others}
        ok = True
        for v in others:
            u, steps = v, 0
            while u != last and steps < 5:
                u, steps = exit_edge[u], steps + 1
            ok &= u == last
        if ok:
            break
    order = []
    for v in range(4):
        edges = list(succ[v])
        if v in exit_edge:
            edges.remove(exit_edge[v])
            rng.shuffle(edges)
            edges.append(exit_edge[v])
        else:
            rng.shuffle(edges)
        order.append(edges)
    out = np.empty(n, dtype=codes.dtype)
    out[0] = codes[0]
    ptr = [0, 0, 0, 0]
    for i in range(1, n):
        prev = out[i - 1]
        out[i] = order[prev][ptr[prev]]
        ptr[prev] += 1
    return out


def dinucleotide_shuffle(X: torch.Tensor, *, n_shuffles: int = 1, seed: int | None = None) -> torch.Tensor:
    """Shuffles that keep each sequence's exact dinucleotide counts (and first/last base).

    Input ``(N, 4, L)`` fully one-hot; output ``(N * n_shuffles, 4, L)``, the shuffles
    of sequence ``i`` at rows ``i * n_shuffles ... (i + 1) * n_shuffles - 1``.
    """
    check_one_hot(X, allow_zero_columns=False)
    if not is_integer(n_shuffles) or n_shuffles < 1:
        raise ValueError(f"n_shuffles must be an integer >= 1, got {n_shuffles!r}")
    rng = np.random.default_rng(seed)
    codes = X.argmax(dim=1).cpu().numpy()
    out = np.zeros((codes.shape[0] * n_shuffles, 4, codes.shape[1]), dtype=np.float32)
    for i, row in enumerate(codes):
        for s in range(n_shuffles):
            sh = _dinuc_shuffle_one(row, rng)
            out[i * n_shuffles + s, sh, np.arange(sh.size)] = 1.0
    return torch.from_numpy(out).to(X.dtype)


def read_fasta(path: str | Path) -> dict[str, str]:
    """Read a FASTA file into ``{name: sequence}`` (name = header up to the first space)."""
    records: dict[str, list[str]] = {}
    name = None
    with open(path, encoding="ascii", errors="strict") as fh:
        try:
            lines = fh.readlines()
        except UnicodeDecodeError as err:
            raise ValueError(f"{path} is not a text FASTA file (byte {err.start} is not ASCII)") from None
        for line_no, line in enumerate(lines, 1):
            line = line.strip()
            if not line:
                continue
            if line.startswith(">"):
                name = line[1:].split()[0] if len(line) > 1 else f"record{len(records) + 1}"
                if name in records:
                    raise ValueError(f"{path}: duplicate record name {name!r} at line {line_no}")
                records[name] = []
            elif name is None:
                raise ValueError(f"{path}: sequence data before the first '>' header (line {line_no})")
            else:
                records[name].append(line)
    if not records:
        raise ValueError(f"{path}: no FASTA records")
    return {k: "".join(v) for k, v in records.items()}


def as_one_hot(X: torch.Tensor | str | Iterable[str], *, non_acgt: str = "error") -> torch.Tensor:
    """Accept a one-hot tensor, one string or a list of strings; return a checked ``(N, 4, L)`` tensor."""
    if isinstance(X, torch.Tensor):
        return check_one_hot(X)
    if isinstance(X, np.ndarray):
        raise TypeError(
            "X must be a torch.Tensor (N, 4, L) or sequence strings, got a numpy array; use torch.from_numpy"
        )
    return one_hot(list(X) if not isinstance(X, str) else X, non_acgt=non_acgt)
