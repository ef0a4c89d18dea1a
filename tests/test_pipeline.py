import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from deepmr_utils import ism, mr, pipeline, uncertainty
from deepmr_utils import sequence as sq
from deepmr_utils.models import DilatedResidualNet


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    models = [DilatedResidualNet(3, 8, 3, stem_kernel=5, output_names=["a", "b", "c"]) for _ in range(3)]
    X = sq.random_sequences(10, 60, seed=5)
    return models, X


def test_variant_table_feeds_per_locus(setup):
    models, X = setup
    tab = pipeline.variant_effects(models, X, exposure="a", outcome="c", chunk_size=4, progress=False,
                                   select={"strategy": "top_k", "k": 8})
    assert set(tab.exposure) == {"a"} and set(tab.outcome) == {"c"}
    assert (tab.groupby("locus").size() == 8).all()
    res = mr.per_locus(tab, "ivw")
    assert len(res) == 10 and (res.status == "ok").all()
    cand = pipeline.variant_effects(models, X, exposure=0, outcome=2, chunk_size=4, progress=False, select=False)
    assert len(cand) == 10 * 60 * 3
    with pytest.raises(ValueError, match="'z' is not an output"):
        pipeline.variant_effects(models, X, exposure="z", outcome="a", progress=False)


def _count_ism_calls(monkeypatch, die_at=None) -> list:
    """Record the chunk size of every ISM call; with ``die_at=k`` the k-th call is killed."""
    real, calls = pipeline.saturation_mutagenesis, []

    def counted(*args, **kw):
        calls.append(args[1].shape[0])
        if len(calls) == die_at:
            raise KeyboardInterrupt("killed")
        return real(*args, **kw)

    monkeypatch.setattr(pipeline, "saturation_mutagenesis", counted)
    return calls


def test_resume_after_interruption(setup, tmp_path, monkeypatch):
    models, X = setup
    full = pipeline.variant_effects(models, X, exposure="a", outcome="b", chunk_size=3, progress=False)

    _count_ism_calls(monkeypatch, die_at=3)  # chunks 0 and 1 finish, chunk 2 dies
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        pipeline.variant_effects(models, X, exposure="a", outcome="b", chunk_size=3, out=out, progress=False)
    assert sorted(p.name for p in out.glob("chunk_*.parquet")) == ["chunk_00000.parquet", "chunk_00001.parquet"]
    assert not list(out.glob("*.tmp"))

    monkeypatch.undo()
    calls = _count_ism_calls(monkeypatch)
    resumed = pipeline.variant_effects(models, X, exposure="a", outcome="b", chunk_size=3, out=out, progress=False)
    assert calls == [3, 1]  # only chunks 2 and 3 were computed
    pd.testing.assert_frame_equal(resumed, full)

    calls.clear()
    again = pipeline.variant_effects(models, X, exposure="a", outcome="b", chunk_size=3, out=out, progress=False)
    assert calls == []  # a finished run reruns without computing anything
    pd.testing.assert_frame_equal(again, full)


def test_refuses_to_mix_runs(setup, tmp_path):
    models, X = setup
    out = tmp_path / "run"
    pipeline.variant_effects(models, X[:4], exposure="a", outcome="b", chunk_size=2, out=out, progress=False)
    with pytest.raises(ValueError, match="holds a different run"):
        pipeline.variant_effects(models, X[:4], exposure="a", outcome="c", chunk_size=2, out=out, progress=False)
    with pytest.raises(ValueError, match="holds a different run"):
        pipeline.variant_effects(models[:2], X[:4], exposure="a", outcome="b", chunk_size=2, out=out, progress=False)


def test_strings_and_calibration(setup):
    from deepmr_utils.uncertainty import VarianceScaling

    models, X = setup
    seqs = sq.decode(X[:3])
    cal = VarianceScaling(lam=4.0)
    a = pipeline.variant_effects(models, seqs, exposure="a", outcome="b", progress=False, select=False)
    b = pipeline.variant_effects(models, seqs, exposure="a", outcome="b", progress=False, select=False,
                                 calibration=cal)
    assert (b.bx - a.bx).abs().max() < 1e-6
    assert ((b.bxse / a.bxse).dropna() - 2.0).abs().max() < 1e-4


def test_effects_of_all_outputs_resume_and_match_one_shot(setup, tmp_path, monkeypatch):
    models, X = setup
    want = uncertainty.paired_effects(ism.saturation_mutagenesis(models, X), X)
    got = pipeline.effects(models, X, chunk_size=4, progress=False)
    for g, w in zip(got, want):
        assert g.shape == (10, 60, 4, 3)
        np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-6, equal_nan=True)

    _count_ism_calls(monkeypatch, die_at=2)  # chunk 0 finishes, chunk 1 dies
    out = tmp_path / "effects"
    with pytest.raises(KeyboardInterrupt):
        pipeline.effects(models, X, chunk_size=4, out=out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["effects_00000.npz", "manifest.json"]
    monkeypatch.undo()
    calls = _count_ism_calls(monkeypatch)
    resumed = pipeline.effects(models, X, chunk_size=4, out=out, progress=False)
    assert calls == [4, 2]
    for r, g in zip(resumed, got):
        np.testing.assert_array_equal(r, g)
    with pytest.raises(ValueError, match="holds a different run"):
        pipeline.effects(models[:2], X, chunk_size=4, out=out, progress=False)


def test_run_folder_fingerprint_is_stable_across_processes(setup, tmp_path):
    """A function passed as ``outputs`` is pinned by name, not address: a rerun in a new process resumes."""
    models, X = setup
    torch.save({"models": [m.state_dict() for m in models], "X": X}, tmp_path / "inputs.pt")
    script = f"""
import torch
from deepmr_utils import pipeline
from deepmr_utils.models import DilatedResidualNet

def pick(y):
    return y[:, :2]

d = torch.load({str(tmp_path / 'inputs.pt')!r})
models = [DilatedResidualNet(3, 8, 3, stem_kernel=5) for _ in d["models"]]
for m, sd in zip(models, d["models"]):
    m.load_state_dict(sd)
pipeline.effects(models, d["X"][:4], outputs=pick, chunk_size=2, out={str(tmp_path / 'run')!r}, progress=False)
"""
    for _ in range(2):  # the second process finds the first one's manifest and must accept it
        subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    assert pipeline._describe(torch.sigmoid).endswith("sigmoid") and "0x" not in pipeline._describe(pipeline.effects)
