"""The generic windowed ISM engine (engine="windowed" on any model) equals the plain path.

The plain path is itself checked against a one-mutant-at-a-time loop in test_ism.py;
here every architecture the engine claims to handle (and a few it must hand back)
is run both ways on random weights, with random BatchNorm statistics.
"""

import os
import sys
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from deepmr_utils import ism
from deepmr_utils import sequence as sq
from deepmr_utils._windowed import StackedWindowedModel, TraceError, WindowedModel
from deepmr_utils.models import BPNet, CountsRegressor, DilatedResidualNet, PooledRegressor, bpnet

TOL = 2e-5
L = 40


def _randomize_bn(model):
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm1d):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.normal_()
    return model


class DenseHead(nn.Module):
    """DeepSEA-like: valid convs, Threshold, max-pool, dropout, view(size(0), -1), dense, sigmoid."""

    def __init__(self, L=L):
        super().__init__()
        self.c1, self.c2 = nn.Conv1d(4, 8, 5), nn.Conv1d(8, 6, 3)
        self.pool, self.drop, self.th = nn.MaxPool1d(2, 2), nn.Dropout(0.3), nn.Threshold(0, 1e-6)
        n = ((L - 4) // 2 - 2) // 2
        self.fc, self.out = nn.Linear(6 * n, 7), nn.Linear(7, 3)

    def forward(self, x):
        h = self.drop(self.pool(self.th(self.c1(x))))
        h = self.drop(self.pool(self.th(self.c2(h))))
        return torch.sigmoid(self.out(F.relu(self.fc(h.view(h.size(0), -1)))))


class Strided(nn.Module):
    """Stride, dilation, 'same' padding, a functional grouped conv, cropping, gating, BN,
    average pooling, a static positional term, a global max, and a tuple output."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv1d(4, 8, 5, stride=2, padding=3, dilation=2)
        self.bn = nn.BatchNorm1d(8)
        self.c2 = nn.Conv1d(8, 8, 3, padding="same")
        self.w3 = nn.Parameter(torch.randn(8, 2, 3) * 0.3)
        self.pos = nn.Parameter(torch.randn(8, 10))
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        h = F.relu(self.bn(self.c1(x)))  # length 19
        h = h[:, :, 3:-6] + self.pos  # length 10
        h = h * torch.sigmoid(self.c2(h))
        h = F.conv1d(h, self.w3, None, 1, 1, 1, 4)
        h = F.avg_pool1d(h, 3)
        return self.head(h.max(dim=-1).values), h.sum(-1, keepdim=True)[..., 0]


class ProfileHead(nn.Module):
    """BPNet-like with a profile output that keeps the length axis."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv1d(4, 8, 7, padding=3)
        self.convs = nn.ModuleList(nn.Conv1d(8, 8, 3, dilation=d, padding=d) for d in (2, 4))
        self.profile = nn.Conv1d(8, 2, 5, padding=2)
        self.counts = nn.Linear(8, 2)

    def forward(self, x):
        h = F.relu(self.stem(x))
        for c in self.convs:
            h = h + F.relu(c(h))
        return self.profile(h), self.counts(h.mean(-1))


class Attention(nn.Module):
    """A transformer-style global layer: handed to the full-length path, still exact."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(4, 16, 7, padding=3)
        self.att = nn.MultiheadAttention(16, 2, batch_first=True)
        self.h = nn.Linear(16, 2)

    def forward(self, x):
        t = F.gelu(self.c(x)).transpose(1, 2)
        return self.h(self.att(t, t, t)[0].mean(1))


class Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(4, 3, 3, padding=1)

    def forward(self, x):
        h = self.c(x)
        if h.sum() > 0:
            h = -h
        return h.mean(-1)


# tools/gpu_check.sh runs these tests on a GPU (DEEPMR_TEST_DEVICE=cuda, TF32 off): both paths there
DEVICE = os.environ.get("DEEPMR_TEST_DEVICE") or None
if DEVICE and DEVICE.startswith("cuda"):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def both(models, X, **kw):
    kw.setdefault("device", DEVICE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast = ism.saturation_mutagenesis(models, X, engine="windowed", **kw)
    plain = ism.saturation_mutagenesis(models, X, engine="plain", **kw)
    return fast, plain, [str(w.message) for w in caught]


def profile_and_counts(y):
    return torch.cat([y[0][:, :, 10:14].flatten(1), y[1]], dim=1)


@pytest.mark.parametrize(
    "make, kw",
    [
        (DenseHead, {}),
        (Strided, {"outputs": lambda y: torch.cat([y[0], y[1]], 1)}),
        (ProfileHead, {"outputs": profile_and_counts}),
        (lambda: PooledRegressor(2, n_filters=8, hidden=8), {}),
        (lambda: CountsRegressor(L, 2), {}),
    ],
    ids=["dense-head", "strided", "profile-tuple", "pooled", "counts-cnn"],
)
@pytest.mark.parametrize("ensemble", ["loop", "vmap"])
def test_windowed_equals_plain(make, kw, ensemble):
    torch.manual_seed(0)
    models = [_randomize_bn(make()) for _ in range(3)]
    X = sq.random_sequences(3, L, seed=1)
    X[1, :, 7] = 0  # an unknown base: four mutants there
    fast, plain, caught = both(models, X, ensemble=ensemble, **kw)
    assert (fast - plain).abs().max() < TOL
    assert not caught, caught  # every operation of these models is handled as local or linear-global
    assert fast[:, 0].sub(fast[:, 2]).abs().max() > 1e-3  # each member's own weights, in its own slot


def test_a_tail_no_output_reads():
    """L = 41: the first pooling drops the last conv output, so edits at the tail change nothing."""
    torch.manual_seed(0)
    model = DenseHead(41)
    fast, plain, caught = both(model, sq.random_sequences(2, 41, seed=7))
    assert (fast - plain).abs().max() < TOL and not caught


@pytest.mark.parametrize("stacked", [False, True], ids=["loop", "stacked"])
def test_windowed_on_positions_and_batched_references(stacked):
    torch.manual_seed(0)
    models = [_randomize_bn(DenseHead()).eval() for _ in range(2)]
    X = sq.random_sequences(3, L, seed=2)
    pos = torch.tensor([0, 1, 5, 6, 20, 39])
    plain = ism.saturation_mutagenesis(models, X, positions=pos, engine="plain")
    engines = [StackedWindowedModel(models)] if stacked else [WindowedModel(m) for m in models]
    with torch.no_grad():
        for chunk, block in ((1, 4), (2, 8), (3, 40)):  # the GPU layout: several references per call
            out = ism._windowed_path(engines, X, pos, None, block, chunk, 0, 0, models)
            assert (out - plain).abs().max() < TOL


def test_stacking_refuses_members_of_different_architectures():
    with pytest.raises(TraceError, match="differ in architecture"):
        StackedWindowedModel([DenseHead(), DenseHead(60)])
    with pytest.raises(ValueError, match="identical architecture"):
        ism.saturation_mutagenesis([DenseHead(), Strided()], sq.random_sequences(1, L), ensemble="vmap")


class StaticMax(nn.Module):
    """A weight-only torch.max (values, indices) structure: a reference activation vmap cannot return."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(4, 3, 3, padding=1)
        self.p = nn.Parameter(torch.randn(3, 5))

    def forward(self, x):
        top = self.p.max(dim=-1)
        return (self.c(x) + top.values[:, None]).mean(-1)


def test_members_that_cannot_be_stacked_run_one_after_another():
    torch.manual_seed(0)
    fast, plain, caught = both([StaticMax(), StaticMax()], sq.random_sequences(2, 16, seed=4), ensemble="vmap")
    assert (fast - plain).abs().max() < TOL
    assert len(caught) == 1 and "vmap cannot return" in caught[0] and "one after another" in caught[0]


@pytest.mark.parametrize("ensemble", ["loop", "vmap"])
def test_global_attention_is_exact_and_says_so(ensemble):
    torch.manual_seed(0)
    fast, plain, caught = both([Attention(), Attention()], sq.random_sequences(2, 24, seed=3), ensemble=ensemble)
    assert (fast - plain).abs().max() < TOL
    caught = [w for w in caught if "batching rule" not in w]  # torch's vmap loops over attention: still exact
    assert len(caught) == 1 and "transpose" in caught[0] and "full length" in caught[0]


def test_untraceable_model_falls_back_with_one_warning():
    fast, plain, caught = both(Branchy(), sq.random_sequences(2, 16, seed=4))
    assert torch.equal(fast, plain)
    assert len(caught) == 1 and "could not trace Branchy" in caught[0] and "plain path" in caught[0]
    with pytest.raises(TraceError):
        WindowedModel(Branchy())


@pytest.mark.parametrize(
    "make",
    [DenseHead, lambda: PooledRegressor(2, n_filters=8, hidden=8, dropout=0.3)],
    ids=["dropout on windows", "dropout in a head after global pooling"],
)
def test_mc_dropout_on_the_windowed_path_shares_the_plain_paths_masks(make):
    """The second case once lost its masks on the windowed path (a dropout on a dense tensor ran as the
    eval-mode identity): the passes' spread was 4x too small, and nothing failed."""
    torch.manual_seed(0)
    model = make().eval()
    X = sq.random_sequences(2, L, seed=5)
    fast, plain, caught = both(model, X, mc_dropout=4, seed=3)
    assert (fast - plain).abs().max() < TOL and not caught
    assert fast[:, 0].sub(fast[:, 1]).abs().max() > 1e-3  # the passes differ: masks are applied


@pytest.mark.parametrize(
    "make",
    [
        lambda: DilatedResidualNet(3, 8, 4, stem_kernel=9, batchnorm=True),
        lambda: BPNet(("a", "b"), n_filters=8, n_layers=3, stem_kernel=9),
    ],
)
def test_the_books_models_run_on_the_engine(make):
    """The book's BPNet-style models have no ISM code of their own: the engine captures them whole."""
    torch.manual_seed(0)
    model = _randomize_bn(make()).eval()
    X = sq.random_sequences(2, 64, seed=6)
    outputs = bpnet.counts if isinstance(model, BPNet) else None
    fast, plain, caught = both(model, X, outputs=outputs)
    assert (fast - plain).abs().max() < TOL and not caught
    assert WindowedModel(model, outputs).applies_outputs == (outputs is not None)


def test_auto_runs_the_engine_that_choose_engine_names_and_keeps_the_numbers(monkeypatch):
    """engine="auto": plain batches below WINDOWED_MIN_LENGTH, the windowed engine from it on (any traceable
    model: a max-pooled head or a DeepSEA), plain for a model torch.fx cannot trace (TorchScript) and for
    engine="plain". The path taken is the one choose_engine names, and the numbers are the plain path's."""
    from deepmr_utils.models import DeepSEA

    calls = []
    real = ism._windowed_path
    monkeypatch.setattr(ism, "_windowed_path", lambda *a, **k: calls.append(1) or real(*a, **k))
    torch.manual_seed(0)
    pooled = [PooledRegressor(2, n_filters=8, hidden=8).eval() for _ in range(2)]
    deepsea = [DeepSEA(3, length=200, widths=(8, 8, 8), hidden=8, output="logit").eval() for _ in range(2)]
    normed = [DeepSEA(3, length=200, widths=(8, 8, 8), hidden=8, output="logit", batch_norm=True) for _ in range(2)]
    for m in normed:  # running statistics and affine maps that are not the identity
        for bn in (m.norm1, m.norm2, m.norm3):
            for t in (bn.running_mean, bn.running_var, bn.weight, bn.bias):
                t.data = torch.rand(t.shape) + 0.5
        m.eval()
    scripted = torch.jit.script(nn.Sequential(nn.Conv1d(4, 3, 5, padding=2), nn.AdaptiveAvgPool1d(1), nn.Flatten()))
    short, long = ism.WINDOWED_MIN_LENGTH - 1, ism.WINDOWED_MIN_LENGTH
    cases = [
        (pooled, short, "plain", f"{short} bp < {long} bp"),
        (pooled, long, "windowed", f"{long} bp >= {long} bp"),
        (deepsea, 200, "windowed", f"200 bp >= {long} bp"),
        (normed, 200, "windowed", f"200 bp >= {long} bp"),
        ([scripted], 200, "plain", "trace"),
    ]
    for models, L, engine, why in cases:
        X = sq.random_sequences(2, L, seed=8)
        choice = ism.choose_engine(models, X)
        assert (choice.engine, why in choice.reason) == (engine, True), choice
        calls.clear()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the scripted model cannot be traced: said once, checked elsewhere
            auto = ism.saturation_mutagenesis(models, X, positions=(50, 70))
        assert bool(calls) == (engine == "windowed")
        plain = ism.saturation_mutagenesis(models, X, positions=(50, 70), engine="plain")
        assert auto.shape == plain.shape and (auto - plain).abs().max() < TOL
    assert ism.choose_engine(deepsea, sq.random_sequences(1, 200, seed=1), engine="plain").engine == "plain"


# ---------------------------------------------------------------- architectures from the wild
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from wild_models import BassetLike, ChromBPNetLike, EnformerLike, chrombpnet_outputs  # noqa: E402


@pytest.mark.parametrize(
    "make, length, kw, full_length",
    [
        (lambda: BassetLike(80, 5, filters=(8, 6, 6), hidden=7, pools=(2, 2, 2)), 80, {}, False),
        (lambda: ChromBPNetLike(8, 3, stem=7, profile_kernel=5), 64, {"outputs": chrombpnet_outputs}, False),
        (lambda: EnformerLike(16, 1, 1, 2, 3, crop=2), 48, {}, True),
    ],
    ids=["basset", "chrombpnet-shape-crop", "enformer"],
)
@pytest.mark.parametrize("ensemble", ["loop", "vmap"])
def test_models_from_the_wild_are_exact(make, length, kw, full_length, ensemble):
    """Crops computed from shapes (bpnet-lite's ``crop = (a - b) // 2``) stay windows; attention pooling
    and transformers get the full length with the one warning; never an exception."""
    torch.manual_seed(0)
    models = [_randomize_bn(make()).eval() for _ in range(2)]
    X = sq.random_sequences(2, length, seed=9)
    fast, plain, caught = both(models, X, ensemble=ensemble, **kw)
    assert (fast - plain).abs().max() < TOL
    caught = [w for w in caught if "batching rule" not in w]
    assert len(caught) == int(full_length), caught
    assert all("full length" in w for w in caught)


def test_an_engine_failure_falls_back_to_the_plain_path(monkeypatch):
    """Whatever the engine cannot do, the user gets the plain path's numbers and one warning, not its error."""

    def broken(self, *args):
        raise IndexError("an engine defect")

    monkeypatch.setattr(WindowedModel, "mutants", broken)
    fast, plain, caught = both(DenseHead(), sq.random_sequences(2, L, seed=4))
    assert torch.equal(fast, plain)
    assert len(caught) == 1 and "IndexError: an engine defect" in caught[0] and "plain path" in caught[0]


class Flipped(nn.Module):
    """Reverse-complement averaging written into the model: flip channels and length, convolve, mean."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv1d(4, 6, 5, padding=2)
        self.h = nn.Linear(6, 2)

    def forward(self, x):
        return self.h(F.relu(self.c(x)).mean(-1) + F.relu(self.c(x.flip(1).flip(2))).mean(-1))


# per rule of the engine's table, a model that needs it (with what saturation_mutagenesis needs to run it)
RULE_CASES = {
    "dropout mask": (lambda: PooledRegressor(2, n_filters=8, hidden=8, dropout=0.3), {"mc_dropout": 3, "seed": 0}),
    "dense inputs": (lambda: PooledRegressor(2, n_filters=8, hidden=8), {}),
    "pointwise": (DenseHead, {}),
    "convolution": (DenseHead, {}),
    "pooling": (DenseHead, {}),
    "mean or sum over the length": (ProfileHead, {"outputs": profile_and_counts}),
    "max over the length": (Strided, {"outputs": lambda y: torch.cat([y[0], y[1]], 1)}),
    "flip": (Flipped, {}),
    "crop": (Strided, {"outputs": lambda y: torch.cat([y[0], y[1]], 1)}),
    "flatten": (DenseHead, {}),
    "shape": (DenseHead, {}),
    "dense layer": (DenseHead, {}),
    "elementwise": (ProfileHead, {"outputs": profile_and_counts}),
}


def test_every_rule_has_an_exactness_case():
    from deepmr_utils._windowed_rules import RULES

    assert [r.name for r in RULES] == list(RULE_CASES)  # a new rule needs its case, in the table's order


@pytest.mark.parametrize("rule", list(RULE_CASES))
def test_every_rule_is_exact(rule, monkeypatch):
    """The rule answers for some node of its model, and the engine's numbers equal the plain path's."""
    seen = []
    init = WindowedModel.__init__

    def recording(self, *a, **k):
        init(self, *a, **k)
        self.rule_log = seen

    monkeypatch.setattr(WindowedModel, "__init__", recording)
    make, kw = RULE_CASES[rule]
    torch.manual_seed(0)
    models = [_randomize_bn(make()) for _ in range(1 if "mc_dropout" in kw else 2)]
    X = sq.random_sequences(2, L, seed=3)
    fast, plain, caught = both(models, X, **kw)
    assert rule in seen, sorted(set(seen))
    assert (fast - plain).abs().max() < TOL and not caught, caught
