import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from deepmr_utils import ism, mr, pipeline, runs, uncertainty
from deepmr_utils import sequence as sq
from deepmr_utils.instruments import Selection
from deepmr_utils.ism import ISMOptions
from deepmr_utils.models import DilatedResidualNet


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    models = [DilatedResidualNet(3, 8, 3, stem_kernel=5, output_names=["a", "b", "c"]) for _ in range(3)]
    X = sq.random_sequences(10, 60, seed=5)
    return models, X


def test_variant_table_feeds_per_locus(setup):
    models, X = setup
    tab = pipeline.variant_effects(
        models, X, exposure="a", outcome="c", chunk_size=4, progress=False, select=Selection("top_k", k=8)
    )
    assert set(tab.exposure) == {"a"} and set(tab.outcome) == {"c"}
    assert (tab.groupby("locus").size() == 8).all()
    res = mr.per_locus(tab, "ivw")
    assert len(res) == 10 and (res.status == "ok").all()
    cand = pipeline.variant_effects(
        models, X, exposure=0, outcome=2, chunk_size=4, progress=False, select=Selection("all")
    )
    assert len(cand) == 10 * 60 * 3
    with pytest.raises(ValueError, match="'z' is not an output"):
        pipeline.variant_effects(models, X, exposure="z", outcome="a", progress=False)


def _count_ism_calls(monkeypatch, die_at=None) -> list:
    """Record the chunk size of every ISM call; with ``die_at=k`` the k-th call is killed."""
    real, calls = ism.PreparedISM.run, []

    def counted(self, X, positions=None):
        calls.append(X.shape[0])
        if len(calls) == die_at:
            raise KeyboardInterrupt("killed")
        return real(self, X, positions)

    monkeypatch.setattr(ism.PreparedISM, "run", counted)
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
    a = pipeline.variant_effects(models, seqs, exposure="a", outcome="b", progress=False, select=Selection("all"))
    b = pipeline.variant_effects(
        models, seqs, exposure="a", outcome="b", progress=False, select=Selection("all"), calibration=cal
    )
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
    assert sorted(p.name for p in out.iterdir()) == ["effects_00000.npz", "manifest.json", "sequences.npz"]
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
from deepmr_utils.ism import ISMOptions
from deepmr_utils.models import DilatedResidualNet

def pick(y):
    return y[:, :2]

d = torch.load({str(tmp_path / "inputs.pt")!r})
models = [DilatedResidualNet(3, 8, 3, stem_kernel=5) for _ in d["models"]]
for m, sd in zip(models, d["models"]):
    m.load_state_dict(sd)
pipeline.effects(models, d["X"][:4], options=ISMOptions(outputs=pick), chunk_size=2,
                 out={str(tmp_path / "run")!r}, progress=False)
"""
    for _ in range(2):  # the second process finds the first one's manifest and must accept it
        subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    assert runs.describe(torch.sigmoid).endswith("sigmoid") and "0x" not in runs.describe(pipeline.effects)


# ----------------------------------------------------------------------------- no silent wrong numbers


def test_names_resolve_against_the_selected_outputs(setup):
    """exposure='a' with outputs=[2, 0, 1] is the second selected column, not the model's first."""
    models, X = setup
    sub = pipeline.variant_effects(
        models,
        X[:3],
        options=ISMOptions(outputs=[2, 0, 1]),
        exposure="a",
        outcome="c",
        progress=False,
        select=Selection("all"),
    )
    full = pipeline.variant_effects(models, X[:3], exposure=0, outcome=2, progress=False, select=Selection("all"))
    np.testing.assert_array_equal(sub.bx.to_numpy(), full.bx.to_numpy())  # output "a" in both
    np.testing.assert_array_equal(sub.by.to_numpy(), full.by.to_numpy())
    assert set(sub.exposure) == {"a"} and set(sub.outcome) == {"c"}
    # indices are into the selected outputs too: 1 is "a" here
    by_index = pipeline.variant_effects(
        models,
        X[:3],
        options=ISMOptions(outputs=[2, 0, 1]),
        exposure=1,
        outcome=0,
        progress=False,
        select=Selection("all"),
    )
    np.testing.assert_array_equal(by_index.bx.to_numpy(), full.bx.to_numpy())
    assert set(by_index.outcome) == {"c"}
    with pytest.raises(ValueError, match="'b' is not an output; the selected outputs are"):
        pipeline.variant_effects(
            models, X[:3], options=ISMOptions(outputs=[0, 2]), exposure="b", outcome="a", progress=False
        )
    with pytest.raises(ValueError, match="selected outputs have no names"):
        pipeline.variant_effects(
            models, X[:3], options=ISMOptions(outputs=_first_two), exposure="a", outcome="b", progress=False
        )
    named = pipeline.variant_effects(
        models,
        X[:3],
        options=ISMOptions(outputs=_first_two),
        exposure="y",
        outcome="x",
        output_names=["x", "y"],
        progress=False,
        select=Selection("all"),
    )
    np.testing.assert_array_equal(named.by.to_numpy(), full.bx.to_numpy())


def _first_two(y):
    return y[:, :2]


def test_outputs_must_be_integer_indices(setup):
    models, X = setup
    for bad, err in (([], ValueError), ([0.5, 1], TypeError), ("a", TypeError), (True, TypeError)):
        with pytest.raises(err, match="outputs"):
            pipeline.effects(models, X[:2], options=ISMOptions(outputs=bad), progress=False)


def test_positions_window_and_list_are_different_runs(setup, tmp_path):
    models, X = setup
    out = tmp_path / "run"
    window = pipeline.variant_effects(
        models,
        X[:2],
        options=ISMOptions(positions=(0, 10)),
        exposure="a",
        outcome="b",
        out=out,
        progress=False,
        select=Selection("all"),
    )
    assert sorted(set(window.position)) == list(range(10))
    with pytest.raises(ValueError, match="holds a different run"):
        pipeline.variant_effects(
            models,
            X[:2],
            options=ISMOptions(positions=[0, 10]),
            exposure="a",
            outcome="b",
            out=out,
            progress=False,
            select=Selection("all"),
        )


def test_anonymous_outputs_need_a_key(setup, tmp_path):
    models, X = setup
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="anonymous function"):
        pipeline.effects(models, X[:2], options=ISMOptions(outputs=lambda y: y[:, :2]), out=out, progress=False)
    pipeline.effects(
        models, X[:2], options=ISMOptions(outputs=lambda y: y[:, :2], outputs_key="first two"), out=out, progress=False
    )
    with pytest.raises(ValueError, match="holds a different run"):
        pipeline.effects(
            models,
            X[:2],
            options=ISMOptions(outputs=lambda y: y[:, 1:], outputs_key="last two"),
            out=out,
            progress=False,
        )
    # two partials of one function differ by their arguments
    from functools import partial

    assert runs.describe(partial(np.take, indices=[0])) != runs.describe(partial(np.take, indices=[1]))


def test_calibration_state_is_part_of_the_fingerprint(setup, tmp_path):
    models, X = setup
    rng = np.random.default_rng(0)
    members = rng.normal(size=(1500, 3))
    y = rng.normal(size=1500)
    y2 = y.copy()
    y2[np.argsort(y - members.mean(axis=1))[700]] += 1e-3  # one PIT value in the middle moves
    cals = [uncertainty.IsotonicCalibration().fit(members, t, ids=[f"cal{i}" for i in range(1500)]) for t in (y, y2)]
    assert repr(cals[0]) == repr(cals[1])  # the repr hides the fitted arrays ...
    out = tmp_path / "run"
    pipeline.effects(models, X[:2], calibration=cals[0], out=out, progress=False)
    with pytest.raises(ValueError, match="holds a different run"):  # ... the fingerprint does not
        pipeline.effects(models, X[:2], calibration=cals[1], out=out, progress=False)


def test_foreign_and_unreadable_chunks_are_recomputed(setup, tmp_path):
    models, X = setup
    a, b = tmp_path / "a", tmp_path / "b"
    want = pipeline.variant_effects(
        models, X[:4], exposure="a", outcome="b", chunk_size=2, out=a, progress=False, select=Selection("all")
    )
    other = pipeline.variant_effects(
        models, X[4:8], exposure="a", outcome="b", chunk_size=2, out=b, progress=False, select=Selection("all")
    )
    assert not np.allclose(want.bx.to_numpy()[:10], other.bx.to_numpy()[:10])
    (a / "chunk_00001.parquet").write_bytes((b / "chunk_00001.parquet").read_bytes())  # another run's chunk
    with pytest.warns(UserWarning, match="chunk_00001.parquet belongs to another run; recomputing"):
        got = pipeline.variant_effects(
            models, X[:4], exposure="a", outcome="b", chunk_size=2, out=a, progress=False, select=Selection("all")
        )
    pd.testing.assert_frame_equal(got, want)
    (a / "chunk_00001.parquet").write_bytes((a / "chunk_00000.parquet").read_bytes())  # the wrong slot
    with pytest.warns(UserWarning, match="belongs to chunk 0, not chunk 1"):
        got = pipeline.variant_effects(
            models, X[:4], exposure="a", outcome="b", chunk_size=2, out=a, progress=False, select=Selection("all")
        )
    pd.testing.assert_frame_equal(got, want)
    (a / "chunk_00000.parquet").write_bytes(b"PAR1 truncated")
    with pytest.warns(UserWarning, match="chunk_00000.parquet is unreadable"):
        got = pipeline.variant_effects(
            models, X[:4], exposure="a", outcome="b", chunk_size=2, out=a, progress=False, select=Selection("all")
        )
    pd.testing.assert_frame_equal(got, want)
    # the same for .npz chunks
    e = tmp_path / "e"
    eff = pipeline.effects(models, X[:4], chunk_size=2, out=e, progress=False)
    (e / "effects_00001.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.warns(UserWarning, match="effects_00001.npz is unreadable"):
        again = pipeline.effects(models, X[:4], chunk_size=2, out=e, progress=False)
    np.testing.assert_array_equal(again[0], eff[0])


def test_truncated_manifest_names_the_file(setup, tmp_path):
    models, X = setup
    out = tmp_path / "run"
    pipeline.effects(models, X[:2], out=out, progress=False)
    text = (out / "manifest.json").read_text()
    (out / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"manifest.json is unreadable .* Delete that file and rerun"):
        pipeline.effects(models, X[:2], out=out, progress=False)
    (out / "manifest.json").unlink()  # as the message says: the chunks are checked and reused
    again = pipeline.effects(models, X[:2], out=out, progress=False)
    assert again[0].shape == (2, 60, 4, 3)


def test_partial_outputs_resume_in_a_new_process(setup, tmp_path):
    models, X = setup
    torch.save({"models": [m.state_dict() for m in models], "X": X}, tmp_path / "inputs.pt")
    script = f"""
from functools import partial
import torch
from deepmr_utils import pipeline
from deepmr_utils.ism import ISMOptions
from deepmr_utils.models import DilatedResidualNet

d = torch.load({str(tmp_path / "inputs.pt")!r})
models = [DilatedResidualNet(3, 8, 3, stem_kernel=5) for _ in d["models"]]
for m, sd in zip(models, d["models"]):
    m.load_state_dict(sd)
pick = partial(torch.narrow, dim=1, start=0, length=2)
pipeline.effects(models, d["X"][:4], options=ISMOptions(outputs=pick), chunk_size=2,
                 out={str(tmp_path / "run")!r}, progress=False)
"""
    for _ in range(2):
        subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)


def test_kill_9_mid_run_then_rerun_equals_an_uninterrupted_run(setup, tmp_path):
    """A real SIGKILL of the writing process, then a rerun: the table is exactly the one-shot table."""
    import os
    import signal
    import time

    models, X = setup
    torch.save({"models": [m.state_dict() for m in models], "X": X}, tmp_path / "inputs.pt")
    out = tmp_path / "run"
    script = f"""
import time, torch
from deepmr_utils import pipeline
from deepmr_utils.instruments import Selection
from deepmr_utils.models import DilatedResidualNet

d = torch.load({str(tmp_path / "inputs.pt")!r})
models = [DilatedResidualNet(3, 8, 3, stem_kernel=5, output_names=["a", "b", "c"]) for _ in d["models"]]
for m, sd in zip(models, d["models"]):
    m.load_state_dict(sd)
from deepmr_utils import ism
real = ism.PreparedISM.run
def slow(*a, **k):
    time.sleep(0.3)
    return real(*a, **k)
ism.PreparedISM.run = slow
pipeline.variant_effects(models, d["X"], exposure="a", outcome="b", chunk_size=1, out={str(out)!r},
                         progress=False, select=Selection("all"))
"""
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.time() + 60
    while len(list(out.glob("chunk_*.parquet"))) < 3 and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(out.glob("chunk_*.parquet")))
    assert 3 <= done < 10
    resumed = pipeline.variant_effects(
        models, X, exposure="a", outcome="b", chunk_size=1, out=out, progress=False, select=Selection("all")
    )
    full = pipeline.variant_effects(
        models, X, exposure="a", outcome="b", chunk_size=1, progress=False, select=Selection("all")
    )
    pd.testing.assert_frame_equal(resumed, full, check_exact=True)


# ---------------------------------------------------------------- the run folder pins behaviour, not only weights
_MODEL_SOURCE = """
import torch
from torch import nn

SCALE = {scale}


class Edited(nn.Module):
    def __init__(self, gain=1.0):
        super().__init__()
        self.conv = nn.Conv1d(4, 2, 3, padding=1)
        self.gain = gain

    def forward(self, x):
        return self.gain * SCALE * {body}
"""


def _module(tmp_path, name, scale="1.0", body="self.conv(x).mean(-1)"):
    import importlib

    (tmp_path / f"{name}.py").write_text(_MODEL_SOURCE.format(scale=scale, body=body))
    sys.path.insert(0, str(tmp_path))
    try:
        sys.modules.pop(name, None)
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))


def _members(mod, **kw):
    torch.manual_seed(0)
    members = [mod.Edited(**kw) for _ in range(2)]
    state = [m.state_dict() for m in members]
    return members, state


@pytest.mark.parametrize(
    "change, field",
    [
        ({"body": "self.conv(x).amax(-1)"}, "model_code"),  # forward edited in place, same weights
        ({"gain": 2.0}, "model_code"),  # a plain attribute (DeepSEA(output='logit') vs 'probability')
        ({"scale": "3.0"}, "model_outputs"),  # code and weights read the same; only the behaviour tells
    ],
)
def test_a_changed_model_with_the_same_weights_is_refused(tmp_path, change, field):
    """Once the same weights behind another forward got the old numbers back, with no error."""
    X = sq.random_sequences(4, 30, seed=1)
    old, state = _members(_module(tmp_path, "edited_a"))
    out = tmp_path / "run"
    pipeline.effects(old, X, chunk_size=2, out=out, progress=False)
    source = {k: v for k, v in change.items() if k in ("body", "scale")}
    mod = _module(tmp_path, "edited_a", **source) if source else _module(tmp_path, "edited_a")
    if "scale" in change:  # same source text: the constant changes after import, as a config edit would
        mod = _module(tmp_path, "edited_a")
        mod.SCALE = float(change["scale"])
    new = [mod.Edited(**{k: v for k, v in change.items() if k == "gain"}) for _ in state]
    for m, sd in zip(new, state):
        m.load_state_dict(sd)
    with pytest.raises(ValueError, match=f"differs in: .*{field}|{field}"):
        pipeline.effects(new, X, chunk_size=2, out=out, progress=False)


class _ScriptA(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv1d(4, 2, 3, padding=1)

    def forward(self, x):
        return self.conv(x).mean(-1)


class _ScriptB(_ScriptA):
    def forward(self, x):
        return self.conv(x).amax(-1)


def test_torchscript_members_with_edited_code_are_refused(tmp_path):
    """Re-exported TorchScript with the same weights: every member's class is RecursiveScriptModule."""
    X = sq.random_sequences(4, 30, seed=1)
    torch.manual_seed(0)
    a = [_ScriptA() for _ in range(2)]
    b = [_ScriptB() for _ in a]
    for m, src in zip(b, a):
        m.load_state_dict(src.state_dict())
    out = tmp_path / "run"
    pipeline.effects([torch.jit.script(m) for m in a], X, out=out, progress=False)
    with pytest.raises(ValueError, match="model_code"):
        pipeline.effects([torch.jit.script(m) for m in b], X, out=out, progress=False)


def test_a_run_traces_its_engine_once_for_all_chunks(setup, monkeypatch):
    """One prepared engine per run: the members are traced once, not once per chunk (nor twice with rc_average)."""
    from deepmr_utils import _windowed

    models, X = setup
    traced = []
    init = _windowed.WindowedModel.__init__

    def counting(self, *a, **k):
        traced.append(1)
        init(self, *a, **k)

    monkeypatch.setattr(_windowed.WindowedModel, "__init__", counting)
    options = ISMOptions(engine="windowed", rc_average=True)
    got = pipeline.effects(models, X, options=options, chunk_size=3, progress=False)  # 4 chunks
    assert len(traced) == len(models)
    want = uncertainty.paired_effects(ism.saturation_mutagenesis(models, X, engine="windowed", rc_average=True), X)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-6, equal_nan=True)
    prepared = ism.prepare(models, X.shape[2], options)
    assert repr(prepared).startswith(f"PreparedISM({len(models)} model(s), 60 bp, windowed")
    with pytest.raises(ValueError, match="prepared for 60 bp sequences, got 59 bp"):
        prepared.run(X[:, :, :59])
