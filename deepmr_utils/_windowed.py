"""Exact windowed ISM for any traceable PyTorch model (the engine behind ``engine="windowed"``).

A single-base substitution changes a convolutional network only inside the
receptive-field cone of the edited position. :class:`WindowedModel` captures a model
with ``torch.fx``, runs every reference once and keeps every intermediate activation,
then evaluates a batch of mutants that differ from their reference on one window of
the input by carrying, through each operation, only the window where the mutants'
activations can differ from the reference's (fastISM, Nair et al. 2022; tangermeme's
``engine="windowed"``):

* **local** operations keep a window: convolutions and pooling along the length axis
  (any kernel, stride, dilation, padding) widen it by their cone; elementwise maps,
  eval-mode BatchNorm / Dropout and sums or products of local tensors keep or unite
  it; cropping shifts it; a flip of the length axis (reverse complement) mirrors it;
* **linear global** operations are updated from the window alone: a mean or sum over
  the length axis (``ref + sum(window - ref_window)``) and a dense layer over the
  flattened ``(C, L)`` features (``ref + W[:, :, window] . delta``, as in
  DeepSEA/Beluga), so a dense head costs ``C * w`` rather than ``C * L`` per output;
* a max over the length is updated from the references' prefix and suffix maxima;
* anything else (attention, a reshape the engine does not know) gets the full tensor,
  rebuilt from the reference cache and the window, and runs as usual from there on;
  still exact, only slower. The first such operation is reported by
  :attr:`WindowedModel.fallback`.

Which operation is carried how is one ordered table, :data:`deepmr_utils._windowed_rules.RULES`
(the first rule that answers wins). :meth:`WindowedModel.reference` returns the references'
activations as a :class:`Cache` value that :meth:`WindowedModel.mutants` reads: a call leaves
no state on the engine.

Tensors whose length axis is not the last one (a transpose to ``(B, L, C)``) count as
"anything else". A model that ``torch.fx`` cannot trace (data-dependent control flow)
raises :class:`TraceError`; :func:`deepmr_utils.ism.saturation_mutagenesis` then uses
the plain path with one warning. :class:`StackedWindowedModel` runs an ensemble of one
architecture through one engine with ``torch.func.vmap`` over the members' weights.
"""

from __future__ import annotations

import operator
from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from ._torch import same_architecture
from ._windowed_rules import RULES, Dense, Flat, Win, map_leaves

__all__ = ["WindowedModel", "StackedWindowedModel", "Cache", "TraceError"]


class TraceError(RuntimeError):
    """``torch.fx`` could not capture the model."""


_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.ELU, nn.LeakyReLU, nn.PReLU, nn.Sigmoid, nn.Tanh,
    nn.Softplus, nn.Mish, nn.Hardtanh, nn.Threshold, nn.Identity, nn.Dropout, nn.BatchNorm1d,
)  # fmt: skip
_POINTWISE_FUNCTIONS = {
    torch.relu, F.relu, F.gelu, F.silu, F.elu, F.leaky_relu, F.softplus, F.threshold, F.dropout,
    torch.sigmoid, F.sigmoid, torch.tanh, F.tanh, torch.exp, torch.log, torch.log1p, torch.abs,
    torch.square, torch.sqrt, operator.neg, torch.neg, torch.clamp, torch.clip, F.mish, F.hardtanh,
}  # fmt: skip
_POINTWISE_METHODS = {
    "relu", "sigmoid", "tanh", "exp", "log", "log1p", "abs", "square", "sqrt", "neg", "clamp", "clip",
    "float", "contiguous",
}  # fmt: skip
_BINARY = {
    operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul,
    torch.div, torch.maximum, torch.minimum, operator.iadd, operator.imul,
}  # fmt: skip
_BINARY_METHODS = {"add", "sub", "mul", "div"}


_MaxOut = namedtuple("_MaxOut", ["values", "indices"])  # indices are not tracked (None)


class _Selected(nn.Module):
    """``outputs(model(x))`` as one module, for tracing."""

    def __init__(self, model: nn.Module, outputs: Callable):
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, x):
        return self.outputs(self.model(x))


def _cone(a, b, k, stride, left, dil, L_out):
    """Output window ``[oa, ob)`` of a length-axis operation reading inputs ``o*stride - left + j*dil``
    (``j < k``) whose input changed on ``[a, b)``, and the input range ``[ia, ib)`` it reads."""
    span = (k - 1) * dil
    oa = max(0, -((span - a - left) // stride))  # ceil((a + left - span) / stride)
    ob = min(L_out, (b - 1 + left) // stride + 1)
    ob = max(ob, oa)
    return oa, ob, oa * stride - left, (ob - 1) * stride - left + span + 1


# the largest dense weight that gets a window-major copy (see WindowedModel._linear): DeepSEA's 188 MB does,
# Beluga's 543 MB (once per ensemble member) does not
_DENSE_COPY_MAX = 256 * 2**20


@dataclass
class Cache:
    """What :meth:`WindowedModel.reference` computed for a batch of references, as a value: every
    activation (``ref``), the names of those no mutation can change (``static``) and what the engine
    derives from them on first use (``cum``: prefix maxima and sums), kept for the next call."""

    ref: dict
    static: set
    cum: dict = field(default_factory=dict)


@dataclass
class _Call:
    """One :meth:`WindowedModel.mutants` call: the references' cache, which reference each mutant reads
    (``rows``; ``None``: one, shared) and how many mutants there are (``B``)."""

    ref: dict
    static: set
    cum: dict
    rows: torch.Tensor | None
    B: int


class WindowedModel:
    """One model, captured once, evaluated on windows of mutants.

    ``model``: an ``nn.Module`` in eval mode whose input is ``(N, 4, L)``; ``outputs``: an
    optional map of its raw output, captured with it when traceable (then
    :attr:`applies_outputs` is true and results are already mapped). ``reference(x)``
    caches the activations of references ``x``; ``mutants(x_win, start, rows)`` returns the
    raw outputs for mutants that equal reference ``rows[i]`` except on ``[start, start + w)``,
    where their one-hot is ``x_win`` ``(B, 4, w)``.
    """

    def __init__(self, model: nn.Module, outputs: Callable | None = None):
        # MC-dropout: set to (module, activation shape) -> the current pass's shared mask
        self.dropout_mask: Callable[[nn.Module, torch.Size], torch.Tensor] | None = None
        self.applies_outputs = False
        if outputs is not None:  # capture the outputs map too, so branches it drops are never computed
            try:
                self.gm = fx.symbolic_trace(_Selected(model, outputs))
                self.applies_outputs = True
            except Exception:  # an untraceable map is applied afterwards instead
                pass
        if not self.applies_outputs:
            try:
                self.gm = fx.symbolic_trace(model)
            except Exception as err:  # fx raises many types for untraceable code
                msg = f"torch.fx could not trace {type(model).__name__}: {type(err).__name__}: {err}"
                raise TraceError(msg) from err
        # drop what no output needs (e.g. a profile head when only counts are asked for);
        # calls to wrapped non-torch functions (input checks) stay and run on the references
        self.gm.graph.eliminate_dead_code(
            is_impure_node=lambda n: (
                n.is_impure()
                or n.op == "call_function"
                and not str(getattr(n.target, "__module__", "") or "").startswith(("torch", "_operator"))
                and n.target is not getattr
            )
        )
        self.gm.recompile()
        self.modules = dict(self.gm.named_modules())
        self.nodes = list(self.gm.graph.nodes)
        inputs = [n for n in self.nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise TraceError(f"the model takes {len(inputs)} inputs; windowed ISM needs exactly one (the sequence)")
        self.input = inputs[0].name
        self.fallback: str | None = None  # the first operation that needed a full tensor
        order = {n.name: i for i, n in enumerate(self.nodes)}
        self._last_use: dict[str, list[str]] = {}  # node -> the values it reads for the last time
        for n in self.nodes:
            if n.users and n.op != "output" and all(u.op != "output" for u in n.users):
                last = max(n.users, key=lambda u: order[u.name]).name
                self._last_use.setdefault(last, []).append(n.name)
        self._weights: dict = {}
        self.rule_log: list | None = None  # set to a list to record which rule answered each node (tests)
        self.channels_last = True
        self._costly: dict[str, bool] = {}

    # ------------------------------------------------------------------ references
    @torch.no_grad()
    def reference(self, x: torch.Tensor) -> tuple:
        """Run references ``x`` ``(N, 4, L)``: ``(raw output, cache)``, the :class:`Cache` of every activation
        that :meth:`mutants` reads."""
        env, static = {}, set()
        for node in self.nodes:
            if node.op == "placeholder":
                env[node.name] = x
                continue
            args, kwargs = self._load(node, lambda n: env[n.name])
            if node.op == "output":
                out = args[0]
                break
            if node.op == "get_attr" or not any(n.name not in static for n in node.all_input_nodes):
                static.add(node.name)
            mask = self.mask(node, args[0].shape[1:]) if args and isinstance(args[0], torch.Tensor) else None
            env[node.name] = args[0] * mask if mask is not None else self.call(node, args, kwargs)
        # the model ran on its own layouts (a .view() may need them); the cache of what the mutants
        # read is re-laid-out, static values (read by the model's own operations) excepted
        return out, Cache({k: v if k in static else self._layout(v) for k, v in env.items()}, static)

    # ------------------------------------------------------------------ mutants
    @torch.no_grad()
    def mutants(self, cache: Cache, x_win: torch.Tensor, start: int, rows: torch.Tensor | None):
        """Raw outputs for ``B`` mutants of the references ``cache`` holds; ``rows`` ``(B,)`` picks each one's
        reference (``None``: one reference, shared)."""
        c = _Call(cache.ref, cache.static, cache.cum, rows, x_win.shape[0])
        env: dict = {}

        def value(n):
            return c.ref[n.name] if n.name in c.static else env[n.name]

        for node in self.nodes:
            if node.op == "placeholder":
                env[node.name] = Win(x_win, start, start + x_win.shape[-1], node.name)
                continue
            if node.name in c.static or (not node.users and node.op != "output"):
                continue  # shared with the references, or unused (an input check ran on the references)
            if node.op == "output":
                return map_leaves(self._load(node, value)[0][0], lambda v: self._full(c, v))
            env[node.name] = self._step(c, node, value)
            for name in self._last_use.get(node.name, ()):  # freed once read for the last time: a smaller
                env.pop(name, None)  # peak, and the allocator reuses the memory within the call
        raise TraceError("the traced graph has no output")

    def _step(self, c, node, value):
        """One node for the mutants: the first rule of :data:`RULES` that answers, else the full tensor."""
        args, kwargs = self._load(node, value)
        first = args[0] if args else None
        windows = self._windows(args, kwargs)
        for rule in RULES:
            out = rule.apply(self, c, node, first, args, kwargs, windows)
            if out is not None:
                if self.rule_log is not None:
                    self.rule_log.append(rule.name)
                return out
        if self.fallback is None and self._costly_from(node):
            self.fallback = f"{node.op} {node.target!r} (node {node.name})"
        args, kwargs = map_leaves((args, kwargs), lambda v: self._full(c, v))
        return Dense(self.call(node, args, kwargs))

    # ------------------------------------------------------------------ helpers
    def _costly_from(self, node) -> bool:
        """Whether ``node`` or an operation after it carries weights (a full-length tensor there
        costs time; near the output, e.g. concatenating the outputs, it costs nothing). The graph is
        fixed, so each node's answer is computed once, not once per block of mutants."""
        if node.name not in self._costly:
            self._costly[node.name] = self._weighted_downstream(node)
        return self._costly[node.name]

    def _weighted_downstream(self, node) -> bool:
        seen, todo = set(), [node]
        heavy = {F.linear, F.conv1d, torch.conv1d, torch.matmul, torch.bmm, torch.einsum, operator.matmul}
        while todo:
            n = todo.pop()
            if n.name in seen:
                continue
            seen.add(n.name)
            if n.op == "call_module" and any(True for _ in self.modules[n.target].parameters()):
                return True
            if n.op == "call_function" and n.target in heavy or n.op == "call_method" and n.target in ("matmul", "bmm"):
                return True
            todo.extend(n.users)
        return False

    def _load(self, node, value):
        return fx.node.map_arg((node.args, node.kwargs), value)

    @staticmethod
    def _windows(args, kwargs):
        found = []
        map_leaves((args, kwargs), lambda v: found.append(v) if isinstance(v, (Win, Flat)) else v)
        return found

    def _unwrap(self, args, kwargs):
        return map_leaves((args, kwargs), lambda v: v.v if isinstance(v, Dense) else v)

    def call(self, node, args, kwargs):
        args, kwargs = self._unwrap(args, kwargs)
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        if node.op == "get_attr":
            obj = self.gm
            for part in node.target.split("."):
                obj = getattr(obj, part)
            return obj
        raise TraceError(f"unexpected node {node.op} {node.target}")

    def _per_mutant(self, c, t: torch.Tensor) -> torch.Tensor:
        """A references' tensor with one row per mutant (a view when one reference is shared)."""
        return t[c.rows] if c.rows is not None else t.expand(c.B, *t.shape[1:])

    def _ref_rows(self, c, name, a, b):
        """The references' slice ``[a, b)`` of cached activation ``name``, one row per mutant."""
        return self._per_mutant(c, c.ref[name][..., a:b])

    def _layout(self, t):
        """A cached ``(N, C, L)`` activation stored length-major (strides ``(L*C, 1, C)``) when the
        convolutions run channels-last: then windows, deltas and convolution outputs share one
        layout, so elementwise maps stay vectorised and no convolution copies its input."""
        if self.channels_last and isinstance(t, torch.Tensor) and t.ndim == 3 and t.is_floating_point():
            return t.transpose(1, 2).contiguous().transpose(1, 2)
        return t

    def _gather(self, c, w: Win, lo: int, hi: int) -> torch.Tensor:
        """``w``'s full values on ``[lo, hi)``, zeros outside the sequence (conv zero padding)."""
        L = c.ref[w.node].shape[-1]
        a0, b0 = max(lo, 0), min(hi, L)
        pa, pb = max(w.a, a0), min(w.b, b0)
        if pa >= pb:
            parts = [(a0, self._ref_rows(c, w.node, a0, b0))]
        else:
            parts = [
                (a0, self._ref_rows(c, w.node, a0, pa)),
                (pa, w.t[..., pa - w.a : pb - w.a]),
                (pb, self._ref_rows(c, w.node, pb, b0)),
            ]
        if self.channels_last and w.t.ndim == 3:  # written into one length-major block (see _layout)
            B, C = w.t.shape[0], w.t.shape[1]
            out = w.t.new_empty(B, hi - lo, C).transpose(1, 2)
            out[..., : a0 - lo].zero_()
            out[..., b0 - lo :].zero_()
            for at, p in parts:
                out[..., at - lo : at - lo + p.shape[-1]].copy_(p)
            return out
        out = torch.cat([p for _, p in parts if p.shape[-1]] or [parts[0][1]], dim=-1)
        if lo < a0 or hi > b0:
            out = F.pad(out, (a0 - lo, hi - b0))
        return out

    def _full(self, c, v):
        if isinstance(v, Win):  # for the model's own operations: in its usual layout
            return self._gather(c, v, 0, c.ref[v.node].shape[-1]).contiguous()
        if isinstance(v, Flat):
            return self._full(c, v.win).flatten(1)
        if isinstance(v, Dense):
            return v.v
        return v

    def is_pointwise(self, node, args, kwargs):
        if any(isinstance(v, (Win, Flat, Dense, torch.Tensor)) for v in list(args[1:]) + list(kwargs.values())):
            return False
        if node.op == "call_module":
            m = self.modules[node.target]
            if isinstance(m, (nn.BatchNorm1d, nn.PReLU)):  # channel-wise: the channel axis must be axis 1
                return not m.training and args[0].t.ndim == 3
            return isinstance(m, _POINTWISE_MODULES) and not (isinstance(m, nn.Dropout) and m.training)
        if node.op == "call_function":
            if node.target is F.dropout:
                return not kwargs.get("training", args[2] if len(args) > 2 else True)
            return node.target in _POINTWISE_FUNCTIONS
        return node.op == "call_method" and node.target in _POINTWISE_METHODS

    def is_binary(self, node):
        return (node.op == "call_function" and node.target in _BINARY) or (
            node.op == "call_method" and node.target in _BINARY_METHODS
        )

    @staticmethod
    def _is_sum(node, args, kwargs):
        """``x + y`` of two per-mutant tensors (no ``alpha``, no third operand)."""
        if kwargs or len(args) != 2 or not all(isinstance(v, Win) for v in args):
            return False
        return (node.op == "call_function" and node.target in (operator.add, torch.add, operator.iadd)) or (
            node.op == "call_method" and node.target == "add"
        )

    def elementwise(self, c, node, args, kwargs, windows):
        L = {c.ref[w.node].shape[-1] for w in windows}
        nd = {w.t.ndim for w in windows}
        if len(L) != 1 or len(nd) != 1:
            return None
        L, nd = L.pop(), nd.pop()
        changed = [w for w in windows if w.b > w.a] or windows[:1]
        a, b = min(w.a for w in changed), max(w.b for w in changed)
        if self._is_sum(node, args, kwargs) and len(windows) == 2:
            # a residual sum: the wider window plus the other's reference, then the other's change
            # on its own span; no copy of reference flanks (exact up to float32 round-off)
            wide, narrow = sorted(windows, key=lambda w: w.b - w.a, reverse=True)
            if (wide.a, wide.b) == (a, b):
                out = wide.t + self._ref_rows(c, narrow.node, a, b)
                if narrow.b > narrow.a:
                    old = self._ref_rows(c, narrow.node, narrow.a, narrow.b)
                    out[..., narrow.a - a : narrow.b - a] += narrow.t - old
                return Win(out, a, b, node.name)
        ok = True

        def fit(v):
            nonlocal ok
            if isinstance(v, Win):
                return v.t if (v.a, v.b) == (a, b) else self._gather(c, v, a, b)
            if isinstance(v, Dense):
                ok = False
                return v
            if isinstance(v, torch.Tensor) and v.ndim:
                if v.ndim > nd:
                    ok = False
                elif v.shape[-1] == L and L > 1:
                    return v[..., a:b]  # a static tensor along the length axis (e.g. a positional term)
                elif v.shape[-1] != 1:
                    ok = False
            return v

        args, kwargs = map_leaves((args, kwargs), fit)
        if not ok:
            return None
        return Win(self.call(node, args, kwargs), a, b, node.name)

    def conv(self, c, node, w: Win, weight, bias, stride, left, dil, groups):
        if w.a >= w.b:
            return self._unchanged(c, node, w)
        L_out = c.ref[node.name].shape[-1]
        span = (weight.shape[-1] - 1) * dil
        if stride == 1:
            # linear: the mutants' output is the reference's plus the convolution of the input's
            # change, which is zero outside [a, b): no reference flanks to read for the input
            delta = w.t - self._ref_rows(c, w.node, w.a, w.b)
            dz = self._conv1d(node.name, delta, weight, None, 1, span, dil, groups)
            first = w.a - span + left  # the output position of dz's first column
            oa, ob = max(0, first), min(L_out, w.b + left)
            if oa >= ob:
                return self._unchanged(c, node, w)
            return Win(self._ref_rows(c, node.name, oa, ob) + dz[..., oa - first : ob - first], oa, ob, node.name)
        oa, ob, ia, ib = _cone(w.a, w.b, weight.shape[-1], stride, left, dil, L_out)
        if oa >= ob:  # only positions that no output reads (a tail the stride drops) changed
            return self._unchanged(c, node, w)
        y = self._conv1d(node.name, self._gather(c, w, ia, ib), weight, bias, stride, 0, dil, groups)
        return Win(y, oa, ob, node.name)

    def _conv1d(self, key, x, weight, bias, stride, pad, dil, groups):
        """``F.conv1d`` of ``x`` ``(B, C, w)``; on the CPU as a channels-last 2-D convolution, 2-3x
        faster there (not under ``torch.func.vmap``, which cannot query memory formats)."""
        if not self.channels_last:
            return F.conv1d(x, weight, bias, stride=stride, padding=pad, dilation=dil, groups=groups)
        if key not in self._weights:
            self._weights[key] = weight[:, :, None, :].contiguous(memory_format=torch.channels_last)
        x = x[:, :, None, :].contiguous(memory_format=torch.channels_last)
        y = F.conv2d(
            x, self._weights[key], bias, stride=(1, stride), padding=(0, pad), dilation=(1, dil), groups=groups
        )
        return y[:, :, 0, :]

    def pool(self, c, node, w: Win, kind, k, stride, dil):
        if w.a >= w.b:
            return self._unchanged(c, node, w)
        L_out = c.ref[node.name].shape[-1]
        oa, ob, ia, ib = _cone(w.a, w.b, k, stride, 0, dil, L_out)
        if oa >= ob:  # only positions that no output reads (a tail the pooling drops) changed
            return self._unchanged(c, node, w)
        x = self._gather(c, w, ia, ib)
        if kind == "max":
            y = F.max_pool1d(x, k, stride, 0, dil)
        else:
            y = F.avg_pool1d(x, k, stride)
        return Win(y, oa, ob, node.name)

    def is_masked(self, node) -> bool:
        return (
            self.dropout_mask is not None
            and node.op == "call_module"
            and isinstance(self.modules[node.target], nn.modules.dropout._DropoutNd)
            and self.modules[node.target].p > 0
        )

    def mask(self, node, shape):
        return self.dropout_mask(self.modules[node.target], shape) if self.is_masked(node) else None

    def length_max(self, c, node, w: Win, args, kwargs):
        """Maximum over the length axis from the references' prefix and suffix maxima: exact, O(window)."""
        nd = w.t.ndim
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        keep = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
        if set(kwargs) - {"dim", "keepdim"} or len(args) > 3 or isinstance(dim, (tuple, list)) and len(dim) != 1:
            return None
        dim = dim[0] if isinstance(dim, (tuple, list)) else dim
        if not isinstance(dim, int) or dim % nd != nd - 1:
            return None
        tuple_out = node.target in ("max", torch.max)
        if tuple_out and not all(
            (u.target is getattr and u.args[1] == "values") or (u.target is operator.getitem and u.args[1] == 0)
            for u in node.users
        ):
            return None  # the indices are used; let the full tensor answer
        if w.node not in c.cum:
            ref = c.ref[w.node]
            prefix = ref.cummax(-1).values
            suffix = ref.flip(-1).cummax(-1).values.flip(-1)
            c.cum[w.node] = (prefix, suffix)
        prefix, suffix = c.cum[w.node]
        L = prefix.shape[-1]
        parts = [w.t] if w.b > w.a else []
        for t, i in ((prefix, w.a - 1), (suffix, w.b)):
            if 0 <= i < L:
                parts.append(self._per_mutant(c, t[..., i : i + 1]))
        top = torch.cat(parts, -1).amax(-1, keepdim=bool(keep))
        return Dense(_MaxOut(top, None) if tuple_out else top)

    def _window_sum(self, c, name, a, b, keep):
        """The references' sum of activation ``name`` over ``[a, b)`` of the length axis, one row per
        mutant, from float64 prefix sums (one subtraction instead of a pass over the window)."""
        key = ("sum", name)
        if key not in c.cum:
            ref = c.ref[name]
            c.cum[key] = F.pad(ref.double().cumsum(-1), (1, 0))
        cs = c.cum[key]
        out = (cs[..., b] - cs[..., a]).to(c.ref[name].dtype)
        return self._per_mutant(c, out[..., None] if keep else out)

    def _unchanged(self, c, node, w: Win) -> Win:
        """An empty window for ``node``: the mutants equal the reference there."""
        shape = (c.B,) + tuple(c.ref[node.name].shape[1:-1]) + (0,)
        return Win(w.t.new_zeros(shape), 0, 0, node.name)

    def reduce(self, c, node, w: Win, args, kwargs):
        nd = w.t.ndim
        dim = kwargs.get("dim", args[1] if len(args) > 1 else None)
        keep = kwargs.get("keepdim", args[2] if len(args) > 2 else False)
        if set(kwargs) - {"dim", "keepdim"} or len(args) > 3:
            return None
        if isinstance(dim, (tuple, list)) and len(dim) == 1:
            dim = dim[0]
        if not isinstance(dim, int) or dim % nd != nd - 1:
            return None
        delta = w.t.sum(-1, keepdim=bool(keep)) - self._window_sum(c, w.node, w.a, w.b, bool(keep))
        if node.target in ("mean", torch.mean):
            delta = delta / c.ref[w.node].shape[-1]
        return Dense(self._per_mutant(c, c.ref[node.name]) + delta)

    def crop(self, c, node, w: Win, idx):
        nd = w.t.ndim
        idx = map_leaves(idx, lambda v: v.v if isinstance(v, Dense) else v)  # a crop computed from shapes
        idx = idx if isinstance(idx, tuple) else (idx,)
        if Ellipsis in idx:
            i = idx.index(Ellipsis)
            idx = idx[:i] + (slice(None),) * (nd - len(idx) + 1) + idx[i + 1 :]
        if len(idx) != nd or any(s != slice(None) for s in idx[:-1]) or not isinstance(idx[-1], slice):
            return None
        L = c.ref[w.node].shape[-1]
        start, stop, step = idx[-1].indices(L)
        if step != 1:
            return None
        a, b = min(max(w.a, start), stop), min(max(w.b, start), stop)
        if a >= b:  # the crop drops the changed window: the mutants equal the reference here
            return Win(w.t[..., :0], a - start, a - start, node.name)
        return Win(w.t[..., a - w.a : b - w.a], a - start, b - start, node.name)

    def is_flatten(self, c, node, w: Win, args, kwargs):
        if w.t.ndim != 3:
            return False
        if node.op == "call_module":
            m = self.modules[node.target]
            return type(m) is nn.Flatten and m.start_dim == 1 and m.end_dim in (-1, 2)
        if node.target in ("flatten", torch.flatten):
            start = kwargs.get("start_dim", args[1] if len(args) > 1 else 0)
            end = kwargs.get("end_dim", args[2] if len(args) > 2 else -1)
            return start == 1 and end in (-1, 2)
        if node.target in ("view", "reshape") and node.op == "call_method":
            shape = args[1:] if len(args) > 2 else args[1]
            shape = shape.v if isinstance(shape, Dense) else shape
            shape = [s.v if isinstance(s, Dense) else s for s in shape]
            ref = c.ref[w.node].shape
            return len(shape) == 2 and shape[0] in (c.B, -1) and shape[1] in (-1, ref[1] * ref[2])
        return False

    def linear(self, c, node, flat: Flat, args):
        if node.op == "call_module" and type(self.modules[node.target]) is nn.Linear:
            weight = self.modules[node.target].weight
        elif node.op == "call_function" and node.target is F.linear and isinstance(args[1], torch.Tensor):
            weight = args[1]
        else:
            return None
        w = flat.win
        _, C, L = c.ref[w.node].shape
        if weight.shape[1] != C * L:
            return None
        delta = w.t - self._ref_rows(c, w.node, w.a, w.b)  # (B, C, w)
        O = weight.shape[0]
        key = ("dense", node.name)
        if self.channels_last and (key in self._weights or weight.numel() * weight.element_size() <= _DENSE_COPY_MAX):
            # the weight once as (L, C, O): each window's rows are then one contiguous (w * C, O) block, and the
            # channels-last delta is already (B, w, C) in memory, so the update is one matmul with no copy (the
            # (O, C, L) slice below is copied on every call: a third of DeepSEA's time on 2 CPU cores)
            if key not in self._weights:
                self._weights[key] = weight.view(O, C, L).permute(2, 1, 0).contiguous()
            rows = self._weights[key][w.a : w.b].reshape(-1, O)
            update = delta.transpose(1, 2).reshape(delta.shape[0], -1) @ rows
        else:
            update = torch.einsum("bcw,ocw->bo", delta, weight.view(O, C, L)[:, :, w.a : w.b])
        return Dense(self._per_mutant(c, c.ref[node.name]) + update)


class StackedWindowedModel:
    """An ensemble of one architecture on the windowed engine, all members in one call.

    ``torch.func.vmap`` runs one :class:`WindowedModel` (captured from the first member) over
    the members' stacked weights, so a call's convolutions become grouped ones over all
    members and the engine walks the graph once per block of mutants instead of once per
    member. ``reference(x)`` and ``mutants(x_win, start, rows)`` are those of
    :class:`WindowedModel`, each leaf of the raw output with a leading member axis
    ``(M, B, ...)``. Raises :class:`TraceError` for members that differ in architecture or
    an activation ``vmap`` cannot carry; MC-dropout stays on :class:`WindowedModel`.
    """

    def __init__(self, models: list[nn.Module], outputs: Callable | None = None):
        from torch.func import stack_module_state

        if not same_architecture(models):
            raise TraceError("the members differ in architecture, so their weights cannot be stacked")
        self.engine = WindowedModel(models[0], outputs)
        self.engine.channels_last = False  # vmap cannot query memory formats
        self.applies_outputs, self.n_members = self.engine.applies_outputs, len(models)
        params, buffers = stack_module_state(models)
        prefix = "model." if self.applies_outputs else ""  # the captured outputs map wraps the model
        known = {k for k, _ in self.engine.gm.named_parameters(remove_duplicate=False)}
        known |= {k for k, _ in self.engine.gm.named_buffers(remove_duplicate=False)}
        # the traced module keeps only what its graph uses
        self.state = {prefix + k: v for k, v in (params | buffers).items() if prefix + k in known}
        self.fallback: str | None = None
        self._holder = _Holder(self.engine.gm)

    def _run(self, fn, *args):
        from torch.func import functional_call, vmap

        state = {"gm." + k: v for k, v in self.state.items()}
        return vmap(lambda s, *a: functional_call(self._holder, s, (fn, *a)))(state, *args)

    @torch.no_grad()
    def reference(self, x: torch.Tensor) -> tuple:
        """Every member's references ``x`` ``(N, 4, L)``: ``(raw outputs, cache)``, the cache holding each
        activation with a leading member axis."""
        side: dict = {}
        static: set = set()

        def run():
            out, cache = self.engine.reference(x)
            static.update(cache.static)  # names, the same for every member: kept outside vmap's outputs
            env = {}
            for k, v in cache.ref.items():
                plain, leaves = _leaves(v)
                if not any(isinstance(t, torch.Tensor) for t in leaves):
                    side[k] = v  # sizes and other plain values: the same for every member
                elif plain and all(isinstance(t, torch.Tensor) for t in leaves):
                    env[k] = v
                elif k in cache.static:  # the mutants would read it, but vmap cannot return it
                    raise TraceError(f"activation {k} ({type(v).__name__}) holds tensors that vmap cannot return")
                # else: recomputed for the mutants (e.g. torch.max's (values, indices)), never read from here
            return out, env

        out, env = self._run(run)
        return out, _StackedCache(env, side, static)

    @torch.no_grad()
    def mutants(self, cache: _StackedCache, x_win: torch.Tensor, start: int, rows: torch.Tensor | None):
        """Every member's raw outputs for ``B`` mutants (see :meth:`WindowedModel.mutants`)."""

        def run(env, cum):
            # what the engine derives from the references (prefix maxima and sums) holds every member's
            # values: it leaves each call through vmap's output and comes back in with the next one
            one = Cache(env | cache.side, cache.static, dict(cum))
            return self.engine.mutants(one, x_win, start, rows), one.cum

        out, cache.cum = self._run(run, cache.env, cache.cum)
        self.fallback = self.fallback or self.engine.fallback
        return out


@dataclass
class _StackedCache:
    """:class:`Cache` for :class:`StackedWindowedModel`: the activations vmap carries (``env``, member axis
    first), the plain values shared by every member (``side``), the static names and the derived ``cum``."""

    env: dict
    side: dict
    static: set
    cum: dict = field(default_factory=dict)


def _leaves(v) -> tuple[bool, list]:
    """Whether ``v`` nests only plain tuples, lists and dicts, and its leaves (subclasses such
    as ``torch.return_types.max`` opened too)."""
    if isinstance(v, (tuple, list, dict)):
        items = v.values() if isinstance(v, dict) else v
        parts = [_leaves(x) for x in items]
        return type(v) in (tuple, list, dict) and all(p for p, _ in parts), [t for _, ls in parts for t in ls]
    return True, [v]


class _Holder(nn.Module):
    """A traced model as a submodule, for ``functional_call`` with a function to run."""

    def __init__(self, gm: nn.Module):
        super().__init__()
        self.gm = gm

    def forward(self, fn, *args):
        return fn(*args)
