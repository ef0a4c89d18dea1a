"""The simulation study: fidelity against the oracle, rounds that resume, and honest summaries."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from deepmr_utils import pipeline, simulate, train
from deepmr_utils.book import scoring, simulation_study
from deepmr_utils.instruments import Selection
from deepmr_utils.ism import ISMOptions

TINY = simulation_study.StudySizes(
    n_train=200, n_calibration=40, n_test=40, n_members=2, n_filters=4, hidden=8, max_epochs=2, patience=1, n_boot=20
)


class _OracleMember(nn.Module):
    """The generator's sequence oracle times ``scale * (1 + eps)``: right up to ``eps`` when ``scale`` is 1."""

    def __init__(self, gen, eps: float, scale: float = 1.0):
        super().__init__()
        self.gen, self.eps, self.scale = gen, eps, scale
        self.output_names = ["exposure", "outcome"]

    def forward(self, x):
        o = self.gen.sequence_oracle(x.detach().cpu().numpy())
        return torch.as_tensor(self.scale * (1 + self.eps) * o, dtype=torch.float32)


@pytest.mark.parametrize("scale, ok", [(1.0, True), (0.5, False)])
def test_fidelity_passes_the_oracle_and_fails_a_shrunken_model(scale, ok):
    gen = simulate.CooperativityModel(alpha=100, beta=300)
    test = gen.sample(150, seed=3)
    models = [_OracleMember(gen, e, scale) for e in (-0.02, 0.0, 0.02)]
    mutated = np.flatnonzero(np.isin(test["config"], simulate.WITH_EXPOSURE))
    table = pipeline.variant_effects(
        models,
        test["X"][mutated],
        options=ISMOptions(device="cpu"),
        exposure=0,
        outcome=1,
        progress=False,
        select=Selection(threshold=3.0),
    )
    f = simulation_study.fidelity(gen, models, test, mutated, table)
    assert f["fidelity_ok"] is ok
    if ok:  # the oracle's own effects: slopes 1 up to the members' +-2 %, r equal to the ceiling
        assert f["slope_bx_pair"] == pytest.approx(1.0, abs=0.03) and f["slope_by_pair"] == pytest.approx(1.0, abs=0.03)
        assert f["r_exposure"] == pytest.approx(f["r_oracle_exposure"], abs=1e-4)
    else:  # halved effects: r is unchanged (a linear map) but the slopes give it away
        assert f["slope_bx_exposure_only"] == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("scenario", ["none", "sequence-independent"])
@pytest.mark.parametrize("scale, ok", [(1.0, True), (0.5, False)])
def test_the_users_gate_reads_measured_variant_effects_without_the_oracle(scenario, scale, ok):
    gen = simulate.CooperativityModel(alpha=100, beta=300).with_scenario(scenario)
    test = gen.sample(300, seed=4)
    models = [_OracleMember(gen, e, scale) for e in (-0.02, 0.0, 0.02)]
    mutated = np.flatnonzero(np.isin(test["config"], simulate.WITH_EXPOSURE))
    g = simulation_study.measured_effects_gate(gen, models, test, mutated, seed=1)
    assert g["user_gate_ok"] is ok and g["user_gate_pairs"] == mutated.size
    # halved effects: measured changes are twice the predicted ones
    for out in ("exposure", "outcome"):
        assert g[f"user_slope_{out}"] == pytest.approx(1 / scale, rel=0.15)
        assert 0 < g[f"user_slope_se_{out}"] < 0.1 / scale


def test_sequence_oracle_averages_the_hidden_confounder():
    gen = simulate.CooperativityModel().with_scenario("sequence-independent")
    X = gen.sample(20, seed=1)["X"]
    mix = gen.sequence_oracle(X)
    lo, hi = gen.oracle(X, np.zeros(20)), gen.oracle(X, np.ones(20))
    assert np.allclose(mix, 0.5 * lo + 0.5 * hi) and (hi > lo).all()
    plain = simulate.CooperativityModel()
    assert np.allclose(plain.sequence_oracle(X), plain.oracle(X))


def test_run_study_resumes_round_by_round_and_refuses_other_settings(tmp_path, monkeypatch):
    out = tmp_path / "study"
    first = simulation_study.run_study(1, seed=7, sizes=TINY, scenarios=["none"], out=out, progress=False)
    assert (out / "round_none_000.csv").exists() and set(first["round"]) == {0}
    assert {"fidelity_ok", "r_exposure", "slope_bx_pair", "lam_exposure"} <= set(first.columns)

    with pytest.raises(ValueError, match="calibration must be"):
        simulation_study.run_round("none", seed=1, calibration="oracle")

    def boom(*a, **k):
        raise AssertionError("a finished round was recomputed")

    monkeypatch.setattr(simulation_study, "run_round", boom)
    again = simulation_study.run_study(1, seed=7, sizes=TINY, scenarios=["none"], out=out, progress=False)
    pd.testing.assert_frame_equal(first, again, check_dtype=False)
    # a fresh clone has only the committed rounds file: seeding a new folder with it resumes from there
    fresh = tmp_path / "fresh"
    assert simulation_study.seed_study_folder(fresh, first, seed=7, sizes=TINY) == 1
    seeded = simulation_study.run_study(1, seed=7, sizes=TINY, scenarios=["none"], out=fresh, progress=False)
    pd.testing.assert_frame_equal(first, seeded, check_dtype=False)
    with pytest.raises(ValueError, match="other settings"):
        simulation_study.seed_study_folder(fresh, first, seed=8, sizes=TINY)
    mapped = simulation_study.run_study({"none": 1}, seed=7, sizes=TINY, out=out, progress=False)  # rounds per scenario
    pd.testing.assert_frame_equal(first, mapped, check_dtype=False)
    with pytest.raises(ValueError, match="integers >= 1"):
        simulation_study.run_study({"none": 1, "both": 0}, seed=7, sizes=TINY, out=out, progress=False)
    with pytest.raises(ValueError, match=r"other settings.*differs in: seed\)"):
        simulation_study.run_study(1, seed=8, sizes=TINY, scenarios=["none"], out=out, progress=False)
    with pytest.raises(ValueError, match="unknown scenarios"):
        simulation_study.run_study(1, seed=7, scenarios=["nope"])


def test_round_seeds_are_stable():
    # the chapter's and tools/run_study.py's rounds are the same rounds: the seed rule must not drift
    assert simulation_study.round_seed(2022, "none", 0) == 3022
    assert simulation_study.round_seed(2022, "both", 4) == 7025


def _rounds(**columns) -> pd.DataFrame:
    base = {"scenario": "none", "estimator": "IVW", "tau": 0.5, "local_coverage": 0.9, "n_loci": 10}
    return pd.DataFrame({**base, **columns})


def test_summarize_scores_every_round_against_the_population_mean_and_gates_only_as_sensitivity():
    rounds = _rounds(
        estimate=1.0,
        se=0.1,
        ci_low=0.8,
        ci_high=1.2,
        truth_population=[1.0] * 9 + [2.0] + [0.5] * 2,  # 9 covered; one CI below mu, two above
        truth_sample=1.0,
        fidelity_ok=[True] * 10 + [False] * 2,
        user_gate_ok=[True] * 9 + [False] * 3,
    )
    s = simulation_study.summarize(rounds).set_index("analysis")
    every, gated, user = s.loc["all rounds"], s.loc["oracle gate"], s.loc["user gate"]
    assert every.rounds == 12 and every.rounds_excluded == 0 and every.coverage == pytest.approx(9 / 12)
    assert every.miss_below == pytest.approx(1 / 12) and every.miss_above == pytest.approx(2 / 12)
    assert gated.rounds == 10 and gated.rounds_excluded == 2 and gated.coverage == pytest.approx(0.9)
    assert user.rounds == 9 and user.coverage == pytest.approx(1.0)
    # Clopper-Pearson 95 % interval for 9 of 10 (R: binom.test(9, 10)$conf.int)
    assert gated.coverage_low == pytest.approx(0.5549839, abs=1e-6)
    assert gated.coverage_high == pytest.approx(0.9974714, abs=1e-6)
    z = (1.0 - rounds.truth_population) / 0.1
    assert every.z_sd == pytest.approx(z.std(ddof=1))
    assert every.bias == pytest.approx((1.0 - rounds.truth_population).mean())
    assert np.isnan(every.rel_model)  # rounds without the controls have no error split
    with pytest.raises(ValueError, match="unknown analyses"):
        simulation_study.summarize(rounds, analyses=["per protocol"])


def test_the_error_steps_add_up_to_the_bias_and_a_degenerate_control_is_left_out():
    rng = np.random.default_rng(0)
    n = 6
    names = ("estimate", "exact_estimate", "causal_estimate", "truth_weighted", "truth_instruments", "truth_sample")
    cols = {c: rng.normal(2.0, 0.3, n) for c in (*names, "truth_population")}
    rounds = _rounds(se=0.2, ci_low=cols["estimate"] - 0.4, ci_high=cols["estimate"] + 0.4, exact_se=0.2, **cols)
    s = simulation_study.summarize(rounds, analyses=["all rounds"]).iloc[0]
    steps = sum(s[f"rel_{k}"] for k in simulation_study.STEPS)
    assert steps == pytest.approx(s.rel_bias) and s.controls_degenerate == 0
    mu = cols["truth_population"].mean()
    assert s.rel_model == pytest.approx((cols["estimate"] - cols["exact_estimate"]).mean() / mu)
    wild = simulation_study.summarize(rounds.assign(exact_se=[0.2] * 5 + [5.0]), analyses=["all rounds"]).iloc[0]
    assert wild.controls_degenerate == 1
    kept = rounds.iloc[:5]
    assert wild.rel_model == pytest.approx((kept.estimate - kept.exact_estimate).mean() / mu)
    # robust MR-Egger's controls on exact effects are degenerate by design: no split, the bias still reported
    robust = simulation_study.summarize(rounds.assign(estimator="robust MR-Egger"), analyses=["all rounds"]).iloc[0]
    assert np.isnan(robust.rel_model) and robust.rel_bias == pytest.approx(s.rel_bias)


def test_each_interval_covers_its_own_estimand():
    """An oracle world with exactly known SEs: theta_i ~ N(mu, tau^2), estimates ~ N(theta_i, s_i^2). The
    random-effects CI is for mu and covers it about 95 % of the time; scored against the mean of the same
    loci it covers nearly always (the estimand mismatch of the original scoring); the conditional CI covers
    the weight-matched mean of the same loci about 95 % of the time, with SD(z) near 1."""
    rng = np.random.default_rng(11)
    reps, k, mu = 600, 40, 1.0
    hits = {"re_mu": 0, "re_sample": 0, "cond_weighted": 0}
    z = []
    for _ in range(reps):
        s = rng.uniform(0.1, 0.5, k)
        theta = rng.normal(mu, 0.3, k)
        est = rng.normal(theta, s)
        p = scoring.pool_loci(
            pd.DataFrame({"estimate": est, "se": s, "theta": theta, "theta_seq": theta, "theta_own": theta})
        )
        hits["re_mu"] += p["ci_low"] <= mu <= p["ci_high"]
        hits["re_sample"] += p["ci_low"] <= theta.mean() <= p["ci_high"]
        hits["cond_weighted"] += p["cond_ci_low"] <= p["truth_weighted"] <= p["cond_ci_high"]
        z.append((p["estimate"] - p["truth_weighted"]) / p["cond_se"])
    cover = {key: v / reps for key, v in hits.items()}
    assert 0.91 <= cover["re_mu"] <= 0.975  # REML with k = 40 runs a little under nominal
    assert cover["re_sample"] >= 0.98
    assert 0.925 <= cover["cond_weighted"] <= 0.975 and 0.9 <= np.std(z) <= 1.1


def test_a_round_with_a_perfect_model_has_no_model_error(monkeypatch):
    # the exact-effects control must be the estimators on the oracle's effects of the very instruments the model
    # selected: hand the round the oracle itself as its "trained" ensemble and the two must agree
    def oracle_ensemble(factory, X, y, n, **kw):
        gen = oracle_ensemble.gen
        return [_OracleMember(gen, e) for e in (-0.01, 0.0, 0.01)], [train.History(val_loss=[1.0])] * 3

    real = simulate.CooperativityModel.with_scenario

    def remember(self, scenario):
        oracle_ensemble.gen = real(self, scenario)
        return oracle_ensemble.gen

    monkeypatch.setattr(simulate.CooperativityModel, "with_scenario", remember)
    monkeypatch.setattr(train, "train_ensemble", oracle_ensemble)
    sizes = simulation_study.StudySizes(n_train=10, n_calibration=200, n_test=120, n_boot=20)
    rnd = simulation_study.run_round("none", seed=5, sizes=sizes)
    out = rnd.rows.set_index("estimator")
    n_mut, n_inst, n_rows = len(rnd.mutated), len(rnd.table), len(rnd.rows)
    want = f"Round('none': 3 members, {n_mut} mutated sequences, {n_inst} instruments, {n_rows} estimator rows)"
    assert repr(rnd) == want
    assert set(rnd.local) == set(simulation_study.ESTIMATORS) and rnd.sizes == sizes
    with pytest.raises(TypeError, match=r"no longer takes details=; run_round returns a Round"):
        simulation_study.run_round("none", seed=5, sizes=sizes, details=True)
    assert out.loc["IVW", "n_loci"] >= 5 and bool(out.loc["IVW", "fidelity_ok"])
    for est in ("IVW", "MR-Egger", "weighted median"):
        assert out.loc[est, "estimate"] == pytest.approx(out.loc[est, "exact_estimate"], rel=2e-3), est
        assert out.loc[est, "se"] == pytest.approx(out.loc[est, "exact_se"], rel=2e-3), est
    assert np.isnan(out.loc[simulation_study.NAIVE, "exact_estimate"])
    assert bool(out.loc["IVW", "user_gate_ok"]) and out.loc["IVW", "user_slope_exposure"] == pytest.approx(1, abs=0.1)
    # without confounding the population mean is the mean over the world's sequences with a GATA1 motif
    gen = oracle_ensemble.gen
    mu = gen.population_effect(5000, seed=99).theta.mean()
    assert out.loc["IVW", "truth_population"] == pytest.approx(mu, rel=0.1)


def test_a_round_counts_members_still_improving_instead_of_warning(monkeypatch):
    """A round's warnings reach a notebook from a worker process as stderr boxes no notebook filter
    can silence: the round must count members still improving, not warn about them."""
    import warnings

    real = train.train_ensemble

    def still_improving(*args, **kwargs):
        models, hists = real(*args, **kwargs)
        for h in hists:
            h.still_improving = True
            warnings.warn("still improving at max_epochs=2", train.ConvergenceWarning, stacklevel=2)
        return models, hists

    monkeypatch.setattr(train, "train_ensemble", still_improving)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = simulation_study.run_round("none", seed=2, sizes=TINY).rows
    assert not [w for w in caught if issubclass(w.category, train.ConvergenceWarning)]
    assert (out.still_improving == TINY.n_members).all()


def _run_study_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "run_study_tool", Path(__file__).parents[2] / "tools" / "run_study.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_verify_matches_rows_by_estimator_and_names_the_ones_added(tmp_path, monkeypatch, capsys):
    tool = _run_study_tool()
    monkeypatch.setattr(tool.torch, "set_num_threads", lambda n: None)  # the tool's own process setting
    cols = ["estimate", "se", "truth_population", "truth_sample", "exact_estimate"]
    committed = pd.DataFrame({"scenario": "none", "round": 0, "estimator": ["IVW", "MR-Egger", "mode"]})
    for i, c in enumerate(cols):
        committed[c] = [0.5 + i, 0.7 + i, 0.9 + i]
    path = tmp_path / "rounds.csv"
    committed.to_csv(path, index=False)
    # the rerun lists its estimators in another order and has one more: compared by name, the extra one named
    rerun = pd.concat([committed.iloc[::-1], committed.iloc[:1].assign(estimator="MR-RAPS")]).drop(columns="round")
    rerun = rerun.reset_index(drop=True)
    monkeypatch.setattr(
        tool.simulation_study, "run_round", lambda *a, **k: SimpleNamespace(rows=rerun.reset_index(drop=True))
    )
    assert tool.main(["--verify", "none:0", "--rounds-file", str(path), "--scale", "quick"]) == 0
    assert "rerun only: MR-RAPS (not compared)" in capsys.readouterr().out
    moved = rerun.assign(estimate=lambda d: d.estimate.where(d.estimator != "mode", 9.0)).reset_index(drop=True)
    monkeypatch.setattr(
        tool.simulation_study, "run_round", lambda *a, **k: SimpleNamespace(rows=moved.reset_index(drop=True))
    )
    assert tool.main(["--verify", "none:0", "--rounds-file", str(path), "--scale", "quick"]) == 1


def test_a_study_folder_pins_its_estimators(tmp_path, monkeypatch):
    rounds = pd.DataFrame(
        {"scenario": "none", "round": 0, "estimator": [*simulation_study.ESTIMATORS, simulation_study.NAIVE]}
    )
    assert simulation_study.seed_study_folder(tmp_path / "a", rounds, seed=7, sizes=TINY) == 1
    with pytest.raises(ValueError, match=r"missing: \['mode'\].*recomputed, not resumed"):
        simulation_study.seed_study_folder(tmp_path / "b", rounds[rounds.estimator != "mode"], seed=7, sizes=TINY)
    # a folder written with another estimator set is refused by name
    monkeypatch.setitem(simulation_study.ESTIMATORS, "dIVW", ("divw", {}))
    with pytest.raises(ValueError, match="differs in: estimators"):
        simulation_study.run_study(1, seed=7, sizes=TINY, scenarios=["none"], out=tmp_path / "a", progress=False)
