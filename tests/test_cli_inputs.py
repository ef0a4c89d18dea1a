"""Every bad input to ``deepmr`` ends in one line and exit status 2: never a traceback, never a silent
result, and never a run folder begun for a command that was refused up front.

A table of bad inputs (options, files, run folders), driven through ``cli.main`` in-process so the
table stays cheap; ``tests/test_cli.py`` runs the command as a subprocess for the exit-code plumbing.
"""

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from deepmr_utils import cli

sys.path.insert(0, str(Path(__file__).parent))
import cli_models  # noqa: E402

LENGTH = 40


class ThreeTrack(cli_models.TwoTrack):
    """Like TwoTrack, with a third output: members that disagree on the output count."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(6, 3)


class DenseHead(nn.Module):
    """A dense layer over the flattened (C, 40) features: any other length fails inside the model."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(4, 3, 5, padding=2)
        self.fc = nn.Linear(3 * LENGTH, 2)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).flatten(1))


class Dropped(cli_models.TwoTrack):
    """With a Dropout layer: scripted, its masks cannot be controlled (once it was told it had none)."""

    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.2)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.conv(x)).mean(dim=2)))


class Proba(cli_models.TwoTrack):
    """Probabilities that saturate to exactly 1 in float32 for some inputs."""

    def forward(self, x):
        return torch.sigmoid(1e4 * self.head(torch.relu(self.conv(x)).mean(dim=2)))


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    kinds = {"m1": cli_models.TwoTrack, "m2": cli_models.TwoTrack, "three": ThreeTrack, "dense": DenseHead,
             "proba": Proba, "dropped": Dropped}  # fmt: skip
    for seed, (name, cls) in enumerate(kinds.items()):
        torch.manual_seed(seed)
        torch.jit.save(torch.jit.script(cls().eval()), d / f"{name}.pt")
    torch.save(cli_models.TwoTrack().state_dict(), d / "w.state.pt")
    torch.save(ThreeTrack().state_dict(), d / "three.state.pt")
    data = (d / "m1.pt").read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    (d / "garbage.pt2").write_bytes(b"PK\x03\x04 not really a zip")
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), 60)) for _ in range(6)]
    (d / "seqs.fa").write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(seqs)))
    (d / "empty.fa").write_text("")
    (d / "withN.fa").write_text(">n\n" + "ACGT" * 5 + "NNNN" + "ACGT" * 10 + "\n")
    (d / "binary.fa").write_bytes(bytes(range(256)) * 4)
    (d / "short.fa").write_text(">short\nACGTACGT\n")
    chrom = "".join(s + "A" * 20 for s in seqs)
    (d / "genome.fa").write_text(">chr1\n" + "\n".join(chrom[i : i + 60] for i in range(0, len(chrom), 60)) + "\n")
    (d / "ragged.fa").write_text(">chr1\n" + chrom[:50] + "\n" + chrom[50:120] + "\n" + chrom[120:170] + "\n")
    (d / "binary_genome.fa").write_bytes(b"\x00\xff" * 500)
    # a stale index: indexed, then replaced by another genome that kept an older date (cp -p, rsync -a)
    import os

    import pyfaidx

    (d / "stale.fa").write_text(">chr1\n" + "\n".join(chrom[i : i + 50] for i in range(0, len(chrom), 50)) + "\n")
    pyfaidx.Fasta(str(d / "stale.fa")).close()
    indexed = os.stat(d / "stale.fa.fai").st_mtime
    (d / "stale.fa").write_text(">chr1\n" + chrom[::-1][:400] + "\n")
    os.utime(d / "stale.fa", (indexed - 60, indexed - 60))
    bed = {
        "ok": "chr1\t0\t60\ts0\n",
        "reversed": "chr1\t60\t0\tr\n",
        "words": "chr1\tstart\tend\tw\n",
        "minus": "chr1\t0\t60\tm\t0\t-\n",
        "two_columns": "chr1\t0\n",
        "other_chrom": "chr9\t0\t60\tx\n",
        "off_end": "chr1\t470\t480\tedge\n",
        "negative": "chr1\t-5\t60\tneg\n",
        "duplicate": "chr1\t0\t60\ta\nchr1\t80\t140\ta\n",
        "empty": "# nothing\n",
    }
    for k, v in bed.items():
        (d / f"{k}.bed").write_text(v)
    (d / "names3.txt").write_text("a\nb\nc\n")
    (d / "names_dup.txt").write_text("a\na\n")
    (d / "names_empty.txt").write_text("# none\n")
    (d / "names_ab.txt").write_text("tfA\ntfB\n")
    (d / "names_ba.txt").write_text("tfB\ntfA\n")
    return d


def _main(argv, capsys):
    code = cli.main([str(a) for a in argv])
    return code, capsys.readouterr().err


TWO = ["--model", "{d}/m1.pt", "--model", "{d}/m2.pt"]
SEQ = ["--sequences", "{d}/seqs.fa"]
EFFECTS_CASES = [
    # (arguments after `effects` (--out added), a phrase the one line must hold)
    (["--model", "{d}/nope.pt", "--model", "{d}/m1.pt", *SEQ], "model file {d}/nope.pt does not exist"),
    (["--model", "cli_models:nope", "--weights", "{d}/w.state.pt", "--model", "{d}/m1.pt", *SEQ], "cannot import"),
    (["--model", "no_such_module:f", "--weights", "{d}/w.state.pt", "--model", "{d}/m1.pt", *SEQ], "cannot import"),
    (["--model", "cli_models:factory", "--model", "{d}/m1.pt", *SEQ], "need as many --weights files"),
    (
        ["--model", "cli_models:factory", "--weights", "{d}/nope.pt", "--model", "{d}/m1.pt", *SEQ],
        "weights file {d}/nope.pt does not exist",
    ),
    (
        ["--model", "cli_models:factory", "--weights", "{d}/seqs.fa", "--model", "{d}/m1.pt", *SEQ],
        "is not a state-dict file",
    ),
    (
        ["--model", "cli_models:factory", "--weights", "{d}/three.state.pt", "--model", "{d}/m1.pt", *SEQ],
        "does not fit cli_models:factory()",
    ),
    (
        ["--model", "{d}/m1.pt", "--weights", "{d}/w.state.pt", "--model", "{d}/m2.pt", *SEQ],
        "need as many --weights files",
    ),
    (["--model", "{d}/seqs.fa", "--model", "{d}/m1.pt", *SEQ], "is not a TorchScript file"),
    (["--model", "{d}/truncated.pt", "--model", "{d}/m1.pt", *SEQ], "is not a TorchScript file"),
    (["--model", "{d}/garbage.pt2", "--model", "{d}/m1.pt", *SEQ], "is not a torch.export program"),
    (["--model", "{d}/m1.pt", "--model", "{d}/three.pt", *SEQ], "different numbers of outputs"),
    (["--model", "{d}/dense.pt", "--model", "{d}/dense.pt", *SEQ, "--length", "50"], "fails on a (1, 4, 50) input"),
    (["--model", "{d}/m1.pt", *SEQ], "one model gives no standard errors"),
    (["--model", "{d}/m1.pt", *SEQ, "--mc-dropout", "1"], "one model gives no standard errors"),
    ([*TWO, *SEQ, "--mc-dropout", "3"], "--mc-dropout samples one model"),
    (["--model", "{d}/dropped.pt", *SEQ, "--mc-dropout", "3"], "TorchScript model has 1 Dropout layers"),
    ([*TWO, *SEQ, "--mc-dropout", "-1"], "--mc-dropout must be >= 0"),
    (["--model", "{d}/m1.pt", *SEQ, "--mc-dropout", "4"], "this one has none"),
    ([*TWO, *SEQ, "--length", "100"], "shorter than the model's input of 100"),
    ([*TWO, *SEQ, "--length", "0"], "--length must be >= 1"),
    ([*TWO, *SEQ, "--length", "-3"], "--length must be >= 1"),
    ([*TWO, *SEQ, "--output-names", "{d}/names3.txt"], "3 output names for a model with 2 outputs"),
    ([*TWO, *SEQ, "--output-names", "{d}/names_dup.txt"], "names some outputs twice"),
    ([*TWO, *SEQ, "--output-names", "{d}/names_empty.txt"], "holds no output names"),
    ([*TWO, *SEQ, "--output-names", "{d}/nope.txt"], "output-names file {d}/nope.txt does not exist"),
    ([*TWO, *SEQ, "--fast", "on"], "--fast is retired: use --engine"),
    ([*TWO, *SEQ, "--device", "foo"], "is not a device name"),
    ([*TWO, *SEQ, "--device", "cuda:7"], "cuda:7"),
    ([*TWO, *SEQ, "--device", "tpu"], "not a device name"),
    ([*TWO, *SEQ, "--workers", "0"], "--workers must be >= 1"),
    ([*TWO, *SEQ, "--workers", "-2"], "--workers must be >= 1"),
    ([*TWO, *SEQ, "--workers", "100000"], "more than the"),
    ([*TWO, *SEQ, "--chunk-size", "0"], "--chunk-size must be >= 1"),
    ([*TWO, *SEQ, "--chunk-size", "-1"], "--chunk-size must be >= 1"),
    ([*TWO, *SEQ, "--batch-size", "0"], "--batch-size must be >= 1"),
    ([*TWO, *SEQ, "--max-n", "-1"], "--max-n must be >= 0"),
    ([*TWO, *SEQ, "--window", "abc"], "--window must be START:STOP"),
    ([*TWO, *SEQ, "--window", "10"], "--window must be START:STOP"),
    ([*TWO, *SEQ, "--window", "1.5:3"], "--window must be START:STOP"),
    ([*TWO, *SEQ, "--window=-1:3"], "--window must be START:STOP"),
    ([*TWO, *SEQ, "--window", "5:3"], "must satisfy 0 <= START < STOP <= 40"),
    ([*TWO, *SEQ, "--window", "3:3"], "must satisfy 0 <= START < STOP <= 40"),
    ([*TWO, *SEQ, "--window", "0:41"], "must satisfy 0 <= START < STOP <= 40"),
    ([*TWO, *SEQ, "--transform", "logit"], "needs probabilities in [0, 1]"),
    ([*TWO, *SEQ, "--transform", "log"], "needs non-negative counts or rates"),
    (["--model", "{d}/proba.pt", "--model", "{d}/proba.pt", *SEQ, "--transform", "logit"], "logit-clip"),
    ([*TWO, "--sequences", "{d}/nope.fa"], "FASTA file {d}/nope.fa does not exist"),
    ([*TWO, "--sequences", "{d}/empty.fa"], "no FASTA records"),
    ([*TWO, "--sequences", "{d}/binary.fa"], "is not a text FASTA file"),
    ([*TWO, "--sequences", "{d}/short.fa"], "shorter than the model's input of 40"),
    ([*TWO, "--sequences", "{d}/withN.fa"], "positions that are not A, C, G or T"),
    ([*TWO, "--bed", "{d}/ok.bed"], "--bed needs --genome"),
    ([*TWO, "--bed", "{d}/ok.bed", "--genome", "{d}/nope.fa"], "genome FASTA {d}/nope.fa does not exist"),
    ([*TWO, "--bed", "{d}/nope.bed", "--genome", "{d}/genome.fa"], "BED file {d}/nope.bed does not exist"),
    ([*TWO, "--bed", "{d}/reversed.bed", "--genome", "{d}/genome.fa"], "needs 0 <= start < end"),
    ([*TWO, "--bed", "{d}/negative.bed", "--genome", "{d}/genome.fa"], "needs 0 <= start < end"),
    ([*TWO, "--bed", "{d}/words.bed", "--genome", "{d}/genome.fa"], "start and end must be integers"),
    ([*TWO, "--bed", "{d}/minus.bed", "--genome", "{d}/genome.fa"], "minus-strand regions are not supported"),
    ([*TWO, "--bed", "{d}/two_columns.bed", "--genome", "{d}/genome.fa"], "needs chrom, start and end"),
    ([*TWO, "--bed", "{d}/other_chrom.bed", "--genome", "{d}/genome.fa"], "which the genome does not have"),
    ([*TWO, "--bed", "{d}/off_end.bed", "--genome", "{d}/genome.fa"], "runs off chr1"),
    ([*TWO, "--bed", "{d}/duplicate.bed", "--genome", "{d}/genome.fa"], "region names must be unique"),
    ([*TWO, "--bed", "{d}/empty.bed", "--genome", "{d}/genome.fa"], "holds no regions"),
    ([*TWO, "--bed", "{d}/ok.bed", "--genome", "{d}/ragged.fa"], "cannot be indexed"),
    ([*TWO, "--bed", "{d}/ok.bed", "--genome", "{d}/stale.fa"], "is stale"),  # once: wrong bases, exit 0
    ([*TWO, "--bed", "{d}/ok.bed", "--genome", "{d}/binary_genome.fa"], "genome FASTA"),
]
USAGE_CASES = [  # argparse's own refusals, in one line too
    (["effects", "--model", "{d}/m1.pt", "--sequences", "{d}/seqs.fa"], "required: --out"),
    (["effects", "--model", "{d}/m1.pt", "--out", "x"], "one of the arguments --sequences --bed is required"),
    (["effects", "--out", "x", "--sequences", "s.fa"], "required: --model"),
    (["effects", "--model", "m", "--out", "x", "--sequences", "s", "--bed", "b"], "not allowed with argument"),
    (["effects", "--model", "m", "--out", "x", "--sequences", "s", "--chunk-size", "many"], "invalid int value"),
    (["effects", "--model", "m", "--out", "x", "--sequences", "s", "--transform", "sqrt"], "invalid choice"),
    (["effects", "--model", "m", "--out", "x", "--sequences", "s", "--dtype", "int8"], "invalid choice"),
    (["effects", "--model", "m", "--out", "x", "--sequences", "s", "--engine", "fast"], "invalid choice"),
    (
        ["effects", "--model", "m", "--out", "x", "--sequences", "s", "--workers", "2", "--scheduler", "a"],
        "not allowed with argument",
    ),
    (["effects", "--model", "m", "--out", "x", "--sequences", "s", "--bogus"], "unrecognized arguments"),
    (["mr", "run"], "required: --exposure, --outcome"),
    (["mr", "run", "--exposure", "a", "--outcome", "b", "--estimator", "best"], "invalid choice"),
    (["mr", "run", "--exposure", "a", "--outcome", "b", "--threshold", "high"], "invalid float value"),
    (["pairs"], "required: RUN"),
    (["pairs", "run", "--n-boot", "1.5"], "invalid int value"),
    (["frobnicate"], "invalid choice"),
    ([], "required: command"),
]


@pytest.mark.parametrize("args, phrase", EFFECTS_CASES, ids=[f"effects-{i}" for i in range(len(EFFECTS_CASES))])
def test_a_bad_effects_input_gives_one_line_exit_2_and_no_run_folder(d, tmp_path, capsys, args, phrase):
    if "cuda:7" in args and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a GPU 7")
    out = tmp_path / "run"
    code, err = _main(["effects", *[a.format(d=d) for a in args], "--out", out, "--quiet"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("deepmr effects: error: ") and phrase.format(d=d) in lines[0], err
    assert not out.exists(), "a refused command began a run folder"


def test_cuda_on_a_machine_without_it_is_one_line(d, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code, err = _main(["effects", *[a.format(d=d) for a in TWO + SEQ], "--device", "cuda", "--out", tmp_path / "r"],
                      capsys)  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "CUDA is not available" in err, err


@pytest.mark.parametrize("args, phrase", USAGE_CASES, ids=[f"usage-{i}" for i in range(len(USAGE_CASES))])
def test_a_usage_error_is_one_line_and_exit_2(d, capsys, args, phrase):
    with pytest.raises(SystemExit) as stop:
        cli.main([a.format(d=d) for a in args])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and len(err.strip().splitlines()) == 1 and phrase in err, err


@pytest.fixture(scope="module")
def run(d, tmp_path_factory):
    """A finished run folder; each test below damages a copy of it."""
    out = tmp_path_factory.mktemp("runs") / "run"
    assert cli.main(["effects", *[a.format(d=d) for a in TWO + SEQ], "--out", str(out), "--quiet",
                     "--chunk-size", "2"]) == 0  # fmt: skip
    return out


def _damaged(run, tmp_path, damage):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    damage(copy)
    return copy


def _edit_json(name, **changes):
    def damage(folder):
        info = json.loads((folder / name).read_text())
        info.update(changes)
        (folder / name).write_text(json.dumps(info))

    return damage


def _permute_sequences(folder):
    with np.load(folder / "sequences.npz") as f:
        fields = dict(f)
    buf = io.BytesIO()
    np.savez_compressed(buf, **{**fields, "X": fields["X"][::-1]})
    (folder / "sequences.npz").write_bytes(buf.getvalue())


RUN_CASES = [
    # (damage to a finished run, command after the run folder, phrase)
    (lambda f: None, ["mr", "--exposure", "tfA", "--outcome", "CTCF"], "outcome 'CTCF' is not an output"),
    (lambda f: None, ["mr", "--exposure", "x", "--outcome", "tfB"], "exposure 'x' is not an output"),
    (lambda f: None, ["mr", "--exposure", "tfA", "--outcome", "tfA"], "name two different outputs"),
    (lambda f: None, ["mr", "--exposure", "tfA", "--outcome", "tfB", "--n-boot", "0"], "--n-boot must be >= 1"),
    (lambda f: None, ["pairs", "--n-boot", "-5"], "--n-boot must be >= 1"),
    (lambda f: None, ["mr", "--exposure", "tfA", "--outcome", "tfB", "--threshold", "-1"], "--threshold must be >= 0"),
    (lambda f: None, ["pairs", "--threshold", "nan"], "--threshold must be >= 0"),
    (
        lambda f: (f / "effects_00001.npz").unlink(),
        ["mr", "--exposure", "tfA", "--outcome", "tfB"],
        "chunks are not finished",
    ),
    (lambda f: (f / "manifest.json").unlink(), ["pairs"], "is not a finished `deepmr effects` run"),
    (lambda f: (f / "manifest.json").write_text('{"output_names": '), ["pairs"], "is unreadable"),
    (lambda f: (f / "sequences.npz").unlink(), ["pairs"], "sequences.npz is missing"),
    (_permute_sequences, ["pairs"], "not this run's sequences"),
    (lambda f: (f / "sequences.npz").write_bytes(b"PK\x03\x04"), ["pairs"], "sequences.npz is missing, unreadable"),
    (_edit_json("manifest.json", n_chunks=2), ["pairs"], "the manifest was edited"),
    (_edit_json("manifest.json", fingerprint="0" * 64), ["pairs"], "the manifest was edited"),
    (_edit_json("manifest.json", **{"options.output_names": "0" * 64}), ["pairs"], "the manifest was edited"),
    (_edit_json("manifest.json", format=1), ["pairs"], "is a run folder of format 1"),
    (_edit_json("manifest.json", kind="variants"), ["pairs"], "holds a variants run, not an effects run"),
]


@pytest.mark.parametrize("damage, args, phrase", RUN_CASES, ids=[f"run-{i}" for i in range(len(RUN_CASES))])
def test_a_bad_or_damaged_run_folder_gives_one_line(run, tmp_path, capsys, damage, args, phrase):
    folder = _damaged(run, tmp_path, damage)
    code, err = _main([args[0], folder, *args[1:]], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and phrase in lines[0], err


@pytest.mark.parametrize("command", [["mr", "--exposure", "a", "--outcome", "b"], ["pairs"]])
def test_analysing_a_folder_that_is_not_a_run(tmp_path, capsys, command):
    code, err = _main([command[0], tmp_path / "nowhere", *command[1:]], capsys)
    assert code == 2 and "is not a finished `deepmr effects` run" in err


@pytest.mark.parametrize(
    "change, field",
    [
        (["--output-names", "{d}/names_ba.txt"], "options.output_names"),  # reordered names would relabel the outputs
        (["--transform", "log-clip", "--model", "{d}/proba.pt", "--model", "{d}/proba.pt"], "options.transform"),
        (["--window", "0:20"], "options.positions"),
        (["--rc-average"], "options.rc_average"),
        (["--model", "{d}/m2.pt", "--model", "{d}/m1.pt"], "weights"),  # the members swapped: same code
    ],
)
def test_a_rerun_into_a_finished_folder_with_other_settings_is_refused(d, run, tmp_path, capsys, change, field):
    """Once these returned the old numbers under the new labels with exit 0 (the names, the window)."""
    folder = _damaged(run, tmp_path, lambda f: None)
    models = [a for a in change if "{d}/" in a and a.endswith(".pt")]
    base = [a.format(d=d) for a in (SEQ if models else TWO + SEQ)] + ["--chunk-size", "2"]
    change = [a.format(d=d) for a in change]
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    code, err = _main(["effects", *base, *change, "--out", folder, "--quiet"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and field in err, err
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # nothing in the folder changed
