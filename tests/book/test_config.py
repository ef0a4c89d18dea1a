import numpy as np
import pandas as pd
import pytest

from deepmr_utils.book import config


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

    from deepmr_utils import train
    from deepmr_utils.book import simulation_study

    s = config.sizes("method", "paper")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.n_boot = 1
    sim = config.sizes("simulation", "default")
    assert isinstance(sim.study, simulation_study.StudySizes)
    assert 5 <= sim.rounds < config.sizes("simulation", "paper").rounds
    assert sim.study == simulation_study.StudySizes()  # the default scale is the study's defaults
    bp = config.sizes("bpnet", "quick")
    assert isinstance(bp.train, train.TrainConfig) and bp.train.max_epochs == 25
    ds = config.sizes("deepsea", "paper")
    assert ds.widths == (320, 480, 960) and ds.hidden == 925 and ds.length == 1000 and ds.mc_passes == 50
    assert ds.batch_norm is False  # the published model at the paper's scale
    assert config.sizes("deepsea", "default").batch_norm is True
    assert config.sizes("deepsea", "quick").batch_norm is False


def test_set_seed_reproducible():
    import torch

    a = config.set_seed(5).normal(size=3), torch.rand(2)
    b = config.set_seed(5).normal(size=3), torch.rand(2)
    assert np.array_equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert config.default_device().type in ("cpu", "cuda")


def test_claims_report_margins_and_every_failure(capsys):
    from deepmr_utils.book import claims

    table = claims.check([("r above a floor", 0.9, ">", 0.6), ("bias below a ceiling", 0.05, "<", 0.1)])
    assert table.margin.tolist() == pytest.approx([0.5, 0.5]) and table.ok.all()
    assert "r above a floor" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=r"first: 0.5 is not > 0.6; third: nan is not < 1"):
        claims.check([("first", 0.5, ">", 0.6), ("second", 2, ">=", 2), ("third", float("nan"), "<", 1)])
    with pytest.raises(ValueError, match="op must be one of"):
        claims.check([("bad", 1, "==", 1)])


def test_the_claims_ledger_is_written_before_a_failure_and_merges_cells(monkeypatch, tmp_path):
    from deepmr_utils.book import claims

    monkeypatch.setenv("DEEPMR_SCALE", "quick")
    monkeypatch.setenv("DEEPMR_SEED_OFFSET", "2")
    ledger = tmp_path / "chapter" / "claims.csv"
    claims.check([("a", 1.0, ">", 0.5), ("b", 1.0, "<", 2.0)], ledger=ledger, show=False)
    with pytest.raises(AssertionError, match="c: 3 is not < 2"):
        claims.check([("b", 1.5, "<", 2.0), ("c", 3.0, "<", 2.0)], ledger=ledger, show=False)
    table = pd.read_csv(ledger)
    assert table.claim.tolist() == ["a", "b", "c"]  # b replaced by the later cell, c kept although it failed
    assert table.value.tolist() == [1.0, 1.5, 3.0] and table.ok.tolist() == [True, True, False]
    assert (table.scale == "quick").all() and (table.seed_offset == 2).all()
    # a claim too small to show at quick: evaluated and stated there, asserted only where it can hold
    only = claims.Only(("default", "paper"), "25 loci per TF at quick")
    out = claims.check([("d", 0.1, ">", 0.5, only)], ledger=ledger, show=False)
    assert (
        not out.ok[0] and not out.asserted[0] and out.scale_note[0] == "not asserted at quick: 25 loci per TF at quick"
    )
    monkeypatch.setenv("DEEPMR_SCALE", "default")
    with pytest.raises(AssertionError, match="d: 0.1 is not > 0.5"):
        claims.check([("d", 0.1, ">", 0.5, only)], show=False)
    gate = claims.If(False, "the exposure was not learned (r 0.30 < 0.8)")
    out = claims.check([("f", 0.1, ">", 0.5, gate)], show=False)
    assert not out.asserted[0] and out.scale_note[0] == "not asserted: the exposure was not learned (r 0.30 < 0.8)"
    with pytest.raises(AssertionError, match="g: 0.1 is not > 0.5"):
        claims.check([("g", 0.1, ">", 0.5, claims.If(True, "learned"))], show=False)
    with pytest.raises(TypeError, match="must be claims.Only or claims.If"):
        claims.check([("e", 0.1, ">", 0.5, "quick")], show=False)


def test_chapter_seeds_shift_with_the_environment(monkeypatch):
    monkeypatch.delenv("DEEPMR_SEED_OFFSET", raising=False)
    assert config.chapter_seed(2015) == 2015
    monkeypatch.setenv("DEEPMR_SEED_OFFSET", "3")
    assert config.chapter_seed(2015) == 2018
    monkeypatch.setenv("DEEPMR_SEED_OFFSET", "three")
    with pytest.raises(ValueError, match="DEEPMR_SEED_OFFSET must be an integer, got 'three'"):
        config.chapter_seed(2015)


def test_results_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("DEEPMR_RESULTS", str(tmp_path / "quick"))
    assert config.results_dir("bpnet") == tmp_path / "quick" / "bpnet" and (tmp_path / "quick" / "bpnet").is_dir()
    monkeypatch.delenv("DEEPMR_RESULTS")
    assert config.results_root().name == "results"  # the repository's results/ (not created by this test)
