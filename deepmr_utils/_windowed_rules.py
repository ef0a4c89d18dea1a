"""The windowed engine's rules (private): how each operation of a traced model is carried for a batch of mutants,
as one ordered table (:data:`RULES`), and the values they carry (:class:`Win`, :class:`Flat`, :class:`Dense`).

The first rule that answers a node (returns a value, not ``None``) wins; a node no rule answers gets the full
tensor in :class:`deepmr_utils._windowed.WindowedModel` (exact; its ``fallback`` names the first such node that
costs time). A rule reads the node, its first argument, all its arguments and the windows among them, and does
its arithmetic through the engine (``eng``: the reference cache ``c``, convolutions, gathers); each has an
exactness case in ``tests/test_windowed.py`` (``test_every_rule_is_exact``).
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

__all__ = ["Win", "Flat", "Dense", "map_leaves", "conv_params", "pool_params", "Rule", "RULES"]


@dataclass
class Win:
    """A per-mutant tensor equal to reference ``node``'s activation except on ``[a, b)`` of its
    last (length) axis, where it is ``t`` (shape ``(B, ..., b - a)``)."""

    t: torch.Tensor
    a: int
    b: int
    node: str


@dataclass
class Flat:
    """``flatten(win, 1)`` of a ``(B, C, L)`` window, kept unflattened for a dense layer."""

    win: Win


def map_leaves(v: Any, fn: Callable) -> Any:
    """``fn`` over the leaves of plain tuples, lists and dicts (fx's own mapper would also open
    tuple subclasses such as ``torch.return_types.max`` and lose their fields)."""
    if type(v) is tuple:
        return tuple(map_leaves(x, fn) for x in v)
    if isinstance(v, list):  # fx's immutable_list included
        return [map_leaves(x, fn) for x in v]
    if isinstance(v, dict):
        return {k: map_leaves(x, fn) for k, x in v.items()}
    if isinstance(v, slice):  # crops computed from shapes (bpnet-lite, ChromBPNet) hold per-call values
        return slice(map_leaves(v.start, fn), map_leaves(v.stop, fn), map_leaves(v.step, fn))
    return fn(v)


class Dense:
    """A per-mutant tensor (or structure) that holds no reference to a window."""

    __slots__ = ("v",)

    def __init__(self, v):
        self.v = v


def conv_params(node: fx.Node, modules: dict, args: tuple, kwargs: dict) -> tuple | None:
    """``(weight, bias, stride, left_pad, dilation, groups)`` of a 1-D convolution node, or None."""
    if node.op == "call_module":
        m = modules[node.target]
        if type(m) is not nn.Conv1d or m.padding_mode != "zeros":
            return None
        w, b = m.weight, m.bias
        stride, dil, groups, pad = m.stride[0], m.dilation[0], m.groups, m.padding
    elif node.op == "call_function" and node.target is F.conv1d:
        names = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
        got = dict(zip(names, args)) | dict(kwargs)
        w, b = got["weight"], got.get("bias")
        if not isinstance(w, torch.Tensor) or (b is not None and not isinstance(b, torch.Tensor)):
            return None
        one = lambda v, d: (v[0] if isinstance(v, (tuple, list)) else v) if v is not None else d  # noqa: E731
        stride, dil, groups, pad = (
            one(got.get("stride"), 1),
            one(got.get("dilation"), 1),
            got.get("groups", 1),
            got.get("padding", 0),
        )
    else:
        return None
    k = w.shape[-1]
    if pad == "same":
        left = dil * (k - 1) // 2
    elif pad == "valid":
        left = 0
    else:
        left = pad[0] if isinstance(pad, (tuple, list)) else int(pad)
    return w, b, int(stride), int(left), int(dil), int(groups)


def pool_params(node: fx.Node, modules: dict) -> tuple | None:
    """``(kind, kernel, stride, dilation)`` of a padding-free 1-D max/avg pool node, or None."""
    if node.op == "call_module":
        m = modules[node.target]
        if type(m) is nn.MaxPool1d and not m.ceil_mode and not m.return_indices and m.padding in (0, (0,)):
            k, s, d = m.kernel_size, m.stride, m.dilation
            kind = "max"
        elif type(m) is nn.AvgPool1d and not m.ceil_mode and m.padding in (0, (0,)):
            k, s, d, kind = m.kernel_size, m.stride, 1, "avg"
        else:
            return None
    elif node.op == "call_function" and node.target in (F.max_pool1d, F.avg_pool1d, torch.max_pool1d):
        kind = "avg" if node.target is F.avg_pool1d else "max"
        names = ("input", "kernel_size", "stride", "padding") + (
            ("dilation", "ceil_mode") if kind == "max" else ("ceil_mode",)
        )
        got = dict(zip(names, node.args)) | dict(node.kwargs)
        if got.get("padding", 0) not in (0, (0,)) or got.get("ceil_mode", False) or got.get("return_indices", False):
            return None
        k, s, d = got["kernel_size"], got.get("stride") or got["kernel_size"], got.get("dilation", 1)
    else:
        return None
    one = lambda v: int(v[0] if isinstance(v, (tuple, list)) else v)  # noqa: E731
    return kind, one(k), one(s), one(d)


# ----------------------------------------------------------------------------- the rules


@dataclass(frozen=True)
class Rule:
    """``name`` and ``apply(engine, call, node, first, args, kwargs, windows)``: the node's value for the mutants,
    or ``None`` when the rule does not apply."""

    name: str
    apply: Callable


def _one_window(first, windows) -> bool:
    return isinstance(first, Win) and len(windows) == 1


def _dropout_mask(eng, c, node, first, args, kwargs, windows):
    # MC-dropout's mask before anything else: a dropout on a dense tensor (a head after global pooling)
    # is a module in eval mode, which a plain call would run as the identity
    if not (isinstance(first, (Win, Dense)) and len(windows) <= 1 and eng.is_masked(node)):
        return None
    mask = eng.mask(node, c.ref[node.args[0].name].shape[1:])
    if isinstance(first, Win):
        return Win(first.t * mask[..., first.a : first.b], first.a, first.b, node.name)
    return Dense(first.v * mask)


def _dense_only(eng, c, node, first, args, kwargs, windows):
    return Dense(eng.call(node, args, kwargs)) if not windows else None  # only dense and static inputs


def _pointwise(eng, c, node, first, args, kwargs, windows):
    if not (_one_window(first, windows) and eng.is_pointwise(node, args, kwargs)):
        return None
    return Win(eng.call(node, (first.t,) + tuple(args[1:]), kwargs), first.a, first.b, node.name)


def _convolution(eng, c, node, first, args, kwargs, windows):
    conv = conv_params(node, eng.modules, args, kwargs) if _one_window(first, windows) else None
    return eng.conv(c, node, first, *conv) if conv is not None and first.t.ndim == 3 else None


def _pooling(eng, c, node, first, args, kwargs, windows):
    pool = pool_params(node, eng.modules) if _one_window(first, windows) else None
    return eng.pool(c, node, first, *pool) if pool is not None and first.t.ndim == 3 else None


def _length_mean_or_sum(eng, c, node, first, args, kwargs, windows):
    op, target = node.op, node.target
    if not _one_window(first, windows):
        return None
    if (op, target) in (("call_method", "mean"), ("call_method", "sum")) or target in (torch.mean, torch.sum):
        return eng.reduce(c, node, first, args, kwargs)
    return None


def _length_max(eng, c, node, first, args, kwargs, windows):
    op, target = node.op, node.target
    if _one_window(first, windows) and (
        (op == "call_method" and target in ("max", "amax")) or target in (torch.max, torch.amax)
    ):
        return eng.length_max(c, node, first, args, kwargs)
    return None


def _flip(eng, c, node, first, args, kwargs, windows):
    if not (
        _one_window(first, windows) and ((node.op, node.target) == ("call_method", "flip") or node.target is torch.flip)
    ):
        return None
    dims = args[1:] if len(args) > 2 else (args[1] if len(args) > 1 else kwargs.get("dims"))
    dims = {int(d) % first.t.ndim for d in ((dims,) if isinstance(dims, int) else dims)}
    if 0 in dims:
        return None
    # reverse-complementing: channels flip in place, the window mirrors
    L = c.ref[first.node].shape[-1]
    a, b = (L - first.b, L - first.a) if first.t.ndim - 1 in dims else (first.a, first.b)
    return Win(first.t.flip(sorted(dims)), a, b, node.name)


def _crop(eng, c, node, first, args, kwargs, windows):
    if _one_window(first, windows) and node.op == "call_function" and node.target is operator.getitem:
        return eng.crop(c, node, first, args[1])
    return None


def _flatten(eng, c, node, first, args, kwargs, windows):
    return Flat(first) if _one_window(first, windows) and eng.is_flatten(c, node, first, args, kwargs) else None


def _shape(eng, c, node, first, args, kwargs, windows):
    op, target = node.op, node.target
    if not (
        _one_window(first, windows)
        and ((op, target) == ("call_method", "size") or (op == "call_function" and target is getattr))
    ):
        return None
    shape = torch.Size((c.B,) + tuple(c.ref[first.node].shape[1:]))
    if target == "size":
        return Dense(shape if len(args) < 2 else shape[args[1]])
    return Dense(shape) if args[1] == "shape" else None


def _dense_layer(eng, c, node, first, args, kwargs, windows):
    return eng.linear(c, node, first, args) if isinstance(first, Flat) and len(windows) == 1 else None


def _elementwise(eng, c, node, first, args, kwargs, windows):
    if eng.is_binary(node) and all(isinstance(w, Win) for w in windows):
        return eng.elementwise(c, node, args, kwargs, windows)
    return None


RULES = (
    Rule("dropout mask", _dropout_mask),
    Rule("dense inputs", _dense_only),
    Rule("pointwise", _pointwise),
    Rule("convolution", _convolution),
    Rule("pooling", _pooling),
    Rule("mean or sum over the length", _length_mean_or_sum),
    Rule("max over the length", _length_max),
    Rule("flip", _flip),
    Rule("crop", _crop),
    Rule("flatten", _flatten),
    Rule("shape", _shape),
    Rule("dense layer", _dense_layer),
    Rule("elementwise", _elementwise),
)
