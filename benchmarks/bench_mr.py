"""Vectorised per-locus MR against a Python loop over the scalar estimators.

    python benchmarks/bench_mr.py [--loci 100000] [--k 30] [--loop-loci 2000] [--repeats 3]

Times ``mr.per_locus`` (IVW, Egger and dIVW: segment sums over all loci) and a loop that
calls ``mr.ivw`` / ``mr.egger`` / ``mr.divw`` once per locus on a subsample, in the same run, and
prints seconds, loci per second and the speed-up. The loop is timed on
``--loop-loci`` loci and scaled to the full count (it is linear in the number of loci).

Then MR-RAPS (overdispersed, Huber loss): ``per_locus(method="raps")`` on every locus, which solves all
loci's estimating equations together (``raps.raps_loci``), against the scalar ``mr.raps`` called per
locus on ``--scalar-loci`` loci and scaled; the two must agree (rtol 1e-6) on the loci both ran, and the
line says how many loci the vectorised path handed to the scalar one. The issue's target: 100 000 loci
x 30 variants in <= 60 s on 2 CPU cores. Last, MR-PRESSO (1000 simulated datasets per locus, all drawn
at once), per locus.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from deepmr_utils import mr, simulate
from deepmr_utils.raps import raps_loci


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
    print(f"\nMR-RAPS (overdispersed, Huber loss) on {args.loci} loci of {args.k} instruments")
    t_vec, out = best_of(lambda: mr.per_locus(frame, "raps"), 1)
    t_scalar, scalar = best_of(lambda: [mr.raps(*a) for a in few], 1)
    np.testing.assert_allclose(out.estimate.to_numpy()[: len(scalar)], [r.estimate for r in scalar], rtol=1e-6)
    np.testing.assert_allclose(out.se.to_numpy()[: len(scalar)], [r.se for r in scalar], rtol=1e-6)
    codes = frame.locus.to_numpy()
    fit = raps_loci(codes, args.loci, *(frame[c].to_numpy() for c in ("bx", "bxse", "by", "byse")))
    scaled = t_scalar / len(few) * args.loci
    print(
        f"per_locus(method='raps'): {t_vec:.1f} s ({args.loci / t_vec:.0f} loci/s; {int(fit['scalar'].sum())} loci "
        f"solved by the scalar path); mr.raps per locus: {1000 * t_scalar / len(few):.1f} ms, {scaled:.0f} s scaled "
        f"-> {scaled / t_vec:.0f}x; target 60 s: {'met' if t_vec <= 60 else 'NOT met'}"
    )
    print(f"{'MR-PRESSO (1000 draws)':<34}{'ms per locus':>14}{'scaled [s]':>12}")
    t, _ = best_of(lambda: [mr.presso(*a, n_sim=1000, seed=0) for a in few], 1)
    print(f"{'':<34}{1000 * t / len(few):>14.2f}{t / len(few) * args.loci:>12.0f}")


if __name__ == "__main__":
    main()
