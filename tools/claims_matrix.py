"""Run chapters under several seeds and CPU instruction sets and print every claim's worst margin.

    python tools/claims_matrix.py --chapters 03_deepsea 04_challenges --offsets 0 1 2 --isa native avx2

Each run executes one chapter in a fresh kernel at ``DEEPMR_SCALE`` (default quick), with
``DEEPMR_SEED_OFFSET`` set and, for ``--isa avx2``, oneDNN, MKL and OpenBLAS capped at AVX2 kernels
(on a machine without AVX-512 the two settings run the same kernels: the output says which the CPU
has). The chapters' claim ledgers (``claims.csv``, written before a claim fails) are collected into
``OUT/claims_matrix.csv`` and summarised per claim: the worst value over the runs, its bound, the
worst margin, and how many runs failed it. A chapter that stops before its claims is reported with
its error. Exit status 1 when an asserted claim failed in any run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat
import pandas as pd
from book_cache import AVX2_CAP, scoped_environ  # tools/ is this script's folder, first on sys.path
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
ISA = {"native": {}, "avx2": AVX2_CAP}


def cpu_has_avx512() -> bool:
    try:
        return "avx512f" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def run(chapter: str, offset: int, isa: str, scale: str, out: Path) -> dict:
    results = out / f"{chapter}-seed{offset}-{isa}"
    env = {"DEEPMR_SCALE": scale, "DEEPMR_SEED_OFFSET": str(offset), "DEEPMR_RESULTS": str(results),
           "DEEPMR_PROGRESS": "0", **ISA[isa]}  # fmt: skip
    src = ROOT / "book" / f"{chapter}.ipynb"
    nb = nbformat.read(src, as_version=4)
    t0, error = time.time(), ""
    with scoped_environ(env):  # the kernel inherits this process's environment
        try:
            NotebookClient(
                nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": str(src.parent)}}
            ).execute()
        except Exception as exc:  # a failed claim or a crash: the ledger (if any) says which
            error = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
    return {"chapter": chapter, "offset": offset, "isa": isa, "seconds": round(time.time() - t0), "error": error,
            "ledger": results / chapter.split("_", 1)[1] / "claims.csv"}  # fmt: skip


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per claim: the worst run among those where it was asserted (else among all, for the record), the
    number of runs that asserted it, that failed it while asserting it, and in all."""
    # the worst run among those where the claim was asserted (else among all, for the record)
    table["asserted"] = table.asserted.astype(bool)
    ranked = table.assign(_key=~table.asserted).sort_values(["_key", "margin"], na_position="first")
    worst = ranked.groupby(["chapter", "claim"], sort=False).head(1).drop(columns="_key")
    keys = ["chapter", "claim"]
    summary = worst.set_index(keys)[["value", "op", "bound", "margin"]]
    summary["asserted_runs"] = table.groupby(keys).asserted.sum()
    summary["failed_asserted"] = (table.asserted & ~table.ok).groupby([table.chapter, table.claim]).sum()
    summary["runs"] = table.groupby(keys).size()
    order = table[keys].drop_duplicates().itertuples(index=False, name=None)
    summary = summary.loc[list(order)]
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--chapters", nargs="+", default=["01_simulation", "02_bpnet", "03_deepsea", "04_challenges"])
    p.add_argument("--offsets", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--isa", nargs="+", choices=list(ISA), default=["native", "avx2"])
    p.add_argument("--scale", default="quick")
    p.add_argument("--out", type=Path, default=ROOT / "_build" / "claims_matrix")
    a = p.parse_args(argv)
    print(f"CPU has AVX-512: {cpu_has_avx512()} (without it, 'native' and 'avx2' run the same kernels)", flush=True)
    runs, frames = [], []
    for chapter in a.chapters:
        for offset in a.offsets:
            for isa in a.isa:
                r = run(chapter, offset, isa, a.scale, a.out)
                runs.append(r)
                print(f"{chapter} seed+{offset} {isa}: {r['seconds']} s {r['error'] or 'ok'}", flush=True)
                if r["ledger"].is_file():
                    frames.append(pd.read_csv(r["ledger"]).assign(chapter=chapter, offset=offset, isa=isa))
    if not frames:
        print("no ledger was written")
        return 1
    table = pd.concat(frames, ignore_index=True)
    a.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(a.out / "claims_matrix.csv", index=False)
    summary = summarize(table)
    with pd.option_context("display.width", 200, "display.max_colwidth", 90, "display.max_rows", 500):
        print(summary.to_string(float_format=lambda v: f"{v:.4g}"))
    crashed = [r for r in runs if r["error"] and not r["ledger"].is_file()]
    for r in crashed:
        print(f"no ledger: {r['chapter']} seed+{r['offset']} {r['isa']}: {r['error']}")
    bad = bool(crashed) or bool((~table.ok & table.asserted).any())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
