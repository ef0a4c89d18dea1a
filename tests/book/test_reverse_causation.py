"""The DeepSEA chapter's reverse-causation experiment: the world makes the repressor look like an opener,
and the multivariable target is what a regression on the ChIP signals recovers."""

import numpy as np
import pytest

from deepmr_utils.book import reverse_causation as rc
from deepmr_utils.simulate.chromatin import EFFECTS, TFS, ChromatinModel


@pytest.mark.parametrize("kappa", [0.3, 1.0, 2.5])
def test_multivariable_truth_is_the_regression_of_accessibility_on_the_signals(kappa):
    """Independent of the formula: random bindings b, accessibility A = b @ beta, signals c = b + kappa A;
    least squares of A on c gives the direct effects."""
    rng = np.random.default_rng(0)
    b = rng.normal(size=(500, 4))
    beta = EFFECTS["HepG2"].to_numpy()
    A = b @ beta
    theta, *_ = np.linalg.lstsq(b + kappa * A[:, None], A, rcond=None)
    world = ChromatinModel(length=200, feedback=kappa)
    assert [rc.multivariable_truth(world, tf, "HepG2") for tf in TFS] == pytest.approx(theta, rel=1e-9)
    assert rc.multivariable_truth(world, "REST", "K562") == EFFECTS.loc["REST", "K562"]  # no feedback there


def test_feedback_turns_the_repressor_positive_and_multivariable_mr_restores_its_sign():
    plain = rc.experiment(ChromatinModel(length=200), "REST", n_loci=12, se=0.2, seed=3).set_index("remedy")
    fed = rc.experiment(ChromatinModel(length=200, feedback=1.0), "REST", n_loci=12, se=0.2, seed=3).set_index("remedy")
    assert plain.loc["none", "ci_high"] < 0 and plain.loc["none", "covered"]
    assert fed.loc["none", "ci_low"] > 0  # the original study's puzzle, from the measurement alone
    assert fed.loc["multivariable", "ci_high"] < 0
    # without feedback no chosen instrument moves REST's signal through accessibility; with it many do
    assert plain.loc["none", "leak_share"] == 0 and fed.loc["none", "leak_share"] > 0.2
    assert 0 <= fed.loc["none", "leak_weight"] <= 1
    assert fed.loc["bidirectional", "truth"] == 1.0 and plain.loc["bidirectional", "truth"] == 0.0
    assert set(fed.columns) >= {"estimate", "ci_low", "ci_high", "truth", "n_loci", "n_instruments", "sign_recovered"}


def test_multivariable_shortfall_is_the_exposures_noise_and_conditional_f_measures_it():
    """The signals move together (each reads accessibility), so each one's conditional strength is low: with
    noisy exposures the direct effect shrinks towards 0; with a tenth of the noise it is the target."""
    world = ChromatinModel(length=200, feedback=1.0)
    rows = {
        se: rc.experiment(world, "REST", n_loci=12, se=se, seed=3).set_index("remedy").loc["multivariable"]
        for se in (0.2, 0.02)
    }
    noisy, clean = rows[0.2], rows[0.02]
    assert noisy.truth == clean.truth == pytest.approx(-0.3)
    assert noisy.conditional_f < 10 < clean.conditional_f  # Sanderson & Windmeijer's rule of thumb
    assert noisy.truth < noisy.estimate < 0 and not noisy.covered  # attenuated, not sign-flipped
    assert abs(clean.estimate - clean.truth) < 0.02 < abs(noisy.estimate - noisy.truth)


def test_sequences_are_motif_carriers_or_chip_peaks_and_bad_choices_are_named():
    world = ChromatinModel(length=200, feedback=1.0)
    X = rc.sequences(world, "REST", n_loci=10, select="peaks", seed=0)
    assert X.shape == (10, 4, 200) and (world.oracle(X)[:, TFS.index("REST")] > 0).all()
    with pytest.raises(ValueError, match="select"):
        rc.sequences(world, "REST", n_loci=10, select="bound", seed=0)
    with pytest.raises(ValueError, match="tf must be one of"):
        rc.experiment(world, "GATA1", n_loci=5, se=0.2, seed=0)
    with pytest.raises(ValueError, match="cell must be one of"):
        rc.experiment(world, "REST", "liver", n_loci=5, se=0.2, seed=0)
    with pytest.raises(ValueError, match="se must be > 0"):
        rc.oracle_variants(world, X, se=0.0, rng=np.random.default_rng(0))


def test_model_variants_line_up_with_the_library_variant_table():
    """The experiment's table of a model's ISM holds the same (locus, position, alt) rows and values as
    instruments.variant_table, for every output."""
    from deepmr_utils import instruments

    world = ChromatinModel(length=120)
    X = world.sample(3, seed=1)["X"]
    rng = np.random.default_rng(2)
    effect, se = rng.normal(size=(3, 120, 4, 7)), rng.uniform(0.1, 1.0, size=(3, 120, 4, 7))
    table = rc.model_variants(effect, se, X, world.output_names)
    assert len(table) == 3 * 120 * 3
    lib = instruments.variant_table(effect, se, X, exposure=2, outcome=5)
    merged = lib.merge(table, on=["locus", "position", "alt"], validate="one_to_one")
    assert len(merged) == len(table)
    assert np.array_equal(merged.bx, merged["b_REST"]) and np.array_equal(merged.byse, merged["se_DNase K562"])
    with pytest.raises(ValueError, match="outputs but output_names"):
        rc.model_variants(effect, se, X, world.output_names[:6])
    with pytest.raises(ValueError, match=r"\(N, L, 4, O\)"):
        rc.model_variants(effect[:, :100], se[:, :100], X, world.output_names)


def test_remedies_on_a_faithful_model_table_match_the_oracle_and_fidelity_is_one():
    """A 'model' whose effects are the oracle's changes plus noise of known per-row SE gives fidelity
    slopes near 1 and the oracle experiment's verdicts; a model at half the effect sizes gives slopes
    near 0.5 and the same ratio estimate (attenuation common to exposure and outcome cancels)."""
    world = ChromatinModel(length=200, feedback=1.0)
    X = rc.sequences(world, "REST", n_loci=12, select="motif", seed=3)
    table = rc.oracle_variants(world, X, se=0.2, rng=np.random.default_rng(3))
    rows = rc.remedies(table, world, "REST").set_index("remedy")
    assert rows.loc["none", "ci_low"] > 0 and rows.loc["multivariable", "ci_high"] < 0
    assert rows.loc["none", "slope_x"] == pytest.approx(1.0, abs=0.05)
    half = table.copy()
    for name in world.output_names:
        half[f"b_{name}"] = table[f"b_{name}"] / 2  # the oracle's change and its noise, both halved
        half[f"se_{name}"] = 0.1
    h = rc.remedies(half, world, "REST").set_index("remedy")
    assert h.loc["none", "slope_x"] == pytest.approx(0.5, abs=0.03)
    assert h.loc["none", "estimate"] == pytest.approx(rows.loc["none", "estimate"], rel=1e-6)
    keep = table["b_ZNF143"].abs() / table["se_ZNF143"] >= 3
    assert np.isnan(rc.fidelity(table, keep & False, "ZNF143", "DNase GM12878")["slope_x"])


def test_oracle_changes_of_torch_sequences_raise_no_warning():
    """The chapter's sequences are torch tensors and pandas hands out read-only index arrays: indexing with
    them made torch print a UserWarning into the rendered page (caught by the browser check)."""
    import warnings

    world = ChromatinModel(length=120, feedback=1.0)
    X = world.sample(3, seed=1)["X"]
    table = rc.model_variants(np.zeros((3, 120, 4, 7)), np.ones((3, 120, 4, 7)), np.asarray(X), world.output_names)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        changes = rc.oracle_changes(world, X, table)
    assert changes.shape == (len(table), 7 + 4) and np.isfinite(changes.to_numpy()).all()
