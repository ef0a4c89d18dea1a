"""Saturation in-silico mutagenesis (ISM) for one model, an ensemble, or MC-dropout.

The core function, :func:`saturation_mutagenesis`, predicts the reference and
every single-base substitution of every sequence with every member of an
ensemble and returns one tensor of shape

    (sequence, model, position, base, output)

where the reference base's slot holds the reference prediction. Mutants are
built on the device in batches (never all 3L at once), all ensemble members see
the same mutant batch, and a model that implements ``ism_reference`` /
``ism_block`` (see :class:`deepmr_utils.models.DilatedResidualNet`) is evaluated
only on the window a mutation can change.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext

import torch
from torch import nn

from ._torch import (
    OutputSpec,
    as_models,
    check_outputs,
    eval_mode,
    on_device,
    prepare_input,
    resolve_device,
    select_outputs,
)
from ._types import Device, Models, Positions, Sequences
from .sequence import ALPHABET, substitute

__all__ = ["saturation_mutagenesis", "mutant_index", "resolve_positions", "OutputSpec"]


# ----------------------------------------------------------------------------- helpers


class _SharedDropout:
    """MC-dropout with one mask per pass, shared by a reference and all its mutants.

    Dropout modules stay in eval mode (identity); a forward hook multiplies their
    output by a mask drawn once per (pass, module) with the feature shape of the
    input (everything but the batch axis), so every row of every batch in the pass
    is perturbed identically.
    """

    def __init__(self, model: nn.Module, seed: int):
        self.mods = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
        if not self.mods:
            raise ValueError("mc_dropout needs a model with torch.nn.Dropout layers; this one has none")
        if all(m.p == 0 for m in self.mods):
            raise ValueError(
                f"mc_dropout: all {len(self.mods)} Dropout layers of this model have p=0, so every "
                "pass would be identical and every SE zero; rebuild it with p > 0 or use an ensemble"
            )
        self.seed = seed
        self.pass_index = 0
        self.masks: dict = {}
        self.handles = []

    def __enter__(self):
        for j, mod in enumerate(self.mods):
            self.handles.append(mod.register_forward_hook(self._hook(j)))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()

    def _hook(self, j):
        def hook(mod, inputs, output):
            if mod.p == 0:
                return output
            key = (self.pass_index, j, tuple(output.shape[1:]))
            if key not in self.masks:
                g = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + self.pass_index * 1009 + j)
                keep = torch.rand(output.shape[1:], generator=g) >= mod.p
                self.masks[key] = (keep.to(output.dtype) / (1 - mod.p)).to(output.device)
            return output * self.masks[key]

        return hook


def mutant_index(X: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All substitutions of ``X`` at ``positions``: ``(seq, pos_index, base)`` of every mutant.

    A position whose column is all zero (an unknown base) gets all four bases.
    """
    ref = X[:, :, positions]  # (N, 4, P)
    seq, base, pidx = torch.nonzero(ref == 0, as_tuple=True)
    order = torch.argsort(seq * (4 * positions.numel()) + pidx * 4 + base)
    return seq[order], pidx[order], base[order]


def _default_batch_size(model_fn, x1: torch.Tensor, device: torch.device) -> int:
    """Largest batch that fits comfortably: probe peak memory on CUDA, a cache-sized batch on CPU."""
    L = x1.shape[-1]
    if device.type != "cuda":
        return int(max(8, min(256, 16384 // L)))
    torch.cuda.synchronize(device)
    free, _ = torch.cuda.mem_get_info(device)
    probe = 8
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    model_fn(x1.expand(probe, -1, -1).contiguous())
    torch.cuda.synchronize(device)
    per = max(1, (torch.cuda.max_memory_allocated(device) - base) / probe)
    return int(max(1, min(8192, 0.4 * free / per)))


def _stacked(models, device):
    """One functional forward for the whole ensemble via torch.func (vmap over stacked weights)."""
    from torch.func import functional_call, stack_module_state, vmap

    params, buffers = stack_module_state(models)
    base = copy.deepcopy(models[0]).to("meta")

    def one(p, b, x):
        return functional_call(base, (p, b), (x,))

    batched = vmap(one, in_dims=(0, 0, None))
    return lambda x: batched(params, buffers, x)


def _member(raw, i):
    """Member ``i`` of a vmapped output (a tensor, or a tuple/list/dict of them)."""
    if isinstance(raw, torch.Tensor):
        return raw[i]
    if isinstance(raw, dict):
        return {k: v[i] for k, v in raw.items()}
    return type(raw)(v[i] for v in raw)


def _same_architecture(models) -> bool:
    ref = [(k, v.shape, v.dtype) for k, v in models[0].state_dict().items()]
    return all(
        [(k, v.shape, v.dtype) for k, v in m.state_dict().items()] == ref and type(m) is type(models[0])
        for m in models[1:]
    )


# ----------------------------------------------------------------------------- main API


def saturation_mutagenesis(
    models: Models,
    X: Sequences,
    *,
    outputs: OutputSpec = None,
    positions: Positions = None,
    batch_size: int | None = None,
    device: Device = None,
    dtype: torch.dtype | None = None,
    mc_dropout: int = 0,
    seed: int = 0,
    fast: bool | None = None,
    ensemble: str = "auto",
    block: int = 12,
) -> torch.Tensor:
    """Predictions for every single-base substitution of every sequence.

    Parameters
    ----------
    models : ``nn.Module`` or list of them (an ensemble of identically shaped models).
    X : one-hot ``(N, 4, L)`` tensor, or sequence strings.
    outputs : ``None`` (all outputs), an index / list of indices into the model's
        ``(batch, n_outputs)`` output, or a callable mapping the raw output to
        ``(batch, n_outputs)`` (e.g. to pick the counts heads of two TFs).
    positions : ``None`` (all), a ``(start, stop)`` window, or 1-D positions.
    batch_size : mutants per forward pass; ``None`` picks one from free memory.
    device : where to compute; ``None`` = CUDA when visible, else the CPU (the package's
        one device rule). Models on another device are copied there (the caller's models
        are not moved).
    dtype : ``torch.bfloat16`` / ``torch.float16`` for autocast (GPU), else float32.
    mc_dropout : number of MC-dropout passes (0 = off). Each pass draws one
        dropout mask per layer, shared by every reference and mutant in the pass;
        the passes fill the model axis. Requires exactly one model.
    fast : use the model's receptive-field path (``ism_reference``/``ism_block``), which
        recomputes only the window a mutation can reach: exact (same numbers as the plain
        path) with several times fewer FLOPs. ``None`` = whenever the model provides it.
    ensemble : ``"loop"`` (one call per member and batch) or ``"vmap"`` (stacked weights,
        one ``torch.func`` call for all members). ``"auto"`` = loop: measured faster for
        convolutional models on both CPU and GPU (``benchmarks/bench_ism.py``).
    block : positions per window on the fast path. On a GPU, windows are widened (up to
        128 positions) and references batched so that each call holds about
        ``batch_size`` (default 4096) mutants.

    Returns
    -------
    Tensor ``(N, M, P, 4, O)`` (float32, CPU): M members (or MC passes), P positions;
    slot ``[n, m, p, ref_base]`` holds the reference prediction.
    """
    models = as_models(models)
    outputs = check_outputs(outputs)
    if ensemble not in ("auto", "vmap", "loop"):
        raise ValueError(f"ensemble must be 'auto', 'vmap' or 'loop', got {ensemble!r}")
    if mc_dropout < 0 or int(mc_dropout) != mc_dropout:
        raise ValueError(f"mc_dropout must be a non-negative integer, got {mc_dropout}")
    if mc_dropout and len(models) != 1:
        raise ValueError("mc_dropout draws its samples from one model; pass a single model, not an ensemble")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = resolve_device(device)
    models = on_device(models, dev)
    X = prepare_input(X, models, dev)
    N, _, L = X.shape
    pos = resolve_positions(positions, L)
    autocast = dtype not in (None, torch.float32)
    if autocast and dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be None, torch.float32, torch.bfloat16 or torch.float16, got {dtype}")

    has_fast = all(hasattr(m, "ism_block") and hasattr(m, "ism_reference") for m in models)
    if fast and not has_fast:
        raise ValueError("fast=True needs models that implement ism_reference/ism_block")
    use_fast = has_fast and fast is not False and not mc_dropout

    with eval_mode(models), torch.inference_mode():
        ctx = torch.autocast(dev.type, dtype=dtype) if autocast else nullcontext()
        with ctx:
            if use_fast:
                if dev.type == "cpu":  # one reference at a time: small caches, cache-friendly
                    out = _fast_path(models, X, pos, outputs, batch_size, block, 1)
                else:  # many references and a wider window per call, about `batch_size` mutants each
                    target = batch_size or 4096
                    chunk = max(1, target // (3 * block))
                    wide = max(block, min(128, target // (3 * min(N, chunk))))
                    out = _fast_path(models, X, pos, outputs, None, wide, chunk)
            else:
                out = _plain_path(models, X, pos, outputs, batch_size, dev, mc_dropout, seed, ensemble)
    if not torch.isfinite(out).all():
        n, m, p, b, o = torch.nonzero(~torch.isfinite(out))[0].tolist()
        raise ValueError(
            f"non-finite prediction: sequence {n}, model {m}, position {int(pos[p])}, base {ALPHABET[b]}, output {o}"
        )
    return out


def resolve_positions(positions: Positions, L: int) -> torch.Tensor:
    """The mutated positions as a sorted 1-D tensor.

    ``positions``: ``None`` (all ``L``), a ``(start, stop)`` **tuple** (a window), or any
    other sequence of positions (a list ``[0, 10]`` means positions 0 and 10, not a window).
    """
    if positions is None:
        return torch.arange(L)
    if isinstance(positions, tuple) and len(positions) == 2:
        start, stop = positions
        if not 0 <= start < stop <= L:
            raise ValueError(f"positions window {positions} must satisfy 0 <= start < stop <= L={L}")
        return torch.arange(start, stop)
    pos = torch.as_tensor(positions, dtype=torch.long).flatten()
    if pos.numel() == 0:
        raise ValueError("positions is empty")
    if (pos < 0).any() or (pos >= L).any():
        raise ValueError(f"positions must lie in [0, {L}), got {pos.min().item()}..{pos.max().item()}")
    return torch.unique(pos)


def _plain_path(models, X, pos, outputs, batch_size, dev, mc_dropout, seed, ensemble):
    N, _, L = X.shape
    P = pos.numel()
    pos = pos.to(dev)
    stack = ensemble == "vmap"
    if ensemble == "vmap" and not _same_architecture(models):
        raise ValueError("ensemble='vmap' needs members with identical architecture; use ensemble='loop'")
    if mc_dropout:
        shared = _SharedDropout(models[0], seed)
        n_members = mc_dropout

        def run(x):  # (S, B, O)
            ys = []
            for s in range(mc_dropout):
                shared.pass_index = s
                ys.append(select_outputs(models[0](x), outputs))
            return torch.stack(ys)
    elif stack:
        fn = _stacked(models, dev)
        n_members = len(models)

        def run(x):
            raw = fn(x)  # every leaf has a leading member axis
            return torch.stack([select_outputs(_member(raw, i), outputs) for i in range(n_members)])
    else:
        n_members = len(models)

        def run(x):
            return torch.stack([select_outputs(m(x), outputs) for m in models])

    with shared if mc_dropout else nullcontext():
        if batch_size is None:
            batch_size = _default_batch_size(lambda x: run(x), X[:1], dev)
        # references first: fill every slot, mutants overwrite theirs
        refs = torch.cat([run(X[i : i + batch_size]) for i in range(0, N, batch_size)], dim=1)  # (M, N, O)
        O = refs.shape[-1]
        out = refs.float().permute(1, 0, 2)[:, :, None, None, :].expand(N, n_members, P, 4, O).clone()
        seq, pidx, base = (t.to(dev) for t in mutant_index(X, pos))
        for i in range(0, seq.numel(), batch_size):
            s, p, b = seq[i : i + batch_size], pidx[i : i + batch_size], base[i : i + batch_size]
            xb = substitute(X[s], pos[p], b)
            y = run(xb).float()  # (M, B, O)
            out[s, :, p, b, :] = y.permute(1, 0, 2)
    return out.cpu()


def _fast_path(models, X, pos, outputs, batch_size, block, chunk):
    """Windowed ISM: mutants at ``block`` neighbouring positions share one window per layer.

    ``chunk`` references are cached together and their mutants at the same window go
    through one call (on a GPU, large calls keep the device busy; on a CPU, one sequence
    at a time keeps the caches small).
    """
    N, _, L = X.shape
    P = pos.numel()
    dev = X.device
    pos_cpu = pos.cpu().numpy()
    out = None
    per_batch = max(1, (batch_size or 3 * block) // 3)
    # group positions into runs of at most `per_batch` positions spanning <= per_batch bases
    groups, i = [], 0
    while i < P:
        j = i
        while j + 1 < P and j + 1 - i < per_batch and pos_cpu[j + 1] - pos_cpu[i] < per_batch:
            j += 1
        groups.append((i, j + 1))
        i = j + 1
    for n0 in range(0, N, chunk):
        x = X[n0 : n0 + chunk]
        caches = [m.ism_reference(x) for m in models]
        refs = torch.stack([select_outputs(m(x), outputs) for m in models], dim=1).float().cpu()  # (n, M, O)
        if out is None:
            out = torch.empty(N, len(models), P, 4, refs.shape[-1])
        out[n0 : n0 + x.shape[0]] = refs[:, :, None, None, :]
        for a, b in groups:
            start, stop = int(pos_cpu[a]), int(pos_cpu[b - 1]) + 1
            window = x[:, :, start:stop]
            rel = torch.as_tensor(pos_cpu[a:b] - start, device=dev)
            col = window[:, :, rel]  # (n, 4, npos)
            rr, bb, pp = torch.nonzero(col == 0, as_tuple=True)  # mutants: (reference, base, position in group)
            xm = substitute(window[rr], rel[pp], bb, inplace=True)
            rows = rr if x.shape[0] > 1 else None
            idx = ((n0 + rr).cpu(), (a + pp).cpu(), bb.cpu())
            for k, (m, c) in enumerate(zip(models, caches)):
                y = select_outputs(m.ism_block(c, xm, start, rows), outputs).float().cpu()
                out[idx[0], k, idx[1], idx[2], :] = y
    return out
