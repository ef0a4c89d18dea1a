"""ChIP-nexus-like two-strand profiles for Oct4, Sox2, Nanog and Klf4 with a known causal matrix.

The BPNet chapter's world: spacing-dependent recruitment, counts and profile oracles,
true local effects and motif spacing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .. import motifs as _motifs
from .._types import ArrayLike, Sequences
from ..sequence import base_indices, from_codes, substitute
from ._common import slope_through_origin

__all__ = ["OSKN", "OSKN_MOTIFS", "OSKN_EFFECTS", "ChipNexusModel"]


OSKN = ("Oct4", "Sox2", "Nanog", "Klf4")
# Motifs that recruit each TF directly. Oct4 binds the Oct4-Sox2 composite; Sox2 binds its own
# motif, and also (weakly) the composite's Sox half wherever the Sox2 matrix scores it.
OSKN_MOTIFS = {"Oct4": ("Pou5f1::Sox2",), "Sox2": ("Sox2",), "Nanog": ("Nanog",), "Klf4": ("Klf4",)}
# the motif planted for each TF, in OSKN order (the columns of ``sites``)
_PLANTED = ("Pou5f1::Sox2", "Sox2", "Nanog", "Klf4")
# B[s, t]: how strongly binding of TF s raises binding of TF t (rows: exposure, columns: outcome).
# Sox2 strongly helps the others, Oct4 helps Nanog, Klf4 weakly helps Oct4 and Nanog; the other
# six pairs are zero, so the reverse directions are all null. Acyclic in the order
# Sox2 -> Klf4 -> Oct4 -> Nanog, so the cascade below is well defined.
OSKN_EFFECTS = np.array(
    [
        # Oct4  Sox2  Nanog  Klf4
        [0.0, 0.0, 1.0, 0.0],  # Oct4
        [2.0, 0.0, 2.0, 1.5],  # Sox2
        [0.0, 0.0, 0.0, 0.0],  # Nanog
        [0.6, 0.0, 0.4, 0.0],  # Klf4
    ]
)
_CASCADE_ORDER = (1, 3, 0, 2)  # Sox2, Klf4, Oct4, Nanog


@dataclass(frozen=True)
class ChipNexusModel:
    """Base-resolution, two-strand ChIP-nexus-like counts for the four OSKN TFs.

    Each sequence carries each of four motifs (Oct4-Sox2 composite, Sox2, Nanog,
    Klf4, from JASPAR) independently with probability ``motif_prob``, at random
    non-overlapping positions. Instances are drawn from the PWM raised to the power
    ``site_strength`` (renormalised): near-consensus sites, like those under real
    ChIP-nexus peaks, rather than the weak matches that random DNA also contains.
    Independence matters: if motifs co-occurred, a model could predict one TF from
    another TF's motif without any causal link. TF ``t`` binds directly with occupancy
    ``q_t`` (its own motifs; :mod:`deepmr_utils.motifs`) and is recruited by the TFs
    upstream of it: ``b_t = q_t (1 + sum_s B[s, t] k_st b_s)`` in the order Sox2, Klf4, Oct4,
    Nanog, with ``k_st = exp(-d_st / spacing)`` for the distance ``d_st`` between the
    two TFs' best sites (spacing-dependent cooperativity). Expected total counts are
    ``1 + depth_t b_t``: one background read spread evenly over both strands, and
    ``depth_t b_t`` bound reads in footprints (strand + left, strand - right of the
    best site). ``B`` = :data:`OSKN_EFFECTS` by default.
    Models learn ``log(1 + counts)`` per strand; :meth:`oracle` gives its noise-free value.
    The binding threshold ``mu`` defaults to ``-(log(length) + 1)``, so that background
    occupancy stays low whatever the number of windows.
    """

    @property
    def threshold(self) -> float:
        return -(np.log(self.length) + 1.0) if self.mu is None else self.mu

    length: int = 1000
    background: tuple = (0.29, 0.21, 0.21, 0.29)
    effects: tuple = tuple(map(tuple, OSKN_EFFECTS))
    depth: tuple = (150.0, 150.0, 150.0, 150.0)
    spacing: float = 100.0
    mu: float | None = None
    pseudocount: float = 1e-3
    motif_prob: float = 0.5
    footprint_offset: int = 6
    footprint_sd: float = 3.0
    site_strength: float = 2.0

    def __post_init__(self):
        if self.site_strength <= 0:
            raise ValueError(f"site_strength must be > 0, got {self.site_strength}")
        if not 0.0 <= self.motif_prob <= 1.0:
            raise ValueError(f"motif_prob must lie in [0, 1], got {self.motif_prob}")
        widths = sum(self.pwm(m).shape[0] for m in _PLANTED)
        if self.length < widths:
            raise ValueError(f"length {self.length} cannot hold the four motifs ({widths} bases)")

    @property
    def tasks(self) -> tuple[str, ...]:
        return OSKN

    def pwm(self, name: str) -> np.ndarray:
        return _motifs.jaspar(name, pseudocount=self.pseudocount)

    def _sites(self, X):
        """Direct occupancy ``(n, T)`` and best-site centre ``(n, T)`` of each TF."""
        names = sorted({m for ms in OSKN_MOTIFS.values() for m in ms})
        occ, centre, score = {}, {}, {}
        for name in names:
            pwm = self.pwm(name)
            llr = _motifs.window_llr(X, pwm, self.background)
            occ[name] = _motifs.occupancy_from_llr(llr, mu=self.threshold)
            centre[name] = llr.argmax(axis=1) + pwm.shape[0] / 2
            score[name] = llr.max(axis=1)
        n = next(iter(occ.values())).shape[0]
        q = np.zeros((n, 4))
        pos = np.zeros((n, 4))
        for t, tf in enumerate(OSKN):
            ms = OSKN_MOTIFS[tf]
            q[:, t] = 1 - np.prod([1 - occ[m] for m in ms], axis=0)
            best = np.argmax(np.stack([score[m] for m in ms]), axis=0)
            pos[:, t] = np.stack([centre[m] for m in ms])[best, np.arange(n)]
        return q, pos

    def binding(self, X: Sequences, *, q: np.ndarray | None = None, pos: ArrayLike = None) -> np.ndarray:
        """Total binding ``b`` ``(n, T)`` after recruitment along the causal cascade."""
        if q is None or pos is None:
            q, pos = self._sites(X)
        B = np.asarray(self.effects)
        b = np.zeros_like(q)
        for t in _CASCADE_ORDER:
            recruit = sum(
                B[s, t] * np.exp(-np.abs(pos[:, s] - pos[:, t]) / self.spacing) * b[:, s] for s in range(4) if B[s, t]
            )
            b[:, t] = q[:, t] * (1 + recruit)
        return b

    def log_counts(self, b: ArrayLike) -> np.ndarray:
        """``log(1 + expected counts per strand)`` for binding ``b`` ``(n, T)``: BPNet's counts scale."""
        return np.log1p(0.5 * (1 + np.asarray(self.depth) * b))

    def oracle(self, X: Sequences) -> np.ndarray:
        """Noise-free ``log(1 + expected counts per strand)`` ``(n, T)``, the scale of :func:`bpnet.counts`."""
        return self.log_counts(self.binding(X))

    def sample(self, n: int, seed: int | None = None) -> dict:
        """Sequences and ChIP-nexus-like reads.

        Returns ``X`` ``(n, 4, L)``, observed ``profiles`` ``(n, T, 2, L)``, ``total`` counts
        ``(n, T)``, ``y`` = strand mean of ``log(1 + strand counts)`` ``(n, T)`` (what the
        BPNet counts head predicts), the motif start ``sites`` ``(n, 4)`` (-1 = absent;
        columns in the order of ``motifs``, which is also the TF order) and ``motifs``.
        """
        rng = np.random.default_rng(seed)
        L = self.length
        codes = rng.choice(4, size=(n, L), p=np.asarray(self.background))
        names = _PLANTED
        pwms = [self.pwm(m) ** self.site_strength for m in names]
        pwms = [p / p.sum(axis=1, keepdims=True) for p in pwms]
        sites = np.full((n, 4), -1)
        for i in range(n):
            chosen = rng.permutation(np.flatnonzero(rng.random(4) < self.motif_prob))
            sites[i, chosen] = _motifs.plant(codes[i], pwms, chosen, rng)
        X = from_codes(codes)
        q, pos = self._sites(X)
        b = self.binding(X, q=q, pos=pos)
        lam = 1 + np.asarray(self.depth) * b
        total = rng.poisson(lam)
        shape = self.profile_shape(pos, b)
        profiles = np.zeros((n, 4, 2, L), dtype=np.float32)
        for i in range(n):
            for t in range(4):
                profiles[i, t] = rng.multinomial(total[i, t], shape[i, t].ravel()).reshape(2, L)
        return {
            "X": X,
            "profiles": torch.from_numpy(profiles),
            "total": total.astype(np.float64),
            "y": np.log1p(profiles.sum(axis=3, dtype=np.float64)).mean(axis=2),
            "sites": sites,
            "motifs": names,
        }

    def expected_profiles(self, X: Sequences) -> np.ndarray:
        """Expected read distribution ``(n, T, 2, L)`` of sequences ``X`` (the profile oracle)."""
        q, pos = self._sites(X)
        return self.profile_shape(pos, self.binding(X, q=q, pos=pos))

    def motif_distance(self, sites: ArrayLike | None, a: int, b: int) -> np.ndarray:
        """Gap in bases between the planted instances of motifs ``a`` and ``b`` (``sites`` from
        :meth:`sample`; 0 when they touch, NaN when either is absent), as in the original
        study's motif-spacing analysis."""
        sites = np.asarray(sites)
        w = [self.pwm(m).shape[0] for m in _PLANTED]
        sa, sb = sites[:, a].astype(float), sites[:, b].astype(float)
        gap = np.maximum(sb - (sa + w[a]), sa - (sb + w[b])).clip(min=0)
        return np.where((sa >= 0) & (sb >= 0), gap, np.nan)

    def profile_shape(self, pos: ArrayLike, b: ArrayLike) -> np.ndarray:
        """Expected read distribution ``(n, T, 2, L)`` (sums to 1 per task) for binding ``b`` ``(n, T)``.

        A fraction ``depth b / (1 + depth b)`` of the reads falls in the footprint at the
        best site (+ strand ``footprint_offset`` left of it, - strand right), the rest
        evenly over both strands and all positions.
        """
        L = self.length
        x = np.arange(L)
        plus = np.exp(-0.5 * ((x[None, None, :] - (pos[..., None] - self.footprint_offset)) / self.footprint_sd) ** 2)
        minus = np.exp(-0.5 * ((x[None, None, :] - (pos[..., None] + self.footprint_offset)) / self.footprint_sd) ** 2)
        peak = np.stack([plus, minus], axis=2)
        peak /= peak.sum(axis=(2, 3), keepdims=True)
        bound = np.asarray(self.depth) * b
        w = (bound / (1 + bound))[..., None, None]
        return w * peak + (1 - w) / (2 * L)

    def true_local_effects(self, X: Sequences, table: pd.DataFrame, exposure: int, outcome: int) -> pd.DataFrame:
        """True local effect of TF ``exposure`` on TF ``outcome`` per locus, on the given instruments.

        Instrument ``v`` changes the exposure's direct occupancy (and best site); the causal
        change of the outcome is the cascade recomputed with only the exposure's direct
        binding taken from the mutant. Slope through the origin, as in the simulation chapter.
        """
        Xn = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
        loc = table["locus"].to_numpy().astype(int)
        p = table["position"].to_numpy().astype(int)
        alt = base_indices(table["alt"])
        q_ref, pos_ref = self._sites(Xn)
        mut = substitute(Xn[loc], p, alt)
        q_mut, pos_mut = self._sites(mut)
        ref = self.log_counts(self.binding(None, q=q_ref[loc], pos=pos_ref[loc]))
        q_c, pos_c = q_ref[loc].copy(), pos_ref[loc].copy()
        q_c[:, exposure], pos_c[:, exposure] = q_mut[:, exposure], pos_mut[:, exposure]
        causal = self.log_counts(self.binding(None, q=q_c, pos=pos_c))
        return slope_through_origin(loc, causal[:, exposure] - ref[:, exposure], causal[:, outcome] - ref[:, outcome])
