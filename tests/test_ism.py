"""Exactness of saturation_mutagenesis against a naive one-mutant-at-a-time loop."""

import copy

import pytest
import torch
from torch import nn

from deepmr_utils import ism
from deepmr_utils import sequence as sq
from deepmr_utils._windowed import WindowedModel
from deepmr_utils.models import DilatedResidualNet
from deepmr_utils.predict import predict

TOL = 2e-5


class SmallBNDropout(nn.Module):
    """Conv + BatchNorm + dropout + dense over the flattened sequence."""

    def __init__(self, L, out=3, p=0.3):
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 5, padding=2)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(p)
        self.fc = nn.Linear(8 * L, out)

    def forward(self, x):
        h = self.drop(torch.relu(self.bn(self.conv(x))))
        return self.fc(h.flatten(1))


def _randomize_bn(model):
    for mod in model.modules():
        if isinstance(mod, nn.BatchNorm1d):
            mod.running_mean.normal_()
            mod.running_var.uniform_(0.5, 2.0)
    return model


def naive(models, X, outputs=None, positions=None):
    """One mutant, one model, one forward pass at a time."""
    N, _, L = X.shape
    pos = range(L) if positions is None else positions
    res = None
    with torch.no_grad():
        for n in range(N):
            for pi, p in enumerate(pos):
                for b in range(4):
                    x = X[n : n + 1].clone()
                    x[0, :, p] = 0
                    x[0, b, p] = 1
                    for k, m in enumerate(models):
                        m.eval()
                        y = m(x)[0]
                        y = y if outputs is None else y[outputs]
                        if res is None:
                            res = torch.zeros(N, len(models), len(pos), 4, y.numel())
                        res[n, k, pi, b] = y
    return res


@pytest.fixture(scope="module")
def dilated_ensemble():
    torch.manual_seed(0)
    return [_randomize_bn(DilatedResidualNet(3, 12, 4, stem_kernel=7, batchnorm=True, dropout=0.2)) for _ in range(3)]


@pytest.fixture(scope="module")
def X():
    return sq.random_sequences(2, 70, seed=1)


@pytest.fixture(scope="module")
def reference(dilated_ensemble, X):
    return naive(dilated_ensemble, X)


@pytest.mark.parametrize(
    "kw",
    [
        {"engine": "plain", "ensemble": "loop"},
        {"engine": "plain", "ensemble": "vmap"},
        {"engine": "plain", "ensemble": "vmap", "batch_size": 7},
        {"engine": "windowed"},
        {"engine": "windowed", "block": 3},
    ],
)
def test_dilated_residual_bn_dropout_exact(dilated_ensemble, X, reference, kw):
    out = ism.saturation_mutagenesis(dilated_ensemble, X, **kw)
    assert out.shape == reference.shape == (2, 3, 70, 4, 3)
    assert (out - reference).abs().max() < TOL


def test_reference_slot_holds_reference_prediction(dilated_ensemble, X):
    out = ism.saturation_mutagenesis(dilated_ensemble, X)
    ref = predict(dilated_ensemble, X)  # (N, M, O)
    base = X.argmax(1)  # (N, L)
    for n in range(2):
        slots = out[n][:, torch.arange(70), base[n], :]  # (M, L, O)
        assert (slots - ref[n][:, None, :]).abs().max() < TOL


def test_plain_model_with_batchnorm_and_dropout():
    torch.manual_seed(1)
    models = [_randomize_bn(SmallBNDropout(30)) for _ in range(2)]
    X = sq.random_sequences(2, 30, seed=2)
    ref = naive(models, X, outputs=[0, 2])
    for ens in ("loop", "vmap"):
        out = ism.saturation_mutagenesis(models, X, outputs=[0, 2], ensemble=ens, batch_size=11)
        assert (out - ref).abs().max() < TOL
    # the generic windowed engine (tests/test_windowed.py) gives the same numbers
    assert (ism.saturation_mutagenesis(models, X, outputs=[0, 2], engine="windowed") - ref).abs().max() < TOL


def test_positions_window_and_list(dilated_ensemble, X, reference):
    out = ism.saturation_mutagenesis(dilated_ensemble, X, positions=(10, 20))
    assert (out - reference[:, :, 10:20]).abs().max() < TOL
    out = ism.saturation_mutagenesis(dilated_ensemble, X, positions=[3, 50, 51], engine="windowed")
    assert (out - reference[:, :, [3, 50, 51]]).abs().max() < TOL


def test_the_retired_fast_keyword_names_its_replacement(dilated_ensemble, X):
    from deepmr_utils import pipeline

    for f in (ism.saturation_mutagenesis, pipeline.effects, pipeline.variant_effects):
        with pytest.raises(TypeError, match=r"no longer takes fast=;.*engine='windowed' \(was fast=True\)"):
            f(dilated_ensemble, X, fast=True)
    with pytest.raises(ValueError, match="engine must be one of"):
        ism.saturation_mutagenesis(dilated_ensemble, X, engine="fast")


def test_ism_options_are_one_checked_value_and_the_pipeline_says_where_its_keywords_went(dilated_ensemble, X):
    from deepmr_utils import pipeline

    opts = ism.ISMOptions(outputs=[0, 2], mc_dropout=0, engine="plain", batch_size=11)
    assert opts.mutagenesis()["engine"] == "plain" and opts.outputs == [0, 2]
    with pytest.raises(AttributeError):
        opts.seed = 1  # frozen: a run's options cannot change under it
    for bad, error, message in [
        ({"engine": "fast"}, ValueError, "engine must be one of"),
        ({"ensemble": "all"}, ValueError, "ensemble must be one of"),
        ({"mc_dropout": -1}, ValueError, "mc_dropout must be a non-negative"),
        ({"mc_dropout": 2.5}, TypeError, "mc_dropout must be an integer"),
        ({"seed": "1"}, TypeError, "seed must be an integer"),
        ({"ddof": -1}, ValueError, "ddof must be >= 0"),
        ({"batch_size": 0}, ValueError, "batch_size must be None or an integer >= 1"),
        ({"transform": "probit"}, ValueError, "transform must be one of"),
        ({"dtype": torch.float64}, ValueError, "dtype must be None"),
        ({"rc_average": "yes"}, TypeError, "rc_average must be True or False"),
        ({"outputs": "a"}, TypeError, "pass integer indices"),
    ]:
        with pytest.raises(error, match=message):
            ism.ISMOptions(**bad)
    # the pipeline's numbers are saturation_mutagenesis's with the same options
    effect, _ = pipeline.effects(dilated_ensemble, X[:2], options=opts, progress=False)
    pred = ism.saturation_mutagenesis(dilated_ensemble, X[:2], outputs=[0, 2], engine="plain", batch_size=11)
    assert effect.shape[-1] == pred.shape[-1] == 2
    with pytest.raises(TypeError, match=r"no longer takes mc_dropout=; pass options=ISMOptions\(mc_dropout=...\)"):
        pipeline.effects(dilated_ensemble, X, mc_dropout=4)
    with pytest.raises(TypeError, match="options must be an ism.ISMOptions"):
        pipeline.variant_effects(dilated_ensemble, X, exposure=0, outcome=1, options={"engine": "plain"})


def test_modes_restored(dilated_ensemble, X):
    m = dilated_ensemble[0]
    m.train()
    m.convs[1].eval()
    ism.saturation_mutagenesis(m, X[:1], positions=(0, 3))
    assert m.training and not m.convs[1].training and m.stem.training
    m.eval()


def test_mc_dropout_shares_one_mask_per_pass():
    torch.manual_seed(2)
    model = SmallBNDropout(20, p=0.5)
    X = sq.random_sequences(1, 20, seed=3)
    out = ism.saturation_mutagenesis(model, X, mc_dropout=3, seed=7)
    assert out.shape == (1, 3, 20, 4, 3)
    # passes differ from each other (masks are random) ...
    assert (out[0, 0] - out[0, 1]).abs().max() > 1e-3
    # ... and each equals the model with that pass's fixed mask applied to every mutant
    shared = ism._SharedDropout(model, 7)
    model.eval()
    with shared, torch.no_grad():
        for s in range(3):
            shared.pass_index = s
            for p in (0, 11):
                for b in range(4):
                    x = X.clone()
                    x[0, :, p] = 0
                    x[0, b, p] = 1
                    assert torch.allclose(model(x)[0], out[0, s, p, b], atol=TOL)
    # reproducible with the same seed
    assert torch.equal(out, ism.saturation_mutagenesis(model, X, mc_dropout=3, seed=7))
    # dropout p = 0 everywhere: every pass would be identical and every SE zero, so it is refused
    model.drop.p = 0.0
    with pytest.raises(ValueError, match="all 1 Dropout layers of this model have p=0"):
        ism.saturation_mutagenesis(model, X, mc_dropout=2)


def test_callable_outputs_and_tuple_models():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = DilatedResidualNet(2, 8, 2, stem_kernel=5)

        def forward(self, x):
            y = self.net(x)
            return {"profile": x.sum(1), "counts": y}

    torch.manual_seed(4)
    models = [TwoHeads() for _ in range(2)]
    X = sq.random_sequences(1, 25, seed=4)
    with pytest.raises(TypeError, match="outputs=callable"):
        ism.saturation_mutagenesis(models, X)
    out = ism.saturation_mutagenesis(models, X, outputs=lambda y: y["counts"])
    ref = naive([m.net for m in models], X)
    assert (out - ref).abs().max() < TOL


def test_bad_inputs(dilated_ensemble, X):
    m = dilated_ensemble[0]
    with pytest.raises(ValueError, match=r"shape \(N, 4, L\)"):
        ism.saturation_mutagenesis(m, X[0])
    with pytest.raises(TypeError, match="floating"):
        ism.saturation_mutagenesis(m, X.long())
    with pytest.raises(ValueError, match="not one-hot"):
        ism.saturation_mutagenesis(m, X * 2)
    with pytest.raises(ValueError, match="empty"):
        ism.saturation_mutagenesis(m, X[:0])
    with pytest.raises(ValueError, match="outputs index 5 does not exist: the model has 3 outputs"):
        ism.saturation_mutagenesis(m, X, outputs=[0, 5])
    with pytest.raises(ValueError, match="models is empty"):
        ism.saturation_mutagenesis([], X)
    with pytest.raises(TypeError, match="not a torch.nn.Module"):
        ism.saturation_mutagenesis([m, "model"], X)
    with pytest.raises(ValueError, match="positions window"):
        ism.saturation_mutagenesis(m, X, positions=(5, 500))
    with pytest.raises(ValueError, match="whole numbers, got 1.5"):  # once truncated to position 1
        ism.saturation_mutagenesis(m, X, positions=[1.5])
    with pytest.raises(ValueError, match="single model"):
        ism.saturation_mutagenesis(dilated_ensemble, X, mc_dropout=2)


def test_models_on_different_devices(dilated_ensemble, X):
    meta = DilatedResidualNet(3, 12, 4, stem_kernel=7).to("meta")
    with pytest.raises(ValueError, match="different devices"):
        ism.saturation_mutagenesis([dilated_ensemble[0], meta], X)


def test_non_finite_predictions_raise(X):
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 1)

        def forward(self, x):
            y = self.lin(x.mean(-1))
            return torch.where(x[:, 0, 3:4] == 1, torch.full_like(y, float("nan")), y)

    with pytest.raises(ValueError, match="non-finite prediction: sequence 0, model 0, position 3, base A"):
        ism.saturation_mutagenesis(Bad(), sq.one_hot("CCCCCC"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "kw", [{"engine": "windowed"}, {"engine": "plain", "ensemble": "vmap"}, {"engine": "plain", "ensemble": "loop"}]
)
def test_cuda_matches_cpu(dilated_ensemble, X, reference, kw):
    """The same numbers on the GPU (TF32 off), and bf16 autocast stays close."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out = ism.saturation_mutagenesis(dilated_ensemble, X, device="cuda", **kw)
    assert out.device.type == "cpu" and (out - reference).abs().max() < 1e-4
    assert all(next(m.parameters()).device.type == "cpu" for m in dilated_ensemble)  # caller's models not moved
    half = ism.saturation_mutagenesis(dilated_ensemble, X, device="cuda", dtype=torch.bfloat16, **kw)
    assert torch.isfinite(half).all() and (half - reference).abs().max() < 0.05 * reference.abs().max()


@pytest.mark.parametrize("positions", [None, [3, 4, 50, 51, 69]])
def test_windowed_path_batched_over_references(dilated_ensemble, X, reference, positions):
    """The GPU layout of the windowed path (several references per call) on the CPU: same numbers."""
    Xn = torch.cat([X, X[:1]])
    Xn[2, :, 5] = 0  # an N base: all four substitutions are mutants there
    ref = torch.cat([reference, naive(dilated_ensemble, Xn[2:])])
    pos = torch.arange(70) if positions is None else torch.as_tensor(positions)
    with torch.no_grad():
        for m in dilated_ensemble:
            m.eval()
        for chunk in (2, 3):
            engines = [WindowedModel(m) for m in dilated_ensemble]
            out = ism._windowed_path(engines, Xn, pos, None, 12, chunk, 0, 0, dilated_ensemble)
            assert out.shape == (3, 3, pos.numel(), 4, 3)
            assert (out - ref[:, :, pos]).abs().max() < TOL


def test_dtypes_lengths_and_outputs_are_checked(dilated_ensemble, X):
    m = dilated_ensemble[0]
    want = ism.saturation_mutagenesis(m, X[:1], positions=(0, 5))
    # a float64 one-hot batch is the same bases: cast, not refused
    got = ism.saturation_mutagenesis(m, X[:1].double(), positions=(0, 5))
    assert torch.equal(got, want)
    # a float64 model gets a float64 batch
    m64 = copy.deepcopy(m).double()
    got64 = ism.saturation_mutagenesis(m64, X[:1], positions=(0, 5))
    assert torch.allclose(got64, want, atol=1e-5)
    with pytest.raises(TypeError, match="ensemble members have different dtypes"):
        ism.saturation_mutagenesis([m, m64], X[:1])
    with pytest.raises(ValueError, match="empty"):
        ism.saturation_mutagenesis(m, [""])
    for bad, err in (([], ValueError), ([0, 1.5], TypeError), ("0", TypeError)):
        with pytest.raises(err, match="outputs"):
            ism.saturation_mutagenesis(m, X[:1], outputs=bad)


def test_a_transform_outside_its_domain_is_refused_with_the_share():
    """Once clamped silently: a model that returns logits got a third of its effects set to exactly 0."""
    torch.manual_seed(0)
    logits = torch.nn.Sequential(torch.nn.Conv1d(4, 2, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    X = sq.random_sequences(2, 12, seed=0)
    logits(X)
    with pytest.raises(ValueError, match=r"needs probabilities in \[0, 1\], but .*% of the predictions lie outside"):
        ism.saturation_mutagenesis([logits, logits], X, transform="logit")
    with pytest.raises(ValueError, match="needs non-negative counts"):
        ism.saturation_mutagenesis([logits, logits], X, transform="log")
    amplify = torch.nn.Conv1d(1, 1, 1, bias=False)
    amplify.weight.data.fill_(100.0)
    saturated = torch.nn.Sequential(
        logits, torch.nn.Unflatten(1, (1, 2)), amplify, torch.nn.Flatten(), torch.nn.Hardsigmoid()
    )  # exact 0 and 1, where the logit is infinite
    with pytest.raises(ValueError, match="exactly 0 or 1.*logit-clip"):
        ism.saturation_mutagenesis([saturated], X, transform="logit")
    clipped = ism.saturation_mutagenesis([saturated], X, transform="logit-clip")
    assert torch.isfinite(clipped).all() and clipped.abs().max() <= 14
