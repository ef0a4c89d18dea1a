"""engine="auto" against both engines it chooses between, on models and lengths around its rule.

    python benchmarks/bench_engine.py [--repeat 3] [--cases pooled-200,deepsea-narrow-200,...]

For each case, ``ism.saturation_mutagenesis`` runs with ``engine="plain"``, ``"windowed"`` and
``"auto"`` on the same sequences (3 members, loop over members, the CPU's default batch), in
interleaved rounds; each engine's best round counts. Prints seconds per engine, which engine
``auto`` chose (``ism.choose_engine``, and why), ``auto / best`` (the auto run against the faster
engine's run) and ``choice / best`` (the chosen engine's best time, its own and the auto run's rounds
pooled, against the faster engine's: whether the choice was right, apart from the noise between two runs
of one path). The target is <= 1.10 on every case. The numbers of the three runs must agree (float32
round-off), or the script fails.

Cases (random weights):

* ``pooled-L``          the simulation chapter's ``PooledRegressor`` (16 filters): a max over the
  length before its dense layer, so the windowed engine rebuilds the full tensor there;
* ``deepsea-narrow-L``  a narrow ``DeepSEA`` (widths 64/32/32, hidden 32, no batch normalisation: the
  DeepSEA chapter's quick model before it was batch-normalised; 200 bp is its shortest input): every
  weighted layer keeps a mutation's window (the dense head is updated from it);
* ``bpnet-L``           ``bench_ism.UnseenBPNet`` (a reader's BPNet-like model, mean-pooled counts);
* ``enformer-1000``     ``wild_models.EnformerLike``: attention after the stem, full length from there;
* ``scripted-200``      a TorchScript convolutional model with a mean: torch.fx cannot trace it, so every
  engine is plain.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from bench_ism import UnseenBPNet  # noqa: E402
from wild_models import EnformerLike  # noqa: E402

from deepmr_utils import ism  # noqa: E402
from deepmr_utils import sequence as sq  # noqa: E402
from deepmr_utils.models import DeepSEA, PooledRegressor  # noqa: E402


def _pooled(L):
    return PooledRegressor(2, n_filters=16, hidden=32)


def _deepsea(L):
    return DeepSEA(4, length=L, widths=(64, 32, 32), hidden=32, output="logit")


def _scripted(L):  # convolutions into a mean, which the windowed engine would carry to the output
    layers = [nn.Conv1d(4, 32, 9, padding=4), nn.ReLU(), nn.Conv1d(32, 32, 9, padding=4), nn.ReLU()]
    return torch.jit.script(nn.Sequential(*layers, nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, 2)))


FAMILIES = {
    "pooled": (_pooled, 8),  # factory of the length, sequences
    "deepsea-narrow": (_deepsea, 8),
    "bpnet": (lambda L: UnseenBPNet(), 2),
    "enformer": (lambda L: EnformerLike(), 1),
    "scripted": (_scripted, 8),
}
DEFAULT_CASES = (
    "pooled-100,pooled-200,pooled-300,pooled-500,deepsea-narrow-200,deepsea-narrow-250,deepsea-narrow-300,"
    "bpnet-100,bpnet-200,bpnet-1000,enformer-1000,scripted-200"
)


def run_case(case: str, repeat: int, members: int, seed: int) -> dict:
    family, _, length = case.rpartition("-")
    if family not in FAMILIES or not length.isdigit():
        raise SystemExit(f"bench_engine: unknown case {case!r} (FAMILY-LENGTH with FAMILY in {sorted(FAMILIES)})")
    L = int(length)
    make, n = FAMILIES[family]
    torch.manual_seed(seed)
    models = [make(L).eval() for _ in range(members)]
    X = sq.random_sequences(n, L, seed=seed)
    choice = ism.choose_engine(models, X)
    best, outs = {}, {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the scripted model's "cannot trace" warning, once per call
        for _ in range(repeat):
            for engine in ("plain", "windowed", "auto"):
                start = time.perf_counter()
                outs[engine] = ism.saturation_mutagenesis(models, X, engine=engine, device="cpu")
                best[engine] = min(best.get(engine, float("inf")), time.perf_counter() - start)
    for engine in ("windowed", "auto"):
        diff = float((outs[engine] - outs["plain"]).abs().max())
        scale = float(outs["plain"].abs().max())
        if diff > 1e-4 * max(1.0, scale):
            raise SystemExit(f"bench_engine: {case}: engine={engine} differs from plain by {diff:.3g}")
    faster = min(best["plain"], best["windowed"])
    # the choice's own quality: auto runs the engine it chose, so its rounds count for that engine too
    # (two runs of one path differ by the machine's noise, 10-20 % on 2 shared cores)
    own = {e: min(best[e], best["auto"]) if e == choice.engine else best[e] for e in ("plain", "windowed")}
    return {
        "case": case,
        "plain_s": best["plain"],
        "windowed_s": best["windowed"],
        "auto_s": best["auto"],
        "windowed/plain": best["windowed"] / best["plain"],
        "auto chose": choice.engine,
        "auto/best": best["auto"] / faster,
        "choice/best": own[choice.engine] / min(own.values()),
        "why": choice.reason,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=DEFAULT_CASES)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds; each engine's best counts")
    ap.add_argument("--members", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import pandas as pd

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
        f"{args.members} members, best of {args.repeat}"
    )
    rows = []
    for case in args.cases.split(","):
        rows.append(run_case(case.strip(), args.repeat, args.members, args.seed))
        r = rows[-1]
        print(
            f"{r['case']:>20}: plain {r['plain_s']:.2f} s, windowed {r['windowed_s']:.2f} s "
            f"({r['windowed/plain']:.2f}x), auto {r['auto_s']:.2f} s -> {r['auto chose']}, "
            f"auto/best {r['auto/best']:.2f}, choice/best {r['choice/best']:.2f}",
            flush=True,
        )
    table = pd.DataFrame(rows)
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print(table.round(3).to_string(index=False))
    for col in ("auto/best", "choice/best"):
        worst = table[col].idxmax()
        print(f"worst {col}: {table.loc[worst, col]:.2f} ({table.loc[worst, 'case']}); target <= 1.10")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
