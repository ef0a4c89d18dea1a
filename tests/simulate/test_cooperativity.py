"""The two-TF world (simulate.cooperativity): scenarios, sampling, its oracle and true local effects."""

import numpy as np
import pandas as pd
import pytest
import torch

from deepmr_utils import sequence as sq
from deepmr_utils import simulate


def test_expected_counts_and_scenario_switches():
    q = np.array([[0.5, 0.4, 0.2]])
    b = np.array([1.0])
    base = simulate.CooperativityModel(alpha=100, beta=300)
    for scenario, (ce, co) in {
        "none": (1 + 50, 1 + 300 * 0.2),
        "sequence-independent": (1 + 50 + 25, 1 + 60 + 25),
        "sequence-dependent": (1 + 50 + 20 * 0.2, 1 + 60 + 30 * 0.2),
        "both": (1 + 50 + 4 + 25, 1 + 60 + 6 + 25),
    }.items():
        g = base.with_scenario(scenario)
        assert g.scenario == scenario
        assert np.allclose(g.expected_counts(None, b, q=q), [[ce, co]])
    with pytest.raises(ValueError, match="scenario must be one of"):
        base.with_scenario("everything")


def test_sampling_respects_scenarios():
    none = simulate.CooperativityModel().sample(600, seed=1)
    assert (none["b_conf"] == 0).all() and (none["sites"][:, 2] == -1).all()
    assert set(np.unique(none["config"])) == {0, 1, 2, 3}
    both = simulate.CooperativityModel().with_scenario("both").sample(600, seed=1)
    assert 0.4 < both["b_conf"].mean() < 0.6 and 0.4 < (both["sites"][:, 2] >= 0).mean() < 0.6
    again = simulate.CooperativityModel().with_scenario("both").sample(600, seed=1)
    assert torch.equal(both["X"], again["X"]) and np.array_equal(both["counts"], again["counts"])
    # embedded motifs do not overlap and exposure precedes outcome in pairs
    w = [11, 12, 15]
    for sites in both["sites"]:
        spans = sorted((s, s + w[j]) for j, s in enumerate(sites) if s >= 0)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
    pairs = both["sites"][both["config"] == simulate.SequenceType.PAIR]
    assert (pairs[:, 0] < pairs[:, 1]).all()


def test_variant_truth_matches_oracle_finite_differences():
    gen = simulate.CooperativityModel(alpha=97, beta=480).with_scenario("both")
    data = gen.sample(30, seed=3)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        for _ in range(4):
            p = int(rng.integers(0, 100))
            ref = int(data["X"][i, :, p].argmax())
            rows.append((i, p, "ACGT"[(ref + int(rng.integers(1, 4))) % 4]))
    table = pd.DataFrame(rows, columns=["locus", "position", "alt"])
    t = gen.variant_truth(data["X"], table, data["b_conf"])
    for k, (i, p, alt) in enumerate(rows):
        x = data["X"][i : i + 1].clone()
        ref_pred = gen.oracle(x, data["b_conf"][i : i + 1])[0]
        x[0, :, p] = 0
        x[0, "ACGT".index(alt), p] = 1
        mut_pred = gen.oracle(x, data["b_conf"][i : i + 1])[0]
        assert t.dx[k] == pytest.approx(mut_pred[0] - ref_pred[0], abs=1e-9)
        assert t.dy[k] == pytest.approx(mut_pred[1] - ref_pred[1], abs=1e-9)
        # causal part: only the exposure occupancy moves
        q_ref, q_mut = gen.occupancies(data["X"][i : i + 1]), gen.occupancies(x)
        q = q_ref.copy()
        q[0, 0] = q_mut[0, 0]
        causal = simulate.anscombe(gen.expected_counts(None, data["b_conf"][i : i + 1], q=q))[0, 1]
        assert t.dy_causal[k] == pytest.approx(causal - ref_pred[1], abs=1e-9)
    truth = gen.true_local_effects(data["X"], table, data["b_conf"]).set_index("locus")
    g = table.assign(xy=t.dx * t.dy_causal, xx=t.dx**2).groupby("locus")[["xy", "xx"]].sum()
    ok = g.xx > 1e-12
    assert np.allclose(truth.theta[ok], (g.xy / g.xx)[ok])


def test_truth_without_confounding_has_no_pleiotropy_for_exposure_only_mutations():
    # without an outcome motif change, dy == dy_causal
    gen = simulate.CooperativityModel(alpha=100, beta=1000)
    data = gen.sample(50, seed=5)
    i = int(np.flatnonzero(data["config"] == simulate.SequenceType.PAIR)[0])
    s = data["sites"][i, 0]
    table = pd.DataFrame({"locus": i, "position": s + np.arange(3), "alt": "T"})
    t = gen.variant_truth(data["X"], table)
    outcome_sites = range(data["sites"][i, 1], data["sites"][i, 1] + 12)
    assert not set(table.position) & set(outcome_sites)
    assert np.allclose(t.dy, t.dy_causal, atol=1e-6)


def test_augmentation_mutates_inside_motifs():
    gen = simulate.CooperativityModel()
    data = gen.sample(200, seed=2)
    aug = gen.augment_variants(data, 0.5, seed=3)
    assert aug["X"].shape[0] == 100 and aug["y"].shape == (100, 2)
    sq.check_one_hot(aug["X"], allow_zero_columns=False)


@pytest.mark.parametrize("scenario", ["none", "sequence-independent", "both"])
def test_sequence_local_effects_is_the_slope_over_every_substitution(scenario):
    gen = simulate.CooperativityModel(beta=500).with_scenario(scenario)
    d = gen.sample(40, seed=2)
    X = d["X"][np.isin(d["config"], simulate.WITH_EXPOSURE)][:8]
    n, L = X.shape[0], X.shape[2]
    ref = X.numpy().argmax(1)
    loc, pos = np.repeat(np.arange(n), 3 * L), np.tile(np.repeat(np.arange(L), 3), n)
    alt = (ref[loc, pos] + np.tile(np.arange(1, 4), n * L)) % 4
    table = pd.DataFrame({"locus": loc, "position": pos, "alt": np.array(list("ACGT"))[alt]})
    t = gen.variant_truth(X, table, "average")
    g = pd.DataFrame({"locus": loc, "xy": t.dx_causal * t.dy_causal, "xx": t.dx_causal**2}).groupby("locus").sum()
    np.testing.assert_allclose(gen.sequence_local_effects(X), g.xy / g.xx, rtol=1e-10)
    # averaging over the hidden confounder is the mean of the two worlds' oracles, not of their slopes
    if gen.sequence_independent:
        on, off = (gen.variant_truth(X, table, np.full(n, v)) for v in (1.0, 0.0))
        np.testing.assert_allclose(t.dy, 0.5 * on.dy + 0.5 * off.dy, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="'average'"):
        gen.variant_truth(X, table, "mean")
    pop = gen.population_effect(400, seed=3)
    assert set(pop.config) == {1, 3} and pop.theta.notna().all()
