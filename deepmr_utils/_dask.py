"""Dask plumbing for :mod:`deepmr_utils.pipeline` (private): the workers' allocator settings, how models
travel to the workers, the chunk tasks' submission, and the local clusters the ``deepmr`` command starts.
Dask itself is imported inside the functions that need it, so the library needs Dask only when a run is
given a client or a cluster is started."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["WORKER_MALLOC", "dask_config", "check_worker_allocator", "run_tasks", "local_cluster"]

# glibc's allocator settings for an ISM worker process (see dask_config)
WORKER_MALLOC = {
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(2**30),
}


def dask_config() -> dict:
    """Dask settings for the worker processes of an ISM cluster: ``with dask.config.set(pipeline.dask_config()):``
    around ``LocalCluster(...)`` (or the same keys in a cluster's Dask configuration).

    A Dask task runs in a worker thread, not the main thread, and glibc gives that thread its own
    malloc arena, whose heap is trimmed back to the kernel as soon as ISM frees its activation
    buffers: every batch then faults them in again (measured: 15x the page faults, ISM 1.6x slower
    than the same call on the main thread, and two such workers on two cores contend in the kernel).
    These settings keep every thread on one arena (``MALLOC_ARENA_MAX=1``; ISM workers run one task
    at a time), serve buffers up to 32 MiB from the heap and trim it only past 1 GiB free, so a
    worker keeps its working set instead of returning it after every batch. They replace Dask's
    ``MALLOC_TRIM_THRESHOLD_=65536`` (about four times slower) and keep its other worker variables
    (one OpenMP / MKL thread per worker); the workers' statistical profiler, which samples every
    thread's stack every 10 ms and takes the GIL from the windowed engine's many small operations,
    is switched off."""
    import dask

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    env.update(WORKER_MALLOC)
    return {"distributed.nanny.pre-spawn-environ": env, "distributed.worker.profile.enabled": False}


def check_worker_allocator(client: Any) -> None:
    """Warn when the client's workers run without :data:`WORKER_MALLOC`."""
    try:
        values = client.run(lambda: {k: os.environ.get(k) for k in WORKER_MALLOC})
    except Exception:  # a client whose workers cannot run this (e.g. restricted): nothing to advise
        return
    if any(env != WORKER_MALLOC for env in values.values()):
        warnings.warn(
            "the Dask workers run without pipeline.WORKER_MALLOC's allocator settings (MALLOC_ARENA_MAX=1, ...), "
            "which makes ISM 1.5 to 4 times slower; start the cluster inside "
            "`with dask.config.set(pipeline.dask_config()):`",
            stacklevel=4,
        )


def _to_wire(model):
    if isinstance(model, torch.jit.ScriptModule):  # a TorchScript module cannot be pickled: its saved bytes travel
        buf = io.BytesIO()
        torch.jit.save(model, buf)
        return ("torchscript", buf.getvalue())
    return ("module", model)


def _from_wire(item):
    kind, value = item
    return torch.jit.load(io.BytesIO(value), map_location="cpu") if kind == "torchscript" else value


def _identity(value):
    return value


# per worker process: what the run it is working on runs its tasks with (the models, or what setup made of
# them: rebuilt once, not per task); one run at a time
_WORKER_STATE: dict[str, Any] = {}


def _remote(task, wire, fp, setup, *args):
    state = _WORKER_STATE.get(fp)
    if state is None:
        _WORKER_STATE.clear()
        models = [_from_wire(w) for w in wire]
        state = _WORKER_STATE[fp] = setup(models) if setup is not None else models
    return task(state, *args)


def run_tasks(
    client: Any, task: Callable, models: list[torch.nn.Module], fp: str, tasks: dict, setup: Callable | None = None
) -> Iterator[tuple[int, Any]]:
    """Run ``task(setup(models), *args)`` (``task(models, *args)`` without ``setup``) on the client's workers for
    each ``index: args`` of ``tasks``; yields ``(index, result)`` as they finish. ``task`` and ``setup`` must be
    importable (module-level functions, or partials of them).

    The models travel once per worker, not once per task, and each worker rebuilds them, and runs ``setup``
    on them (e.g. tracing the ISM engine), once per run (keyed by the run's fingerprint ``fp``). They are
    the result of a task, not scattered data: the scheduler keeps the task, so when every worker holding
    them has died it reruns it on a live one (scattered data would be lost, and every chunk after it); a
    task whose worker dies is rerun too.
    """
    from distributed import as_completed

    check_worker_allocator(client)
    shared = client.submit(_identity, [_to_wire(m) for m in models], key=f"deepmr-models-{fp[:16]}", pure=False)
    futures = {
        client.submit(_remote, task, shared, fp, setup, *args, key=f"deepmr-{fp[:16]}-{c}"): c
        for c, args in tasks.items()
    }
    for future in as_completed(futures):
        yield futures[future], future.result()


def local_cluster(workers: int, gpu: bool) -> tuple[Any, Any]:
    """``(client, cluster)``: a local Dask cluster of ``workers`` single-threaded worker processes with
    :func:`dask_config`'s settings, one per GPU (at most ``workers``) when ``gpu`` (needs dask-cuda)."""
    import dask
    from distributed import Client

    if gpu:
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as err:
            raise ValueError("--workers on a GPU needs dask-cuda (pip install 'deepmr-utils[gpu]'), "
                             "or pass --device cpu for CPU workers") from err  # fmt: skip
        with dask.config.set(dask_config()):
            cluster = LocalCUDACluster(n_workers=min(workers, torch.cuda.device_count()), threads_per_worker=1)
    else:
        from distributed import LocalCluster

        with dask.config.set(dask_config()):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    return Client(cluster), cluster
