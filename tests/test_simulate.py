import json
from importlib import resources

import numpy as np
import pandas as pd
import pytest
import torch

from deepmr_utils import motifs, simulate
from deepmr_utils import sequence as sq


def test_motif_file_matches_pyjaspar():
    pj = pytest.importorskip("pyjaspar")
    db = pj.jaspardb()
    table = json.loads(resources.files("deepmr_utils.data").joinpath("jaspar_motifs.json").read_text())
    for name, m in table["motifs"].items():
        ref = db.fetch_motif_by_id(m["matrix_id"])
        counts = np.array([[ref.counts[b][i] for b in "ACGT"] for i in range(ref.length)])
        assert np.allclose(counts, m["counts"]), name


def test_jaspar_pwm_and_sampling():
    pwm = motifs.jaspar("GATA1")
    assert pwm.shape == (11, 4) and np.allclose(pwm.sum(1), 1) and (pwm > 0).all()
    with pytest.raises(ValueError, match="unknown motif"):
        motifs.jaspar("NOPE")
    rng = np.random.default_rng(0)
    draws = np.stack([motifs.sample_instance(pwm, rng) for _ in range(4000)])
    freq = np.stack([(draws == b).mean(0) for b in range(4)], axis=1)
    assert np.abs(freq - pwm).max() < 0.03


def test_occupancy_by_hand():
    pwm = motifs.jaspar("TAL1::TCF3")
    bg = np.array([0.27, 0.23, 0.23, 0.27])
    codes = pwm.argmax(1)
    X = sq.one_hot("".join("ACGT"[c] for c in codes))
    llr = float(np.sum(np.log(pwm[np.arange(len(codes)), codes] / bg[codes])))
    for mu in (0.0, -3.0):
        s = 1 / (1 + np.exp(-llr - mu))
        assert motifs.occupancy(X, pwm, bg, mu=mu)[0] == pytest.approx(s)
    # two windows: at least one bound
    X2 = sq.one_hot("".join("ACGT"[c] for c in codes) + "A")
    e = -motifs.window_llr(X2, pwm, bg)[0]
    s = 1 / (1 + np.exp(e))
    assert motifs.occupancy(X2, pwm, bg)[0] == pytest.approx(1 - np.prod(1 - s))


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


def test_chip_nexus_sampling_and_truth():
    gen = simulate.ChipNexusModel(length=150)
    d = gen.sample(40, seed=0)
    assert d["X"].shape == (40, 4, 150) and d["profiles"].shape == (40, 4, 2, 150)
    assert np.array_equal(d["profiles"].sum(dim=(2, 3)).numpy(), d["total"])  # profiles distribute the totals
    assert np.allclose(d["y"], np.log1p(d["profiles"].numpy().sum(axis=3, dtype=np.float64)).mean(axis=2))
    # recruitment: with all effects zero, binding equals direct occupancy
    q, pos = gen._sites(d["X"])
    flat = simulate.ChipNexusModel(length=150, effects=tuple(map(tuple, np.zeros((4, 4)))))
    assert np.allclose(flat.binding(None, q=q, pos=pos), q)
    b = gen.binding(None, q=q, pos=pos)
    assert (b >= q - 1e-12).all()
    # true local effects: zero where the causal matrix has no path, positive along Sox2 -> Oct4
    i = 0
    table = pd.DataFrame(
        {
            "locus": i,
            "position": np.arange(150),
            "alt": ["ACGT"[(int(d["X"][i, :, p].argmax()) + 1) % 4] for p in range(150)],
        }
    )
    sox2, oct4, nanog = 1, 0, 2  # indices in simulate.OSKN
    assert gen.true_local_effects(d["X"], table, nanog, sox2).theta.fillna(0).abs().max() < 1e-12
    assert (gen.true_local_effects(d["X"], table, sox2, oct4).theta.dropna() >= 0).all()
    assert np.isclose(gen.oracle(d["X"][:3]), np.log1p(0.5 * (1 + np.asarray(gen.depth) * b[:3]))).all()
    # read distribution: sums to one; an unbound TF's reads are flat, a bound TF's sit in the footprint
    shape = gen.profile_shape(pos[:2], np.array([[0.0, 1.0, 0.0, 1.0]] * 2))
    assert np.allclose(shape.sum(axis=(2, 3)), 1.0)
    assert np.allclose(shape[:, 0], 1 / 300) and shape[:, 1].max() > 10 / 300
    assert np.allclose(gen.expected_profiles(d["X"][:2]), gen.profile_shape(pos[:2], b[:2]))
    # motif spacing: gap between instance intervals, NaN where a motif is absent
    sites = np.array([[10, 40, -1, 0], [50, 20, 5, 90]])
    # widths: composite 15, Sox2 11, Nanog 7, Klf4 12
    assert gen.motif_distance(sites, 0, 1).tolist() == [40 - 25, 50 - 31]
    assert gen.motif_distance(sites, 1, 0).tolist() == [15, 19]
    assert np.isnan(gen.motif_distance(sites, 0, 2)[0]) and gen.motif_distance(sites, 0, 2)[1] == 50 - 12
    assert gen.motif_distance(sites, 3, 0)[0] == 0  # overlapping instances


def test_chip_nexus_motifs_are_independent_and_strong():
    gen = simulate.ChipNexusModel(length=100)
    d = gen.sample(1500, seed=1)
    present = d["sites"] >= 0
    assert abs(present.mean() - 0.5) < 0.03
    # no motif predicts another's presence (otherwise a model could shortcut the causal structure)
    corr = np.corrcoef(present.T)[np.triu_indices(4, 1)]
    assert np.abs(corr).max() < 0.08
    # planted sites are bound more than chance matches of the same motif elsewhere
    q, _ = gen._sites(d["X"])
    for t in range(4):
        assert np.median(q[present[:, t], t]) > 0.6 > 3 * np.median(q[~present[:, t], t])
    for bad in ({"motif_prob": 1.5}, {"site_strength": 0.0}, {"length": 30}):
        with pytest.raises(ValueError):
            simulate.ChipNexusModel(**bad)


def test_binding_tracks_are_the_site_probabilities_of_each_role():
    gen = simulate.CooperativityModel()
    x = gen.sample(3, seed=2)["X"][1]
    tracks = gen.binding_tracks(x)
    assert list(tracks.role.unique()) == ["exposure", "outcome", "confounder"]
    for role in ("exposure", "outcome", "confounder"):
        want = motifs.site_probabilities(x[None], gen.pwm(role), gen.background, mu=gen.mu)[0]
        assert np.allclose(tracks[tracks.role == role].p_bound, want)


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


def test_occupancy_ism_equals_the_occupancy_of_every_explicit_mutant():
    from deepmr_utils import motifs
    from deepmr_utils.sequence import substitute

    gen = simulate.CooperativityModel().with_scenario("sequence-dependent")
    X = gen.sample(12, seed=8)["X"].numpy()
    L = X.shape[2]
    pos, alt = np.repeat(np.arange(L), 4), np.tile(np.arange(4), L)
    for role in ("exposure", "outcome", "confounder"):
        fast = motifs.occupancy_ism(X, gen.pwm(role), gen.background, mu=gen.mu)
        for i in (0, 5, 11):
            slow = motifs.occupancy(substitute(np.repeat(X[i : i + 1], 4 * L, 0), pos, alt), gen.pwm(role),
                                    gen.background, mu=gen.mu).reshape(L, 4)  # fmt: skip
            np.testing.assert_allclose(fast[i], slow, rtol=0, atol=1e-12)


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
