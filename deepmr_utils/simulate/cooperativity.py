"""Two TFs, one's binding causes the other's: the simulation chapter's world (DeepMR §A).

A noise-free oracle, Poisson counts with optional sequence-dependent and
sequence-independent confounding, and the true local effects of given instruments.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntEnum

import numpy as np
import pandas as pd
import torch

from .. import motifs as _motifs
from .._types import ArrayLike, Sequences
from ..sequence import base_indices, from_codes, substitute
from ._common import anscombe, slope_through_origin

__all__ = ["CooperativityModel", "SequenceType", "WITH_EXPOSURE"]


class SequenceType(IntEnum):
    """What a sampled sequence carries (the ``config`` code of :meth:`CooperativityModel.sample`)."""

    NONE = 0
    EXPOSURE_ONLY = 1
    OUTCOME_ONLY = 2
    PAIR = 3  # an exposure motif followed by an outcome motif


# the sequences DeepMR mutates: those with an exposure motif
WITH_EXPOSURE = (SequenceType.EXPOSURE_ONLY, SequenceType.PAIR)


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
    Switches for the challenges chapter: ``hill`` raises the exposure occupancy in
    the outcome term to a power (``beta q_exp^hill q_out``: strong cooperativity, so the
    effect of a perturbation depends on its size; see :meth:`local_derivative`);
    ``confounder_strand="-"`` reads the confounder motif on the reverse strand (a paralog
    such as GATA2 then binds the exposure's own GATA sites, so every exposure instrument
    is pleiotropic in proportion to its strength); the confounder TF's own ChIP signal,
    ``c_conf = 1 + alpha_confounder q_conf``, is a third label (``y_confounder``) and a
    third oracle effect (``dz``), for multivariable MR.
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
    hill: float = 1.0
    confounder_strand: str = "+"
    alpha_confounder: float = 100.0

    def __post_init__(self):
        if not self.hill >= 1:
            raise ValueError(f"hill must be >= 1 (a finite derivative at zero occupancy), got {self.hill}")
        if self.confounder_strand not in ("+", "-"):
            raise ValueError(f"confounder_strand must be '+' or '-', got {self.confounder_strand!r}")
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
        return {
            (False, False): "none",
            (True, False): "sequence-independent",
            (False, True): "sequence-dependent",
            (True, True): "both",
        }[(self.sequence_independent, self.sequence_dependent)]

    def with_scenario(self, scenario: str) -> CooperativityModel:
        table = {
            "none": (False, False),
            "sequence-independent": (True, False),
            "sequence-dependent": (False, True),
            "both": (True, True),
        }
        if scenario not in table:
            raise ValueError(f"scenario must be one of {list(table)}, got {scenario!r}")
        si, sd = table[scenario]
        return replace(self, sequence_independent=si, sequence_dependent=sd)

    def pwm(self, role: str) -> np.ndarray:
        name = {"exposure": self.exposure_motif, "outcome": self.outcome_motif, "confounder": self.confounder_motif}[
            role
        ]
        strand = self.confounder_strand if role == "confounder" else "+"
        return _motifs.jaspar(name, pseudocount=self.pseudocount, strand=strand)

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, seed: int | None = None) -> dict:
        """Draw ``n`` sequences with their labels.

        Returns a dict: ``X`` one-hot ``(n, 4, L)``, ``b_conf`` ``(n,)``, ``config``
        (the :class:`SequenceType` codes: 0 none, 1 exposure only, 2 outcome only, 3 both), ``sites`` (start of each
        embedded motif or -1: columns exposure, outcome, confounder), and noisy
        ``counts`` ``(n, 2)`` and their Anscombe transform ``y`` ``(n, 2)``, and the confounder
        TF's own ChIP signal ``y_confounder`` ``(n,)`` (Anscombe of Poisson counts; drawn after
        everything else, so the other arrays do not depend on it).
        """
        rng = np.random.default_rng(seed)
        L = self.length
        codes = rng.choice(4, size=(n, L), p=np.asarray(self.background))
        pwms = [self.pwm(r) for r in ("exposure", "outcome", "confounder")]
        config = np.where(rng.random(n) < self.p_embed, rng.integers(1, 4, n), 0)
        sites = np.full((n, 3), -1)
        conf = self.sequence_dependent & (rng.random(n) < self.p_confounder_motif)
        for i in range(n):
            todo = []
            if config[i] in WITH_EXPOSURE:
                todo.append(0)
            if config[i] in (SequenceType.OUTCOME_ONLY, SequenceType.PAIR):
                todo.append(1)
            if conf[i]:
                todo.append(2)
            # in the order listed: the exposure motif before the outcome motif
            sites[i, todo] = _motifs.plant(codes[i], pwms, todo, rng)
        X = from_codes(codes)
        b_conf = (rng.random(n) < self.p_confounder).astype(np.float64) if self.sequence_independent else np.zeros(n)
        lam = self.expected_counts(X, b_conf)
        counts = rng.poisson(lam).astype(np.float64)
        y_conf = anscombe(rng.poisson(self.confounder_counts(X)).astype(np.float64))
        return {
            "X": X,
            "b_conf": b_conf,
            "config": config,
            "sites": sites,
            "counts": counts,
            "y": anscombe(counts),
            "y_confounder": y_conf,
        }

    # ------------------------------------------------------------------ oracle
    def occupancies(self, X: Sequences) -> np.ndarray:
        """PWM occupancy of the exposure, outcome and confounder TFs, ``(n, 3)``."""
        return np.stack(
            [
                _motifs.occupancy(X, self.pwm(r), self.background, mu=self.mu)
                for r in ("exposure", "outcome", "confounder")
            ],
            axis=1,
        )

    def expected_counts(
        self, X: Sequences, b_conf: ArrayLike | None = None, *, q: np.ndarray | None = None
    ) -> np.ndarray:
        """Noise-free expected counts ``(n, 2)`` (exposure, outcome)."""
        q = self.occupancies(X) if q is None else q
        n = q.shape[0]
        b = np.zeros(n) if b_conf is None or not self.sequence_independent else np.asarray(b_conf, float)
        qc = q[:, 2] if self.sequence_dependent else np.zeros(n)
        c_exp = 1 + self.alpha * q[:, 0] + self.eta * qc + self.tau1 * b
        c_out = 1 + self.beta * q[:, 0] ** self.hill * q[:, 1] + self.nu * qc + self.tau2 * b
        return np.stack([c_exp, c_out], axis=1)

    def confounder_counts(self, X: Sequences | None = None, *, q: np.ndarray | None = None) -> np.ndarray:
        """Noise-free ChIP counts of the confounder TF, ``1 + alpha_confounder q_conf``, ``(n,)``."""
        q = self.occupancies(X) if q is None else q
        return 1 + self.alpha_confounder * q[:, 2]

    def local_derivative(self, X: Sequences, b_conf: ArrayLike | None = None) -> np.ndarray:
        """The true local causal effect as a derivative, ``(n,)``: the change of the Anscombe
        outcome per unit change of the Anscombe exposure when the exposure TF's occupancy moves
        by an infinitesimal amount at each sequence's reference. ISM moves it by a whole
        substitution, so its Wald ratios are finite differences of this; they agree when the
        outcome is locally linear in the exposure (``hill = 1`` and small changes)."""
        q = self.occupancies(X)
        n = q.shape[0]
        c = self.expected_counts(None, np.zeros(n) if b_conf is None else b_conf, q=q)
        # d anscombe(c)/dc = 1 / sqrt(c + 3/8)
        d_out = self.beta * self.hill * q[:, 0] ** (self.hill - 1) * q[:, 1] / np.sqrt(c[:, 1] + 0.375)
        d_exp = self.alpha / np.sqrt(c[:, 0] + 0.375)
        return d_out / d_exp

    def oracle(self, X: Sequences, b_conf: ArrayLike | None = None) -> np.ndarray:
        """Noise-free Anscombe-scale predictions ``(n, 2)``: what a perfect model would learn."""
        return anscombe(self.expected_counts(X, b_conf))

    def binding_tracks(self, x: Sequences) -> pd.DataFrame:
        """Per-window binding probability of each TF along one sequence ``(4, L)``: a frame with
        ``role, name, position`` (window centre) and ``p_bound`` (the book draws it with
        ``deepmr_utils.book.panels.binding_tracks``)."""
        x = x[None] if x.ndim == 2 else x
        frames = []
        for role in ("exposure", "outcome", "confounder"):
            pwm = self.pwm(role)
            p = _motifs.site_probabilities(x, pwm, self.background, mu=self.mu)[0]
            name = {"exposure": self.exposure_motif, "outcome": self.outcome_motif}.get(role, self.confounder_motif)
            frames.append(
                pd.DataFrame(
                    {"role": role, "name": name, "position": np.arange(p.size) + pwm.shape[0] / 2, "p_bound": p}
                )
            )
        return pd.concat(frames, ignore_index=True)

    def sequence_oracle(self, X: Sequences) -> np.ndarray:
        """The oracle a model can at best learn from sequence alone, ``(n, 2)``: averaged over the
        sequence-independent confounder ``b_conf ~ Bernoulli(p_confounder)``, which no sequence
        reveals (the plain :meth:`oracle` when that confounder is off)."""
        n = X.shape[0]
        if not self.sequence_independent:
            return self.oracle(X)
        q = self.occupancies(X)
        p = self.p_confounder
        on = anscombe(self.expected_counts(None, np.ones(n), q=q))
        off = anscombe(self.expected_counts(None, np.zeros(n), q=q))
        return p * on + (1 - p) * off

    def _levels(self, q: np.ndarray, b_conf) -> np.ndarray:
        """Anscombe-scale predictions ``(n, 2)`` from occupancies ``q`` ``(n, 3)``; ``b_conf`` an array of
        confounder levels, or ``"average"`` for the mean over ``b_conf ~ Bernoulli(p_confounder)``."""
        n = q.shape[0]
        if isinstance(b_conf, str):
            if b_conf != "average":
                raise ValueError(f"b_conf must be an array of confounder levels or 'average', got {b_conf!r}")
            if not self.sequence_independent:
                return anscombe(self.expected_counts(None, np.zeros(n), q=q))
            p = self.p_confounder
            on, off = (anscombe(self.expected_counts(None, np.full(n, v), q=q)) for v in (1.0, 0.0))
            return p * on + (1 - p) * off
        return anscombe(self.expected_counts(None, b_conf, q=q))

    def variant_truth(self, X: Sequences, table: pd.DataFrame, b_conf: ArrayLike | str | None = None) -> pd.DataFrame:
        """Oracle effects of each variant of a variant table on exposure and outcome.

        ``table`` has ``locus`` (row index into ``X``), ``position`` and ``alt``.
        ``b_conf``: each sequence's confounder level (``None``: 0), or ``"average"`` for the
        oracle averaged over the sequence-independent confounder (:meth:`sequence_oracle`:
        what a model of sequence alone can learn).
        Returns a frame with ``dx`` (oracle change of the exposure), ``dy`` (total
        change of the outcome), ``dy_causal`` (the change of the outcome that
        flows through the exposure alone: the variant's exposure occupancy with the
        reference's outcome and confounder occupancies, confounder levels included),
        ``dx_causal`` (the change of the exposure through the exposure TF's own binding:
        zero for a variant that moves the exposure signal only through the confounder)
        and ``dz`` (the change of the confounder TF's own ChIP signal).
        """
        Xn = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
        loc = table["locus"].to_numpy().astype(int)
        pos = table["position"].to_numpy().astype(int)
        alt = base_indices(table["alt"])
        if isinstance(b_conf, str):
            b = b_conf
        else:
            b = (np.zeros(Xn.shape[0]) if b_conf is None else np.asarray(b_conf, float))[loc]
        q_ref = self.occupancies(Xn)
        mut = substitute(Xn[loc], pos, alt)
        q_mut = self.occupancies(mut)
        ref_pred = self._levels(q_ref[loc], b)
        mut_pred = self._levels(q_mut, b)
        q_causal = q_ref[loc].copy()
        q_causal[:, 0] = q_mut[:, 0]
        causal = self._levels(q_causal, b)
        dz = anscombe(self.confounder_counts(q=q_mut)) - anscombe(self.confounder_counts(q=q_ref[loc]))
        return pd.DataFrame(
            {
                "dx": mut_pred[:, 0] - ref_pred[:, 0],
                "dy": mut_pred[:, 1] - ref_pred[:, 1],
                "dy_causal": causal[:, 1] - ref_pred[:, 1],
                "dx_causal": causal[:, 0] - ref_pred[:, 0],
                "dz": dz,
            },
            index=table.index,
        )

    def sequence_local_effects(self, X: Sequences, b_conf: ArrayLike | str = "average") -> np.ndarray:
        """The true local effect of each sequence over *all* its ``3 L`` single-base substitutions, ``(N,)``.

        ``sum_v dx_v dy_causal_v / sum_v dx_v^2`` from the oracle's exact saturation mutagenesis
        (:func:`deepmr_utils.motifs.occupancy_ism`): a property of the sequence alone, whatever a
        model selects, so it defines a population estimand. Substitutions that barely move the
        exposure carry weight ``dx^2`` ~ 0, so it is close to the slope over the strong
        instruments. ``b_conf`` as in :meth:`variant_truth` (default: averaged over the
        sequence-independent confounder). NaN where no substitution moves the exposure.
        """
        Xn = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else np.asarray(X)
        n, _, L = Xn.shape
        q_ref = self.occupancies(Xn)  # (N, 3)
        q_exp = _motifs.occupancy_ism(Xn, self.pwm("exposure"), self.background, mu=self.mu).reshape(n, 4 * L)
        b = b_conf if isinstance(b_conf, str) else np.asarray(b_conf, float)
        ref = self._levels(q_ref, b)
        # the causal path: only the exposure TF's occupancy moves (the outcome and confounder TFs keep the
        # reference's), so dy_causal needs no outcome-motif ISM; the exposure change of a substitution that
        # moves only the confounder motif is not through the exposure TF and is left out of dx as well
        q_causal = np.repeat(q_ref, 4 * L, axis=0)
        q_causal[:, 0] = q_exp.ravel()
        bb = b if isinstance(b, str) else np.repeat(b, 4 * L)
        causal = self._levels(q_causal, bb).reshape(n, 4 * L, 2) - ref[:, None, :]
        dx, dy = causal[..., 0], causal[..., 1]
        xx = (dx * dx).sum(axis=1)
        return np.where(xx > 1e-12, (dx * dy).sum(axis=1) / np.where(xx > 1e-12, xx, 1.0), np.nan)

    def population_effect(self, n: int = 2000, *, seed: int) -> pd.DataFrame:
        """The population the global effect is about: ``n`` fresh sequences of this world, those that
        carry an exposure motif (configurations 1 and 3, a rule on the sequence alone) with their
        :meth:`sequence_local_effects` (confounder averaged). Returns ``config`` and ``theta``; the
        population mean ``mu`` is ``theta.mean()`` (its Monte Carlo SE ``theta.std() / sqrt(len)``)."""
        d = self.sample(n, seed=seed)
        keep = np.isin(d["config"], WITH_EXPOSURE)
        X = d["X"][keep]
        return pd.DataFrame({"config": d["config"][keep], "theta": self.sequence_local_effects(X)})

    def true_local_effects(self, X: Sequences, table: pd.DataFrame, b_conf: ArrayLike | None = None) -> pd.DataFrame:
        """True local causal effect per locus on exactly the given instruments.

        The slope through the origin of the causal outcome change on the exposure
        change, ``sum(dx * dy_causal) / sum(dx^2)`` over the locus's instruments: the
        quantity an IV regression on valid instruments targets. Loci whose instruments
        do not move the exposure get NaN.
        """
        t = self.variant_truth(X, table, b_conf)
        return slope_through_origin(table["locus"].to_numpy(), t.dx.to_numpy(), t.dy_causal.to_numpy())

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
                substitute(X[row : row + 1], [p], [alt], inplace=True)
        b_conf = (rng.random(k) < self.p_confounder).astype(np.float64) if self.sequence_independent else np.zeros(k)
        counts = rng.poisson(self.expected_counts(X, b_conf)).astype(np.float64)
        return {
            "X": X,
            "b_conf": b_conf,
            "config": data["config"][idx],
            "sites": data["sites"][idx],
            "counts": counts,
            "y": anscombe(counts),
        }
