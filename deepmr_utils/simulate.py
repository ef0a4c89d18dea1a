"""Simulators with a known truth.

:func:`summary_statistics` draws MR summary statistics for many loci directly
(no sequence model), to show how local MR estimates and the random-effects
meta-analysis behave before any deep learning is involved.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["summary_statistics"]


def summary_statistics(n_loci: int = 200, variants_per_locus: int = 30, *, effect: float = 0.5,
                       tau: float = 0.1, pleiotropy_sd: float = 0.0, pleiotropy_mean: float = 0.0,
                       bx_sd: float = 1.0, se_x: float = 0.1, se_y: float = 0.1,
                       seed: int | None = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-variant summary statistics for ``n_loci`` loci with known local effects.

    Each locus ``i`` has a local causal effect ``theta_i ~ N(effect, tau^2)``.
    Variant ``j`` of locus ``i`` has true exposure effect ``gx ~ N(0, bx_sd^2)`` and
    outcome effect ``theta_i * gx + sign(gx) * alpha_j``, where the pleiotropic term
    ``alpha_j ~ N(pleiotropy_mean, pleiotropy_sd^2)`` breaks the exclusion
    restriction when non-zero. It is signed with the exposure-raising allele, as
    MR conventions orient instruments, so a non-zero mean is *directional*
    pleiotropy (for ISM: a mutation that destroys a motif lowers both marks). Observed ``bx, by`` add Gaussian noise with standard
    errors ``se_x, se_y``.

    Returns ``(variants, truth)``: the variant table (``locus, bx, bxse, by, byse``)
    and one row per locus with its true ``theta``.
    """
    if n_loci < 1 or variants_per_locus < 1:
        raise ValueError("n_loci and variants_per_locus must be >= 1")
    if min(se_x, se_y) <= 0 or tau < 0 or pleiotropy_sd < 0:
        raise ValueError("standard errors must be > 0, tau and pleiotropy_sd >= 0")
    rng = np.random.default_rng(seed)
    k = variants_per_locus
    theta = rng.normal(effect, tau, n_loci)
    gx = rng.normal(0.0, bx_sd, (n_loci, k))
    alpha = rng.normal(pleiotropy_mean, pleiotropy_sd, (n_loci, k)) if pleiotropy_sd or pleiotropy_mean else 0.0
    gy = theta[:, None] * gx + np.sign(gx) * alpha
    variants = pd.DataFrame({
        "locus": np.repeat(np.arange(n_loci), k),
        "bx": (gx + rng.normal(0, se_x, gx.shape)).ravel(),
        "bxse": np.full(n_loci * k, se_x),
        "by": (gy + rng.normal(0, se_y, gy.shape)).ravel(),
        "byse": np.full(n_loci * k, se_y),
    })
    return variants, pd.DataFrame({"locus": np.arange(n_loci), "theta": theta})


# =============================================================================
# TF cooperativity: two TFs, one's binding causes the other's (DeepMR §A)
# =============================================================================

from dataclasses import dataclass, replace  # noqa: E402

import torch  # noqa: E402

from . import motifs as _motifs  # noqa: E402


def anscombe(c):
    """Variance-stabilising transform of Poisson counts, ``2 sqrt(c + 3/8)``."""
    return 2.0 * np.sqrt(np.asarray(c, dtype=np.float64) + 0.375)


@dataclass(frozen=True)
class CooperativityModel:
    """Generative model of the DeepMR simulation, with a noise-free oracle.

    Sequences of ``length`` bases are drawn from a zero-order ``background``.
    With probability ``p_embed`` one of three configurations is embedded, each
    equally likely: an exposure motif alone, an outcome motif alone, or an
    exposure motif followed by an outcome motif. Motif instances are *sampled*
    from the JASPAR matrices. PWM occupancies ``q`` give expected counts

        c_exp = 1 + alpha q_exp                + eta q_conf + tau1 b_conf
        c_out = 1 + beta  q_exp q_out          + nu  q_conf + tau2 b_conf

    so the exposure TF's binding *causes* the outcome TF's (directional
    cooperativity), with ``beta / alpha`` the effect ratio. ``sequence_dependent``
    embeds a confounder motif (SOX2) with probability ``p_confounder_motif``;
    ``sequence_independent`` adds ``b_conf ~ Bernoulli(p_confounder)``. Observed
    counts are Poisson; models learn their Anscombe transform.
    Defaults are the original study's (``deepmr_method.md`` §A) except the motifs,
    which are real JASPAR matrices (GATA1 MA0035.2, TAL1::TCF3 MA0091.1, SOX2
    MA0143.1), and the binding threshold ``mu = -3`` (a site is half occupied at a
    likelihood ratio of e^3 ~ 20): with ``mu = 0`` the low-information flanks of the
    JASPAR GATA1 matrix would leave most background sequences bound.
    """

    length: int = 100
    background: tuple = (0.27, 0.23, 0.23, 0.27)
    exposure_motif: str = "GATA1"
    outcome_motif: str = "TAL1::TCF3"
    confounder_motif: str = "SOX2"
    pseudocount: float = 1e-3
    mu: float = -3.0
    p_embed: float = 0.75
    alpha: float = 100.0
    beta: float = 100.0
    sequence_independent: bool = False
    sequence_dependent: bool = False
    p_confounder: float = 0.5
    p_confounder_motif: float = 0.5
    eta: float = 20.0
    nu: float = 30.0
    tau1: float = 25.0
    tau2: float = 25.0

    def __post_init__(self):
        if not np.isclose(sum(self.background), 1.0) or min(self.background) <= 0:
            raise ValueError(f"background must be 4 positive probabilities summing to 1, got {self.background}")
        for name in ("p_embed", "p_confounder", "p_confounder_motif"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        widths = [self.pwm(r).shape[0] for r in ("exposure", "outcome", "confounder")]
        if sum(widths) + 2 > self.length:
            raise ValueError(f"length {self.length} is too short for motifs of widths {widths}")

    @property
    def scenario(self) -> str:
        return {(False, False): "none", (True, False): "sequence-independent",
                (False, True): "sequence-dependent", (True, True): "both"}[
            (self.sequence_independent, self.sequence_dependent)]

    def with_scenario(self, scenario: str) -> "CooperativityModel":
        table = {"none": (False, False), "sequence-independent": (True, False),
                 "sequence-dependent": (False, True), "both": (True, True)}
        if scenario not in table:
            raise ValueError(f"scenario must be one of {list(table)}, got {scenario!r}")
        si, sd = table[scenario]
        return replace(self, sequence_independent=si, sequence_dependent=sd)

    def pwm(self, role: str) -> np.ndarray:
        name = {"exposure": self.exposure_motif, "outcome": self.outcome_motif,
                "confounder": self.confounder_motif}[role]
        return _motifs.jaspar(name, pseudocount=self.pseudocount)

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, seed: int | None = None) -> dict:
        """Draw ``n`` sequences with their labels.

        Returns a dict: ``X`` one-hot ``(n, 4, L)``, ``b_conf`` ``(n,)``, ``config``
        (0 none, 1 exposure only, 2 outcome only, 3 both), ``sites`` (start of each
        embedded motif or -1: columns exposure, outcome, confounder), and noisy
        ``counts`` ``(n, 2)`` and their Anscombe transform ``y`` ``(n, 2)``.
        """
        rng = np.random.default_rng(seed)
        L = self.length
        codes = rng.choice(4, size=(n, L), p=np.asarray(self.background))
        pwms = [self.pwm(r) for r in ("exposure", "outcome", "confounder")]
        w_e, w_o, w_c = (p.shape[0] for p in pwms)
        config = np.where(rng.random(n) < self.p_embed, rng.integers(1, 4, n), 0)
        sites = np.full((n, 3), -1)
        conf = self.sequence_dependent & (rng.random(n) < self.p_confounder_motif)
        for i in range(n):
            todo = []
            if config[i] in (1, 3):
                todo.append(0)
            if config[i] in (2, 3):
                todo.append(1)
            if conf[i]:
                todo.append(2)
            widths = [(w_e, w_o, w_c)[j] for j in todo]
            # non-overlapping placement in the order listed (exposure before outcome)
            free = L - sum(widths)
            cuts = np.sort(rng.integers(0, free + 1, len(todo)))
            pos = 0
            starts = {}
            for j, cut, w in zip(todo, cuts, widths):
                starts[j] = cut + pos
                pos += w
            for j, s in starts.items():
                codes[i, s:s + pwms[j].shape[0]] = _motifs.sample_instance(pwms[j], rng)
                sites[i, j] = s
        X = np.zeros((n, 4, L), dtype=np.float32)
        np.put_along_axis(X, codes[:, None, :], 1.0, axis=1)
        X = torch.from_numpy(X)
        b_conf = (rng.random(n) < self.p_confounder).astype(np.float64) if self.sequence_independent else np.zeros(n)
        lam = self.expected_counts(X, b_conf)
        counts = rng.poisson(lam).astype(np.float64)
        return {"X": X, "b_conf": b_conf, "config": config, "sites": sites, "counts": counts,
                "y": anscombe(counts)}

    # ------------------------------------------------------------------ oracle
    def occupancies(self, X) -> np.ndarray:
        """PWM occupancy of the exposure, outcome and confounder TFs, ``(n, 3)``."""
        return np.stack([_motifs.occupancy(X, self.pwm(r), self.background, mu=self.mu)
                         for r in ("exposure", "outcome", "confounder")], axis=1)

    def expected_counts(self, X, b_conf=None, *, q=None) -> np.ndarray:
        """Noise-free expected counts ``(n, 2)`` (exposure, outcome)."""
        q = self.occupancies(X) if q is None else q
        n = q.shape[0]
        b = np.zeros(n) if b_conf is None or not self.sequence_independent else np.asarray(b_conf, float)
        qc = q[:, 2] if self.sequence_dependent else np.zeros(n)
        c_exp = 1 + self.alpha * q[:, 0] + self.eta * qc + self.tau1 * b
        c_out = 1 + self.beta * q[:, 0] * q[:, 1] + self.nu * qc + self.tau2 * b
        return np.stack([c_exp, c_out], axis=1)

    def oracle(self, X, b_conf=None) -> np.ndarray:
        """Noise-free Anscombe-scale predictions ``(n, 2)``: what a perfect model would learn."""
        return anscombe(self.expected_counts(X, b_conf))

    def variant_truth(self, X, table, b_conf=None):
        """Oracle effects of each variant of a variant table on exposure and outcome.

        ``table`` has ``locus`` (row index into ``X``), ``position`` and ``alt``.
        Returns a frame with ``dx`` (oracle change of the exposure), ``dy`` (total
        change of the outcome) and ``dy_causal`` (the change of the outcome that
        flows through the exposure alone: the variant's exposure occupancy with the
        reference's outcome and confounder occupancies, confounder levels included).
        """
        Xn = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
        loc = table["locus"].to_numpy().astype(int)
        pos = table["position"].to_numpy().astype(int)
        alt = table["alt"].map({"A": 0, "C": 1, "G": 2, "T": 3}).to_numpy()
        b = np.zeros(Xn.shape[0]) if b_conf is None else np.asarray(b_conf, float)
        q_ref = self.occupancies(Xn)
        mut = Xn[loc].copy()
        r = np.arange(len(loc))
        mut[r, :, pos] = 0
        mut[r, alt, pos] = 1
        q_mut = self.occupancies(mut)
        ref_pred = anscombe(self.expected_counts(None, b[loc], q=q_ref[loc]))
        mut_pred = anscombe(self.expected_counts(None, b[loc], q=q_mut))
        q_causal = q_ref[loc].copy()
        q_causal[:, 0] = q_mut[:, 0]
        causal = anscombe(self.expected_counts(None, b[loc], q=q_causal))
        return pd.DataFrame({"dx": mut_pred[:, 0] - ref_pred[:, 0], "dy": mut_pred[:, 1] - ref_pred[:, 1],
                             "dy_causal": causal[:, 1] - ref_pred[:, 1]}, index=table.index)

    def true_local_effects(self, X, table, b_conf=None) -> pd.DataFrame:
        """True local causal effect per locus on exactly the given instruments.

        The slope through the origin of the causal outcome change on the exposure
        change, ``sum(dx * dy_causal) / sum(dx^2)`` over the locus's instruments: the
        quantity an IV regression on valid instruments targets. Loci whose instruments
        do not move the exposure get NaN.
        """
        t = self.variant_truth(X, table, b_conf)
        return _slope_through_origin(table["locus"].to_numpy(), t.dx.to_numpy(), t.dy_causal.to_numpy())

    def augment_variants(self, data: dict, fraction: float = 0.25, seed: int | None = None) -> dict:
        """Variant augmentation: copies of a random ``fraction`` of sequences, each with
        one random substitution inside each embedded motif (or anywhere if none),
        re-simulated with fresh noise (and fresh ``b_conf``)."""
        rng = np.random.default_rng(seed)
        n = data["X"].shape[0]
        k = int(round(fraction * n))
        idx = rng.integers(0, n, k)
        X = data["X"][idx].clone()
        L = self.length
        widths = [self.pwm(r).shape[0] for r in ("exposure", "outcome", "confounder")]
        for row, i in enumerate(idx):
            starts = [(s, w) for s, w in zip(data["sites"][i], widths) if s >= 0]
            targets = [s + rng.integers(0, w) for s, w in starts] or [rng.integers(0, L)]
            for p in targets:
                ref = int(X[row, :, p].argmax())
                alt = (ref + rng.integers(1, 4)) % 4
                X[row, :, p] = 0
                X[row, alt, p] = 1
        b_conf = (rng.random(k) < self.p_confounder).astype(np.float64) if self.sequence_independent else np.zeros(k)
        counts = rng.poisson(self.expected_counts(X, b_conf)).astype(np.float64)
        return {"X": X, "b_conf": b_conf, "config": data["config"][idx], "sites": data["sites"][idx],
                "counts": counts, "y": anscombe(counts)}


def _slope_through_origin(locus, dx, dy) -> pd.DataFrame:
    """Per-locus ``sum(dx * dy) / sum(dx^2)``: the true local effect over a locus's instruments
    (NaN where the instruments do not move the exposure)."""
    g = pd.DataFrame({"locus": locus, "xy": dx * dy, "xx": dx * dx}).groupby("locus", sort=False).sum()
    theta = np.where(g.xx > 1e-12, g.xy / g.xx.where(g.xx > 1e-12, 1.0), np.nan)
    return pd.DataFrame({"locus": g.index, "theta": theta}).reset_index(drop=True)


def draw_effect_ratio(rng: np.random.Generator, *, p_large: float = 0.5, large: float = 10.0,
                      small: float = 1.0, sd: float = 0.5) -> float:
    """The study's per-round effect ratio beta/alpha: a two-component normal mixture, clipped at 0."""
    mean = large if rng.random() < p_large else small
    return float(max(0.0, rng.normal(mean, sd)))


# =============================================================================
# ChIP-nexus-like data for four pluripotency TFs with a known causal matrix
# =============================================================================

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
OSKN_EFFECTS = np.array([
    # Oct4  Sox2  Nanog  Klf4
    [0.0,  0.0,  1.0,  0.0],   # Oct4
    [2.0,  0.0,  2.0,  1.5],   # Sox2
    [0.0,  0.0,  0.0,  0.0],   # Nanog
    [0.6,  0.0,  0.4,  0.0],   # Klf4
])
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
    def tasks(self):
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
            log_unbound = -np.logaddexp(0.0, llr + self.threshold)
            occ[name] = -np.expm1(log_unbound.sum(axis=1))
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

    def binding(self, X, *, q=None, pos=None) -> np.ndarray:
        """Total binding ``b`` ``(n, T)`` after recruitment along the causal cascade."""
        if q is None or pos is None:
            q, pos = self._sites(X)
        B = np.asarray(self.effects)
        b = np.zeros_like(q)
        for t in _CASCADE_ORDER:
            recruit = sum(B[s, t] * np.exp(-np.abs(pos[:, s] - pos[:, t]) / self.spacing) * b[:, s]
                          for s in range(4) if B[s, t])
            b[:, t] = q[:, t] * (1 + recruit)
        return b

    def log_counts(self, b) -> np.ndarray:
        """``log(1 + expected counts per strand)`` for binding ``b`` ``(n, T)``: BPNet's counts scale."""
        return np.log1p(0.5 * (1 + np.asarray(self.depth) * b))

    def oracle(self, X) -> np.ndarray:
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
            k = chosen.size
            widths = [pwms[j].shape[0] for j in chosen]
            free = L - sum(widths)
            cuts = np.sort(rng.integers(0, free + 1, k))
            offset = 0
            for j, cut, w in zip(chosen, cuts, widths):
                s = cut + offset
                codes[i, s:s + w] = _motifs.sample_instance(pwms[j], rng)
                sites[i, j] = s
                offset += w
        X = np.zeros((n, 4, L), dtype=np.float32)
        np.put_along_axis(X, codes[:, None, :], 1.0, axis=1)
        X = torch.from_numpy(X)
        q, pos = self._sites(X)
        b = self.binding(X, q=q, pos=pos)
        lam = 1 + np.asarray(self.depth) * b
        total = rng.poisson(lam)
        shape = self.profile_shape(pos, b)
        profiles = np.zeros((n, 4, 2, L), dtype=np.float32)
        for i in range(n):
            for t in range(4):
                profiles[i, t] = rng.multinomial(total[i, t], shape[i, t].ravel()).reshape(2, L)
        return {"X": X, "profiles": torch.from_numpy(profiles), "total": total.astype(np.float64),
                "y": np.log1p(profiles.sum(axis=3, dtype=np.float64)).mean(axis=2), "sites": sites, "motifs": names}

    def expected_profiles(self, X) -> np.ndarray:
        """Expected read distribution ``(n, T, 2, L)`` of sequences ``X`` (the profile oracle)."""
        q, pos = self._sites(X)
        return self.profile_shape(pos, self.binding(X, q=q, pos=pos))

    def motif_distance(self, sites, a: int, b: int) -> np.ndarray:
        """Gap in bases between the planted instances of motifs ``a`` and ``b`` (``sites`` from
        :meth:`sample`; 0 when they touch, NaN when either is absent), as in the original
        study's motif-spacing analysis."""
        sites = np.asarray(sites)
        w = [self.pwm(m).shape[0] for m in _PLANTED]
        sa, sb = sites[:, a].astype(float), sites[:, b].astype(float)
        gap = np.maximum(sb - (sa + w[a]), sa - (sb + w[b])).clip(min=0)
        return np.where((sa >= 0) & (sb >= 0), gap, np.nan)

    def profile_shape(self, pos, b) -> np.ndarray:
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

    def true_local_effects(self, X, table, exposure: int, outcome: int) -> pd.DataFrame:
        """True local effect of TF ``exposure`` on TF ``outcome`` per locus, on the given instruments.

        Instrument ``v`` changes the exposure's direct occupancy (and best site); the causal
        change of the outcome is the cascade recomputed with only the exposure's direct
        binding taken from the mutant. Slope through the origin, as in the simulation chapter.
        """
        Xn = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
        loc = table["locus"].to_numpy().astype(int)
        p = table["position"].to_numpy().astype(int)
        alt = table["alt"].map({"A": 0, "C": 1, "G": 2, "T": 3}).to_numpy()
        q_ref, pos_ref = self._sites(Xn)
        mut = Xn[loc].copy()
        r = np.arange(len(loc))
        mut[r, :, p] = 0
        mut[r, alt, p] = 1
        q_mut, pos_mut = self._sites(mut)
        ref = self.log_counts(self.binding(None, q=q_ref[loc], pos=pos_ref[loc]))
        q_c, pos_c = q_ref[loc].copy(), pos_ref[loc].copy()
        q_c[:, exposure], pos_c[:, exposure] = q_mut[:, exposure], pos_mut[:, exposure]
        causal = self.log_counts(self.binding(None, q=q_c, pos=pos_c))
        return _slope_through_origin(loc, causal[:, exposure] - ref[:, exposure], causal[:, outcome] - ref[:, outcome])
