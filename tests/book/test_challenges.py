"""The challenges chapter's experiments: each world breaks the assumption it claims to, and the truth is right."""

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from deepmr_utils import instruments, mr, simulate
from deepmr_utils.book import challenges as ch
from deepmr_utils.book import config, simulation_study
from deepmr_utils.instruments import Selection
from deepmr_utils.simulate import anscombe


def test_all_substitutions_lists_every_other_base():
    X = simulate.CooperativityModel().sample(3, seed=0)["X"]
    t = ch.all_substitutions(X)
    assert len(t) == 3 * 3 * X.shape[2]
    ref = np.array(list("ACGT"))[X.numpy().argmax(axis=1)]
    assert (t.alt.to_numpy() != ref[t.locus, t.position]).all()
    assert not t.duplicated().any()


def test_oracle_table_noise_has_the_stated_se():
    gen = simulate.CooperativityModel()
    X = gen.sample(20, seed=1)["X"]
    t = ch.oracle_table(gen, X, se=0.5, rng=np.random.default_rng(0))
    z = np.concatenate([(t.bx - t.dx) / t.bxse, (t.by - t.dy) / t.byse, (t.bz - t.dz) / t.bzse])
    assert abs(z.mean()) < 0.03 and abs(z.std() - 1) < 0.02
    with pytest.raises(ValueError, match="se must be > 0"):
        ch.oracle_table(gen, X, se=0.0, rng=np.random.default_rng(0))


def test_local_truth_is_the_studys_truth_without_a_confounder():
    gen = simulate.CooperativityModel()
    d = gen.sample(30, seed=2)
    X = d["X"][np.isin(d["config"], simulate.WITH_EXPOSURE)]
    t = ch.oracle_table(gen, X, se=0.1, rng=np.random.default_rng(1))
    inst = Selection(threshold=3).apply(t).instruments
    ours = ch.local_truth(inst).set_index("locus").theta
    study = gen.true_local_effects(X, inst).set_index("locus").theta
    np.testing.assert_allclose(ours, study.reindex(ours.index), rtol=1e-10)


def test_local_derivative_matches_a_finite_difference():
    for hill in (1.0, 3.0):
        gen = simulate.CooperativityModel(hill=hill)
        X = gen.sample(10, seed=3)["X"]
        q = gen.occupancies(X)
        eps = 1e-4 * q[:, 0]  # relative steps: some occupancies are ~1e-5
        lo, hi = q.copy(), q.copy()
        lo[:, 0] -= eps
        hi[:, 0] += eps
        a, b = anscombe(gen.expected_counts(None, q=lo)), anscombe(gen.expected_counts(None, q=hi))
        numeric = (b[:, 1] - a[:, 1]) / (b[:, 0] - a[:, 0])
        np.testing.assert_allclose(gen.local_derivative(X), numeric, rtol=1e-5)
    with pytest.raises(ValueError, match="hill must be >= 1"):
        simulate.CooperativityModel(hill=0.5)


def test_confounder_track_and_reverse_strand():
    gen = ch.paralog_world(30.0)
    pwm = gen.pwm("confounder")
    # the reverse strand of GATA2's CTTATCT reads AGATAAG, the core of the exposure's GATA1 sites
    assert "".join("ACGT"[i] for i in pwm.argmax(axis=1)) == "AGATAAG"
    d = gen.sample(200, seed=4)
    q = gen.occupancies(d["X"])
    assert np.corrcoef(q[:, 0], q[:, 2])[0, 1] > 0.8  # the paralog binds where the exposure TF binds
    t = ch.all_substitutions(d["X"][:5])
    truth = gen.variant_truth(d["X"][:5], t)
    mut = d["X"][:5].numpy()[t.locus].copy()
    rows = np.arange(len(t))
    mut[rows, :, t.position] = 0
    mut[rows, t.alt.map("ACGT".index).to_numpy(), t.position] = 1
    ref_z = anscombe(gen.confounder_counts(d["X"][:5]))[t.locus]
    np.testing.assert_allclose(truth.dz, anscombe(gen.confounder_counts(mut)) - ref_z, atol=1e-10)
    # eta = 0: no variant moves the exposure through the paralog, so dx_causal is dx
    np.testing.assert_allclose(truth.dx_causal, truth.dx, atol=1e-10)
    assert set(d) >= {"y_confounder"} and d["y_confounder"].shape == (200,)


def test_sample_is_unchanged_by_the_new_confounder_track():
    # the extra label is drawn after everything else: the other arrays do not depend on it
    a = simulate.CooperativityModel().sample(50, seed=9)
    b = simulate.CooperativityModel(alpha_confounder=5.0).sample(50, seed=9)
    np.testing.assert_array_equal(a["y"], b["y"])
    assert not np.array_equal(a["y_confounder"], b["y_confounder"])


def test_pleiotropy_biases_ivw_more_than_the_mode():
    base = simulate.CooperativityModel()
    rows = ch.assumption_sweep(
        "pleiotropy",
        [0.0, 3.0],
        lambda s: replace(base, sequence_dependent=True, p_confounder_motif=0.5, eta=20 * s, nu=30 * s),
        replicates=2,
        n_loci=40,
        se=0.2,
        seed=5,
        n_boot=50,
    )
    s = ch.summarize(rows).set_index(["value", "estimator"])
    assert abs(s.loc[(0.0, "IVW"), "rel_bias"]) < 0.1  # valid instruments: no bias
    assert s.loc[(3.0, "IVW"), "rel_bias"] > 0.2  # a motif read by both TFs: IVW follows it
    assert abs(s.loc[(3.0, "mode"), "rel_bias"]) < 0.5 * s.loc[(3.0, "IVW"), "rel_bias"]
    assert s.loc[(3.0, "IVW"), "frac_invalid"] > s.loc[(0.0, "IVW"), "frac_invalid"] + 0.2


def test_inside_breaks_every_univariable_estimator_but_not_multivariable_mr():
    gen = ch.paralog_world(60.0)
    d = gen.sample(240, seed=6)
    X = d["X"][np.isin(d["config"], simulate.WITH_EXPOSURE)][:60]
    inst = Selection(threshold=3).apply(ch.oracle_table(gen, X, se=0.2, rng=np.random.default_rng(2))).instruments
    univariable = ch.estimate(inst, ch.local_truth(inst), n_boot=50).set_index("estimator")
    rel = (univariable.estimate - univariable.truth) / univariable.truth
    assert (rel > 0.3).all(), rel  # correlated pleiotropy: no univariable estimator survives
    both = ch._univariable_vs_multivariable(inst).set_index("estimator")
    mv = both.loc["multivariable IVW"]
    assert abs(mv.estimate - mv.truth) < 0.25 * abs(both.loc["IVW", "estimate"] - mv.truth)


def test_linearity_ratio_falls_with_cooperativity_and_perturbation_size():
    out = ch.linearity([1.0, 4.0], base=simulate.CooperativityModel(), n_loci=25, se=0.2, seed=7)
    r = out.set_index(["hill", "perturbation"]).ratio_to_derivative
    assert abs(r[(1.0, "all")] - 1) < 0.05
    assert r[(4.0, "large")] < r[(4.0, "small")] < 0.9


@pytest.fixture(scope="module")
def small_round():
    sizes = replace(
        config.sizes("challenges", "quick").study,
        n_train=1000,
        n_calibration=150,
        n_test=80,
        n_members=4,
        max_epochs=30,
        n_population=2000,  # the population mean is no test's subject here (20 000 took 4 s of the fixture's 17)
    )
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simulation_study.run_round("none", seed=3, sizes=sizes)


def test_model_experiments_run_and_report_their_settings(small_round):
    fast = {"IVW": ("ivw", {})}
    w = ch.winners_curse(small_round, thresholds=(3.0,), estimators=fast)
    assert set(w.design) == set(ch.CURSE_DESIGNS[:4])
    assert (w.truth.notna() == (w.n_loci >= 2)).all() and (w.n_loci >= 2).any()
    one = w[w.design.str.startswith("one sample")].set_index("design")
    # the same instruments, weighed with each variant's member correlation: a different IVW, and psi in [-1, 1]
    assert one.n_instruments.nunique() == 1 and one.estimate.nunique() == 2
    assert -1 <= one.psi_selected.iloc[0] <= 1
    assert np.allclose(w.z, (w.estimate - w.truth) / w.cond_se, equal_nan=True)
    # the exact-effects control exists wherever an estimate does, and (oracle effects) differs from the model's
    est = w[w.n_loci >= 2]
    assert est.exact_ivw.notna().all() and (est.exact_ivw != est.estimate).all()
    c = ch.se_calibration(small_round, sizes=(2, 4), calibrations=("none", "variance"), estimators=fast)
    assert len(c) == 4 and c[["cov_bx_selected", "cov_bx_all"]].notna().all().all()
    d = ch.direction(small_round, estimators=fast)
    assert set(zip(d.direction, d.steiger)) == {
        ("forward", False),
        ("forward", True),
        ("reverse", False),
        ("reverse", True),
    }
    assert (d[d.direction == "reverse"].truth == 0).all()
    with pytest.raises(ValueError, match="at least 4 members"):
        ch.winners_curse(replace(small_round, models=small_round.models[:2]))
    with pytest.raises(ValueError, match="calibration must be 'none' with mc_dropout"):
        ch.variants(small_round, mc_dropout=3)


def test_challenges_sizes_are_typed():
    s = config.sizes("challenges", "quick")
    assert isinstance(s.study, simulation_study.StudySizes) and s.study.n_members >= 4
    assert config.sizes("challenges", "default").replicates >= 10


def test_multivariable_reports_conditional_f_and_a_strong_loci_sensitivity_row():
    """Every locus's conditional F for both exposures; loci below 10 for either are counted and left out
    of a second pooled row, beside the primary one on all loci."""
    gen = ch.paralog_world(60.0)
    d = gen.sample(240, seed=6)
    X = d["X"][np.isin(d["config"], simulate.WITH_EXPOSURE)][:60]
    inst = Selection(threshold=3).apply(ch.oracle_table(gen, X, se=0.2, rng=np.random.default_rng(2))).instruments
    per_locus = ch._multivariable_per_locus(inst)
    ok = per_locus[per_locus.status == "ok"]
    assert ok[["cond_f_exposure", "cond_f_confounder"]].notna().all().all() and len(ok) >= 5
    g = inst[inst.locus == ok.locus.iloc[0]]
    expected = mr.conditional_f(g[["bx", "bz"]].to_numpy(), g[["bxse", "bzse"]].to_numpy())
    assert ok[["cond_f_exposure", "cond_f_confounder"]].iloc[0].tolist() == pytest.approx(list(expected))
    rows = ch._univariable_vs_multivariable(inst).set_index("estimator")
    weak = int(((ok.cond_f_exposure < 10) | (ok.cond_f_confounder < 10)).sum())
    assert rows.loc["multivariable IVW", "n_weak"] == weak == rows.loc["multivariable IVW, strong loci", "n_weak"]
    assert rows.loc["multivariable IVW, strong loci", "n_loci"] == len(ok) - weak


def test_the_chapters_estimators_include_the_original_studys_four_and_the_registrys_names():
    names = set(ch.SWEEP_ESTIMATORS)
    assert {"robust MR-Egger", "IVW", "mode", "MR-RAPS"} <= names  # Malina et al. 2022's set
    assert {"MR-PRESSO", "dIVW", "weighted median", "ConMix"} <= names
    for name, (key, _) in ch.SWEEP_ESTIMATORS.items():
        assert key == "conmix" or mr.ESTIMATORS[key].name == name  # ConMix is not in the registry: no SE


def test_conmix_per_locus_is_conmix_on_each_locus_with_the_se_its_set_implies():
    rng = np.random.default_rng(3)
    bx = -rng.uniform(0.3, 1.0, 24)  # losses of binding, as ISM gives them
    ratio = np.r_[np.full(12, 1.5), np.full(12, -1.5)] + rng.normal(0, 0.02, 24)
    frame = pd.DataFrame(
        {
            "locus": np.r_[np.zeros(12), np.ones(10), np.full(2, 2)].astype(int),
            "bx": bx,
            "bxse": 0.05,
            "by": ratio * bx,
            "byse": 0.05,
        }
    )
    frame.loc[frame.locus == 1, "by"] = np.r_[np.full(5, 1.5), np.full(5, -1.5)] * frame.bx[frame.locus == 1]
    out = ch.conmix_per_locus(frame, grid_points=4000).set_index("locus")
    assert out.loc[2, "status"].startswith("conmix: fewer than 3") and np.isnan(out.loc[2, "estimate"])
    for locus in (0, 1):
        g = frame[frame.locus == locus]
        r, s = g.by / g.bx, (g.byse / g.bx).abs()
        res = mr.conmix(g.bx, g.bxse, g.by, g.byse, ci_step=float((r + 2 * s).max() - (r - 2 * s).min()) / 4000)
        row = out.loc[locus]
        assert row.status == "ok" and row.estimate == res.estimate and row.n_intervals == len(res.intervals)
        assert (row.ci_low, row.ci_high) == (res.ci_low, res.ci_high)
        assert row.se == pytest.approx((res.ci_high - res.ci_low) / (2 * 1.959963985))
    assert out.loc[0, "estimate"] == pytest.approx(1.5, abs=0.05) and out.loc[0, "n_intervals"] == 1
    # two equal clusters: a set of two pieces, whose span (not its pieces) sets the SE: larger, not smaller
    assert out.loc[1, "n_intervals"] == 2 and out.loc[1, "se"] > 3 / 3.92
    # the chapter's pooled row takes it like any estimator's
    rows = ch.estimate(
        frame[frame.locus < 2],
        pd.DataFrame({"locus": [0, 1], "theta": [1.5, 1.5]}),
        estimators={"ConMix": ("conmix", {})},
    )
    assert rows.loc[0, "n_loci"] == 2 and np.isfinite(rows.loc[0, "estimate"])


def test_disjoint_ensembles_train_on_disjoint_halves_and_feed_the_two_sample_design(small_round, monkeypatch):
    from deepmr_utils import train

    seen = []
    real = train.train_ensemble

    def spy(factory, X, y, n, **kw):
        seen.append(X[:, :, :].flatten(1).numpy())
        return real(factory, X, y, n, **kw)

    monkeypatch.setattr(train, "train_ensemble", spy)
    # two members per half: this test checks the wiring, not the halves' quality (four took 30 s)
    a, b = ch.disjoint_ensembles(small_round, n_members=2, seed=1)
    assert len(a) == len(b) == 2 and a[0] is not b[0]
    n = len(small_round.train["y"])
    # each half's own sequences (before augmentation) are distinct from the other half's
    rows_a = {r.tobytes() for r in seen[0][: n // 2]}
    rows_b = {r.tobytes() for r in seen[1][: n - n // 2]}
    assert not rows_a & rows_b
    # a threshold the selecting half's strongest variants pass, however well that half learned (a half trained
    # on 500 sequences may have none at |z| >= 3 on one CPU and many on another): this test checks the wiring
    chosen_by = ch.variants(small_round, models=b)
    t = float(np.quantile(np.abs(chosen_by.bx / chosen_by.bxse), 0.995))
    w = ch.winners_curse(small_round, thresholds=(t,), estimators={"IVW": ("ivw", {})}, disjoint=(a, b))
    assert set(w.design) == set(ch.CURSE_DESIGNS)
    # the two-sample rows: chosen by the second ensemble, measured by the first
    want = instruments.two_sample(chosen_by, ch.variants(small_round, models=a), Selection(threshold=t))
    two = w[w.design == "two-sample"].iloc[0]
    assert two.n_instruments == len(want) > 0


def test_accuracy_sweep_takes_a_round_already_run_instead_of_training_it_again(monkeypatch):
    sizes = simulation_study.StudySizes(
        n_train=150, n_calibration=60, n_test=60, n_members=2, max_epochs=3, n_boot=20, n_population=500
    )
    mine = simulation_study.run_round("none", seed=11, sizes=sizes)  # a chapter's own round
    fresh = ch.accuracy_sweep((150,), rounds=1, sizes=sizes, seed=11)
    calls, real = [], ch.run_round
    monkeypatch.setattr(ch, "run_round", lambda *a, **k: calls.append(k["sizes"].n_train) or real(*a, **k))
    swept = ch.accuracy_sweep((100, 150), rounds=1, sizes=sizes, seed=11, done=(mine,))
    assert calls == [100]  # the size it had not run
    # its rows are the fresh run's (columns as that run has them: a concat with another size's may add some)
    pd.testing.assert_frame_equal(swept[swept.n_train == 150][fresh.columns].reset_index(drop=True), fresh)
    assert list(swept.n_train.unique()) == [100, 150]
    # a round of another seed (or sizes, calibration, estimators, bar) is not the job's: trained again
    calls.clear()
    other = replace(mine, call={**mine.call, "seed": 12})
    ch.accuracy_sweep((150,), rounds=1, sizes=sizes, seed=11, done=(other,))
    assert calls == [150]
    assert mine.call == simulation_study.round_call("none", seed=11, sizes=sizes)
