"""The simulation study: fidelity against the oracle, rounds that resume, and honest summaries."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from deepmr_utils import pipeline, simulate, train
from deepmr_utils.book import simulation_study
from deepmr_utils.instruments import Selection

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
    mutated = np.flatnonzero(np.isin(test["config"], (1, 3)))
    table = pipeline.variant_effects(models, test["X"][mutated], exposure=0, outcome=1, progress=False,
                                     select=Selection(threshold=3.0), device="cpu")  # fmt: skip
    f = simulation_study.fidelity(gen, models, test, mutated, table)
    assert f["fidelity_ok"] is ok
    if ok:  # the oracle's own effects: slopes 1 up to the members' +-2 %, r equal to the ceiling
        assert f["slope_bx_pair"] == pytest.approx(1.0, abs=0.03) and f["slope_by_pair"] == pytest.approx(1.0, abs=0.03)
        assert f["r_exposure"] == pytest.approx(f["r_oracle_exposure"], abs=1e-4)
    else:  # halved effects: r is unchanged (a linear map) but the slopes give it away
        assert f["slope_bx_exposure_only"] == pytest.approx(0.5, abs=0.02)


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


def test_summarize_leaves_out_unfaithful_rounds_and_gives_the_coverage_interval():
    rounds = pd.DataFrame(
        {
            "scenario": "none",
            "estimator": "IVW",
            "estimate": 1.0,
            "se": 0.1,
            "ci_low": 0.8,
            "ci_high": 1.2,
            "tau": 0.5,
            "truth": [1.0] * 9 + [2.0] + [5.0] * 2,  # 9 covered, 1 missed, 2 missed by unfaithful models
            "local_coverage": 0.9,
            "n_loci": 10,
            "fidelity_ok": [True] * 10 + [False] * 2,
        }
    )
    s = simulation_study.summarize(rounds).iloc[0]
    assert s.rounds == 10 and s.rounds_unfaithful == 2 and s.coverage_95ci == pytest.approx(0.9)
    # Clopper-Pearson 95 % interval for 9 of 10 (e.g. R: binom.test(9, 10)$conf.int)
    assert s.coverage_95ci_low == pytest.approx(0.5549839, abs=1e-6)
    assert s.coverage_95ci_high == pytest.approx(0.9974714, abs=1e-6)
    everything = simulation_study.summarize(rounds, include_unfaithful=True).iloc[0]
    assert everything.rounds == 12 and everything.coverage_95ci == pytest.approx(9 / 12)
    assert np.isnan(s.oracle_rel_bias) and np.isnan(s.rel_model_error)  # rounds without the oracle control


def test_summarize_splits_the_error_into_the_methods_and_the_models():
    # estimate - truth = (oracle_estimate - truth) + (estimate - oracle_estimate), each over the mean truth
    rounds = pd.DataFrame(
        {
            "scenario": "none",
            "estimator": "IVW",
            "truth": [1.0, 3.0],
            "oracle_estimate": [1.1, 3.3],  # the method errs by +0.1 and +0.3 with a perfect model
            "oracle_se": 0.1,
            "estimate": [1.0, 3.5],  # the model adds -0.1 and +0.2
            "se": 0.1,
            "ci_low": [0.5, 3.2],  # the second CI misses the truth (3.0) but covers the control (3.3)
            "ci_high": [1.2, 3.6],
            "tau": 0.5,
            "local_coverage": 0.9,
            "n_loci": 10,
            "fidelity_ok": True,
        }
    )
    s = simulation_study.summarize(rounds).iloc[0]
    assert s.rel_bias == pytest.approx(0.25 / 2)
    assert s.oracle_rel_bias == pytest.approx(0.2 / 2)
    assert s.rel_model_error == pytest.approx(0.05 / 2)
    assert s.model_error_rmse == pytest.approx(np.sqrt((0.01 + 0.04) / 2))
    # a control with a near-infinite Wald ratio (SE 1e4 times the estimate's) is counted and left out
    wild = rounds.assign(oracle_estimate=[1.1, -6000.0], oracle_se=[0.1, 1000.0])
    w = simulation_study.summarize(wild).iloc[0]
    assert w.controls_degenerate == 1 and w.oracle_rel_bias == pytest.approx(0.1 / 2)  # over the mean truth
    assert s.controls_degenerate == 0
    assert s.coverage_control_95ci == pytest.approx(1.0) and s.coverage_95ci == pytest.approx(0.5)
    # robust MR-Egger's control on exact effects is degenerate: reported as missing, not as a share
    robust = simulation_study.summarize(rounds.assign(estimator="robust MR-Egger")).iloc[0]
    assert (
        robust.rel_bias == pytest.approx(0.25 / 2)
        and np.isnan(robust.oracle_rel_bias)
        and np.isnan(robust.rel_model_error)
    )


def test_a_round_with_a_perfect_model_has_no_model_error(monkeypatch):
    # the oracle control must be the estimators on the oracle's effects of the very instruments the model
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
    out = simulation_study.run_round("none", seed=5, sizes=sizes).set_index("estimator")
    assert out.loc["IVW", "n_loci"] >= 5 and bool(out.loc["IVW", "fidelity_ok"])
    for est in ("IVW", "MR-Egger", "weighted median"):
        assert out.loc[est, "estimate"] == pytest.approx(out.loc[est, "oracle_estimate"], rel=2e-3), est
        assert out.loc[est, "se"] == pytest.approx(out.loc[est, "oracle_se"], rel=2e-3), est
    assert np.isnan(out.loc[simulation_study.NAIVE, "oracle_estimate"])


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
        out = simulation_study.run_round("none", seed=2, sizes=TINY)
    assert not [w for w in caught if issubclass(w.category, train.ConvergenceWarning)]
    assert (out.still_improving == TINY.n_members).all()


def test_summarize_by_hand():
    rounds = pd.DataFrame(
        {
            "scenario": "none",
            "estimator": "IVW",
            "estimate": [1.0, 2.0, 3.0],
            "se": [0.1, 0.1, 0.1],
            "ci_low": [0.8, 1.8, 2.8],
            "ci_high": [1.2, 2.2, 3.2],
            "tau": [0.5, 0.5, 0.5],
            "truth": [1.1, 2.5, 3.0],
            "local_coverage": [0.5, 1.0, 0.0],
            "n_loci": [10, 10, 10],
        }
    )
    s = simulation_study.summarize(rounds).iloc[0]
    assert s.bias == pytest.approx((-0.1 - 0.5 + 0) / 3)
    assert s.rmse == pytest.approx(np.sqrt((0.01 + 0.25) / 3))
    assert s.coverage_95ci == pytest.approx(2 / 3) and s.coverage_2tau == pytest.approx(1.0)
    assert s.local_ci_coverage == pytest.approx(0.5)
