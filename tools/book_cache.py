"""The execution cache of ``make book`` and ``make pdf``: one jupyter-cache folder per scale and library version.

jupyter-cache keys a notebook on its code cells alone, so one cache for every build could show another
scale's numbers, or an older library's. Here each cache folder is named by a hash of everything that
changes a chapter's numbers without changing its code:

* the ``DEEPMR_*`` settings (``DEEPMR_SCALE``, ``DEEPMR_SEED_OFFSET``, ...; not ``DEEPMR_RESULTS`` and
  ``DEEPMR_PROGRESS``, which change where tables go and whether bars show);
* every file of the library (``deepmr_utils/``) and of the book's committed data (``book/data/``);
* the pinned environment (``requirements.txt``, ``pyproject.toml``).

Inside one folder jupyter-cache reruns a chapter whose code cells changed and reuses the stored run of
a chapter whose prose alone changed. The build information and summary pages are always executed
(their notebooks say so in their metadata), so they describe this build.

The chapters of a cached build write their tables into the cache folder too (``DEEPMR_RESULTS``), so
the tables always belong to the runs the pages show; ``make book`` then copies them to ``results/``
(chapter folders only: a study's run folder there is left alone), ``make pdf`` does not.

    python tools/book_cache.py key              # the cache key of this checkout and environment
    python tools/book_cache.py config           # writes _build/cache/<key>/_config.yml, prints its path
    python tools/book_cache.py publish FOLDER   # copies FOLDER's chapter tables over results/<chapter>
    python tools/book_cache.py execute CONFIG [--jobs N] [--capped NOTEBOOK ... --capped-results DIR]
                                                # runs the chapters into CONFIG's cache, N at a time

``execute`` runs the book's chapters into the cache of a config written by ``config`` before the book is
built, several at a time (``--jobs``, default: one per CPU core up to the number of chapters), each kernel
with its share of the cores as its thread count (``OMP_NUM_THREADS``, unless set). The build then finds
every chapter in the cache and executes only the pages marked ``execution_mode: force``. A chapter that
fails is not cached: the build runs it again and reports its error (with ``raise_on_error`` it fails).
On 2 cores two single-threaded kernels side by side do more work than one kernel with two threads,
because much of a chapter's time is Python between small tensor operations.

``--capped`` runs the named chapters once more in the same pool, with oneDNN, MKL and OpenBLAS capped at
AVX2 (:data:`AVX2_CAP`) and their tables written to ``--capped-results``: a check that a chapter's claims
hold under another instruction set too (training's round-off differs between kernels). These runs are
never cached; one that fails makes ``execute`` exit with status 1 after printing its error, because the
build would not run it again.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
HASHED = ("deepmr_utils", "book/data", "requirements.txt", "pyproject.toml")
IGNORED_SETTINGS = {"DEEPMR_RESULTS", "DEEPMR_PROGRESS"}
SKIP_PARTS = {"__pycache__", ".ipynb_checkpoints"}
# the kernels of an AVX2 CPU on an AVX-512 one: oneDNN and MKL by their switches, OpenBLAS by its core type
AVX2_CAP = {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "OPENBLAS_CORETYPE": "Haswell"}
_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _files(root: Path) -> list[Path]:
    found = []
    for name in HASHED:
        path = root / name
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found += [
                p for p in path.rglob("*") if p.is_file() and not SKIP_PARTS & set(p.parts) and p.suffix != ".pyc"
            ]
    return sorted(found)


def cache_key(root: Path = ROOT, environ: Mapping[str, str] | None = None) -> str:
    """``<scale>-<hash>``: the scale (``default`` when unset) and 16 hex digits of the hash described above."""
    environ = os.environ if environ is None else environ
    settings = {k: v for k, v in environ.items() if k.startswith("DEEPMR_") and k not in IGNORED_SETTINGS}
    settings.setdefault("DEEPMR_SCALE", "default")
    h = hashlib.sha256()
    for k in sorted(settings):
        h.update(f"{k}={settings[k]}\n".encode())
    for path in _files(root):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    scale = "".join(c if c.isalnum() else "_" for c in settings["DEEPMR_SCALE"])
    return f"{scale}-{h.hexdigest()[:16]}"


def write_config(root: Path = ROOT, environ: Mapping[str, str] | None = None, folder: Path | None = None) -> Path:
    """The book's ``_config.yml`` with execution switched to that key's cache folder (or to ``folder``), written
    inside it."""
    folder = root / "_build" / "cache" / cache_key(root, environ) if folder is None else Path(root) / folder
    folder.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((root / "_config.yml").read_text())
    config["execute"] = {**config.get("execute", {}), "execute_notebooks": "cache", "cache": str(folder / "jupyter")}
    path = folder / "_config.yml"
    path.write_text("# generated by tools/book_cache.py from _config.yml: do not edit\n" + yaml.safe_dump(config))
    return path


def publish(tables: Path, results: Path = ROOT / "results") -> list[str]:
    """Replace ``results/<chapter>`` by ``tables/<chapter>`` for each chapter folder in ``tables``."""
    copied = []
    for folder in sorted(p for p in Path(tables).iterdir() if p.is_dir()):
        target = results / folder.name
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(folder, target)
        copied.append(folder.name)
    return copied


def _chapters(root: Path) -> list[Path]:
    """The toc's notebooks that the cache serves (pages marked ``execution_mode: force`` run in the build)."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    entries = [e["file"] for e in toc.get("chapters", []) if "file" in e]
    found = []
    for entry in entries:
        path = root / f"{entry}.ipynb"
        if not path.is_file():
            continue
        meta = json.loads(path.read_text(encoding="utf-8")).get("metadata", {})
        if meta.get("mystnb", {}).get("execution_mode") != "force":
            found.append(path)
    return found


@contextmanager
def scoped_environ(env: Mapping[str, str]):
    """This process's environment with ``env`` added (a kernel started inside inherits it), restored on exit."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _execute_check(path: str, timeout: int, threads: int, env: Mapping[str, str]) -> tuple[float, str | None]:
    """Execute the notebook at ``path`` with ``env`` added to its kernel's environment, store nothing; returns
    (seconds, the whole error or None). The worker's own environment is restored afterwards (the pool reuses it)."""
    import nbformat
    from jupyter_cache.executors.utils import single_nb_execution

    env = dict(env)
    for var in _THREAD_VARS:  # as for the chapters: a thread count the caller set is kept
        env.setdefault(var, os.environ.get(var, str(threads)))
    with scoped_environ(env):
        notebook = nbformat.read(path, as_version=4)
        result = single_nb_execution(notebook, cwd=str(Path(path).parent), timeout=timeout, allow_errors=False)
    return result.time, None if result.err is None else f"{type(result.err).__name__}: {result.err}"


def _execute_one(cache_path: str, pk: int, timeout: int, threads: int) -> tuple[float, str | None]:
    """Execute one staged notebook as myst-nb's cache mode would (its folder as the working directory, errors
    not allowed) and store it in the cache; returns (seconds, error or None)."""
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn
    from jupyter_cache.executors.utils import single_nb_execution

    for var in _THREAD_VARS:
        os.environ.setdefault(var, str(threads))  # the kernel inherits them
    cache = get_cache(cache_path)
    staged = cache.get_project_notebook(pk)
    notebook = staged.nb
    result = single_nb_execution(
        notebook, cwd=str(Path(staged.uri).parent), timeout=timeout, allow_errors=False, meta_override=True
    )
    if result.err is not None:
        return result.time, f"{type(result.err).__name__}: {result.err}"
    bundle = CacheBundleIn(notebook, staged.uri, data={"execution_seconds": result.time})
    cache.cache_notebook_bundle(bundle, check_validity=False, overwrite=True)
    return result.time, None


def _stored(cache, path: Path) -> bool:
    import nbformat

    try:
        cache.match_cache_notebook(nbformat.read(path, as_version=4))
    except KeyError:
        return False
    return True


# The chapters from longest to shortest, at quick and at default alike (make test and make book in a fresh clone
# on 2 cores, commit 4854c01; quick: challenges 239 s, DeepSEA 230, simulation 125, BPNet 73, method 10; default:
# 1784, 1531, 962, 841, 25). In the book's reverse order BPNet went before the simulation chapter and a worker
# idled at the end (make test at fb98909: challenges 220 s and DeepSEA 210 s side by side, then BPNet 68 s and
# simulation 114 s, the pool 334 s; simulation first would have ended it at about 324 s). Only the order depends
# on this list, never a result; a chapter not in it (a new one, its cost unknown) starts first.
LONGEST_FIRST = ("book/04_challenges", "book/03_deepsea", "book/01_simulation", "book/02_bpnet", "book/00_method")


def pool_order(root: Path = ROOT) -> list[Path]:
    """The chapters the cache serves, in the order the pool starts them: any not in :data:`LONGEST_FIRST`
    (in the book's reverse order), then those in its order."""

    def rank(path: Path) -> int:
        name = path.relative_to(root).with_suffix("").as_posix()
        return LONGEST_FIRST.index(name) + 1 if name in LONGEST_FIRST else 0

    return sorted(_chapters(root)[::-1], key=rank)  # a stable sort: the unlisted keep the reverse order


def execute(
    config_path: Path,
    jobs: int | None = None,
    root: Path = ROOT,
    capped: Sequence[Path] = (),
    capped_results: Path | None = None,
) -> tuple[list[str], list[str]]:
    """Run the chapters into the cache of ``config_path`` (from :func:`write_config`), ``jobs`` at a time, and
    the notebooks ``capped`` once more under :data:`AVX2_CAP` with ``DEEPMR_RESULTS=capped_results``, in the
    same pool; returns (the chapters that failed, which the build reruns and reports; the capped runs that
    failed, with their errors)."""
    from jupyter_cache import get_cache

    settings = yaml.safe_load(Path(config_path).read_text()).get("execute", {})
    cache_path = settings.get("cache")
    if not cache_path:
        raise ValueError(f"{config_path} names no execution cache: write it with `book_cache.py config`")
    capped = [Path(p).resolve() for p in capped]
    for path in capped:
        if not path.is_file():
            raise ValueError(f"--capped names {path}, which is not a notebook file")
    if capped and capped_results is None:
        raise ValueError("capped runs need a folder for their tables (capped_results), apart from the build's")
    # longest first, so that no worker idles at the end while another finishes a long chapter
    chapters = pool_order(root)
    timeout = int(settings.get("timeout", 1800))
    # the cache's database is created and the chapters staged here, once: workers only execute and store.
    # A chapter whose code already has a stored run in this cache is left to the build, which reuses it
    cache = get_cache(cache_path)
    chapters = [p for p in chapters if not _stored(cache, p)]
    staged = dict(zip(chapters, (cache.add_nb_to_project(str(p)).pk for p in chapters)))
    # each capped run right after its own chapter in that order (a long chapter's second run starts early too)
    order = [(p, False) for p in chapters]
    for path in capped:
        at = next((i + 1 for i, (p, _) in enumerate(order) if p.resolve() == path), 0)
        order.insert(at, (path, True))
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(order) or 1))
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = {**AVX2_CAP, "DEEPMR_RESULTS": str(capped_results)}
    failed, failed_capped = [], []
    start = time.perf_counter()
    with ProcessPoolExecutor(jobs) as pool:
        futures = [
            pool.submit(_execute_check, str(p), timeout, threads, env)
            if is_capped
            else pool.submit(_execute_one, str(cache_path), staged[p], timeout, threads)
            for p, is_capped in order
        ]
        for (path, is_capped), future in zip(order, futures):
            seconds, error = future.result()
            name = path.relative_to(root) if path.is_relative_to(root) else path
            label = f"{name} (AVX2-capped kernels)" if is_capped else str(name)
            status = f"failed, {error.splitlines()[0]}" if error else "executed"
            print(f"{label}: {status} in {seconds:.0f} s", flush=True)
            if error and is_capped:
                failed_capped.append(f"{label}: {error}")
            elif error:
                failed.append(str(name))
    wall = time.perf_counter() - start
    print(f"{len(order)} run(s), {jobs} at a time with {threads} thread(s) each: {wall:.0f} s")
    return failed, failed_capped


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=("key", "config", "publish", "execute"))
    ap.add_argument("folder", nargs="?", type=Path, help="publish: the cache folder's results; execute: the config")
    ap.add_argument("--jobs", type=int, default=None, help="execute: chapters at a time (default: one per core)")
    ap.add_argument("--cache", type=Path, default=None, help="config: the cache folder (default: by the key)")
    ap.add_argument("--capped", type=Path, nargs="*", default=[], help="execute: notebooks run again, AVX2-capped")
    ap.add_argument("--capped-results", type=Path, default=None, help="execute: where the capped runs write tables")
    args = ap.parse_args(argv)
    if args.what == "key":
        print(cache_key())
    elif args.what == "config":
        print(write_config(folder=args.cache).relative_to(ROOT))
    elif args.what == "execute":
        if args.folder is None or not args.folder.is_file():
            ap.error(f"execute needs a config written by `book_cache.py config`, got {args.folder}")
        if args.jobs is not None and args.jobs < 1:
            ap.error(f"--jobs must be at least 1, got {args.jobs}")
        try:
            _, failed_capped = execute(args.folder, args.jobs, capped=args.capped, capped_results=args.capped_results)
        except ValueError as exc:
            ap.error(str(exc))
        # a failed chapter is rerun and reported by the build; a failed capped run is reported here
        for error in failed_capped:
            print(error, file=sys.stderr)
        if failed_capped:
            return 1
    else:
        if args.folder is None or not args.folder.is_dir():
            ap.error(f"publish needs the cache folder's results, got {args.folder}")
        print(f"results/: {', '.join(publish(args.folder)) or 'nothing'} from {args.folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
