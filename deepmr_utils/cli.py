"""The ``deepmr`` command: DeepMR on your own model and sequences, on one machine or a Dask cluster.

    deepmr effects --model model.pt --sequences peaks.fa --out run/
    deepmr mr run/ --exposure CTCF --outcome DNase
    deepmr pairs run/

``effects`` runs ISM with every member (or MC-dropout passes of one) and writes the effects and
SEs of every output into a resumable run folder (:func:`deepmr_utils.pipeline.effects`); ``mr``
selects instruments for one exposure/outcome pair, runs MR per sequence and a REML
meta-analysis; ``pairs`` does that for every ordered pair of outputs. ``deepmr CMD --help`` tells
the options. A bad input ends with one line naming the problem and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import mr
from ._torch import resolve_device
from ._validate import first_line

__all__ = ["main", "build_parser"]

# the command's spelling of each estimator -> its per_locus key, from the one table in mr
ESTIMATORS = {e.cli: e.key for e in mr.ESTIMATORS.values()}
DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (the usage itself is one `--help` away) and exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``deepmr`` and its three subcommands."""
    p = _Parser(
        prog="deepmr",
        description="Deep Mendelian randomization on your own model: which outputs of a sequence model "
        "cause which, read out of in-silico mutagenesis.",
        epilog="Start with `deepmr effects`, then `deepmr mr` or `deepmr pairs` on its run folder.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser(
        "effects",
        help="ISM -> effects and SEs of every output, into a resumable run folder",
        description="Mutate every position of every sequence to every other base with each model, and write the "
        "effect of each substitution on each output with its standard error (the spread over the members, or over "
        "MC-dropout passes) into OUT. Rerun the same command to resume an interrupted run.",
    )
    e.add_argument(
        "--model",
        action="append",
        required=True,
        metavar="M",
        help="a TorchScript file, a torch.export .pt2 file, or package.module:factory "
        "(then give --weights); repeat once per ensemble member. A model file is code: use only trusted ones",
    )
    e.add_argument(
        "--weights",
        action="append",
        metavar="FILE",
        help="state-dict file of each factory model, in --model order (loaded with weights_only=True)",
    )
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--sequences", metavar="FASTA", help="sequences, each centred and cut to the model's length")
    src.add_argument("--bed", metavar="BED", help="regions, centred and resized to the model's length (needs --genome)")
    e.add_argument("--genome", metavar="FASTA", help="genome FASTA for --bed (indexed on first use by pyfaidx)")
    e.add_argument("--out", required=True, metavar="RUN", help="run folder (created; a rerun resumes it)")
    e.add_argument("--length", type=int, help="model input length (default: the model's `length` attribute)")
    e.add_argument("--output-names", metavar="FILE", help="one output name per line (default: the model's names)")
    e.add_argument(
        "--transform",
        choices=["none", "logit", "log", "logit-clip", "log-clip"],
        default="none",
        help="scale the effects are taken on: logit for probabilities, log for counts (default none); predictions "
        "outside the domain are refused, exact 0 or 1 too unless the -clip variant is chosen",
    )
    e.add_argument("--rc-average", action="store_true", help="average each prediction with its reverse complement's")
    e.add_argument("--mc-dropout", type=int, default=0, metavar="N", help="N MC-dropout passes of one model")
    e.add_argument("--window", metavar="START:STOP", help="mutate only these positions (default all)")
    e.add_argument("--max-n", type=int, default=0, help="N positions allowed per sequence (default 0)")
    e.add_argument("--device", help="cpu, cuda, cuda:1, ... (default: CUDA when visible)")
    e.add_argument("--batch-size", type=int, help="mutants per forward pass (default: chosen by measurement)")
    e.add_argument("--dtype", choices=list(DTYPES), default="float32", help="autocast dtype on a GPU")
    e.add_argument(
        "--engine",
        choices=["auto", "windowed", "plain"],
        default="auto",
        help="exact windowed ISM (windowed), every mutant through the whole model (plain), or by length (auto)",
    )
    e.add_argument("--fast", help=argparse.SUPPRESS)  # retired: refused with a line naming --engine
    e.add_argument("--chunk-size", type=int, default=64, help="sequences per chunk file and per task (default 64)")
    e.add_argument("--seed", type=int, default=0, help="seed of the MC-dropout masks")
    where = e.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="a local Dask cluster of N single-threaded worker processes (one per GPU when CUDA is visible)",
    )
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="an existing Dask scheduler, e.g. tcp://host:8786 (models and results travel as cloudpickle: "
        "trust every machine of that cluster)",
    )
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=_effects)

    m = sub.add_parser(
        "mr",
        help="instruments, MR per sequence and the REML global effect for one pair",
        description="Select instruments for EXPOSURE -> OUTCOME, estimate the local causal effect of every sequence "
        "and pool them by random-effects meta-analysis (REML). Writes local.parquet, global.csv and mr.png into RUN.",
    )
    m.add_argument("run", metavar="RUN", help="a finished `deepmr effects` run folder")
    m.add_argument("--exposure", required=True, help="exposure output name")
    m.add_argument("--outcome", required=True, help="outcome output name")
    _selection_options(m)
    m.set_defaults(func=_mr)

    pr = sub.add_parser(
        "pairs",
        help="the global effect of every ordered pair of outputs, as a matrix and a heatmap",
        description="Run `deepmr mr` for every ordered pair of outputs. Writes pairs.csv (one row per pair), "
        "pairs_matrix.csv (exposure x outcome) and pairs.png into RUN.",
    )
    pr.add_argument("run", metavar="RUN", help="a finished `deepmr effects` run folder")
    _selection_options(pr)
    pr.set_defaults(func=_pairs)
    return p


def _selection_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", type=float, default=3.0, help="instruments: |bx| / SE at least this (default 3)")
    p.add_argument(
        "--steiger",
        action="store_true",
        help="keep only instruments that move the exposure more than the outcome (outputs on one scale)",
    )
    p.add_argument("--estimator", choices=list(ESTIMATORS), default="egger-robust", help="per-sequence MR estimator")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap draws of the median and mode SEs")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``deepmr`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KeyboardInterrupt:
        print(f"deepmr {args.command}: interrupted; finished chunks are kept: rerun the same command to resume",
              file=sys.stderr)  # fmt: skip
        return 130
    except _INPUT_ERRORS as err:
        print(f"deepmr {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 -- a defect of ours still ends in one line, and says how to see more
        if os.environ.get("DEEPMR_TRACEBACK"):
            raise
        print(f"deepmr {args.command}: internal error: {type(err).__name__}: {_one_line(err)} "
              "(set DEEPMR_TRACEBACK=1 to see where, and please report it)", file=sys.stderr)  # fmt: skip
        return 1
    return 0


# what a bad input raises, from us or from the libraries that read it: torch (a model that does not fit
# the data: RuntimeError), zip and pickle readers (truncated or foreign files), pyfaidx (a ragged genome)
_INPUT_ERRORS = (ValueError, TypeError, KeyError, IndexError, OSError, EOFError, RuntimeError, zipfile.BadZipFile,
                 pickle.UnpicklingError, UnicodeDecodeError)  # fmt: skip


def _one_line(err: BaseException) -> str:
    text = first_line(err)
    if type(err).__module__.startswith("pyfaidx"):
        text = f"genome FASTA: {text}"
    elif isinstance(err, RuntimeError):
        text = f"the model failed on this input: {text}"
    return text[:400]


# ----------------------------------------------------------------------------- effects


def _models(args) -> list[torch.nn.Module]:
    from .inputs import load_model

    weights = list(args.weights or [])
    factories = [m for m in args.model if ":" in m and not Path(m).exists()]
    if len(weights) != len(factories):
        raise ValueError(f"{len(factories)} factory model(s) need as many --weights files, got {len(weights)}")
    it = iter(weights)
    return [load_model(m, next(it) if m in factories else None) for m in args.model]


def _length(args, model) -> int:
    if args.length is not None and args.length < 1:
        raise ValueError(f"--length must be >= 1, got {args.length}")
    length = args.length or getattr(model, "length", None)
    if not isinstance(length, int) or length < 1:
        raise ValueError("the model has no integer `length` attribute; pass --length")
    return length


def _names(args, models, length: int) -> list[str]:
    counts = []
    for k, model in enumerate(models):
        try:
            with torch.inference_mode():
                out = model(torch.zeros(1, 4, length))
        except (RuntimeError, AssertionError, IndexError) as err:  # a shape mismatch inside the model
            raise ValueError(f"model {args.model[k]} fails on a (1, 4, {length}) input: is --length right? "
                             f"({first_line(err, 200)})") from err  # fmt: skip
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            raise ValueError(f"model {args.model[k]} must return (batch, outputs); it returned {type(out).__name__}"
                             + (f" of shape {tuple(out.shape)}" if isinstance(out, torch.Tensor) else ""))  # fmt: skip
        counts.append(out.shape[1])
    if len(set(counts)) > 1:
        raise ValueError(f"the members return different numbers of outputs: {dict(zip(args.model, counts))}")
    if args.output_names:
        from .inputs import read_output_names

        names = read_output_names(args.output_names)
    else:
        names = list(getattr(model, "output_names", None) or [f"out{i}" for i in range(out.shape[1])])
    if len(names) != out.shape[1]:
        raise ValueError(f"{len(names)} output names for a model with {out.shape[1]} outputs")
    return names


def _out(args) -> Path:
    if not str(args.out).strip():
        raise ValueError("--out is empty; name a run folder")
    return Path(args.out)


def _check_workers(args) -> None:
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.workers > (os.cpu_count() or 1):
        raise ValueError(f"--workers {args.workers} is more than the {os.cpu_count()} CPU cores here")


def _client(args):
    if args.scheduler:
        from distributed import Client

        return Client(args.scheduler), None
    if not args.workers:
        return None, None
    from ._dask import local_cluster

    # --device cpu keeps CPU workers even where CUDA is visible
    return local_cluster(args.workers, gpu=resolve_device(args.device).type == "cuda")


def _effects(args) -> None:
    from . import pipeline
    from .inputs import read_regions, read_sequences
    from .ism import ISMOptions

    if args.fast is not None:
        raise ValueError("--fast is retired: use --engine windowed (was --fast on), plain (off) or auto")
    resolve_device(args.device)  # a device that does not exist here is refused before any work
    if args.mc_dropout < 0 or args.max_n < 0:
        raise ValueError(f"--{'mc-dropout' if args.mc_dropout < 0 else 'max-n'} must be >= 0")
    if args.workers is not None:
        _check_workers(args)
    models = _models(args)
    if len(models) == 1 and args.mc_dropout < 2:
        raise ValueError("one model gives no standard errors: repeat --model once per ensemble member, "
                         "or pass --mc-dropout N (N >= 2) for a model with dropout")  # fmt: skip
    if len(models) > 1 and args.mc_dropout:
        raise ValueError("--mc-dropout samples one model; pass a single --model with it")
    if args.mc_dropout:
        from .ism import check_mc_dropout

        check_mc_dropout(models[0])
    length = _length(args, models[0])
    names = _names(args, models, length)
    if args.bed:
        if not args.genome:
            raise ValueError("--bed needs --genome")
        loci, X = read_regions(args.bed, args.genome, length, max_n=args.max_n)
    else:
        loci, X = read_sequences(args.sequences, length, max_n=args.max_n)
    window = None
    if args.window:
        start, _, stop = args.window.partition(":")
        if not (start.strip().isdigit() and stop.strip().isdigit()):
            raise ValueError(f"--window must be START:STOP with whole numbers, got {args.window!r}")
        window = (int(start), int(stop))
        if not 0 <= window[0] < window[1] <= length:
            raise ValueError(f"--window {args.window} must satisfy 0 <= START < STOP <= {length} (the model's length)")
    if args.transform != "none":  # a model that already returns logits is refused here, before a run folder exists
        from .ism import on_scale

        with torch.inference_mode():
            on_scale(torch.as_tensor(models[0](X[:2]), dtype=torch.float32), args.transform)
    for flag in ("chunk_size", "batch_size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ValueError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    out = _out(args)
    client, cluster = _client(args)
    try:
        options = ISMOptions(
            positions=window, device=args.device, batch_size=args.batch_size, mc_dropout=args.mc_dropout,
            seed=args.seed, dtype=DTYPES[args.dtype], engine=args.engine, rc_average=args.rc_average,
            transform=args.transform,
        )  # fmt: skip
        effect, _ = pipeline.effects(
            models, X, options=options, loci=loci, output_names=names, out=out, chunk_size=args.chunk_size,
            progress=not args.quiet, client=client,
            record={"models": args.model, "length": length, "max_n": args.max_n},
        )  # fmt: skip
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
    print(f"{len(loci)} sequences x {effect.shape[1]} positions x {len(names)} outputs -> {out}")


# ----------------------------------------------------------------------------- mr and pairs


def _run(folder: str):
    from .runs import read_effects

    path = Path(folder)
    if not (path / "manifest.json").is_file():
        raise ValueError(f"{path} is not a finished `deepmr effects` run (no manifest.json)")
    return read_effects(path)


def _check_selection(args) -> None:
    if args.n_boot < 1:
        raise ValueError(f"--n-boot must be >= 1, got {args.n_boot}")
    if not args.threshold >= 0:  # NaN too
        raise ValueError(f"--threshold must be >= 0, got {args.threshold}")


def _analyse(args, pairs_, run):
    """DeepMR for ``pairs_`` (``None``: every ordered pair) on ``run``, the folder as :func:`_run` read it."""
    from . import pairs
    from .instruments import Selection

    glob, local = pairs.all_pairs(
        run.effect, run.se, run.X, run.output_names, positions=run.positions,
        pairs=pairs_, select=Selection(threshold=args.threshold),
        steiger=True if args.steiger else None, method=ESTIMATORS[args.estimator], n_boot=args.n_boot, seed=args.seed,
    )  # fmt: skip
    if len(local):
        local.insert(0, "sequence", [run.loci[i] for i in local.locus])
    return glob, local


def _index(names: list[str], name: str, what: str) -> int:
    if name not in names:
        raise ValueError(f"{what} {name!r} is not an output of this run; outputs: {names}")
    return names.index(name)


def _mr(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _check_selection(args)
    loaded = _run(args.run)  # checks the run before any work, and is read once
    names = loaded.output_names
    if args.exposure == args.outcome:
        raise ValueError(f"--exposure and --outcome are both {args.exposure!r}; name two different outputs")
    pair = (_index(names, args.exposure, "exposure"), _index(names, args.outcome, "outcome"))
    glob, local = _analyse(args, [pair], loaded)
    run = Path(args.run)
    local.to_parquet(run / "local.parquet", index=False)
    glob.assign(estimator=args.estimator, threshold=args.threshold, steiger=args.steiger).to_csv(
        run / "global.csv", index=False
    )
    g = glob.iloc[0]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [2, 1]})
    ok = local[local.status == "ok"] if len(local) else local
    if len(ok):
        axes[0].hist(ok.estimate, bins=30, color="0.6")
    axes[0].set_xlabel(f"local effect of {args.exposure} on {args.outcome}")
    axes[0].set_ylabel("sequences")
    if pd.notna(g.get("estimate", np.nan)):
        axes[0].axvline(g.estimate, color="C3")
        axes[1].errorbar(
            [g.estimate], [0], xerr=[[g.estimate - g.ci_low], [g.ci_high - g.estimate]], fmt="o", color="C3"
        )
    axes[1].axvline(0, color="0.7", lw=0.8)
    axes[1].set_yticks([0], [args.estimator])
    axes[1].set_xlabel("global effect (95% CI)")
    fig.tight_layout()
    fig.savefig(run / "mr.png", dpi=150)
    plt.close(fig)
    print(_summary(args, g, local))


def _summary(args, g: pd.Series, local: pd.DataFrame) -> str:
    lines = [f"DeepMR {args.exposure} -> {args.outcome}  ({args.estimator}, instruments |bx|/SE >= {args.threshold:g}"
             + (", Steiger-filtered)" if args.steiger else ")")]  # fmt: skip
    n_ok = int((local.status == "ok").sum()) if len(local) else 0
    lines.append(
        f"sequences with an estimate: {n_ok} of {len(local)} with instruments; instruments: {int(g.n_instruments)}"
    )
    if pd.notna(g.get("estimate", np.nan)):
        lines.append(
            f"global effect {g.estimate:.4g} (SE {g.se:.3g}, 95% CI {g.ci_low:.4g} to {g.ci_high:.4g}, "
            f"p={g.pvalue:.3g}); tau {g.tau:.3g}"
        )
    else:
        lines.append("no global effect: fewer than two sequences have an estimate")
    lines.append(f"wrote local.parquet, global.csv, mr.png in {args.run}")
    return "\n".join(lines)


def _pairs(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .pairs import to_matrix
    from .plots import effect_matrix

    _check_selection(args)
    loaded = _run(args.run)
    glob, _ = _analyse(args, None, loaded)
    run = Path(args.run)
    glob.to_csv(run / "pairs.csv", index=False)
    matrix = to_matrix(glob, names=loaded.output_names) if "estimate" in glob else pd.DataFrame()
    matrix.to_csv(run / "pairs_matrix.csv")
    n = len(loaded.output_names)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2, 1.0 * n + 1.5))
    if len(matrix):
        effect_matrix(matrix, ax=ax, title=f"global effect ({args.estimator})")
    fig.tight_layout()
    fig.savefig(run / "pairs.png", dpi=150)
    plt.close(fig)
    shown = glob.reindex(columns=["exposure", "outcome", "estimate", "ci_low", "ci_high", "n_loci"])
    print(shown.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    print(f"wrote pairs.csv, pairs_matrix.csv, pairs.png in {args.run}")


if __name__ == "__main__":
    sys.exit(main())
