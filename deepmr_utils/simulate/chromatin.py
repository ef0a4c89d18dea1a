"""TF binding and chromatin accessibility with a known causal matrix: the DeepSEA chapter's world.

Four TFs with real JASPAR motifs bind DNA; accessibility ("DNase") in three cell types
follows from their binding with known per-cell-type coefficients:

* CTCF (MA0139.2) opens chromatin in every cell type;
* CEBPB (MA0466.4), an activator, opens it where it is expressed: not in GM12878, moderately in
  K562, most in HepG2 (so the three cell types differ);
* REST (MA0138.3), a repressor, closes it everywhere;
* ZNF143 (MA0088.3) binds but does nothing to accessibility.

On the logit scale (what a DeepSEA-like classifier outputs before its sigmoid)

    binding_t   = a + s * A_t + g_b * A_pioneer
    DNase_c     = d + sum_t EFFECTS[t, c] * binding_t + g_a * A_pioneer

with ``A`` a motif's affinity: the log partition function ``log sum_j exp(LLR_j + mu)``
over the sequence's windows, divided by the consensus site's log-likelihood ratio so
that a consensus site scores about 1 and background about 0. In a two-state binding
model ``logit P(bound) = log Z``, so a base change shifts the binding logit by its
change of site energy, without the saturation of an occupancy near 1 (which would give
most single mutations of a strong site no effect at all). ``a`` and ``s`` are set so that no TF is
mostly saturated: among sequences carrying a TF's motif, the share with P(bound) > 0.95 is at most about
a third (CEBPB's; :meth:`ChromatinModel.saturation` measures it), since binary labels at P near 1
teach a model almost nothing about the logit differences that ISM reads. So the causal effect of TF
``t``'s binding logit on cell type ``c``'s accessibility logit is exactly ``EFFECTS[t, c]`` at every sequence
and every instrument. ``confounded=True`` embeds a pioneer factor's motif (FOXA1,
MA0148.5) that raises every TF's binding *and* accessibility directly: a
sequence-dependent confounder whose motif variants are pleiotropic instruments; its strength is
``g_binding`` / ``g_access`` (per unit of the pioneer's affinity, against ``s`` for a TF's own motif),
set by default so that it matters: exact IVW on the oracle's effects moves REST's HepG2 estimate
from -0.6 to about -0.2.
Labels are Bernoulli draws of the logits' probabilities, as ChIP-seq and DNase peaks
are binary in DeepSEA's training data.

``feedback=kappa`` adds **reverse causation** to what is measured: every TF's ChIP signal logit is its
binding logit plus ``kappa`` times the accessibility logit of ``chip_cell`` (ChIP reads crosslinked
DNA, and open chromatin gives more of it). Binding still drives accessibility exactly as above, so
the causal matrix is unchanged, but a mutation that opens chromatin (a CTCF site's, say) now also
raises the measured "binding" of every TF, repressors included. The TF outputs are these ChIP
signals; :meth:`ChromatinModel.variant_truth` keeps the true binding change apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from scipy.special import logsumexp

from .. import motifs as _motifs
from .._types import Sequences
from ..sequence import base_indices, from_codes, substitute
from ._common import slope_through_origin

__all__ = ["ChromatinModel", "TFS", "CELL_TYPES", "EFFECTS"]

TFS = ("CTCF", "CEBPB", "REST", "ZNF143")
CELL_TYPES = ("GM12878", "K562", "HepG2")
# causal effect of each TF's binding logit (rows) on each cell type's DNase logit (columns)
EFFECTS = pd.DataFrame(
    [[0.6, 0.6, 0.6], [0.0, 0.6, 1.0], [-0.6, -0.6, -0.6], [0.0, 0.0, 0.0]],
    index=pd.Index(TFS, name="tf"),
    columns=pd.Index(CELL_TYPES, name="cell_type"),
)
PIONEER = "FOXA1"


@dataclass(frozen=True)
class ChromatinModel:
    """The generative model; outputs are ``TFS`` binding then one DNase track per ``CELL_TYPES``.

    ``length``: sequence length; each TF's motif is embedded (sampled from its JASPAR
    matrix, non-overlapping) with probability ``p_embed``, the pioneer's with
    ``p_pioneer`` when ``confounded``. ``mu``: the site energy offset (as in
    :func:`deepmr_utils.motifs.occupancy`); ``a``, ``s``: binding logit = ``a + s * affinity``;
    ``g_binding`` / ``g_access``: the pioneer's effect on binding and on accessibility.
    ``feedback``: kappa, the weight of ``chip_cell``'s accessibility logit in every TF's measured
    ChIP signal (0: the signal is the binding itself).
    """

    length: int = 200
    background: tuple = (0.27, 0.23, 0.23, 0.27)
    p_embed: float = 0.4
    confounded: bool = False
    p_pioneer: float = 0.5
    mu: float = -3.0
    a: float = -3.0
    s: float = 8.0
    d: float = 0.0
    g_binding: float = 4.5
    g_access: float = 3.0
    pseudocount: float = 1e-3
    feedback: float = 0.0
    chip_cell: str = "HepG2"

    def __post_init__(self):
        for name in ("p_embed", "p_pioneer"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        if not np.isfinite(self.feedback):
            raise ValueError(f"feedback must be finite, got {self.feedback}")
        if self.chip_cell not in CELL_TYPES:
            raise ValueError(f"chip_cell must be one of {CELL_TYPES}, got {self.chip_cell!r}")
        width = sum(self.pwm(m).shape[0] for m in TFS + (PIONEER,))
        if width + 2 > self.length:
            raise ValueError(f"length {self.length} is too short for all five motifs ({width} bp)")

    @property
    def output_names(self) -> list[str]:
        return list(TFS) + [f"DNase {c}" for c in CELL_TYPES]

    @staticmethod
    def effects() -> pd.DataFrame:
        """The true causal matrix ``EFFECTS`` (TF x cell type), a copy."""
        return EFFECTS.copy()

    def saturation(self, data: dict, *, p: float = 0.95) -> pd.DataFrame:
        """Per TF, among ``data``'s sequences (from :meth:`sample`) that carry its motif: their number and
        the shares whose true ChIP signal probability is above ``p`` and below ``1 - p``."""
        if not 0.5 < p < 1:
            raise ValueError(f"p must lie in (0.5, 1), got {p}")
        cut = np.log(p / (1 - p))
        rows = {}
        for t, tf in enumerate(TFS):
            z = data["logits"][data["sites"][:, t] >= 0, t]
            rows[tf] = {
                "sequences with its motif": len(z),
                f"share with P(bound) > {p:g}": float((z > cut).mean()),
                f"share with P(bound) < {1 - p:.2g}": float((z < -cut).mean()),
            }
        return pd.DataFrame(rows).T.rename_axis("TF").reset_index()

    def pwm(self, name: str) -> np.ndarray:
        return _motifs.jaspar(name, pseudocount=self.pseudocount)

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, seed: int | None = None) -> dict:
        """``n`` sequences with labels: ``X`` ``(n, 4, L)``, ``y`` binary ``(n, 7)``, ``logits``
        (the oracle's, ``(n, 7)``), ``sites`` ``(n, 5)`` (start of each TF's motif, then the
        pioneer's, or -1)."""
        rng = np.random.default_rng(seed)
        L = self.length
        codes = rng.choice(4, size=(n, L), p=np.asarray(self.background))
        names = TFS + (PIONEER,)
        pwms = [self.pwm(m) for m in names]
        p = np.array([self.p_embed] * len(TFS) + [self.p_pioneer if self.confounded else 0.0])
        embed = rng.random((n, len(names))) < p
        sites = np.full((n, len(names)), -1)
        for i in range(n):
            todo = rng.permutation(np.flatnonzero(embed[i]))
            sites[i, todo] = _motifs.plant(codes[i], pwms, todo, rng)
        X = from_codes(codes)
        logits = self.oracle(X)
        y = (rng.random(logits.shape) < 1 / (1 + np.exp(-logits))).astype(np.float32)
        return {"X": X, "y": y, "logits": logits, "sites": sites}

    # ------------------------------------------------------------------ oracle
    def affinity(self, X: Sequences, name: str) -> np.ndarray:
        """``log sum_j exp(LLR_j + mu)`` over the windows of each sequence, per consensus LLR, ``(n,)``."""
        pwm = self.pwm(name)
        llr = _motifs.window_llr(X, pwm, self.background)
        consensus = float(np.log(pwm.max(axis=1) / np.asarray(self.background)[pwm.argmax(axis=1)]).sum())
        return logsumexp(llr + self.mu, axis=1) / consensus

    def affinities(self, X: Sequences) -> np.ndarray:
        """Affinities ``(n, 5)``: the four TFs, then the pioneer (0 when not confounded)."""
        q = [self.affinity(X, m) for m in TFS]
        pioneer = self.affinity(X, PIONEER) if self.confounded else np.zeros_like(q[0])
        return np.stack(q + [pioneer], axis=1)

    def oracle(self, X: Sequences, *, q: np.ndarray | None = None) -> np.ndarray:
        """True logits ``(n, 7)``: each TF's ChIP signal (its binding, plus ``feedback`` times
        ``chip_cell``'s accessibility), then DNase per cell type."""
        return self.outputs_from(*self.binding_and_access(X, q=q))

    def outputs_from(self, binding: np.ndarray, access: np.ndarray) -> np.ndarray:
        """The outputs ``(n, 7)`` given true binding ``(n, 4)`` and accessibility ``(n, 3)`` logits."""
        chip = binding + self.feedback * access[:, [CELL_TYPES.index(self.chip_cell)]]
        return np.concatenate([chip, access], axis=1)

    def binding_and_access(self, X: Sequences, *, q: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The true binding logits ``(n, 4)`` and accessibility logits ``(n, 3)``."""
        q = self.affinities(X) if q is None else q
        binding = self.a + self.s * q[:, : len(TFS)] + self.g_binding * q[:, [-1]]
        access = self.d + binding @ EFFECTS.to_numpy() + self.g_access * q[:, [-1]]
        return binding, access

    def variant_truth(self, X: Sequences, table: pd.DataFrame, exposure: int, outcome: int) -> pd.DataFrame:
        """Oracle changes per variant of ``table`` (``locus, position, alt``): ``dx`` (exposure
        output's logit: a TF's ChIP signal), ``dy`` (outcome logit, total), ``dx_binding`` (the
        exposure TF's true binding change; ``dx`` itself for a DNase exposure) and ``dy_causal``
        (the part of ``dy`` that flows through the exposure: its coefficient times ``dx_binding``;
        zero unless ``outcome`` is a DNase track and ``exposure`` a TF). Without ``feedback``,
        ``dx_binding == dx``."""
        Xn = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
        loc = table["locus"].to_numpy().astype(int)
        alt = base_indices(table["alt"])
        mutants = substitute(Xn[loc], table["position"].to_numpy().astype(int), alt)
        # each reference once (a locus has many variants), then one row per variant
        loci, row = np.unique(loc, return_inverse=True)
        (b0, a0), (b1, a1) = self.binding_and_access(Xn[loci]), self.binding_and_access(mutants)
        b0, a0 = b0[row], a0[row]
        ref, mut = self.outputs_from(b0, a0), self.outputs_from(b1, a1)
        dx = mut[:, exposure] - ref[:, exposure]
        T = len(TFS)
        dx_binding = b1[:, exposure] - b0[:, exposure] if exposure < T else dx
        coef = EFFECTS.to_numpy()[exposure, outcome - T] if exposure < T <= outcome else 0.0
        dy = mut[:, outcome] - ref[:, outcome]
        columns = {"dx": dx, "dy": dy, "dx_binding": dx_binding, "dy_causal": coef * dx_binding}
        return pd.DataFrame(columns, index=table.index)

    def true_local_effects(self, X: Sequences, table: pd.DataFrame, exposure: int, outcome: int) -> pd.DataFrame:
        """True local effect per locus on exactly the given instruments (``locus, theta``): the slope
        through the origin of the causal outcome change on the exposure TF's binding change (the
        coefficient itself, at every locus; with ``feedback`` the ChIP signal is not the binding)."""
        t = self.variant_truth(X, table, exposure, outcome)
        return slope_through_origin(table["locus"].to_numpy(), t.dx_binding.to_numpy(), t.dy_causal.to_numpy())
