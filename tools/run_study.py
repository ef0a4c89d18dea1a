"""Run the simulation study at full length and write its summary with provenance.

    python tools/run_study.py                      # 50 rounds of each scenario, default sizes
    python tools/run_study.py --rounds 10 --scenarios none sequence-independent
    python tools/run_study.py --rounds 50 --rounds-of sequence-independent=100   # the committed study

Rounds are written one by one under ``--out`` (default ``results/study``) and reused on a
rerun, so an interrupted study resumes where it stopped; a longer study with the same seed
extends a shorter one. When every requested round is done, the summary
(:func:`deepmr_utils.book.simulation_study.summarize`) goes to ``--summary`` (default
``book/data/simulation_study.csv``, shown by the simulation chapter) with a JSON sidecar
stating the command, commit, device, date and wall time. Runs on the GPU when one is
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
    args = p.parse_args(argv)

    counts = {s: args.rounds for s in args.scenarios}
    for item in args.rounds_of:
        name, _, n = item.partition("=")
        if name not in simulation_study.SCENARIOS or not n.isdigit():
            p.error(f"--rounds-of takes SCENARIO=N with a known scenario, got {item!r}")
        counts[name] = int(n)
    cuda = torch.cuda.is_available()
    n_jobs = args.n_jobs or (1 if cuda else max(1, os.cpu_count() or 1))
    sizes = config.sizes("simulation", args.scale).study
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
        "rounds_unfaithful": int((~rounds.drop_duplicates(["scenario", "round"]).fidelity_ok.astype(bool)).sum()),
    }
    args.summary.with_suffix(".json").write_text(json.dumps(provenance, indent=1) + "\n")
    rounds.to_csv(args.out / "rounds.csv", index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(summary.round(3).to_string())
    print(f"wrote {args.summary} and its provenance in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
