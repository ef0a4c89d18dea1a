"""The chromatin world (simulate.chromatin) and what every world shares."""

import numpy as np
import pandas as pd
import pytest

from deepmr_utils import simulate


def test_chromatin_world_truth_is_the_causal_matrix():
    """Accessibility logits are linear in binding logits, so every locus's true effect is EFFECTS[t, c]."""
    from deepmr_utils.instruments import variant_table
    from deepmr_utils.simulate.chromatin import CELL_TYPES, EFFECTS, TFS, ChromatinModel

    world = ChromatinModel(length=120)
    data = world.sample(300, seed=0)
    assert data["X"].shape == (300, 4, 120) and data["y"].shape == (300, 7)
    assert set(np.unique(data["y"])) == {0.0, 1.0}
    # planted motifs are bound: each TF's binding logit is higher with its motif than without
    for t in range(4):
        has = data["sites"][:, t] >= 0
        assert data["logits"][has, t].mean() > data["logits"][~has, t].mean() + 3
    assert (data["sites"][:, 4] == -1).all()  # no pioneer without confounding
    # DNase = d + binding @ EFFECTS: recover the matrix by least squares from the oracle
    coef, *_ = np.linalg.lstsq(np.c_[np.ones(300), data["logits"][:, :4]], data["logits"][:, 4:], rcond=None)
    assert np.allclose(coef[1:], EFFECTS.to_numpy(), atol=1e-8)
    # true local effects on instruments in CTCF's motif: EFFECTS[CTCF, c] exactly
    has = np.flatnonzero(data["sites"][:, 0] >= 0)[:5]
    X = data["X"][has]
    eff = np.zeros((5, 120, 4, 7))
    table = variant_table(eff + 1.0, np.ones_like(eff), X, exposure=0, outcome=4)
    for c, cell in enumerate(CELL_TYPES):
        truth = world.true_local_effects(X, table, 0, 4 + c).dropna()
        assert len(truth) == 5 and np.allclose(truth.theta, EFFECTS.loc["CTCF", cell])
    assert world.output_names == list(TFS) + [f"DNase {c}" for c in CELL_TYPES]
    # the pioneer (a sequence-dependent confounder) raises binding and accessibility directly
    conf = ChromatinModel(length=120, confounded=True).sample(400, seed=1)
    with_p = conf["sites"][:, 4] >= 0
    assert with_p.any() and conf["logits"][with_p, 4:].mean() > conf["logits"][~with_p, 4:].mean()
    with pytest.raises(ValueError, match="too short"):
        ChromatinModel(length=50)


def test_chromatin_feedback_makes_chip_read_accessibility_and_keeps_the_truth():
    """With feedback kappa every TF's output is binding + kappa * HepG2's accessibility (binding and
    accessibility unchanged); the true local effect still is the causal coefficient."""
    from deepmr_utils.instruments import variant_table
    from deepmr_utils.simulate.chromatin import CELL_TYPES, EFFECTS, ChromatinModel

    plain, fed = ChromatinModel(length=120), ChromatinModel(length=120, feedback=0.7)
    X = plain.sample(50, seed=2)["X"]
    b, a = plain.binding_and_access(X)
    out = fed.oracle(X)
    hepg2 = CELL_TYPES.index("HepG2")
    assert np.allclose(out[:, :4], b + 0.7 * a[:, [hepg2]]) and np.allclose(out[:, 4:], a)
    assert np.allclose(plain.oracle(X)[:, :4], b)  # no feedback: the signal is the binding
    # REST's signal on mutations of a CTCF site: moved by 0.7 * 0.6 per unit of CTCF binding, not by REST
    has = np.flatnonzero(plain.sample(50, seed=2)["sites"][:, 0] >= 0)[:3]
    eff = np.ones((3, 120, 4, 7))
    table = variant_table(eff, eff, X[has], exposure=2, outcome=4 + hepg2)
    t = fed.variant_truth(X[has], table, 2, 4 + hepg2)
    assert np.allclose(t.dy_causal, EFFECTS.loc["REST", "HepG2"] * t.dx_binding)
    assert not np.allclose(t.dx, t.dx_binding)
    truth = fed.true_local_effects(X[has], table, 2, 4 + hepg2).dropna()
    assert np.allclose(truth.theta, EFFECTS.loc["REST", "HepG2"])
    with pytest.raises(ValueError, match="chip_cell"):
        ChromatinModel(length=120, chip_cell="liver")
    with pytest.raises(ValueError, match="feedback"):
        ChromatinModel(length=120, feedback=float("nan"))


def test_an_empty_selection_has_an_empty_truth_in_every_world():
    """No instrument selected (an unlearned TF) is an empty answer, not an IndexError from float indices."""
    from deepmr_utils.instruments import COLUMNS
    from deepmr_utils.simulate.chromatin import ChromatinModel

    empty = pd.DataFrame({c: pd.Series(dtype=object if c in ("ref", "alt") else float) for c in COLUMNS})
    chrom = ChromatinModel(length=120)
    X = chrom.sample(3, seed=0)["X"]
    assert len(chrom.variant_truth(X, empty, 0, 4)) == 0
    assert len(chrom.true_local_effects(X, empty, 0, 4)) == 0
    coop = simulate.CooperativityModel()
    Xc = coop.sample(3, seed=0)["X"]
    assert len(coop.variant_truth(Xc, empty)) == 0
    nexus = simulate.ChipNexusModel(length=150)
    Xn = nexus.sample(3, seed=0)["X"]
    assert len(nexus.true_local_effects(Xn, empty, 0, 1)) == 0


def test_no_tf_is_mostly_saturated_and_the_three_cell_types_differ():
    """The world's design (issue 28): binary labels at P(bound) near 1 carry almost no information about
    the logit changes ISM reads, so no TF may have most of its motif sequences above 0.95; and every cell
    type has its own column of effects."""
    from deepmr_utils.simulate.chromatin import EFFECTS, ChromatinModel

    world = ChromatinModel(length=200)
    sat = world.saturation(world.sample(2000, seed=4))
    assert list(sat.TF) == ["CTCF", "CEBPB", "REST", "ZNF143"]
    assert (sat["share with P(bound) > 0.95"] < 0.5).all() and (sat["sequences with its motif"] > 600).all()
    cols = EFFECTS.T.to_numpy()
    assert len({tuple(c) for c in cols}) == 3
    with pytest.raises(ValueError, match="p must lie"):
        world.saturation({"logits": np.zeros((1, 7)), "sites": np.zeros((1, 5))}, p=0.3)


def test_the_confounder_strength_is_a_parameter_that_moves_ivw():
    """The pioneer's strength sets how far its pleiotropic instruments pull exact IVW from the truth."""
    from deepmr_utils.book import reverse_causation as rc
    from deepmr_utils.simulate.chromatin import ChromatinModel

    def rest(**strength):
        world = ChromatinModel(length=200, confounded=True, **strength)
        return rc.experiment(world, "REST", n_loci=20, se=0.2, seed=3).set_index("remedy").loc["none"]

    weak, strong = rest(g_binding=0.0, g_access=0.0), rest()
    assert weak.covered and abs(weak.estimate + 0.6) < 0.05
    assert strong.estimate > weak.estimate + 0.2 and not strong.covered
