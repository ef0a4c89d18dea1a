"""The package's one process pool (private): jobs run here or in fresh spawned processes, in order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

__all__ = ["map_jobs"]


def map_jobs(fn: Callable, jobs: Iterable, n_jobs: int = 1) -> Iterator:
    """``fn(job)`` for each job, in order: here when ``n_jobs == 1``, else in ``n_jobs`` fresh processes.

    The processes are spawned, not forked (a forked child inherits the parent's torch thread pool),
    so ``fn`` must be importable and each job picklable; a job sets its own thread count and seed, so
    the results do not depend on ``n_jobs``. Results are yielded as they arrive in order, so a caller
    can write each one as soon as it exists."""
    jobs = list(jobs)
    if n_jobs == 1:
        yield from map(fn, jobs)
        return
    with ProcessPoolExecutor(max_workers=n_jobs, mp_context=get_context("spawn")) as pool:
        yield from pool.map(fn, jobs)
