"""Training loops: one regressor with early stopping, and seeded ensembles.

``fit`` splits off a validation set, trains with Adam (AMSGrad) on the mean
squared error of standardised targets, stops when the validation loss has not
improved for ``patience`` epochs and restores the best checkpoint; it warns
(:class:`ConvergenceWarning`) when the best epoch is the last one allowed. ``train_ensemble`` trains members that
differ only by seed (initialisation, validation split and batch order), as the
original study did. Models come back in eval mode.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from ._torch import resolve_device
from ._types import ArrayLike, Device, Models, Sequences
from ._validate import is_integer
from .models.scale import TargetScale
from .predict import predict
from .progress import show_progress

__all__ = [
    "TrainConfig",
    "History",
    "ConvergenceWarning",
    "fit",
    "train_ensemble",
    "EnsembleSpec",
    "train_ensembles",
    "accuracy",
]


class ConvergenceWarning(UserWarning):
    """Training stopped at ``max_epochs`` while the validation loss was still falling."""


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (defaults: the original study's, with a smaller batch)."""

    max_epochs: int = 100
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int = 10
    val_fraction: float = 0.15

    def __post_init__(self):
        if self.max_epochs < 1 or self.batch_size < 1 or self.patience < 1:
            raise ValueError("max_epochs, batch_size and patience must be >= 1")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1), got {self.val_fraction}")


@dataclass
class History:
    train_loss: list = field(default_factory=list)
    val_loss: list = field(default_factory=list)
    best_epoch: int = -1
    # the best validation loss came at the last epoch allowed (max_epochs): the model may underfit
    still_improving: bool = False
    target_mean: list | None = None
    target_std: list | None = None

    @property
    def best_val_loss(self) -> float:
        return self.val_loss[self.best_epoch]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {"epoch": np.arange(1, len(self.train_loss) + 1), "train": self.train_loss, "validation": self.val_loss}
        )


def _check_xy(X, y):
    if not isinstance(X, torch.Tensor) or X.ndim != 3:
        raise ValueError("X must be a (N, 4, L) tensor")
    y = y.float() if isinstance(y, torch.Tensor) else torch.as_tensor(np.asarray(y), dtype=torch.float32)
    if y.ndim == 1:
        y = y[:, None]
    if y.shape[0] != X.shape[0]:
        raise ValueError(f"X has {X.shape[0]} sequences but y has {y.shape[0]} rows")
    if not torch.isfinite(y).all():
        raise ValueError("y contains non-finite values")
    return X.float(), y


def fit(
    model: nn.Module,
    X: torch.Tensor,
    y: ArrayLike,
    *,
    config: TrainConfig = TrainConfig(),
    seed: int = 0,
    device: Device = None,
    progress: bool = False,
    loss_fn: Callable | None = None,
    standardize: bool | None = None,
) -> History:
    """Train ``model`` in place on ``X`` ``(N, 4, L)`` and ``y`` ``(N, ...)``; returns the loss history.

    ``y``: targets with one row per sequence (any trailing shape); ``loss_fn(output, y)``
    defaults to the mean squared error. ``seed`` fixes the validation split, the batch
    order and every random draw inside the model (dropout), whatever the global RNG
    state; the global RNG is left as it was.

    ``standardize`` (default: on for the default loss, off with a custom ``loss_fn``)
    computes the loss on ``(y - mean) / sd``, with the mean and SD of the training
    split per target column, so that targets of very different size weigh alike and
    the losses read as fractions of the targets' variance. A model with a
    ``target_scale`` layer (:class:`~deepmr_utils.models.scale.TargetScale`) gets it
    set to that mean and SD, so it learns standardised targets yet predicts in their
    units (ISM effects keep their scale); the history records both.
    """
    X, y = _check_xy(X, y)
    standardize = loss_fn is None if standardize is None else standardize
    dev = resolve_device(device)
    g = torch.Generator().manual_seed(seed)
    n = X.shape[0]
    perm = torch.randperm(n, generator=g)
    n_val = max(1, int(round(config.val_fraction * n)))
    val, tr = perm[:n_val], perm[n_val:]
    if tr.numel() < 2:
        raise ValueError(f"too few sequences to train on ({n})")
    model.to(dev)
    Xtr, ytr, Xva, yva = X[tr].to(dev), y[tr].to(dev), X[val].to(dev), y[val].to(dev)
    loss_fn = loss_fn or nn.MSELoss()
    hist = History()
    if standardize:
        loss_fn = _standardized(model, loss_fn, ytr, hist)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay, amsgrad=True)
    best, best_state, waited = float("inf"), None, 0
    epochs = tqdm(range(config.max_epochs), desc="epochs", disable=not progress, leave=False)
    # dropout draws from the global RNG: fork it so `seed`, not the caller's RNG state, decides them
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        for epoch in epochs:
            order = torch.randperm(tr.numel(), generator=g).to(dev)
            total, bad = _train_epoch(model, opt, loss_fn, Xtr, ytr, order, config.batch_size)
            if bad is None:
                model.eval()
                with torch.no_grad():
                    vloss = loss_fn(model(Xva), yva).item()
                if not np.isfinite(vloss):
                    bad = f"validation loss is {vloss} at epoch {epoch + 1}"
            else:
                bad = f"training loss is {bad[0]} at epoch {epoch + 1}, batch {bad[1]}"
            if bad is not None:  # an error before any good epoch, else stop and keep the best one
                _diverged(best_state, bad)
                break
            hist.train_loss.append(total / tr.numel())
            hist.val_loss.append(vloss)
            if vloss < best:
                best, best_state, waited, hist.best_epoch = vloss, copy.deepcopy(model.state_dict()), 0, epoch
            else:
                waited += 1
                if waited >= config.patience:
                    break
    model.load_state_dict(best_state)
    model.eval()
    # one epoch allowed cannot show a trend: neither flagged nor warned about
    hist.still_improving = config.max_epochs > 1 and hist.best_epoch == config.max_epochs - 1
    if hist.still_improving:
        warnings.warn(
            f"still improving at max_epochs={config.max_epochs} (the best validation loss is the last epoch's); "
            "the model may underfit: raise max_epochs",
            ConvergenceWarning,
            stacklevel=2,
        )
    return hist


def _standardized(model, loss_fn, y, hist):
    """``loss_fn`` on standardised outputs and targets; sets the model's ``target_scale`` if it has one."""
    mean, std = y.mean(dim=0), y.std(dim=0)
    if not (std > 0).all():
        raise ValueError("a target column is constant on the training split; it cannot be standardised")
    scale = getattr(model, "target_scale", None)
    if isinstance(scale, TargetScale):
        scale.set(mean.reshape(-1).cpu(), std.reshape(-1).cpu())
    hist.target_mean, hist.target_std = mean.reshape(-1).tolist(), std.reshape(-1).tolist()

    def loss(out, target):
        return loss_fn((out - mean) / std, (target - mean) / std)

    return loss


def _train_epoch(model, opt, loss_fn, X, y, order, batch_size):
    """One pass over the batches in ``order``: ``(summed loss, None)``, or ``(None, (loss, batch))``
    at the first non-finite loss (before its step, so the weights stay finite)."""
    model.train()
    total = 0.0
    for i in range(0, order.numel(), batch_size):
        b = order[i : i + batch_size]
        if b.numel() < 2:  # BatchNorm cannot train on a single example
            continue
        opt.zero_grad()
        loss = loss_fn(model(X[b]), y[b])
        if not torch.isfinite(loss):
            return None, (loss.item(), i // batch_size + 1)
        loss.backward()
        opt.step()
        total += loss.item() * b.numel()
    return total, None


def _diverged(best_state, what: str) -> None:
    """A non-finite loss: an error before any good epoch, else a warning and the best checkpoint."""
    if best_state is None:
        raise ValueError(
            f"{what}, before any epoch finished with a finite loss: lower the learning rate, "
            "check the targets' scale and the model's output (e.g. log of a negative number)"
        )
    warnings.warn(f"{what}; stopped and restored the best epoch", RuntimeWarning, stacklevel=3)


def train_ensemble(
    make_model: Callable[[], nn.Module],
    X: Sequences,
    y: ArrayLike,
    n_members: int,
    *,
    config: TrainConfig = TrainConfig(),
    seed: int = 0,
    device: Device = None,
    progress: bool | None = None,
    loss_fn: Callable | None = None,
    standardize: bool | None = None,
    n_jobs: int = 1,
) -> tuple[list[nn.Module], list[History]]:
    """``n_members`` models from ``make_model()``, member ``i`` seeded with ``seed + i``; see :func:`fit`.

    ``n_jobs > 1`` trains members in that many processes with one thread each, on a CPU (small CNNs
    use 2 cores better that way than with intra-op threads; a GPU trains them in turn). The
    processes are spawned, so ``make_model`` and ``loss_fn`` must be picklable: a class, a
    ``functools.partial`` of one, or a module-level function, not a lambda. Each member's numbers
    depend on its seed and on its thread count only, so any ``n_jobs > 1`` gives the same bits; they
    differ in round-off from ``n_jobs=1``, which trains with this process's threads. A worker's
    warnings (e.g. :class:`ConvergenceWarning`) are raised again here, where the caller's filters apply.
    Several ensembles in one pool: :func:`train_ensembles`.
    """
    spec = EnsembleSpec(make_model, X, y, n_members, seed)
    return _train_specs(
        {0: spec},
        config=config,
        device=device,
        progress=progress,
        loss_fn=loss_fn,
        standardize=standardize,
        n_jobs=n_jobs,
    )[0]


@dataclass(frozen=True, eq=False)
class EnsembleSpec:
    """One ensemble for :func:`train_ensembles`: ``n_members`` models from ``make_model()`` trained on
    ``X`` ``(N, 4, L)`` and ``y`` ``(N, T)``, member ``i`` seeded with ``seed + i``."""

    make_model: Callable[[], nn.Module]
    X: Sequences
    y: ArrayLike
    n_members: int
    seed: int = 0

    def __post_init__(self):
        if not callable(self.make_model):
            raise TypeError(f"make_model must be callable, got {type(self.make_model).__name__}")
        if not is_integer(self.n_members) or self.n_members < 1:
            raise ValueError(f"n_members must be an integer >= 1, got {self.n_members!r}")
        if not is_integer(self.seed):
            raise TypeError(f"seed must be an integer, got {self.seed!r}")


def train_ensembles(
    specs: Mapping[Hashable, EnsembleSpec],
    *,
    config: TrainConfig = TrainConfig(),
    device: Device = None,
    progress: bool | None = None,
    loss_fn: Callable | None = None,
    standardize: bool | None = None,
    n_jobs: int = 1,
) -> dict[Hashable, tuple[list[nn.Module], list[History]]]:
    """Several ensembles (``key -> EnsembleSpec``), every member in one pool of ``n_jobs`` processes.

    Returns ``key -> (models, histories)``, each exactly what :func:`train_ensemble` gives for that
    spec (a member's numbers depend on its seed and thread count only). Why one pool: an ensemble
    whose member count is not a multiple of ``n_jobs`` leaves processes idle while its last members
    train; two ensembles of 3 members on 2 processes take 3 rounds together, 4 one after the other.
    """
    return _train_specs(
        specs,
        config=config,
        device=device,
        progress=progress,
        loss_fn=loss_fn,
        standardize=standardize,
        n_jobs=n_jobs,
    )


def _train_specs(specs, *, config, device, progress, loss_fn, standardize, n_jobs):
    """:func:`train_ensembles`' work, called by it and by :func:`train_ensemble` so that a worker's warning,
    raised again at ``stacklevel=3``, names the public function's caller (a filter by module then applies)."""
    if not isinstance(specs, Mapping) or not specs:
        raise TypeError("specs must be a non-empty mapping of key -> EnsembleSpec")
    for key, spec in specs.items():
        if not isinstance(spec, EnsembleSpec):
            raise TypeError(f"specs[{key!r}] must be an EnsembleSpec, got {type(spec).__name__}")
    if not is_integer(n_jobs) or n_jobs < 1:  # a NumPy integer (e.g. from a sizes table) counts, a bool does not
        raise ValueError(f"n_jobs must be an integer >= 1, got {n_jobs!r}")
    n_jobs = int(n_jobs)
    keys = [k for k, spec in specs.items() for _ in range(spec.n_members)]
    jobs = [
        (spec.make_model, spec.X, spec.y, config, int(spec.seed) + i, loss_fn, standardize)
        for spec in specs.values()
        for i in range(spec.n_members)
    ]
    if n_jobs > 1 and resolve_device(device).type == "cpu":
        import pickle

        from ._parallel import map_jobs

        factories = [(f"make_model of {k!r}", spec.make_model) for k, spec in specs.items()]
        for name, obj in [*factories, ("loss_fn", loss_fn)]:
            try:
                pickle.dumps(obj)
            except (pickle.PicklingError, AttributeError, TypeError) as exc:
                raise TypeError(
                    f"training with n_jobs={n_jobs} sends {name} to worker processes, but it cannot be "
                    f"pickled ({exc}); pass a class, a functools.partial of one or a module-level function"
                ) from None

        done = list(map_jobs(_member_in_worker, jobs, min(n_jobs, len(jobs))))
        for _, _, caught in done:
            for message, category in caught:
                warnings.warn(message, category, stacklevel=3)
        trained = [(m, h) for m, h, _ in done]
    else:
        trained = [
            _member(*job, device=device)
            for job in tqdm(jobs, desc="ensemble", disable=not show_progress(progress), leave=False)
        ]
    out: dict[Hashable, tuple[list[nn.Module], list[History]]] = {k: ([], []) for k in specs}
    for key, (m, h) in zip(keys, trained):
        out[key][0].append(m)
        out[key][1].append(h)
    return out


def _member(make_model, X, y, config, seed, loss_fn, standardize, device=None):
    torch.manual_seed(seed)
    m = make_model()
    return m, fit(m, X, y, config=config, seed=seed, device=device, loss_fn=loss_fn, standardize=standardize)


def _member_in_worker(job: tuple) -> tuple:
    """One member in a worker process with one thread; its warnings go back to the caller."""
    torch.set_num_threads(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        m, h = _member(*job, device="cpu")
    return m, h, [(str(w.message), w.category) for w in caught]


def accuracy(models: Models, X: Sequences, y: ArrayLike, *, names: Sequence[str] | None = None) -> pd.DataFrame:
    """Held-out accuracy of the ensemble mean per output: Pearson r, R^2 and MSE."""
    _, y = _check_xy(X, y)
    pred = predict(models, X).mean(dim=1).numpy()
    y = y.numpy()
    rows = []
    for j in range(y.shape[1]):
        resid = y[:, j] - pred[:, j]
        rows.append(
            {
                "output": names[j] if names else j,
                "pearson_r": float(np.corrcoef(y[:, j], pred[:, j])[0, 1]),
                "r2": float(1 - resid.var() / y[:, j].var()),
                "mse": float(np.mean(resid**2)),
            }
        )
    return pd.DataFrame(rows)
