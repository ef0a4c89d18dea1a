"""The ``deepmr`` command end to end, against the library calls it wraps; bad inputs; Dask runs."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from deepmr_utils import _dask, cli, pairs, pipeline
from deepmr_utils.inputs import load_model, read_regions, read_sequences
from deepmr_utils.instruments import Selection
from deepmr_utils.ism import ISMOptions

sys.path.insert(0, str(Path(__file__).parent))
import cli_models  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N_SEQ, LENGTH = 12, 40


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two trained-looking members (random weights, fixed seeds) saved as TorchScript and as state dicts,
    sequences as FASTA, and the same sequences as BED regions of a small genome."""
    d = tmp_path_factory.mktemp("cli")
    members = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        m = cli_models.factory().eval()
        members.append(m)
        torch.jit.save(torch.jit.script(m), d / f"m{seed}.pt")
        torch.save(m.state_dict(), d / f"m{seed}.state.pt")
    rng = np.random.default_rng(0)
    seqs = ["".join(rng.choice(list("ACGT"), 60)) for _ in range(N_SEQ)]
    (d / "seqs.fa").write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(seqs)))
    # a genome holding the sequences back to back with 20 bp of filler, and BED regions on them
    chrom = "".join(s + "A" * 20 for s in seqs)
    (d / "genome.fa").write_text(">chr1\n" + "\n".join(chrom[i : i + 60] for i in range(0, len(chrom), 60)) + "\n")
    (d / "regions.bed").write_text("".join(f"chr1\t{80 * i}\t{80 * i + 60}\ts{i}\n" for i in range(N_SEQ)))
    return d, members


def _run(args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "deepmr_utils.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])},
    )


def test_effects_mr_pairs_end_to_end_match_the_library(files, tmp_path):
    d, members = files
    run = tmp_path / "run"
    r = _run(["effects", "--model", str(d / "m1.pt"), "--model", str(d / "m2.pt"), "--sequences",
              str(d / "seqs.fa"), "--out", str(run), "--engine", "plain", "--batch-size", "64", "--quiet"])  # fmt: skip
    assert r.returncode == 0, r.stderr
    names, X = read_sequences(d / "seqs.fa", LENGTH)
    effect, se = pipeline.effects(members, X, options=ISMOptions(engine="plain", batch_size=64), progress=False)
    got = pipeline.read_effects(run)
    np.testing.assert_allclose(got.effect, effect, atol=1e-5)
    np.testing.assert_allclose(got.se, se, atol=1e-5)
    assert got.output_names == ["tfA", "tfB"] and got.loci == names
    np.testing.assert_array_equal(got.X, X)
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith("effects_")) == ["manifest.json",
                                                                                       "sequences.npz"]  # fmt: skip
    assert json.loads((run / "manifest.json").read_text())["record"]["models"] == [str(d / "m1.pt"), str(d / "m2.pt")]

    r = _run(["mr", str(run), "--exposure", "tfA", "--outcome", "tfB", "--estimator", "ivw", "--threshold", "2"])
    assert r.returncode == 0, r.stderr
    assert "global effect" in r.stdout or "no global effect" in r.stdout
    glob = pd.read_csv(run / "global.csv")
    ref, _ = pairs.all_pairs(effect, se, X, ["tfA", "tfB"], pairs=[(0, 1)], select=Selection(threshold=2), method="ivw")
    np.testing.assert_allclose(glob.estimate, ref.estimate, rtol=1e-5)
    local = pd.read_parquet(run / "local.parquet")
    assert set(local.sequence) <= set(names) and (run / "mr.png").stat().st_size > 1000

    # every estimator of the one table is a command choice: MR-RAPS here, in-process
    assert cli.main(["mr", str(run), "--exposure", "tfA", "--outcome", "tfB", "--estimator", "raps",
                     "--threshold", "2"]) in (0, None)  # fmt: skip
    raps, _ = pairs.all_pairs(effect, se, X, ["tfA", "tfB"], pairs=[(0, 1)], select=Selection(threshold=2),
                              method="raps")  # fmt: skip
    assert np.isfinite(raps.estimate).all()
    np.testing.assert_allclose(pd.read_csv(run / "global.csv").estimate, raps.estimate, rtol=1e-5)

    r = _run(["pairs", str(run), "--estimator", "ivw", "--threshold", "2"])
    assert r.returncode == 0, r.stderr
    matrix = pd.read_csv(run / "pairs_matrix.csv", index_col=0)
    assert matrix.shape == (2, 2) and np.isnan(matrix.loc["tfA", "tfA"])
    assert matrix.loc["tfA", "tfB"] == pytest.approx(float(ref.estimate.iloc[0]), rel=1e-5)


def test_a_windowed_run_goes_through_mr_and_pairs(files, tmp_path):
    """--window once finished effects and then failed in mr and pairs (IndexError): the window never reached
    the variant table. In-process, against the library given the same positions."""
    d, members = files
    run = tmp_path / "run"
    args = ["--model", str(d / "m1.pt"), "--model", str(d / "m2.pt"), "--sequences", str(d / "seqs.fa")]
    assert cli.main(["effects", *args, "--out", str(run), "--window", "5:30", "--engine", "plain", "--quiet"]) == 0
    assert cli.main(["mr", str(run), "--exposure", "tfA", "--outcome", "tfB", "--estimator", "ivw",
                     "--threshold", "2"]) == 0  # fmt: skip
    _, X = read_sequences(d / "seqs.fa", LENGTH)
    got = pipeline.read_effects(run)
    effect, se = got.effect, got.se
    assert effect.shape[1] == 25 and list(got.positions) == list(range(5, 30))
    ref, _ = pairs.all_pairs(effect, se, X, ["tfA", "tfB"], positions=(5, 30), pairs=[(0, 1)],
                             select=Selection(threshold=2), method="ivw")  # fmt: skip
    np.testing.assert_allclose(pd.read_csv(run / "global.csv").estimate, ref.estimate, rtol=1e-6)
    assert set(pd.read_parquet(run / "local.parquet").columns) >= {"sequence", "estimate"}
    assert cli.main(["pairs", str(run), "--threshold", "2"]) == 0
    with pytest.raises(ValueError, match="effect covers 25 positions but X is 40 long"):
        pairs.all_pairs(effect, se, X, ["tfA", "tfB"], pairs=[(0, 1)])
    with pytest.raises(ValueError, match="effect holds 12 sequences but X holds 5"):
        pairs.all_pairs(effect, se, X[:5], ["tfA", "tfB"], positions=(5, 30))


def test_factory_and_bed_inputs_give_the_same_run(files, tmp_path):
    d, members = files
    args = ["--model", "cli_models:factory", "--weights", str(d / "m1.state.pt"), "--model",
            "cli_models:factory", "--weights", str(d / "m2.state.pt"), "--engine", "plain", "--quiet"]  # fmt: skip
    assert _run(["effects", *args, "--sequences", str(d / "seqs.fa"), "--out", str(tmp_path / "a")]).returncode == 0
    r = _run(["effects", *args, "--bed", str(d / "regions.bed"), "--genome", str(d / "genome.fa"), "--out",
              str(tmp_path / "b")])  # fmt: skip
    assert r.returncode == 0, r.stderr
    a, b = pipeline.read_effects(tmp_path / "a"), pipeline.read_effects(tmp_path / "b")
    np.testing.assert_array_equal(a.effect, b.effect)
    names, _ = read_regions(d / "regions.bed", d / "genome.fa", LENGTH)
    assert names == [f"s{i}" for i in range(N_SEQ)]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "missing.pt", "--model", "missing.pt"], "model file missing.pt does not exist"),
        (["--model", "cli_models:nope", "--weights", "x.pt"], "cannot import the model factory"),
        (["--model", "cli_models:factory"], "need as many --weights files"),
        (["--model", "{d}/seqs.fa", "--model", "{d}/m1.pt"], "is not a TorchScript file"),
        (["--model", "{d}/m1.pt", "--model", "{d}/m2.pt", "--length", "100"], "shorter than the model's input of 100"),
        (["--model", "{d}/m1.pt", "--model", "{d}/m2.pt", "--output-names", "{d}/three.txt"], "3 output names for a"),
        (["--model", "{d}/m1.pt", "--model", "{d}/m2.pt", "--fast", "on"], "--fast is retired: use --engine"),
    ],
)
def test_bad_inputs_give_one_clear_line(files, tmp_path, capsys, args, message):
    d, _ = files
    (d / "three.txt").write_text("a\nb\nc\n")
    argv = ["effects", *[a.format(d=d) for a in args], "--sequences", str(d / "seqs.fa"), "--out", str(tmp_path / "r")]
    # the first case as a real process (all that a user's shell sees, warnings included), the others in this
    # process through the same entry point (a process start costs about 3 s of imports)
    if args[1] == "missing.pt":
        r = _run(argv)
        code, err = r.returncode, r.stderr
    else:
        try:
            code = cli.main(argv)
        except SystemExit as stop:  # argparse's own errors
            code = stop.code
        err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], err
    assert not (tmp_path / "r").exists()  # a refused run leaves no folder behind


def test_mr_refuses_unknown_outputs_and_unfinished_runs(files, tmp_path):
    d, _ = files
    run = tmp_path / "run"
    one = _run(["effects", "--model", str(d / "m1.pt"), "--sequences", str(d / "seqs.fa"), "--out", str(run)])
    assert one.returncode == 2 and "one model gives no standard errors" in one.stderr
    assert _run(["effects", "--model", str(d / "m1.pt"), "--model", str(d / "m2.pt"), "--sequences",
                 str(d / "seqs.fa"), "--out", str(run), "--quiet"]).returncode == 0  # fmt: skip
    r = _run(["mr", str(run), "--exposure", "tfA", "--outcome", "CTCF"])
    assert r.returncode == 2 and "outcome 'CTCF' is not an output of this run" in r.stderr
    (run / "effects_00000.npz").unlink()
    r = _run(["mr", str(run), "--exposure", "tfA", "--outcome", "tfB"])
    assert r.returncode == 2 and "chunks are not finished" in r.stderr


def test_a_torch_export_program_loads_and_predicts_like_the_model(files, tmp_path):
    _, members = files
    x = torch.rand(3, 4, LENGTH)
    torch.export.save(torch.export.export(members[0], (x,)), tmp_path / "m.pt2")
    loaded = load_model(tmp_path / "m.pt2")
    torch.testing.assert_close(loaded(x), members[0](x))
    with pytest.raises(ValueError, match="only used with a 'package.module:factory' model"):
        load_model(tmp_path / "m.pt2", tmp_path / "m.pt2")


class _Payload:
    """Unpickling this touches a marker file: what a planted payload would do, harmlessly."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _plant(src: Path, dst: Path, member: str, payload: bytes, config_edit=None):
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith(member):
                data = payload
            elif config_edit and info.filename.endswith(config_edit[0]):
                data = config_edit[1](data)
            zout.writestr(info, data)


@pytest.mark.parametrize("route", ["sample-inputs", "pickled-weight", "opaque-constant", "torchscript-is-not-pickle"])
def test_a_planted_payload_never_runs(files, tmp_path, route):
    """torch.export.load would unpickle each of these without restriction; load_model refuses them and
    the marker file is never created (TorchScript has no pickle fallback: torch.jit.load refuses it)."""
    import io

    _, members = files
    marker = tmp_path / "PWNED"
    buf = io.BytesIO()
    torch.save(_Payload(marker), buf)
    payload = buf.getvalue()
    clean = tmp_path / "clean.pt2"
    torch.export.save(torch.export.export(members[0], (torch.rand(2, 4, LENGTH),)), clean)
    bad = tmp_path / "bad.pt2"
    if route == "sample-inputs":
        _plant(clean, bad, "sample_inputs/model.pt", payload)
    elif route == "pickled-weight":
        edit = ("model_weights_config.json", lambda b: b.replace(b'"use_pickle": false', b'"use_pickle": true', 1))
        _plant(clean, bad, "data/weights/weight_0", payload, edit)
    elif route == "opaque-constant":
        evil = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}
        edit = ("model_constants_config.json", lambda b: json.dumps({"config": {"evil": evil}}).encode())
        _plant(clean, bad, "no such member", b"", edit)
        import zipfile

        with zipfile.ZipFile(bad, "a") as z:
            z.writestr(f"{clean.stem}/data/constants/opaque_obj_0", __import__("pickle").dumps(_Payload(marker)))
    else:
        bad = tmp_path / "bad.pt"
        bad.write_bytes(payload)
    with pytest.raises(ValueError, match="refused, because unpickling can run code|is not a"):
        load_model(bad)
    assert not marker.exists(), f"the payload ran through the {route} route"
    r = _run(["effects", "--model", str(bad), "--model", str(bad), "--sequences", "x.fa", "--out", str(tmp_path / "r")])
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not marker.exists()


def test_exported_programs_with_a_fixed_or_a_dynamic_batch_run_end_to_end(files, tmp_path):
    """A static-batch export once failed the names probe (a guard on its batch), a dynamic one .eval()."""
    d, members = files
    x = torch.rand(3, 4, LENGTH)
    dynamic = {"x": {0: torch.export.Dim("batch")}}
    paths = []
    for k, (m, shapes) in enumerate([(members[0], None), (members[1], dynamic)]):
        paths.append(tmp_path / f"m{k}.pt2")
        torch.export.save(torch.export.export(m, (x,), dynamic_shapes=shapes), paths[-1])
        loaded = load_model(paths[-1])
        assert loaded.batch == (3 if shapes is None else None)
        torch.testing.assert_close(loaded(torch.rand(7, 4, LENGTH)).shape, torch.Size([7, 2]))
    run = tmp_path / "run"
    names = str(_names_file(tmp_path))
    r = _run(["effects", "--model", str(paths[0]), "--model", str(paths[1]), "--sequences", str(d / "seqs.fa"),
              "--out", str(run), "--length", str(LENGTH), "--output-names", names, "--quiet"])  # fmt: skip
    assert r.returncode == 0, r.stderr
    ref = tmp_path / "ref"
    r = _run(["effects", "--model", str(d / "m1.pt"), "--model", str(d / "m2.pt"), "--sequences", str(d / "seqs.fa"),
              "--out", str(ref), "--quiet"])  # fmt: skip
    assert r.returncode == 0, r.stderr
    np.testing.assert_allclose(pipeline.read_effects(run).effect, pipeline.read_effects(ref).effect, atol=1e-5)


def _names_file(tmp_path):
    (tmp_path / "names.txt").write_text("tfA\ntfB\n")
    return tmp_path / "names.txt"


def test_checksum_and_format_errors_in_the_loaders(files, tmp_path):
    d, _ = files
    bad = tmp_path / "bad.state.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="is not a state-dict file"):
        load_model("cli_models:factory", bad)
    (tmp_path / "off.bed").write_text("chr1\t0\t10\tedge\n")
    with pytest.raises(ValueError, match="runs off chr1"):
        read_regions(tmp_path / "off.bed", d / "genome.fa", LENGTH)
    (tmp_path / "n.fa").write_text(">withN\n" + "ACGT" * 5 + "NNNN" + "ACGT" * 5 + "\n")
    with pytest.raises(ValueError, match="withN has 4 positions that are not A, C, G or T"):
        read_sequences(tmp_path / "n.fa", 44)
    assert read_sequences(tmp_path / "n.fa", 44, max_n=4)[1][0, :, 20].sum() == 0


def test_help_reads_like_the_readme():
    out = _run(["--help"]).stdout
    assert all(c in out for c in ("effects", "mr", "pairs"))
    out = _run(["effects", "--help"]).stdout
    for flag in ("--model", "--weights", "--sequences", "--bed", "--genome", "--transform", "--rc-average",
                 "--mc-dropout", "--workers", "--scheduler", "--device", "--batch-size", "--dtype"):  # fmt: skip
        assert flag in out


# ----------------------------------------------------------------------------- Dask


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    import dask

    with (
        dask.config.set(pipeline.dask_config()),
        distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as lc,
    ):
        with distributed.Client(lc) as client:
            yield lc, client


def _single_process_reference(members, X):
    # what a worker computes, in this process: one thread, the same path and batch size
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return pipeline.effects(
            members, X, options=ISMOptions(engine="plain", batch_size=64), chunk_size=3, progress=False
        )
    finally:
        torch.set_num_threads(threads)


def test_two_worker_run_equals_the_single_process_run(files, cluster, tmp_path):
    d, members = files
    _, client = cluster
    _, X = read_sequences(d / "seqs.fa", LENGTH)
    scripted = [load_model(d / "m1.pt"), load_model(d / "m2.pt")]
    got = pipeline.effects(
        scripted,
        X,
        options=ISMOptions(engine="plain", batch_size=64),
        out=tmp_path / "run",
        chunk_size=3,
        progress=False,
        client=client,
    )
    ref = _single_process_reference(members, X)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])
    assert len(list((tmp_path / "run").glob("effects_*.npz"))) == 4


@pytest.mark.parametrize("kind", ["torchscript", "factory"])
def test_local_tables_are_the_same_bits_for_any_workers_and_chunk_size(files, tmp_path, kind):
    """No option left to its default is chosen by timing: 1 or 2 workers and two chunk sizes give
    bit-identical effects and per-sequence MR tables (the engine, batch sizes and paths are rules)."""
    d, _ = files
    models = {
        "torchscript": ["--model", str(d / "m1.pt"), "--model", str(d / "m2.pt")],
        "factory": ["--model", "cli_models:factory", "--weights", str(d / "m1.state.pt"), "--model",
                    "cli_models:factory", "--weights", str(d / "m2.state.pt")],
    }[kind]  # fmt: skip
    runs = {"one process, chunks of 5": ["--chunk-size", "5"], "one process, chunks of 2": ["--chunk-size", "2"],
            "2 workers, chunks of 3": ["--chunk-size", "3", "--workers", "2"]}  # fmt: skip
    tables = {}
    for i, (label, extra) in enumerate(runs.items()):
        out = tmp_path / f"run{i}"
        # in this process (the command's own entry point): no interpreter start per run
        assert (
            cli.main(["effects", *models, "--sequences", str(d / "seqs.fa"), "--out", str(out), "--quiet", *extra]) == 0
        )
        assert cli.main(["mr", str(out), "--exposure", "tfA", "--outcome", "tfB", "--estimator", "ivw",
                         "--threshold", "1"]) == 0, label  # fmt: skip
        tables[label] = (pipeline.read_effects(out), pd.read_parquet(out / "local.parquet"))
    (first_effects, first_local), *others = tables.values()
    assert (first_local.status == "ok").sum() >= 3  # the comparison has estimates to compare
    for (effects, local), label in zip(others, list(tables)[1:]):
        for a, b in ((first_effects.effect, effects.effect), (first_effects.se, effects.se)):
            np.testing.assert_array_equal(a, b, err_msg=label)
        pd.testing.assert_frame_equal(local, first_local, check_exact=True, obj=label)


def test_workers_killed_mid_run_change_nothing(files, cluster, tmp_path):
    """One worker killed, then every worker at once: the models (held by workers only) are rebuilt on the
    restarted ones (once a second death lost them: FutureCancelledError), and the numbers do not move."""
    d, members = files
    lc, client = cluster
    _, X = read_sequences(d / "seqs.fa", LENGTH)
    X = X.repeat(8, 1, 1)  # 96 sequences, 32 chunks: time to kill workers twice in the middle
    slow = [cli_models.SlowTwoTrack().eval() for _ in range(2)]
    for m, src in zip(slow, members):
        m.load_state_dict(src.state_dict())
    out, result = tmp_path / "run", {}

    def work():
        result["value"] = pipeline.effects(
            slow,
            X,
            options=ISMOptions(engine="plain", batch_size=64),
            out=out,
            chunk_size=3,
            progress=False,
            client=client,
        )

    t = threading.Thread(target=work)
    t.start()
    deadline = time.time() + 60
    while not list(out.glob("effects_*.npz")) and time.time() < deadline:
        time.sleep(0.05)
    pid = next(iter(client.run(os.getpid).values()))
    os.kill(pid, signal.SIGKILL)
    done = len(list(out.glob("effects_*.npz")))
    while len(list(out.glob("effects_*.npz"))) < done + 3 and t.is_alive() and time.time() < deadline + 60:
        time.sleep(0.05)
    assert t.is_alive(), "the run finished before the second death: give it more chunks"
    for pid in client.run(os.getpid).values():  # every worker, the restarted one too
        os.kill(pid, signal.SIGKILL)
    t.join(timeout=240)
    assert "value" in result, "the run did not finish after its workers were killed"
    ref = _single_process_reference(slow, X)
    np.testing.assert_array_equal(result["value"][0], ref[0])
    np.testing.assert_array_equal(result["value"][1], ref[1])


def test_cluster_workers_keep_their_heap(cluster):
    # a task runs in a worker thread, whose own malloc arena hands ISM's buffers back to the kernel after
    # every batch (measured: 15x the page faults, 1.6x slower), so dask_config sets the allocator
    _, client = cluster
    env = client.run(lambda: {k: os.environ.get(k) for k in pipeline.WORKER_MALLOC})
    assert all(e == pipeline.WORKER_MALLOC for e in env.values())
    assert pipeline.WORKER_MALLOC["MALLOC_ARENA_MAX"] == "1"


def test_a_cluster_with_dasks_allocator_settings_is_warned_about():
    class DefaultWorkers:  # what client.run reports from workers started with Dask's defaults
        def run(self, fn):
            return {"tcp://w:1": {"MALLOC_ARENA_MAX": None, "MALLOC_TRIM_THRESHOLD_": "65536"}}

    with pytest.warns(UserWarning, match=r"MALLOC_ARENA_MAX=1.*pipeline.dask_config\(\)"):
        _dask.check_worker_allocator(DefaultWorkers())
