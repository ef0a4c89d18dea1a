"""Run the simulation study at full length and write its summary with provenance.

    python tools/run_study.py                      # 50 rounds of each scenario, default sizes
    python tools/run_study.py --rounds 10 --scenarios none sequence-independent
    python tools/run_study.py --rounds 50 --scenarios none sequence-independent  # the committed study
    python tools/run_study.py --verify none:0     # rerun one committed round, compare with its rows
    python tools/run_study.py --rounds 50 --resume-from book/data/simulation_rounds.csv   # extend it

Rounds are written one by one under ``--out`` (default ``results/study``) and reused on a
rerun, so an interrupted study resumes where it stopped; a longer study with the same seed
extends a shorter one. When every requested round is done, the summary
(:func:`deepmr_utils.book.simulation_study.summarize`) goes to ``--summary`` (default
``book/data/simulation_study.csv``, shown by the simulation chapter) with a JSON sidecar
stating the command, commit, device, date and wall time, and every round's rows to
``--rounds-file`` (default ``book/data/simulation_rounds.csv``), from which the chapter
recomputes the summary. Runs on the GPU when one is
visible (then use ``--n-jobs 1``), else in ``--n-jobs`` CPU processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import torch

from deepmr_utils.book import config, simulation_study

ROOT = Path(__file__).resolve().parents[1]


def _commit() -> str:
    """The commit the code ran from, marked ``-dirty`` if tracked files differ from it."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
        ).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _verify(p: argparse.ArgumentParser, args) -> int:
    """Rerun one round of the committed rounds file with its seed and sizes and compare its rows."""
    scenario, _, r = args.verify.partition(":")
    if scenario not in simulation_study.SCENARIOS or not r.isdigit():
        p.error(f"--verify takes SCENARIO:ROUND with a known scenario, got {args.verify!r}")
    if not args.rounds_file.exists():
        p.error(f"{args.rounds_file} does not exist: nothing to verify against")
    committed = pd.read_csv(args.rounds_file)
    old = committed[(committed.scenario == scenario) & (committed["round"] == int(r))].reset_index(drop=True)
    if old.empty:
        p.error(f"{args.rounds_file} has no round {r} of {scenario!r}")
    sizes = config.sizes("simulation", args.scale).study
    seed = simulation_study.round_seed(args.seed, scenario, int(r))
    torch.set_num_threads(1)  # as in the study's worker processes: the same reduction order
    start = time.time()
    new = simulation_study.run_round(scenario, seed=seed, sizes=sizes, calibration=args.calibration).rows
    cols = ["estimate", "se", "truth_population", "truth_sample", "exact_estimate"]
    # rows are matched by estimator, never by position: an estimator added since (or dropped) is named
    only = {
        "committed rows only": set(old.estimator) - set(new.estimator),
        "rerun only": set(new.estimator) - set(old.estimator),
    }
    for where, names in only.items():
        if names:
            print(f"{where}: {', '.join(sorted(names))} (not compared)")
    both = old[cols + ["estimator"]].merge(new[cols + ["estimator"]], on="estimator", suffixes=("_committed", "_rerun"))
    if both.empty:
        print("no estimator in common: nothing to compare")
        return 1
    diff = pd.Series({c: (both[f"{c}_rerun"] - both[f"{c}_committed"]).abs().max() for c in cols})
    print(both.set_index("estimator")[["estimate_committed", "estimate_rerun"]])
    print(f"round {r} of {scenario} (seed {seed}) rerun in {time.time() - start:.0f} s; largest differences:")
    print(diff.to_string())
    # same seed, same numbers up to float reduction order (threads, CPU): 1e-6 relative on the estimates
    gap = (both.estimate_rerun - both.estimate_committed).abs()
    return 0 if bool((gap <= 1e-6 * both.estimate_committed.abs().clip(lower=1)).all()) else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=50, help="rounds per scenario (default 50)")
    p.add_argument("--scenarios", nargs="+", default=list(simulation_study.SCENARIOS))
    p.add_argument(
        "--rounds-of",
        nargs="+",
        default=[],
        metavar="SCENARIO=N",
        help="more (or fewer) rounds for some scenarios, e.g. the ones whose bar must be pinned down",
    )
    p.add_argument("--scale", default="default", choices=config.SCALES, help="per-round sizes (default: default)")
    p.add_argument("--seed", type=int, default=2022, help="the study's seed (the chapter's is 2022)")
    p.add_argument("--calibration", default="variance", choices=simulation_study.CALIBRATIONS)
    p.add_argument("--n-jobs", type=int, default=None, help="processes (default: 1 on a GPU, else all cores)")
    p.add_argument("--out", type=Path, default=ROOT / "results" / "study")
    p.add_argument("--summary", type=Path, default=ROOT / "book" / "data" / "simulation_study.csv")
    p.add_argument("--rounds-file", type=Path, default=ROOT / "book" / "data" / "simulation_rounds.csv")
    p.add_argument("--verify", metavar="SCENARIO:ROUND", help="rerun one round of --rounds-file and compare")
    p.add_argument(
        "--resume-from",
        type=Path,
        metavar="ROUNDS_CSV",
        help="seed --out with the finished rounds of a rounds file (e.g. the committed one) and go on from there",
    )
    args = p.parse_args(argv)
    if args.verify:
        return _verify(p, args)

    counts = {s: args.rounds for s in args.scenarios}
    for item in args.rounds_of:
        name, _, n = item.partition("=")
        if name not in simulation_study.SCENARIOS or not n.isdigit():
            p.error(f"--rounds-of takes SCENARIO=N with a known scenario, got {item!r}")
        counts[name] = int(n)
    cuda = torch.cuda.is_available()
    n_jobs = args.n_jobs or (1 if cuda else max(1, os.cpu_count() or 1))
    sizes = config.sizes("simulation", args.scale).study
    if args.resume_from:
        prov = json.loads(args.resume_from.with_name("simulation_study.json").read_text())
        mine = {"seed": args.seed, "calibration": args.calibration, "scale": args.scale}
        differ = [k for k, v in mine.items() if prov.get(k) != v]
        if differ:
            p.error(f"{args.resume_from} comes from a study with other settings ({', '.join(differ)})")
        n = simulation_study.seed_study_folder(
            args.out, pd.read_csv(args.resume_from), seed=args.seed, sizes=sizes, calibration=args.calibration
        )
        print(f"seeded {args.out} with {n} finished round(s) from {args.resume_from}")
    commit = _commit()  # before the run: the code that computes the rounds
    start = time.time()
    rounds = simulation_study.run_study(
        counts,
        seed=args.seed,
        sizes=sizes,
        calibration=args.calibration,
        out=args.out,
        n_jobs=n_jobs,
    )
    wall = time.time() - start
    summary = simulation_study.summarize(rounds)
    args.summary.parent.mkdir(parents=True, exist_ok=True)
    summary.to_csv(args.summary, index=False)
    rounds.to_csv(args.rounds_file, index=False)
    per_round = rounds.drop_duplicates(["scenario", "round"])
    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({platform.processor() or platform.machine()})"
    provenance = {
        "command": "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(__file__, ROOT), *sys.argv[1:]]),
        "commit": commit,
        "device": f"{device}, {n_jobs} process(es), {os.cpu_count()} cores visible",
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "wall_time_s": round(wall),
        "note": "commit and wall time of this invocation; rounds already in the run folder were reused, not rerun",
        "rounds_per_scenario": counts,
        "seed": args.seed,
        "calibration": args.calibration,
        "scale": args.scale,
        "sizes": asdict(sizes),
        "rounds_failing_oracle_gate": int((~per_round.fidelity_ok.astype(bool)).sum()),
        "rounds_failing_user_gate": int((~per_round.user_gate_ok.astype(bool)).sum()),
        "rounds_file": os.path.relpath(args.rounds_file, ROOT),
    }
    args.summary.with_suffix(".json").write_text(json.dumps(provenance, indent=1) + "\n")
    rounds.to_csv(args.out / "rounds.csv", index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary[summary.analysis == "all rounds"].round(3).to_string())
    print(f"wrote {args.summary} and its provenance in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
