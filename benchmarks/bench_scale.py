"""Sharded DeepMR on Dask: throughput of 1 vs 2 worker processes, and Dask's overhead.

    python benchmarks/bench_scale.py [--sequences 16] [--members 3] [--length 1000] [--chunk-size 2]

On a model the library was not tuned for (the BPNet-like ``UnseenBPNet`` of ``bench_ism.py``),
times ``pipeline.effects`` on the same sequences three ways in one run:

* ``plain``     the single-process call, with one torch thread (what one worker does), in a fresh
                process with Dask not imported and the default allocator: what a user's script runs;
* ``1 worker``  a ``LocalCluster`` of one single-threaded worker process (``client=``);
* ``2 workers`` two single-threaded worker processes.

Prints seconds, variants/s and the ratios: ``2 workers / 1 worker`` (the scaling; the target on
2 cores is >= 1.7x) and ``1 worker / plain`` (Dask's overhead; the target is <= 10 %), and checks
that all three give the same effects bit for bit. Each Dask run starts from an empty run folder
and a cluster whose workers have already imported torch (startup is not counted), started with
``pipeline.dask_config()`` (its allocator settings; ``--dask-defaults`` measures Dask's own), and
each configuration is timed ``--repeats`` times in rotating order (medians compared).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing as mp
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_ism import UnseenBPNet  # noqa: E402

from deepmr_utils import pipeline  # noqa: E402
from deepmr_utils.sequence import random_sequences  # noqa: E402


def once(fn):
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def build(members, sequences, length):
    torch.manual_seed(0)
    return [UnseenBPNet().eval() for _ in range(members)], random_sequences(sequences, length, seed=1)


_PLAIN = {}


def _plain_setup(members, sequences, length, opts):
    torch.set_num_threads(1)
    _PLAIN.update(models_X=build(members, sequences, length), opts=opts)


def _plain_run():
    """The single-process call, in the baseline process; returns (seconds, effects)."""
    models, X = _PLAIN["models_X"]

    def run():  # the same run folder as the Dask runs write, so both pay for the chunk files
        with tempfile.TemporaryDirectory() as d:
            return pipeline.effects(models, X, out=Path(d) / "run", **_PLAIN["opts"])

    return once(run)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sequences", type=int, default=16)
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--length", type=int, default=1000)
    ap.add_argument("--chunk-size", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dask-defaults", action="store_true", help="start workers with Dask's default environment")
    args = ap.parse_args()
    # fixed path and batch size: the automatic choices are timed per process and could differ
    opts = dict(chunk_size=args.chunk_size, engine="windowed", batch_size=256, progress=False)
    n_variants = args.sequences * args.length * 3
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}; "
          f"UnseenBPNet x {args.members} members, {args.sequences} sequences of {args.length} bp, "
          f"chunks of {args.chunk_size}")  # fmt: skip
    # the baseline process is spawned before Dask is imported here, so it never holds Dask's threads
    baseline = ProcessPoolExecutor(
        1, mp_context=mp.get_context("spawn"), initializer=_plain_setup,
        initargs=(args.members, args.sequences, args.length, opts),
    )  # fmt: skip
    baseline.submit(int).result()
    import dask
    from distributed import Client, LocalCluster

    models, X = build(args.members, args.sequences, args.length)

    def plain():
        return baseline.submit(_plain_run).result()[1]

    def on(client):
        def run():
            with tempfile.TemporaryDirectory() as d:
                return pipeline.effects(models, X, out=Path(d) / "run", client=client, **opts)

        return run

    with contextlib.ExitStack() as stack:
        stack.enter_context(baseline)
        stack.enter_context(dask.config.set({} if args.dask_defaults else pipeline.dask_config()))
        runs = {"plain (1 thread)": plain}
        for n in (1, 2):
            lc = stack.enter_context(
                LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
            )
            client = stack.enter_context(Client(lc))
            client.run(lambda: __import__("torch").zeros(1))  # workers up and torch imported
            runs[f"{n} worker{'s' if n > 1 else ''}"] = on(client)
        names = list(runs)
        _, ref = once(plain)
        for name in names[1:]:  # untimed: each worker loads the model and builds its kernels
            _, got = once(runs[name])
            same = all(np.array_equal(g, r, equal_nan=True) for g, r in zip(got, ref))  # NaN: reference slots
            assert same, f"{name}: a Dask run differs from the plain call"
        times = {name: [] for name in names}
        for r in range(args.repeats):
            for name in names[r % 3 :] + names[: r % 3]:  # rotate who goes first
                times[name].append(once(runs[name])[0])
    rows = [(name, float(np.median(t))) for name, t in times.items()]
    t_plain = rows[0][1]
    spread = {name: f"{min(t):.2f}-{max(t):.2f}" for name, t in times.items()}
    for name, t in rows:
        rate = n_variants / t
        print(f"{name:18s} {t:7.2f} s (median of {args.repeats}; range {spread[name]} s)  {rate:9.0f} variants/s")
    t1, t2 = rows[1][1], rows[2][1]
    print(f"scaling, 2 workers vs 1: {t1 / t2:.2f}x (target >= 1.7x on 2 cores)")
    print(f"Dask overhead, 1 worker vs plain: {100 * (t1 / t_plain - 1):+.1f} % (target <= 10 %)")
    print("effects identical across the three runs: yes")


if __name__ == "__main__":
    main()
