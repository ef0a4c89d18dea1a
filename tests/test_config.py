import numpy as np
import pytest

from deepmr_utils import config


def test_scale_from_environment(monkeypatch):
    monkeypatch.delenv("DEEPMR_SCALE", raising=False)
    assert config.get_scale() == "default"
    monkeypatch.setenv("DEEPMR_SCALE", "quick")
    assert config.get_scale() == "quick"
    assert config.sizes("method").scale == "quick"
    assert config.sizes("method").n_boot < config.sizes("method", "default").n_boot


def test_unknown_scale_is_an_error(monkeypatch):
    monkeypatch.setenv("DEEPMR_SCALE", "fast")
    with pytest.raises(ValueError, match="DEEPMR_SCALE must be one of"):
        config.sizes("method")
    with pytest.raises(ValueError, match="unknown chapter"):
        config.sizes("nope", "quick")


def test_sizes_are_typed_and_read_only():
    import dataclasses

    from deepmr_utils import simulation_study, train

    s = config.sizes("method", "paper")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.n_boot = 1
    sim = config.sizes("simulation", "default")
    assert isinstance(sim.study, simulation_study.StudySizes) and sim.rounds >= 10
    assert sim.study == simulation_study.StudySizes()  # the default scale is the study's defaults
    bp = config.sizes("bpnet", "quick")
    assert isinstance(bp.train, train.TrainConfig) and bp.train.max_epochs == 25
    ds = config.sizes("deepsea", "paper")
    assert ds.widths == (320, 480, 960) and ds.hidden == 925 and ds.length == 1000 and ds.mc_passes == 50


def test_set_seed_reproducible():
    import torch

    a = config.set_seed(5).normal(size=3), torch.rand(2)
    b = config.set_seed(5).normal(size=3), torch.rand(2)
    assert np.array_equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert config.default_device().type in ("cpu", "cuda")


def test_claims_report_margins_and_every_failure(capsys):
    from deepmr_utils import claims

    table = claims.check([("r above a floor", 0.9, ">", 0.6), ("bias below a ceiling", 0.05, "<", 0.1)])
    assert table.margin.tolist() == pytest.approx([0.5, 0.5]) and table.ok.all()
    assert "r above a floor" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=r"first: 0.5 is not > 0.6; third: nan is not < 1"):
        claims.check([("first", 0.5, ">", 0.6), ("second", 2, ">=", 2), ("third", float("nan"), "<", 1)])
    with pytest.raises(ValueError, match="op must be one of"):
        claims.check([("bad", 1, "==", 1)])


def test_results_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPMR_RESULTS", str(tmp_path / "quick"))
    assert config.results_dir("bpnet") == tmp_path / "quick" / "bpnet" and (tmp_path / "quick" / "bpnet").is_dir()
    monkeypatch.delenv("DEEPMR_RESULTS")
    assert config.results_root().name == "results"  # the repository's results/ (not created by this test)
