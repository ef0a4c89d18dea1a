"""Real JASPAR motifs (shipped as a small JSON file) and PWM occupancy.

The matrices in ``deepmr_utils/data/jaspar_motifs.json`` were copied from JASPAR
with pyjaspar by ``tools/make_motifs.py``; no download happens at run time.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources

import numpy as np
import torch

from ._types import Sequences

__all__ = ["available", "jaspar", "sample_instance", "plant", "window_llr", "occupancy", "occupancy_ism"]


@lru_cache(maxsize=1)
def _table() -> dict:
    with resources.files("deepmr_utils.data").joinpath("jaspar_motifs.json").open() as fh:
        return json.load(fh)


def available() -> dict[str, str]:
    """Motif names shipped with the package and their JASPAR matrix IDs."""
    return {k: v["matrix_id"] for k, v in _table()["motifs"].items()}


def jaspar(name: str, *, pseudocount: float = 1e-3, strand: str = "+") -> np.ndarray:
    """Position probability matrix ``(width, 4)`` (ACGT) of a shipped JASPAR motif.

    ``pseudocount`` is added to the column *frequencies* before renormalising, so no
    base has probability zero (log-odds stay finite). ``strand="-"`` returns the reverse
    complement (the occupancy functions scan the forward strand only, so a motif that JASPAR
    stores on the other strand, e.g. GATA2's ``CTTATCT`` for ``AGATAAG``, is read this way).
    """
    if strand not in ("+", "-"):
        raise ValueError(f"strand must be '+' or '-', got {strand!r}")
    motifs = _table()["motifs"]
    if name not in motifs:
        raise ValueError(f"unknown motif {name!r}; shipped motifs: {sorted(motifs)}")
    if pseudocount < 0:
        raise ValueError(f"pseudocount must be >= 0, got {pseudocount}")
    counts = np.asarray(motifs[name]["counts"], dtype=np.float64)
    freq = counts / counts.sum(axis=1, keepdims=True)
    freq = freq + pseudocount
    pwm = freq / freq.sum(axis=1, keepdims=True)
    # ACGT reversed is TGCA: reversing both axes complements each base and flips the order
    return pwm if strand == "+" else np.ascontiguousarray(pwm[::-1, ::-1])


def sample_instance(pwm: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Draw one motif instance: each position's base from its PWM column. Returns base codes (width,)."""
    u = rng.random(pwm.shape[0])[:, None]
    return (u > np.cumsum(pwm, axis=1)).sum(axis=1).clip(0, 3)


def plant(row: np.ndarray, pwms: Sequence[np.ndarray], order: Sequence[int], rng: np.random.Generator) -> list[int]:
    """Write a sampled instance of ``pwms[j]`` for each ``j`` in ``order`` into the base codes ``row``
    ``(L,)``, at random non-overlapping positions that keep that order along the sequence.
    Returns the start of each planted motif (in ``order``)."""
    widths = [pwms[j].shape[0] for j in order]
    cuts = np.sort(rng.integers(0, len(row) - sum(widths) + 1, len(order)))
    starts, offset = [], 0
    for cut, w in zip(cuts, widths):
        starts.append(int(cut + offset))
        offset += w
    for j, start in zip(order, starts):
        row[start : start + pwms[j].shape[0]] = sample_instance(pwms[j], rng)
    return starts


def window_llr(X: torch.Tensor | np.ndarray, pwm: np.ndarray, background: Sequence[float]) -> np.ndarray:
    """Log-likelihood ratio (motif vs background) of every forward-strand window.

    ``X``: one-hot ``(N, 4, L)``; returns ``(N, L - width + 1)``. An all-zero column
    contributes 0 (no evidence either way).
    """
    Xn = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
    b = np.asarray(background, dtype=np.float64)
    lr = np.log(pwm) - np.log(b)[None, :]  # (w, 4)
    w = pwm.shape[0]
    # (N, L, 4) x (w, 4) sliding dot product via stride tricks, no Python loop over windows
    seq = Xn.transpose(0, 2, 1).astype(np.float64)
    win = np.lib.stride_tricks.sliding_window_view(seq, (w, 4), axis=(1, 2))[:, :, 0]  # (N, L-w+1, w, 4)
    return np.einsum("nlwk,wk->nl", win, lr)


def occupancy(X: Sequences, pwm: np.ndarray, background: Sequence[float], *, mu: float = 0.0) -> np.ndarray:
    """Probability that at least one window is bound: ``1 - prod_j (1 - s_j)``.

    ``s_j = 1 / (1 + exp(E_j - mu))`` with ``E_j = -LLR_j`` (Zhao & Stormo binding
    energy in units of kT). Returns ``(N,)``.
    """
    return occupancy_from_llr(window_llr(X, pwm, background), mu=mu)


def site_probabilities(X: Sequences, pwm: np.ndarray, background: Sequence[float], *, mu: float = 0.0) -> np.ndarray:
    """Probability ``s_j = 1 / (1 + exp(E_j - mu))`` that window ``j`` is bound, ``(N, L - w + 1)``."""
    return 1.0 / (1.0 + np.exp(-window_llr(X, pwm, background) - mu))


def occupancy_from_llr(llr: np.ndarray, *, mu: float = 0.0) -> np.ndarray:
    """:func:`occupancy` from precomputed window log-likelihood ratios ``(N, n_windows)``."""
    log_unbound = -np.logaddexp(0.0, llr + mu)  # log(1 - s_j), computed stably
    return -np.expm1(log_unbound.sum(axis=1))


def occupancy_ism(X: Sequences, pwm: np.ndarray, background: Sequence[float], *, mu: float = 0.0) -> np.ndarray:
    """:func:`occupancy` of every single-base substitution of every sequence, ``(N, L, 4)``.

    Entry ``[n, p, b]`` is the occupancy of sequence ``n`` with base ``b`` at position ``p``
    (the reference base's entry is the reference's occupancy). Exact, and without building
    the ``3 L`` mutants: a substitution at ``p`` changes only the ``width`` windows that
    cover ``p``, so each mutant's ``sum_j log(1 - s_j)`` is the reference's plus those
    windows' changes. ``X``: one-hot ``(N, 4, L)`` with one base per column.
    """
    Xn = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
    n, _, L = Xn.shape
    w = pwm.shape[0]
    lr = np.log(pwm) - np.log(np.asarray(background, dtype=np.float64))[None, :]  # (w, 4)
    llr = window_llr(Xn, pwm, background)  # (N, W)
    W = llr.shape[1]
    log_unbound = -np.logaddexp(0.0, llr + mu)  # (N, W)
    total = log_unbound.sum(axis=1)
    ref = Xn.argmax(axis=1)  # (N, L)
    out = np.empty((n, L, 4))
    for p in range(L):
        # windows j covering p: max(0, p - w + 1) <= j <= min(p, W - 1), with p at offset k = p - j
        js = np.arange(max(0, p - w + 1), min(p, W - 1) + 1)
        k = p - js
        delta = lr[k][None, :, :] - lr[k[None, :], ref[:, p, None]][:, :, None]  # (N, J, 4)
        new = -np.logaddexp(0.0, llr[:, js, None] + delta + mu)
        out[:, p, :] = -np.expm1(total[:, None] + (new - log_unbound[:, js, None]).sum(axis=1))
    return out
