"""Vectorised per-locus MR against a Python loop over the scalar estimators.

    python benchmarks/bench_mr.py [--loci 100000] [--k 30] [--loop-loci 2000] [--repeats 3]

Times ``mr.per_locus`` (IVW, Egger and dIVW: segment sums over all loci) and a loop that
calls ``mr.ivw`` / ``mr.egger`` / ``mr.divw`` once per locus on a subsample, in the same run, and
prints seconds, loci per second and the speed-up. The loop is timed on
``--loop-loci`` loci and scaled to the full count (it is linear in the number of loci).

Then the estimators that run per locus, timed on ``--scalar-loci`` loci and scaled: MR-RAPS (the
default, overdispersed with the Huber loss, and the plain profile score) and MR-PRESSO (1000
simulated datasets per locus, all drawn at once). MR-RAPS is not vectorised across loci: each locus
alternates a root search for tau2 with a bounded minimisation for beta, so ``per_locus(method="raps")``
costs about the printed seconds per locus times the number of loci (the issue's target, 100 000 loci x
30 variants in 60 s, needs 0.6 ms per locus; this prints how far it is).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from deepmr_utils import mr, simulate


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--loci", type=int, default=100_000)
    ap.add_argument("--k", type=int, default=30, help="instruments per locus")
    ap.add_argument("--loop-loci", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--scalar-loci", type=int, default=50, help="loci timed for RAPS and PRESSO")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    frame, _ = simulate.summary_statistics(args.loci, args.k, effect=0.5, tau=0.1, pleiotropy_sd=0.02, seed=args.seed)
    print(
        f"{args.loci} loci x {args.k} instruments = {len(frame)} rows; "
        f"python {platform.python_version()}, numpy {np.__version__}, {os.cpu_count()} CPUs"
    )

    sub_ids = np.arange(min(args.loop_loci, args.loci))
    groups = [g for _, g in frame[frame.locus.isin(sub_ids)].groupby("locus", sort=False)]
    arrays = [(g.bx.to_numpy(), g.bxse.to_numpy(), g.by.to_numpy(), g.byse.to_numpy()) for g in groups]
    scale = args.loci / len(arrays)

    total_vec = 0.0
    print(f"{'method':<8}{'per_locus [s]':>15}{'loop, scaled [s]':>19}{'speed-up':>10}{'loci/s (vec)':>15}")
    for method, fn in (("ivw", mr.ivw), ("egger", mr.egger), ("divw", mr.divw)):
        t_vec, out = best_of(lambda: mr.per_locus(frame, method), args.repeats)  # noqa: B023 (called at once)
        t_loop, loop = best_of(lambda: [fn(*a) for a in arrays], 1)  # noqa: B023 (called at once)
        # same numbers, or the comparison is meaningless
        np.testing.assert_allclose(out.estimate.to_numpy()[: len(loop)], [r.estimate for r in loop], rtol=1e-9)
        t_loop_full = t_loop * scale
        total_vec += t_vec
        print(f"{method:<8}{t_vec:>15.3f}{t_loop_full:>19.1f}{t_loop_full / t_vec:>9.0f}x{args.loci / t_vec:>15.0f}")
    print(f"per_locus IVW + Egger + dIVW on {args.loci} loci: {total_vec:.3f} s")

    few = arrays[: args.scalar_loci]
    print(f"\nper-locus estimators, timed on {len(few)} loci of {args.k} instruments and scaled to {args.loci}")
    print(f"{'estimator':<34}{'ms per locus':>14}{'scaled [s]':>12}")
    for label, fn in (
        ("MR-RAPS (overdispersed, Huber)", lambda a: mr.raps(*a)),
        ("MR-RAPS (profile score, l2)", lambda a: mr.raps(*a, over_dispersion=False, loss="l2")),
        ("MR-PRESSO (1000 draws)", lambda a: mr.presso(*a, n_sim=1000, seed=0)),
    ):
        t, _ = best_of(lambda: [fn(a) for a in few], 1)  # noqa: B023 (called at once)
        print(f"{label:<34}{1000 * t / len(few):>14.2f}{t / len(few) * args.loci:>12.0f}")


if __name__ == "__main__":
    main()
