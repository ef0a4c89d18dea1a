"""Saturation in-silico mutagenesis (ISM) for one model, an ensemble, or MC-dropout.

The core function, :func:`saturation_mutagenesis`, predicts the reference and
every single-base substitution of every sequence with every member of an
ensemble and returns one tensor of shape

    (sequence, model, position, base, output)

where the reference base's slot holds the reference prediction. Mutants are
built on the device in batches (never all 3L at once), all ensemble members see
the same mutant batch, and any model ``torch.fx`` can capture (the book's own, or a
reader's) is evaluated only on the window a mutation can change
(:mod:`deepmr_utils._windowed`: one engine for every model).
"""

from __future__ import annotations

import copy
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
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
    same_architecture,
    select_outputs,
)
from ._types import Device, Models, Positions, Sequences
from ._validate import ENGINES, FAST_HINT, check_choice, is_integer, renamed_keywords
from ._windowed import StackedWindowedModel, TraceError, WindowedModel
from .sequence import ALPHABET, as_one_hot, reverse_complement, substitute

__all__ = [
    "saturation_mutagenesis",
    "prepare",
    "PreparedISM",
    "ISMOptions",
    "choose_engine",
    "EngineChoice",
    "mutant_index",
    "resolve_positions",
    "OutputSpec",
]


# ----------------------------------------------------------------------------- helpers


def check_mc_dropout(model: nn.Module) -> list[nn.Module]:
    """The Dropout layers MC-dropout will mask, or a ``ValueError`` saying why it cannot: no Dropout,
    all with p = 0, or a TorchScript model (its Dropout layers are compiled in: their masks cannot be
    shared between a reference and its mutants from outside; load the model from its Python class)."""
    mods = [m for m in model.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    if not mods:
        scripted = [m for m in model.modules() if "Dropout" in str(getattr(m, "original_name", ""))]
        if scripted:
            raise ValueError(
                f"mc_dropout: this TorchScript model has {len(scripted)} Dropout layers, but their masks are compiled "
                "in and cannot be shared by a reference and its mutants; load the model from its Python class "
                "(package.module:factory with its weights) or use an ensemble"
            )
        raise ValueError("mc_dropout needs a model with torch.nn.Dropout layers; this one has none")
    if all(m.p == 0 for m in mods):
        raise ValueError(
            f"mc_dropout: all {len(mods)} Dropout layers of this model have p=0, so every "
            "pass would be identical and every SE zero; rebuild it with p > 0 or use an ensemble"
        )
    return mods


class _SharedDropout:
    """MC-dropout with one mask per pass, shared by a reference and all its mutants.

    Dropout modules stay in eval mode (identity); a forward hook multiplies their
    output by a mask drawn once per (pass, module) with the feature shape of the
    input (everything but the batch axis), so every row of every batch in the pass
    is perturbed identically.
    """

    def __init__(self, model: nn.Module, seed: int):
        self.mods = check_mc_dropout(model)
        self.seed = seed
        self.device = next((t.device for t in model.parameters()), torch.device("cpu"))
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

    def mask(self, j: int, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """The current pass's mask for dropout layer ``j`` on activations of feature shape ``shape``."""
        key = (self.pass_index, j, tuple(shape))
        if key not in self.masks:
            p = self.mods[j].p
            g = torch.Generator(device="cpu").manual_seed(self.seed * 1_000_003 + self.pass_index * 1009 + j)
            keep = torch.rand(tuple(shape), generator=g) >= p
            self.masks[key] = (keep.to(dtype) / (1 - p)).to(device)
        return self.masks[key]

    def mask_for(self, mod: nn.Module, shape: torch.Size) -> torch.Tensor:
        """:meth:`mask` for a dropout module (the windowed path applies it to windows itself)."""
        j = next(i for i, m in enumerate(self.mods) if m is mod)
        return self.mask(j, shape, torch.float32, self.device)

    def _hook(self, j):
        def hook(mod, inputs, output):
            if mod.p == 0:
                return output
            return output * self.mask(j, output.shape[1:], output.dtype, output.device)

        return hook


def mutant_index(X: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All substitutions of ``X`` at ``positions``: ``(seq, pos_index, base)`` of every mutant.

    A position whose column is all zero (an unknown base) gets all four bases.
    """
    ref = X[:, :, positions]  # (N, 4, P)
    seq, base, pidx = torch.nonzero(ref == 0, as_tuple=True)
    order = torch.argsort(seq * (4 * positions.numel()) + pidx * 4 + base)
    return seq[order], pidx[order], base[order]


def _cuda_batch_size(model_fn, x1: torch.Tensor, device: torch.device) -> int:
    """Largest batch that fits comfortably in free GPU memory, from the peak memory of a probe."""
    torch.cuda.synchronize(device)
    free, _ = torch.cuda.mem_get_info(device)
    probe = 8
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    model_fn(x1.expand(probe, -1, -1).contiguous())
    torch.cuda.synchronize(device)
    per = max(1, (torch.cuda.max_memory_allocated(device) - base) / probe)
    return int(max(1, min(8192, 0.4 * free / per)))


def _cpu_batch_size(L: int) -> int:
    """Rows per forward pass on a CPU, from the sequence length alone: about 16 kb of sequence per
    batch, a power of two in [16, 1024] (100 bp: 128, 200 bp: 64, 1 kb: 16). Measured on 2 CPU cores
    (3 members, engine="plain"): the best batch sizes were 128 at 100 bp, 64 at 200 bp and 16-32 at 1 kb,
    where 128 rows ran 3x slower (the activations leave the caches). A rule, not a measurement at run
    time: a batch size chosen by timing changes the convolution kernels, so the numbers would depend
    on the machine's load."""
    return int(min(1024, max(16, 2 ** round(np.log2(16384 / max(1, L))))))


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


def _by_member(raw, outputs, n: int | None) -> torch.Tensor:
    """Selected outputs ``(m, B, O)`` (float32, CPU) of one model's raw output (``n`` None) or of
    ``n`` stacked members' (every leaf with a leading member axis)."""
    if n is None:
        return select_outputs(raw, outputs).float().cpu()[None]
    return torch.stack([select_outputs(_member(raw, i), outputs) for i in range(n)]).float().cpu()


# ----------------------------------------------------------------------------- main API


@renamed_keywords(fast=FAST_HINT)
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
    engine: str = "auto",
    ensemble: str = "auto",
    block: int = 12,
    rc_average: bool = False,
    transform: str | None = None,
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
    batch_size : rows per forward pass; ``None``: on a GPU the largest that fits in free
        memory, on a CPU a rule of the length (about 16 kb of sequence per batch, 16 to 1024
        rows). On a CPU each sequence's reference and mutants get batches of their own, so its
        numbers are the same bits however the sequences are chunked or spread over workers.
    device : where to compute; ``None`` = CUDA when visible, else the CPU (the package's
        one device rule). Models on another device are copied there (the caller's models
        are not moved).
    dtype : ``torch.bfloat16`` / ``torch.float16`` for autocast (GPU), else float32.
    mc_dropout : number of MC-dropout passes (0 = off). Each pass draws one
        dropout mask per layer, shared by every reference and mutant in the pass;
        the passes fill the model axis. Requires exactly one model.
    engine : ``"windowed"`` recomputes only the window a mutation can reach (exact: the plain
        path's numbers to float32 round-off, with several times fewer FLOPs), for any model
        ``torch.fx`` can trace (:mod:`deepmr_utils._windowed`); a model it cannot trace runs on
        the plain path with a warning that says why. ``"auto"`` (default): the windowed engine for
        sequences of ``WINDOWED_MIN_LENGTH`` (150) bp or more, plain batches for shorter ones, where
        the engine's nearly fixed cost per window loses (a rule of the shape, never a timing, so the
        path is the same on every run). ``"plain"``: every mutant through the whole model. (The
        retired ``fast=`` keyword raises a ``TypeError`` naming this one.)
    ensemble : ``"loop"`` (one call per member and batch) or ``"vmap"`` (stacked weights,
        one ``torch.func`` call for all members, on the plain path and on the generic windowed
        engine, where the engine then walks the graph once per block for all members).
        ``"auto"`` = loop: measured faster for convolutional models on the plain path on CPU
        and GPU, and 4x faster than vmap on the windowed engine on 2 CPU cores, where vmap
        turns the convolutions into grouped ones (``benchmarks/bench_ism.py``, method
        ``deepmr-vmap``; not yet measured on a GPU).
    block : positions per window on the windowed path. On a GPU, windows are widened (up to
        128 positions) and references batched so that each call holds about
        ``batch_size`` (default 4096) mutants.
    rc_average : average each prediction with the model's prediction for the reverse complement
        of the same mutant (as Kipoi's DeepSEA does). Computed as a second ISM of the reverse
        complement, mapped back position by position and base by base, so the fast path serves both.
    transform : applied to the (averaged) selected outputs: ``"logit"`` for probabilities,
        ``"log"`` for counts or rates, ``None`` / ``"none"`` for nothing. Effects are then differences
        on that scale. A prediction outside the domain raises ``ValueError`` with the share of such
        predictions; one on its edge (exactly 0 or 1) too, unless ``"logit-clip"`` / ``"log-clip"``
        asks to clip it to 1e-6 from the edge.

    Returns
    -------
    Tensor ``(N, M, P, 4, O)`` (float32, CPU): M members (or MC passes), P positions;
    slot ``[n, m, p, ref_base]`` holds the reference prediction.
    """
    options = ISMOptions(  # checks every option
        outputs=outputs, batch_size=batch_size, device=device, dtype=dtype, mc_dropout=mc_dropout, seed=seed,
        engine=engine, ensemble=ensemble, rc_average=rc_average, transform=transform,
    )  # fmt: skip
    X = as_one_hot(X)
    return prepare(models, X.shape[2], options, block=block, stacklevel=3).run(X, positions)


def prepare(models: Models, length: int, options: ISMOptions, *, block: int = 12, stacklevel: int = 2) -> PreparedISM:
    """:func:`saturation_mutagenesis` with ``options`` for ``models`` on sequences of ``length`` bp, prepared once:
    the models on their device, the engine chosen (:func:`choose_engine`'s rule) and traced. ``.run(X, positions)``
    then runs any number of batches of sequences on it, each with the numbers :func:`saturation_mutagenesis`
    gives; :mod:`deepmr_utils.pipeline` prepares one per run (per worker on a Dask cluster) for all its chunks.
    A model the engine cannot trace is said once, here (``stacklevel``: where the warning points)."""
    if not isinstance(options, ISMOptions):
        raise TypeError(f"options must be an ISMOptions, got {type(options).__name__}")
    if not is_integer(length) or length < 1:
        raise ValueError(f"length must be an integer >= 1, got {length!r}")
    return PreparedISM(models, int(length), options, block, stacklevel + 1)


TRANSFORMS = (None, "none", "logit", "log", "logit-clip", "log-clip")
ENSEMBLE_MODES = ("auto", "vmap", "loop")


def _check_options(**given) -> None:
    """The one check of the ISM options, for :func:`saturation_mutagenesis` and :class:`ISMOptions`: each
    keyword given is validated, with a ``ValueError``/``TypeError`` naming it."""
    if "engine" in given:
        check_choice(given["engine"], "engine", ENGINES)
    if "ensemble" in given:
        check_choice(given["ensemble"], "ensemble", ENSEMBLE_MODES)
    if "transform" in given and given["transform"] not in TRANSFORMS:
        raise ValueError(f"transform must be one of {TRANSFORMS}, got {given['transform']!r}")
    for name in ("mc_dropout", "seed", "ddof"):
        value = given.get(name, 0)
        if not is_integer(value):
            raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if given.get("mc_dropout", 0) < 0:
        raise ValueError(f"mc_dropout must be a non-negative integer, got {given['mc_dropout']}")
    if given.get("ddof", 0) < 0:
        raise ValueError(f"ddof must be >= 0, got {given['ddof']}")
    batch_size = given.get("batch_size")
    if batch_size is not None and (not is_integer(batch_size) or batch_size < 1):
        raise ValueError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")
    dtype = given.get("dtype")
    if dtype not in (None, torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be None, torch.float32, torch.bfloat16 or torch.float16, got {dtype}")
    if not isinstance(given.get("rc_average", False), (bool, np.bool_)):
        raise TypeError(f"rc_average must be True or False, got {given['rc_average']!r}")


@dataclass(frozen=True)
class ISMOptions:
    """The options of an ISM run, as one validated value (:func:`deepmr_utils.pipeline.effects`,
    :func:`deepmr_utils.pipeline.variant_effects` and the ``deepmr`` command take it).

    What changes the numbers, and is pinned in a run folder's fingerprint: ``outputs`` (with ``outputs_key``,
    a name for a callable ``outputs`` that cannot be pinned by its module and name, e.g. a lambda),
    ``positions``, ``ddof`` (of the members' paired differences, :func:`deepmr_utils.uncertainty.paired_effects`),
    ``mc_dropout``, ``seed``, ``dtype``, ``rc_average`` and ``transform``. What changes only how they are
    computed: ``batch_size``, ``device``, ``engine`` and ``ensemble``. Each as for
    :func:`saturation_mutagenesis`. ``positions`` are resolved against the sequences' length when the run
    starts; everything else is checked here, so a bad option fails before any work.

    >>> ISMOptions(mc_dropout=8, engine="plain").mutagenesis()["mc_dropout"]
    8
    """

    outputs: OutputSpec = None
    outputs_key: str | None = None
    positions: Positions = None
    ddof: int = 1
    mc_dropout: int = 0
    seed: int = 0
    dtype: torch.dtype | None = None
    rc_average: bool = False
    transform: str | None = None
    batch_size: int | None = None
    device: Device = None
    engine: str = "auto"
    ensemble: str = "auto"

    def __post_init__(self):
        object.__setattr__(self, "outputs", check_outputs(self.outputs))
        if self.outputs_key is not None and not isinstance(self.outputs_key, str):
            raise TypeError(f"outputs_key must be a string, got {type(self.outputs_key).__name__}")
        _check_options(
            ddof=self.ddof, mc_dropout=self.mc_dropout, seed=self.seed, dtype=self.dtype, rc_average=self.rc_average,
            transform=self.transform, batch_size=self.batch_size, engine=self.engine, ensemble=self.ensemble,
        )  # fmt: skip

    def mutagenesis(self) -> dict:
        """The keywords of :func:`saturation_mutagenesis` besides ``outputs`` and ``positions``."""
        return {"batch_size": self.batch_size, "device": self.device, "mc_dropout": self.mc_dropout, "seed": self.seed,
                "dtype": self.dtype, "engine": self.engine, "ensemble": self.ensemble, "rc_average": self.rc_average,
                "transform": self.transform}  # fmt: skip


def on_scale(out: torch.Tensor, transform: str) -> torch.Tensor:
    """``out`` on the logit or log scale. Predictions outside the scale's domain ([0, 1] for logit,
    >= 0 for log) are refused with their share: a model that already returns logits would otherwise
    be clamped into exact-zero effects. The scale's edges (exact 0 or 1, where it is infinite) are
    refused too, unless the ``-clip`` variant asks for them to be clipped to 1e-6 from the edge."""
    logit = transform.startswith("logit")
    outside = (out < 0) | (out > 1) if logit else out < 0
    edge = (out == 0) | (out == 1) if logit else out == 0
    what = "probabilities in [0, 1]" if logit else "non-negative counts or rates"
    if outside.any():
        raise ValueError(
            f"transform={transform!r} needs {what}, but {outside.float().mean().item():.1%} of the predictions lie "
            f"outside (from {out.min().item():.4g} to {out.max().item():.4g}); does the model already return "
            f"{'logits' if logit else 'logs'}? Then use transform=None"
        )
    if edge.any() and not transform.endswith("-clip"):
        raise ValueError(
            f"transform={transform!r}: {edge.float().mean().item():.2%} of the predictions are exactly "
            f"{'0 or 1' if logit else '0'}, where the {'logit' if logit else 'log'} is infinite; use "
            f"transform={transform + '-clip'!r} to clip them to {_EPS:g} from the edge"
        )
    if logit:
        return torch.logit(out.clamp(_EPS, 1 - _EPS))
    return torch.log(out.clamp_min(_EPS))


_EPS = 1e-6
# engine="auto" takes the windowed engine from this length on and plain batches below it, where the engine's
# nearly fixed cost per window loses. benchmarks/bench_engine.py --repeat 2 (2 CPU cores, 3 members), windowed
# over plain: the simulation's PooledRegressor 1.16x at 100 bp, 0.80x at 200, 0.31x at 300; a reader's
# BPNet-like model 0.86x at 100, 0.67x at 200; the DeepSEA chapter's narrow DeepSEA 0.43x at 200 bp (its
# shortest input) and 0.31x at 300 (at 150 bp, in a shorter run: PooledRegressor 0.98x, BPNet-like 0.71x).
# This was 256 bp until those measurements, and the DeepSEA and BPNet chapters' 200 bp sequences ran plain.
WINDOWED_MIN_LENGTH = 150


@dataclass(frozen=True)
class EngineChoice:
    """The engine :func:`saturation_mutagenesis` runs (``"windowed"`` or ``"plain"``) and why."""

    engine: str
    reason: str


def choose_engine(models: Models, X: Sequences, *, engine: str = "auto", outputs: OutputSpec = None) -> EngineChoice:
    """Which engine :func:`saturation_mutagenesis` runs for these models on sequences like ``X``, and why.

    ``engine="auto"``: the windowed engine for sequences of ``WINDOWED_MIN_LENGTH`` (150) bp or more,
    plain batches for shorter ones: a rule of the length, never a timing, so every run, chunk and machine
    takes the same path and the same float round-off. A model ``torch.fx`` cannot trace (TorchScript) runs
    plain whatever ``engine`` asks (:func:`saturation_mutagenesis` warns once per call)."""
    check_choice(engine, "engine", ENGINES)
    choice = _length_rule(engine, as_one_hot(X).shape[2])
    if choice.engine == "plain":
        return choice
    outputs = check_outputs(outputs)
    try:
        for m in as_models(models):
            WindowedModel(m, outputs if callable(outputs) else None)
    except TraceError as err:
        return EngineChoice("plain", str(err))
    return choice


def _length_rule(engine: str, L: int) -> EngineChoice:
    """The length rule, one copy for choose_engine and prepare: the engine tried, and why (a model torch.fx
    cannot trace still runs plain)."""
    if engine in ("plain", "windowed"):
        return EngineChoice(engine, f"engine={engine!r} was asked for")
    if L >= WINDOWED_MIN_LENGTH:
        return EngineChoice("windowed", f"{L} bp >= {WINDOWED_MIN_LENGTH} bp")
    return EngineChoice("plain", f"{L} bp < {WINDOWED_MIN_LENGTH} bp")


class PreparedISM:
    """ISM prepared for one set of models and one sequence length (:func:`prepare`): ``models`` on the device,
    ``engine`` (``"windowed"`` or ``"plain"``) with ``reason``, the windowed engines traced once."""

    def __init__(self, models: Models, length: int, options: ISMOptions, block: int, stacklevel: int):
        o = options
        models = as_models(models)
        if o.mc_dropout and len(models) != 1:
            raise ValueError("mc_dropout draws its samples from one model; pass a single model, not an ensemble")
        if o.ensemble == "vmap" and not same_architecture(models):
            raise ValueError("ensemble='vmap' needs members with identical architecture; use ensemble='loop'")
        self.options, self.length, self.block = o, length, block
        self.dev = resolve_device(o.device)
        self.models = on_device(models, self.dev)
        # engine="auto": decided by the length, never by timing (choose_engine), so the path and its float
        # round-off are the same on every run, chunk and machine load. The engine is traced only when it will run.
        choice = _length_rule(o.engine, length)
        self.engines, self.engine, self.reason = None, choice.engine, choice.reason
        if choice.engine == "windowed":
            captured = o.outputs if callable(o.outputs) else None
            try:
                self.engines = [WindowedModel(m, captured) for m in self.models]
            except TraceError as err:
                self.engine, self.reason = "plain", str(err)
                warnings.warn(f"{err}. Using the plain path (exact, slower).", stacklevel=stacklevel)
            if self.engines is not None and o.ensemble == "vmap" and len(models) > 1 and not o.mc_dropout:
                try:
                    stacked = StackedWindowedModel(self.models, captured)
                    with eval_mode(self.models), torch.inference_mode():
                        probe = torch.zeros(1, 4, length, device=self.dev)
                        probe[0, 0] = 1  # an activation vmap cannot carry shows here, not mid-run
                        stacked.reference(probe)
                    self.engines = [stacked]
                except TraceError as err:
                    warnings.warn(f"{err}; the members run one after another on the windowed engine",
                                  stacklevel=stacklevel)  # fmt: skip

    def __repr__(self) -> str:
        return f"PreparedISM({len(self.models)} model(s), {self.length} bp, {self.engine}: {self.reason})"

    def run(self, X: Sequences, positions: Positions = None) -> torch.Tensor:
        """Every substitution of ``X`` ``(N, 4, length)`` at ``positions``: ``(N, M, P, 4, O)``, as
        :func:`saturation_mutagenesis` returns it (strand-averaged and on the transform's scale when the options
        say so)."""
        X = as_one_hot(X)
        if X.shape[2] != self.length:
            raise ValueError(f"this ISM was prepared for {self.length} bp sequences, got {X.shape[2]} bp")
        pos = resolve_positions(positions, self.length)
        out = self._run(X, pos)
        if self.options.rc_average:
            mirrored = (self.length - 1 - pos).flip(0)  # ascending in the reverse complement
            # position p of the reverse complement is L-1-p of the sequence, base b is its complement (ACGT -> TGCA)
            out = (out + self._run(reverse_complement(X), mirrored).flip(2).flip(3)) / 2
        t = self.options.transform
        return out if t in (None, "none") else on_scale(out, t)

    def _run(self, X: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        o, dev, models = self.options, self.dev, self.models
        outputs, batch_size, block = o.outputs, o.batch_size, self.block
        X = prepare_input(X, models, dev)
        N = X.shape[0]
        autocast = o.dtype not in (None, torch.float32)
        with eval_mode(models), torch.inference_mode():
            ctx = torch.autocast(dev.type, dtype=o.dtype) if autocast else nullcontext()
            with ctx:
                if dev.type == "cpu":  # one reference at a time: small caches, cache-friendly
                    chunk, wide = 1, block
                else:  # many references and a wider window per call, about `batch_size` mutants each
                    target = batch_size or 4096
                    chunk = max(1, target // (3 * block))
                    wide = max(block, min(128, target // (3 * min(N, chunk))))
                out = None
                if self.engines is not None:
                    try:
                        out = _windowed_path(self.engines, X, pos, outputs, wide, chunk, o.mc_dropout, o.seed, models)
                    except Exception as err:  # noqa: BLE001 -- an engine defect must not become the user's error:
                        # the plain path decides (it raises what the model itself raises)
                        warnings.warn(
                            f"windowed ISM failed on {type(models[0]).__name__} ({type(err).__name__}: {err}); "
                            "using the plain path (exact, slower)",
                            stacklevel=4,
                        )
                if out is None:
                    out = _plain_path(models, X, pos, outputs, batch_size, dev, o.mc_dropout, o.seed, o.ensemble)
        if not torch.isfinite(out).all():
            n, m, p, b, k = torch.nonzero(~torch.isfinite(out))[0].tolist()
            raise ValueError(
                f"non-finite prediction: sequence {n}, model {m}, position {int(pos[p])}, base {ALPHABET[b]}, "
                f"output {k}"
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
    given = torch.as_tensor(positions).flatten()
    if given.is_floating_point() and not torch.equal(given, given.round()):
        raise ValueError(f"positions must be whole numbers, got {given[given != given.round()][0].item()}")
    if given.dtype == torch.bool or given.is_complex():
        raise TypeError(f"positions must be integers, got a {given.dtype} tensor")
    pos = given.to(torch.long)
    if pos.numel() == 0:
        raise ValueError("positions is empty")
    if (pos < 0).any() or (pos >= L).any():
        raise ValueError(f"positions must lie in [0, {L}), got {pos.min().item()}..{pos.max().item()}")
    return torch.unique(pos)


def _plain_path(models, X, pos, outputs, batch_size, dev, mc_dropout, seed, ensemble):
    L = X.shape[2]
    pos = pos.to(dev)
    stack = ensemble == "vmap"
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
        seq, pidx, base = (t.to(dev) for t in mutant_index(X, pos))
        if dev.type == "cuda":
            return _plain_batches_across(
                run, X, pos, seq, pidx, base, n_members, batch_size or _cuda_batch_size(run, X[:1], dev)
            )
        return _plain_batches_per_sequence(run, X, pos, seq, pidx, base, n_members, batch_size or _cpu_batch_size(L))


def _plain_batches_across(run, X, pos, seq, pidx, base, n_members, size):
    """GPU: references, then mutants of many sequences per batch (throughput first)."""
    N, P = X.shape[0], pos.numel()
    refs = torch.cat([run(X[i : i + size]) for i in range(0, N, size)], dim=1)  # (M, N, O)
    out = refs.float().permute(1, 0, 2)[:, :, None, None, :].expand(N, n_members, P, 4, refs.shape[-1]).clone()
    for i in range(0, seq.numel(), size):
        s, p, b = seq[i : i + size], pidx[i : i + size], base[i : i + size]
        out[s, :, p, b, :] = run(substitute(X[s], pos[p], b)).float().permute(1, 0, 2)
    return out.cpu()


def _plain_batches_per_sequence(run, X, pos, seq, pidx, base, n_members, size):
    """CPU: each sequence's reference and mutants in batches of their own, so a sequence's numbers never
    depend on which other sequences share its call (a different chunking, or Dask worker, gives the same
    bits). Batches hold ``size`` rows: the reference first, then its mutants in order."""
    N, P = X.shape[0], pos.numel()
    bounds = torch.searchsorted(seq, torch.arange(N + 1, device=seq.device)).tolist()
    out = None
    for n in range(N):
        a, z = bounds[n], bounds[n + 1]
        for i in range(a - 1, z, size):  # row a - 1 of the stream is the reference
            lo = max(i, a)
            s, p, b = seq[lo : i + size], pidx[lo : i + size], base[lo : i + size]
            xb = substitute(X[s], pos[p], b)
            if i < a:
                xb = torch.cat([X[n : n + 1], xb])
            y = run(xb).float().permute(1, 0, 2)  # (B, M, O)
            if i < a:
                if out is None:
                    out = torch.empty(N, n_members, P, 4, y.shape[-1], device=y.device)
                out[n] = y[0][:, None, None, :]  # every slot; the mutants overwrite theirs
                y = y[1:]
            out[s, :, p, b, :] = y
    return out.cpu()


def _position_groups(pos: np.ndarray, span: int) -> list[tuple[int, int]]:
    """``[a, b)`` index ranges of the sorted unique positions ``pos``, each run spanning fewer than
    ``span`` bases: the positions whose mutants share one window."""
    groups, i = [], 0
    while i < len(pos):
        j = i
        while j + 1 < len(pos) and pos[j + 1] - pos[i] < span:
            j += 1
        groups.append((i, j + 1))
        i = j + 1
    return groups


def _windowed_path(engines, X, pos, outputs, block, chunk, mc_dropout, seed, models):
    """Windowed ISM (:mod:`deepmr_utils._windowed`): mutants at up to ``block`` neighbouring
    positions share one window, ``chunk`` references share one call. MC-dropout passes fill
    the model axis like members, each with its masks shared by references and mutants."""
    N, _, L = X.shape
    P = pos.numel()
    dev = X.device
    pos_cpu = pos.cpu().numpy()
    groups = _position_groups(pos_cpu, block)
    if mc_dropout:
        shared = _SharedDropout(models[0], seed)
        engines[0].dropout_mask = shared.mask_for  # the one model, captured once; each pass its masks
        passes = [(engines[0], s) for s in range(mc_dropout)]
    else:
        shared, passes = None, [(e, None) for e in engines]
    width = sum(getattr(e, "n_members", 1) for e, _ in passes)  # members (or passes) in the output
    out, fallback = None, None
    if engines[0].applies_outputs:
        outputs = None  # the engines already map the raw output
    for n0 in range(0, N, chunk):
        x = X[n0 : n0 + chunk]
        blocks = []
        for a, b in groups:
            start, stop = int(pos_cpu[a]), int(pos_cpu[b - 1]) + 1
            window = x[:, :, start:stop]
            rel = torch.as_tensor(pos_cpu[a:b] - start, device=dev)
            rr, bb, pp = torch.nonzero(window[:, :, rel] == 0, as_tuple=True)  # (reference, base, position)
            xm = substitute(window[rr], rel[pp], bb, inplace=True)
            blocks.append((xm, start, rr if x.shape[0] > 1 else None, ((n0 + rr).cpu(), (a + pp).cpu(), bb.cpu())))
        k = 0  # the engine's first slot on the model axis
        for engine, s in passes:
            if shared is not None:
                shared.pass_index = s
            n = getattr(engine, "n_members", None)  # a stacked engine: leaves carry a member axis
            raw, cache = engine.reference(x)
            refs = _by_member(raw, outputs, n)  # (m, n, O)
            m = refs.shape[0]
            if out is None:
                out = torch.empty(N, width, P, 4, refs.shape[-1])
            out[n0 : n0 + x.shape[0], k : k + m] = refs.permute(1, 0, 2)[:, :, None, None, :]
            for xm, start, rows, idx in blocks:
                y = _by_member(engine.mutants(cache, xm, start, rows), outputs, n)  # (m, B, O)
                for j in range(m):
                    out[idx[0], k + j, idx[1], idx[2], :] = y[j]
            fallback = fallback or engine.fallback
            k += m
    if fallback:
        warnings.warn(
            f"windowed ISM: {fallback} is not known to keep a mutation's effect local, so from there on "
            "each mutant is computed over the full length (exact, but slower)",
            stacklevel=4,
        )
    return out
