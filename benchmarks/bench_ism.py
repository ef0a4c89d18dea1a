"""Time to a DeepMR variant table: deepmr_utils vs a naive batched ISM vs tangermeme.

    python benchmarks/bench_ism.py [--n-seqs 16] [--members 5] [--device cpu|cuda]

Model: a BPNet-sized ``DilatedResidualNet`` (1 kb input, 64 filters, 9 residual
dilated layers, 4 count heads; random weights), ensemble of ``--members``. Each
method produces the same candidate variant table (every substitution of every
sequence, exposure = head 0, outcome = head 1, effects and SEs over members):

* ``deepmr``     ``pipeline.variant_effects`` with the library's defaults (the windowed path);
                 ``deepmr-windowed`` / ``deepmr-plain`` force the windowed or the plain batched path;
* ``naive``      per sequence, all 3L mutants built by tensor indexing, each member run in
                 batches of ``--batch-size``, then the same post-processing;
* ``tangermeme`` ``tangermeme.saturation_mutagenesis(raw_outputs=True)`` once per member,
                 with ``fast=True`` and ``fast=False`` (its best is the baseline), then the
                 same post-processing. tangermeme is a benchmark-only extra
                 (``pip install tangermeme==1.6.0``).

All methods run in the same process, on the same inputs; the script checks that
their tables agree and prints mutants/s (variant rows per second) and ratios, and
the model's plain forward throughput at the same batch size as the ceiling.
"""

from __future__ import annotations

import argparse
import platform
import time
import warnings

import numpy as np
import torch

from deepmr_utils import instruments, pipeline, uncertainty
from deepmr_utils import sequence as sq
from deepmr_utils.models import DilatedResidualNet


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


def tangermeme_ism(models, X, batch_size, device, fast):
    from tangermeme.saturation_mutagenesis import saturation_mutagenesis as tsm

    per_member = []
    for m in models:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = tsm(m, X, batch_size=batch_size, raw_outputs=True, fast=fast, device=device, verbose=False)
        # y_hat (N, 4, L, O); its identity edits already hold the reference prediction y0
        pred = res.y_hat.permute(0, 2, 1, 3).clone()  # (N, L, 4, O)
        per_member.append(pred)
    return torch.stack(per_member, dim=1).float()


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-seqs", type=int, default=16)
    ap.add_argument("--members", type=int, default=5)
    ap.add_argument("--length", type=int, default=1000)
    ap.add_argument("--filters", type=int, default=64)
    ap.add_argument("--layers", type=int, default=9)
    ap.add_argument("--tasks", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=32, help="mutants per forward for naive/tangermeme/ceiling")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--methods", default="deepmr,naive,tangermeme-fast,tangermeme-slow")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    device = torch.device(args.device)
    methods = args.methods.split(",")
    # exact float32 everywhere, so the methods' tables can be compared (TF32 would differ by ~1e-3)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False

    torch.manual_seed(args.seed)
    models = [
        DilatedResidualNet(args.tasks, args.filters, args.layers, stem_kernel=25).to(device).eval()
        for _ in range(args.members)
    ]
    X = sq.random_sequences(args.n_seqs, args.length, seed=args.seed)
    n_mut = args.n_seqs * 3 * args.length
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(
        f"{args.n_seqs} sequences x {args.length} bp, {args.members}-member ensemble of DilatedResidualNet("
        f"{args.tasks} heads, {args.filters} filters, {args.layers} dilated layers); {n_mut} variants; "
        f"device {device} ({dev_name}), torch {torch.__version__}, {torch.get_num_threads()} threads"
    )

    tables, times = {}, {}
    for name in methods:
        if name.startswith("deepmr"):
            # "deepmr": the library's defaults; "-windowed" / "-plain" force one path
            kw = {"deepmr-windowed": {"fast": True}, "deepmr-plain": {"fast": False}}.get(name, {})
            t, tab = timed(
                lambda: pipeline.variant_effects(
                    models,
                    X,
                    exposure=0,
                    outcome=1,
                    select=instruments.Selection("all"),
                    device=device,
                    progress=False,
                    **kw,  # noqa: B023 (called at once)
                )
            )
        elif name == "naive":
            t, tab = timed(lambda: post_process(naive(models, X, args.batch_size, device), X))
        elif name.startswith("tangermeme"):
            try:
                import tangermeme  # noqa: F401
            except ImportError:
                print(f"{name}: skipped (pip install tangermeme==1.6.0)")
                continue
            fast = name.endswith("fast")
            t, tab = timed(lambda: post_process(tangermeme_ism(models, X, args.batch_size, args.device, fast), X))  # noqa: B023 (called at once)
        else:
            raise SystemExit(f"unknown method {name}")
        tables[name], times[name] = tab, t
        print(f"  {name:<16} {t:8.1f} s  {n_mut / t:8.0f} variants/s", flush=True)

    ref = next(iter(tables.values()))
    for name, tab in tables.items():
        for col in ("bx", "bxse", "by", "byse"):
            gap = np.nanmax(np.abs(tab[col].to_numpy() - ref[col].to_numpy()))
            scale = np.nanmax(np.abs(ref[col].to_numpy()))
            assert gap <= 1e-3 * scale + 1e-6, f"{name} disagrees with {next(iter(tables))} on {col}: {gap}"
    print("all methods produce the same variant table")

    ceiling = forward_ceiling(models[0], X, args.batch_size, device) / args.members
    print(
        f"\nplain forward ceiling at batch {args.batch_size}: {ceiling * args.members:.0f} sequences/s "
        f"= {ceiling:.0f} variants/s for {args.members} members"
    )
    tm = [times[k] for k in times if k.startswith("tangermeme")]
    print(f"{'method':<16}{'seconds':>9}{'variants/s':>12}{'vs naive':>10}{'vs tangermeme best':>20}{'of ceiling':>12}")
    for name, t in times.items():
        rate = n_mut / t
        vs_naive = f"{times['naive'] / t:.2f}x" if "naive" in times else "-"
        vs_tm = f"{min(tm) / t:.2f}x" if tm else "-"
        print(f"{name:<16}{t:>9.1f}{rate:>12.0f}{vs_naive:>10}{vs_tm:>20}{rate / ceiling:>11.0%}")


if __name__ == "__main__":
    main()
