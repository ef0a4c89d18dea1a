"""Training loops: early stopping, ensembles, seeds that decide every draw, and clear errors."""

import numpy as np
import pytest
import torch
from torch import nn

from deepmr_utils import sequence as sq
from deepmr_utils import train
from deepmr_utils.models import CountsRegressor


def test_fit_early_stopping_and_ensemble():
    torch.manual_seed(0)
    X = sq.random_sequences(300, 30, seed=0)
    y = np.stack([X[:, 0].sum(1).numpy(), X[:, 2, :10].sum(1).numpy()], axis=1)
    model = CountsRegressor(30, 2, n_conv=1, n_filters=4, kernel=3, hidden=8)
    hist = train.fit(
        model, X, y, config=train.TrainConfig(max_epochs=60, patience=3, batch_size=32), seed=0, device="cpu"
    )
    assert not model.training
    assert hist.val_loss[hist.best_epoch] == min(hist.val_loss)
    assert len(hist.val_loss) <= 60 and hist.val_loss[hist.best_epoch] < hist.val_loss[0]
    models, hists = train.train_ensemble(
        lambda: CountsRegressor(30, 2, n_conv=1, n_filters=4, kernel=3, hidden=8),
        X,
        y,
        2,
        config=train.TrainConfig(max_epochs=3),
        seed=1,
        device="cpu",
        progress=False,
    )
    assert len(models) == 2 and not torch.equal(models[0].out.weight, models[1].out.weight)
    acc = train.accuracy(models, X, y, names=["a", "b"])
    assert list(acc.output) == ["a", "b"]
    with pytest.raises(ValueError, match="y has"):
        train.fit(model, X, y[:10])


class _DropNet(nn.Module):
    def __init__(self, L=20):
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3, padding=1)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(6 * L, 1)

    def forward(self, x):
        return self.out(self.drop(torch.relu(self.conv(x))).flatten(1))


def test_fit_seed_decides_dropout_whatever_the_global_rng():
    X = sq.random_sequences(64, 20, seed=0)
    y = X[:, 1].sum(1, keepdim=True)
    cfg = train.TrainConfig(max_epochs=3, batch_size=16)
    weights = []
    for global_seed in (1, 2):
        torch.manual_seed(123)
        m = _DropNet()
        torch.manual_seed(global_seed)  # a different global RNG state before fit
        train.fit(m, X, y, config=cfg, seed=5, device="cpu")
        weights.append(m.out.weight.detach().clone())
    assert torch.equal(weights[0], weights[1])
    m = _DropNet()
    state = torch.random.get_rng_state()
    train.fit(m, X, y, config=cfg, seed=5, device="cpu")
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is left as it was


def test_fit_with_a_nan_loss_from_the_first_epoch_says_so():
    X = sq.random_sequences(32, 20, seed=0)

    def nan_loss(out, y):
        return (out - y).pow(2).mean() * float("nan")

    with pytest.raises(ValueError, match="training loss is nan at epoch 1, batch 1"):
        train.fit(
            _DropNet(), X, torch.zeros(32, 1), config=train.TrainConfig(max_epochs=2), device="cpu", loss_fn=nan_loss
        )


def test_fit_standardizes_targets_and_predicts_in_their_units():
    from deepmr_utils.models import PooledRegressor

    X = sq.random_sequences(400, 40, seed=2)
    gc = X[:, 1:3].sum((1, 2)).numpy()
    y = np.stack([1000 + 50 * gc, 0.01 * gc], axis=1)  # very different scales
    model = PooledRegressor(2, n_conv=1, n_filters=8, hidden=8)
    hist = train.fit(model, X, y, config=train.TrainConfig(max_epochs=40, patience=40, batch_size=32), seed=0)
    tr_mean = np.asarray(hist.target_mean)
    assert tr_mean == pytest.approx(y.mean(0), rel=0.02) and model.target_scale.mean.numpy() == pytest.approx(tr_mean)
    assert hist.val_loss[0] < 2.0  # losses are in units of the targets' variance, whatever their scale
    pred = model(X).detach().numpy()
    for j in range(2):  # both outputs learned (neither drowned by the other's scale), in original units
        assert np.corrcoef(pred[:, j], y[:, j])[0, 1] > 0.9
        assert pred[:, j].mean() == pytest.approx(y[:, j].mean(), rel=0.05)
    with pytest.raises(ValueError, match="constant"):
        train.fit(PooledRegressor(2), X, np.stack([gc, np.ones_like(gc)], 1), config=train.TrainConfig(max_epochs=1))


def test_fit_warns_when_still_improving_at_max_epochs():
    from deepmr_utils.models import PooledRegressor

    X = sq.random_sequences(200, 30, seed=4)
    y = X[:, 0].sum(1).numpy()
    with pytest.warns(train.ConvergenceWarning, match="still improving at max_epochs=2"):
        model = PooledRegressor(1, n_conv=1, n_filters=4, hidden=4)
        hist = train.fit(model, X, y, config=train.TrainConfig(max_epochs=2))
    # the same rule, kept on the history, is what the study and the chapters count
    assert hist.still_improving and hist.best_epoch == 1


def test_members_trained_in_processes_are_the_same_bits_for_any_number_of_processes():
    """n_jobs > 1: each member in a process with one thread, so its numbers depend on its seed only;
    a worker's ConvergenceWarning comes back to the caller; a lambda factory is refused by name."""
    import functools
    import warnings

    from deepmr_utils.models import PooledRegressor

    X = sq.random_sequences(120, 40, seed=1)
    y = np.random.default_rng(0).normal(size=(120, 2))
    cfg = train.TrainConfig(max_epochs=2, patience=5, batch_size=32)
    make = functools.partial(PooledRegressor, 2, n_filters=4, hidden=8)
    flat = lambda models: [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in models]  # noqa: E731
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        models, hists = train.train_ensemble(make, X, y, 3, config=cfg, seed=4, n_jobs=2, device="cpu")
    still = sum(h.still_improving for h in hists)
    assert len([w for w in caught if issubclass(w.category, train.ConvergenceWarning)]) == still
    # raised again where train_ensemble was called, so a filter by module sees the caller's
    assert still and all(w.filename == __file__ for w in caught if issubclass(w.category, train.ConvergenceWarning))
    # the same ensemble again, in 3 processes (a NumPy integer counts: a sizes table's) and in one pool with
    # another ensemble trained first (train_ensembles): its members are the same bits
    other = (sq.random_sequences(60, 40, seed=2), np.random.default_rng(1).normal(size=(60, 2)), 2, 9)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", train.ConvergenceWarning)
        specs = {"other": train.EnsembleSpec(make, *other), "x": train.EnsembleSpec(make, X, y, 3, np.int64(4))}
        both = train.train_ensembles(specs, config=cfg, n_jobs=np.int64(3), device="cpu")
    assert list(both) == ["other", "x"] and [len(both[k][0]) for k in both] == [2, 3]
    assert [h.val_loss for h in both["x"][1]] == [h.val_loss for h in hists]
    for a, b in zip(flat(models), flat(both["x"][0])):
        assert torch.equal(a, b)
    assert not torch.equal(flat(models)[0], flat(models)[1])  # members differ by seed
    with pytest.raises(TypeError, match="make_model.*cannot be pickled"):
        train.train_ensemble(lambda: make(), X, y, 2, config=cfg, n_jobs=2, device="cpu")
    for bad in (True, 0, 2.0):
        with pytest.raises(ValueError, match="n_jobs must be an integer >= 1"):
            train.train_ensemble(make, X, y, 2, config=cfg, n_jobs=bad, device="cpu")


def test_train_ensembles_refuses_bad_specs_by_name():
    from deepmr_utils.models import PooledRegressor

    X, y = sq.random_sequences(20, 30, seed=2), np.zeros((20, 1))
    spec = train.EnsembleSpec(PooledRegressor, X, y, 2)
    for bad, match in (
        ({}, "non-empty mapping"),
        ([spec], "non-empty mapping"),
        ({"a": (PooledRegressor, X, y, 2)}, r"specs\['a'\] must be an EnsembleSpec, got tuple"),
    ):
        with pytest.raises(TypeError, match=match):
            train.train_ensembles(bad, device="cpu")
    with pytest.raises(TypeError, match="make_model of 'a'.*cannot be pickled"):
        train.train_ensembles({"a": train.EnsembleSpec(lambda: PooledRegressor(1), X, y, 2)}, n_jobs=2, device="cpu")
    for kwargs, error, match in (
        ({"n_members": 0}, ValueError, "n_members must be an integer >= 1"),
        ({"n_members": 2.0}, ValueError, "n_members must be an integer >= 1"),
        ({"seed": 1.5}, TypeError, "seed must be an integer"),
        ({"make_model": "DeepSEA"}, TypeError, "make_model must be callable, got str"),
    ):
        with pytest.raises(error, match=match):
            train.EnsembleSpec(**{"make_model": PooledRegressor, "X": X, "y": y, "n_members": 2, **kwargs})
