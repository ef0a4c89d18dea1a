"""The ChIP-nexus world (simulate.chipnexus): profiles, counts, motifs and its causal matrix."""

import numpy as np
import pandas as pd
import pytest

from deepmr_utils import motifs, simulate


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
