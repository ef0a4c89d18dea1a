"""Time to a DeepMR variant table on three models: deepmr_utils vs a naive batched ISM vs tangermeme.

    python benchmarks/bench_ism.py [--models unseen-bpnet,deepsea,book] [--members 5] [--device cpu|cuda]

Models (random weights; each a 1 kb input):

* ``unseen-bpnet``  a BPNet-like counts model written here, as a reader would bring it
  (k25 stem, 9 residual dilated convs of 64 filters, mean-pooled 4-task counts head): the
  library has never seen it, so it runs on the generic windowed engine;
* ``deepsea``       the full-size published DeepSEA architecture (52.8 M parameters, a dense
  layer over the flattened 960 x 53 features), ``deepmr_utils.models.DeepSEA``;
* ``book``          the book's ``DilatedResidualNet`` (same sizes as ``unseen-bpnet``), on the
  same engine; ``handwritten`` times the windowed ISM written by hand for it that the library
  used until the engine matched it (``benchmarks/handwritten.py``);
* ``basset``, ``chrombpnet``, ``enformer``  architectures from the wild the library was not tuned for
  (``benchmarks/wild_models.py``): Basset (BatchNorm, wide max-pools, a dense head), bpnet-lite /
  ChromBPNet (valid dilated convolutions, skips cropped by a computed amount; counts and central
  profile bins as outputs) and an Enformer-shaped toy (attention pooling and a transformer: global,
  so every mutant needs the full length after the stem).

Methods, each producing the same candidate variant table (every substitution, exposure =
output 0, outcome = output 1, effects and SEs over members):

* ``deepmr``      ``pipeline.variant_effects`` with the library's defaults (``deepmr-vmap``:
  all members in one ``torch.func.vmap`` call per block of mutants, ``ensemble="vmap"``;
  ``deepmr-plain``: ``engine="plain"``);
* ``naive``       per sequence, all 3L mutants built by tensor indexing, each member run in
  batches of ``--batch-size``, then the same post-processing;
* ``tangermeme``  ``tangermeme.saturation_mutagenesis(raw_outputs=True, fast=True)`` once per
  member, as shipped: tangermeme 1.6 silently runs its plain path when the whole job would take
  under 30 s at the plain rate (``_FAST_MIN_SECONDS``) or when its ``torch.export`` fast path fails
  its check; the row says which path ran (``path``: fast, plain (short job) or plain (refused: why)).
  ``tangermeme-forced``: the same with ``_FAST_MIN_SECONDS = 0``, so its fast path is tried on any
  job; ``tangermeme-slow``: ``fast=False``. The ratio that counts (``vs tangermeme best``) is against
  the fastest of the tangermeme rows that ran. A benchmark-only extra: ``pip install tangermeme==1.6.0``.

All methods run in the same process on the same inputs (``--repeat R``: R interleaved rounds,
each method's best counts); the script checks that their tables agree and prints variants/s
and ratios, and each model's plain forward throughput at the same
batch size as the ceiling of any method that runs the full model per mutant.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from handwritten import handwritten_ism
from torch import nn
from wild_models import BassetLike, ChromBPNetLike, EnformerLike, chrombpnet_outputs

from deepmr_utils import instruments, pipeline, uncertainty
from deepmr_utils import sequence as sq
from deepmr_utils.ism import ISMOptions
from deepmr_utils.models import DeepSEA, DilatedResidualNet


class UnseenBPNet(nn.Module):
    """A BPNet-like counts model in a reader's own style (no library code, no ISM hooks)."""

    def __init__(self, n_filters=64, n_layers=9, n_tasks=4):
        super().__init__()
        self.iconv = nn.Conv1d(4, n_filters, 25, padding=12)
        self.rconvs = nn.ModuleList(
            nn.Conv1d(n_filters, n_filters, 3, padding=2**i, dilation=2**i) for i in range(1, n_layers + 1)
        )
        self.linear = nn.Linear(n_filters, n_tasks)

    def forward(self, X):
        X = F.relu(self.iconv(X))
        for conv in self.rconvs:
            X = X + F.relu(conv(X))
        return self.linear(X.mean(dim=2))


class _Selected(nn.Module):
    """``outputs(model(x))`` as one model, so every method sees the same ``(N, outputs)``."""

    def __init__(self, model, outputs):
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, x):
        return self.outputs(self.model(x))


MODELS = {
    "unseen-bpnet": (UnseenBPNet, 2),  # factory, sequences
    "deepsea": (lambda: DeepSEA(), 1),
    "book": (lambda: DilatedResidualNet(4, 64, 9, stem_kernel=25), 2),
    "basset": (lambda: BassetLike(1000), 1),
    "chrombpnet": (lambda: _Selected(ChromBPNetLike(), chrombpnet_outputs), 2),
    "enformer": (lambda: EnformerLike(), 1),
}


def post_process(pred, X):
    effect, se = uncertainty.paired_effects(pred, X)
    return instruments.variant_table(effect, se, X, exposure=0, outcome=1)


def naive(models, X, batch_size, device):
    N, _, L = X.shape
    M = len(models)
    out = None
    with torch.inference_mode():
        for n in range(N):
            x = X[n : n + 1].to(device)
            ref = torch.stack([m(x)[0] for m in models]).float().cpu()  # (M, O)
            if out is None:
                out = torch.empty(N, M, L, 4, ref.shape[-1])
            out[n] = ref[:, None, None, :]
            pos, base = torch.nonzero(x[0].T == 0, as_tuple=True)  # 3L mutants
            muts = x.expand(pos.numel(), -1, -1).clone()
            r = torch.arange(pos.numel(), device=device)
            muts[r, :, pos] = 0
            muts[r, base, pos] = 1
            for k, m in enumerate(models):
                ys = torch.cat([m(muts[i : i + batch_size]) for i in range(0, pos.numel(), batch_size)]).float().cpu()
                out[n, k, pos.cpu(), base.cpu()] = ys
    return out


def tangermeme_ism(models, X, batch_size, device, fast, forced=False):
    """tangermeme once per member; returns the predictions and the path it took (each member's, joined)."""
    import tangermeme.saturation_mutagenesis as tsm_module

    per_member, paths = [], []
    shipped_min, shipped_choice = tsm_module._FAST_MIN_SECONDS, tsm_module._fast_path

    def recording(*args, **kwargs):  # which path tangermeme chose, and why, without changing the choice
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fast_path, y_first, n_first = shipped_choice(*args, **kwargs)
        refused = [str(w.message) for w in caught if "using fast=False because" in str(w.message)]
        if fast_path is not None:
            paths.append("fast")
        elif refused:
            paths.append(f"plain (refused: {short_reason(refused[0])})")
        else:
            paths.append("plain (short job)")
        return fast_path, y_first, n_first

    tsm_module._fast_path = recording
    if forced:
        tsm_module._FAST_MIN_SECONDS = 0.0
    try:
        for m in models:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = tsm_module.saturation_mutagenesis(
                    m, X, batch_size=batch_size, raw_outputs=True, fast=fast, device=device, verbose=False
                )
            # y_hat (N, 4, L, O); its identity edits already hold the reference prediction y0
            per_member.append(res.y_hat.permute(0, 2, 1, 3).clone())  # (N, L, 4, O)
    finally:
        tsm_module._FAST_MIN_SECONDS, tsm_module._fast_path = shipped_min, shipped_choice
    counts = {p: paths.count(p) for p in sorted(set(paths))}
    path = "plain" if not fast else ", ".join(p if n == len(paths) else f"{p} x{n}" for p, n in counts.items())
    return torch.stack(per_member, dim=1).float(), path or "plain"


def short_reason(message: str) -> str:
    """tangermeme's reason for refusing its fast path, without the timings that differ per member."""
    reason = message.split("because ", 1)[-1]
    if "took" in reason:
        return "slower on its check batch"
    if "differed" in reason:
        return "not exact on its check batch"
    return reason.split(".")[0][:50]


def forward_ceiling(model, X, batch_size, device, seconds=5.0):
    xb = X[:1].to(device).expand(batch_size, -1, -1).contiguous()
    with torch.inference_mode():
        for _ in range(2):
            model(xb)
        if device.type == "cuda":
            torch.cuda.synchronize()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model(xb)
            n += batch_size
        if device.type == "cuda":
            torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t, out


def run_model(key, args, device, methods):
    factory, n_seqs = MODELS[key]
    n_seqs = args.n_seqs or n_seqs
    torch.manual_seed(args.seed)
    models = [factory().to(device).eval() for _ in range(args.members)]
    X = sq.random_sequences(n_seqs, args.length, seed=args.seed)
    n_mut = n_seqs * 3 * args.length
    print(f"\n== {key}: {n_seqs} sequences x {args.length} bp, {args.members} members, {n_mut} variants", flush=True)
    tables, times, paths = {}, {}, {}
    # each round runs every method once, so drifts of the machine hit all methods alike; the best round counts
    for name in [m for _ in range(args.repeat) for m in methods + (["handwritten"] if key == "book" else [])]:
        if name == "handwritten":
            t, tab = timed(lambda: post_process(handwritten_ism(models, X.to(device)), X))
        elif name.startswith("deepmr"):
            kw = {"deepmr-plain": {"engine": "plain"}, "deepmr-vmap": {"ensemble": "vmap"}}.get(name, {})
            t, tab = timed(
                lambda: pipeline.variant_effects(
                    models,
                    X,
                    options=ISMOptions(device=device, **kw),  # noqa: B023
                    exposure=0,
                    outcome=1,
                    select=instruments.Selection("all"),
                    progress=False,
                )
            )
        elif name == "naive":
            t, tab = timed(lambda: post_process(naive(models, X, args.batch_size, device), X))
        elif name.startswith("tangermeme"):
            try:
                import tangermeme  # noqa: F401
            except ImportError:
                print(f"  {name}: skipped (pip install tangermeme==1.6.0)")
                continue
            fast, forced = not name.endswith("slow"), name.endswith("forced")
            t, (pred, paths[name]) = timed(
                lambda: tangermeme_ism(models, X, args.batch_size, args.device, fast, forced)  # noqa: B023
            )  # noqa: B023
            t0 = time.perf_counter()
            tab = post_process(pred, X)
            t += time.perf_counter() - t0
        else:
            raise SystemExit(f"unknown method {name}")
        tables[name], times[name] = tab, min(t, times.get(name, t))
        print(f"  {name:<18} {t:8.1f} s  {n_mut / t:8.0f} variants/s  {paths.get(name, '')}", flush=True)

    ref = next(iter(tables.values()))
    for name, tab in tables.items():
        for col in ("bx", "bxse", "by", "byse"):
            gap = np.nanmax(np.abs(tab[col].to_numpy() - ref[col].to_numpy()))
            scale = np.nanmax(np.abs(ref[col].to_numpy()))
            assert gap <= 1e-3 * scale + 1e-6, f"{name} disagrees with {next(iter(tables))} on {col}: {gap}"
    ceiling = forward_ceiling(models[0], X, args.batch_size, device) / args.members
    print(f"  all methods produce the same variant table; plain-forward ceiling {ceiling:.0f} variants/s")
    return {"times": times, "n_mut": n_mut, "ceiling": ceiling, "paths": paths}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="unseen-bpnet,deepsea,book")
    ap.add_argument("--n-seqs", type=int, default=None, help="sequences per model (default: 2, DeepSEA 1)")
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--length", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32, help="mutants per forward for naive/tangermeme/ceiling")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--methods", default="deepmr,naive,tangermeme,tangermeme-forced,tangermeme-slow")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON (for generated tables)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1, help="rounds of all methods; each method's best round counts")
    args = ap.parse_args()
    device = torch.device(args.device)
    # exact float32 everywhere, so the methods' tables can be compared (TF32 would differ by ~1e-3)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"device {device} ({dev_name}), torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    results = {key: run_model(key, args, device, args.methods.split(",")) for key in args.models.split(",")}

    print(
        f"\n{'model':<14}{'method':<19}{'seconds':>9}{'variants/s':>12}{'vs naive':>10}"
        f"{'vs tangermeme best':>20}{'of ceiling':>12}  tangermeme path"
    )
    for key, r in results.items():
        times = r["times"]
        tm = [times[k] for k in times if k.startswith("tangermeme")]
        for name, t in times.items():
            rate = r["n_mut"] / t
            vs_naive = f"{times['naive'] / t:.2f}x" if "naive" in times else "-"
            vs_tm = f"{min(tm) / t:.2f}x" if tm else "-"
            print(
                f"{key:<14}{name:<19}{t:>9.1f}{rate:>12.0f}{vs_naive:>10}{vs_tm:>20}{rate / r['ceiling']:>11.0%}"
                f"  {r['paths'].get(name, '')}"
            )
    if args.json:
        import json

        meta = {"device": str(device), "device_name": dev_name, "torch": torch.__version__,
                "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"), "args": vars(args)}  # fmt: skip
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "models": results}, fh, indent=1)


if __name__ == "__main__":
    main()
