"""The run folder (deepmr_utils.runs): one manifest, the run's own sequences, a typed read-back, and
folders of another format refused by what changed."""

import json

import numpy as np
import pytest
import torch

from deepmr_utils import pipeline, runs
from deepmr_utils import sequence as sq
from deepmr_utils.ism import ISMOptions
from deepmr_utils.models import DilatedResidualNet


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    models = [DilatedResidualNet(3, 8, 3, stem_kernel=5).eval() for _ in range(2)]
    return models, sq.random_sequences(6, 40, seed=3)


def test_a_finished_run_reads_back_whole(setup, tmp_path):
    models, X = setup
    loci = [f"peak{i}" for i in range(6)]
    options = ISMOptions(positions=(5, 25))
    names, out = ["a", "b", "c"], tmp_path / "r"
    effect, se = pipeline.effects(models, X, options=options, loci=loci, output_names=names, chunk_size=4, out=out,
                                  progress=False, record={"note": "test"})  # fmt: skip
    run = pipeline.read_effects(tmp_path / "r")
    assert isinstance(run, runs.Run) and run.loci == loci and run.output_names == ["a", "b", "c"]
    np.testing.assert_array_equal(run.effect, effect)
    np.testing.assert_array_equal(run.se, se)
    np.testing.assert_array_equal(run.X, X)
    assert list(run.positions) == list(range(5, 25))
    assert run.manifest["record"] == {"note": "test"} and run.manifest["format"] == runs.FORMAT
    assert repr(run) == f"Run({str(tmp_path / 'r')!r}: 6 sequences x 20 positions x 3 outputs ['a', 'b', 'c'])"
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "effects_00000.npz", "effects_00001.npz", "manifest.json", "sequences.npz"
    ]  # fmt: skip


def test_a_lost_sequences_file_is_rewritten_by_the_rerun(setup, tmp_path):
    models, X = setup
    pipeline.effects(models, X, out=tmp_path / "r", progress=False)
    (tmp_path / "r" / "sequences.npz").unlink()
    with pytest.raises(ValueError, match="sequences.npz is missing"):
        pipeline.read_effects(tmp_path / "r")
    pipeline.effects(models, X, out=tmp_path / "r", progress=False)
    np.testing.assert_array_equal(pipeline.read_effects(tmp_path / "r").X, X)


def test_a_folder_of_the_old_format_is_refused_by_what_changed(setup, tmp_path):
    models, X = setup
    out = tmp_path / "r"
    pipeline.effects(models, X, out=out, progress=False)
    info = json.loads((out / "manifest.json").read_text())
    del info["format"]  # format 1 had no such field
    (out / "manifest.json").write_text(json.dumps(info))
    for call in (lambda: pipeline.effects(models, X, out=out, progress=False), lambda: pipeline.read_effects(out)):
        with pytest.raises(ValueError, match=r"format 1 .*deepmr\.json.* format 2 .*rerun into a new folder"):
            call()


def test_a_refusal_names_the_option_that_changed(setup, tmp_path):
    models, X = setup
    pipeline.effects(models, X, out=tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match=r"differs in: options\.ddof\)"):
        pipeline.effects(models, X, options=ISMOptions(ddof=0), out=tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match=r"differs in: options\.loci\)"):
        pipeline.effects(models, X, loci=list("abcdef"), out=tmp_path / "r", progress=False)


def test_the_fingerprint_is_the_hash_of_the_pinned_fields_only(setup):
    models, X = setup
    a = runs.fingerprint(X, models, {"x": 1})
    assert a == runs.fingerprint(X.clone(), models, {"x": 1})
    assert a["fingerprint"] != runs.fingerprint(X, models, {"x": 2})["fingerprint"]
    assert a["fingerprint"] != runs.fingerprint(X[:, :, :-1], models, {"x": 1})["fingerprint"]
    assert set(a) == {"fingerprint", "format", "sequences", "weights", "model_code", "options.x"}
