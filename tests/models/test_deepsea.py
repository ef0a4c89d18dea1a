"""DeepSEA / Beluga: exact against Kipoi-layout reference networks built here (Conv2d, AGCT input).

Published weights are never downloaded; the loaders are checked on small checkpoints
written by the tests in Kipoi's key layout (models_and_weights notes §1.3-1.4).
"""

import warnings

import pytest
import torch
from torch import nn

from deepmr_utils import ism
from deepmr_utils import sequence as sq
from deepmr_utils._io import md5sum
from deepmr_utils.models import Beluga, DeepSEA
from deepmr_utils.models.deepsea import KIPOI_MD5, load_kipoi, output_index, output_names

SMALL = {"length": 200, "widths": (6, 5, 4), "hidden": 7, "n_outputs": 3}
BELUGA_SMALL = {"length": 400, "widths": (5, 4, 3), "hidden": 6, "n_outputs": 3}


def kipoi_deepsea(length, widths, hidden, n_outputs):
    """Kipoi's DeepSEA layout: Conv2d (1, 8) on (N, 4, 1, L) AGCT one-hot."""
    w1, w2, w3 = widths
    n = ((length - 7) // 4 - 7) // 4 - 7
    return nn.Sequential(
        nn.Conv2d(4, w1, (1, 8)), nn.Threshold(0, 1e-6), nn.MaxPool2d((1, 4), (1, 4)), nn.Dropout(0.2),
        nn.Conv2d(w1, w2, (1, 8)), nn.Threshold(0, 1e-6), nn.MaxPool2d((1, 4), (1, 4)), nn.Dropout(0.2),
        nn.Conv2d(w2, w3, (1, 8)), nn.Threshold(0, 1e-6), nn.Dropout(0.5), nn.Flatten(),
        nn.Sequential(nn.Identity(), nn.Linear(w3 * n, hidden)), nn.Threshold(0, 1e-6),
        nn.Sequential(nn.Identity(), nn.Linear(hidden, n_outputs)), nn.Sigmoid(),
    ).eval()  # fmt: skip


def kipoi_beluga(length, widths, hidden, n_outputs):
    a, b, c = widths
    n = (((length - 14) // 4 - 14) // 4) - 14
    blocks = nn.Sequential(
        nn.Conv2d(4, a, (1, 8)), nn.ReLU(), nn.Conv2d(a, a, (1, 8)), nn.ReLU(),
        nn.Dropout(0.2), nn.MaxPool2d((1, 4), (1, 4)),
        nn.Conv2d(a, b, (1, 8)), nn.ReLU(), nn.Conv2d(b, b, (1, 8)), nn.ReLU(),
        nn.Dropout(0.2), nn.MaxPool2d((1, 4), (1, 4)),
        nn.Conv2d(b, c, (1, 8)), nn.ReLU(), nn.Conv2d(c, c, (1, 8)), nn.ReLU(),
    )  # fmt: skip
    head = nn.Sequential(
        nn.Dropout(0.5), nn.Flatten(), nn.Sequential(nn.Identity(), nn.Linear(c * n, hidden)), nn.ReLU(),
        nn.Sequential(nn.Identity(), nn.Linear(hidden, n_outputs)),
    )  # fmt: skip

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(blocks, head, nn.Sigmoid())

        def forward(self, x):
            return self.model(x)

    return Net().eval()


def agct(X):
    """The published models' input: AGCT one-hot (N, 4, 1, L)."""
    return X[:, [0, 2, 1, 3]][:, :, None, :]


def revcomp(X):
    return X.flip(1).flip(2)


@pytest.fixture
def deepsea_file(tmp_path):
    torch.manual_seed(0)
    ref = kipoi_deepsea(**SMALL)
    path = tmp_path / "deepsea_small.pth"
    torch.save(ref.state_dict(), path)
    return ref, path


def test_published_sizes_and_names():
    assert sum(p.numel() for p in DeepSEA().parameters()) == 52_843_119
    assert sum(p.numel() for p in Beluga().parameters()) == 149_536_251
    assert len(output_names("deepsea")) == 919 and len(output_names("beluga")) == 2002
    # Beluga repeats DeepSEA's DNase and TF tracks, except one track Kipoi's DeepSEA table leaves unnamed
    diff = [i for i, (a, b) in enumerate(zip(output_names("deepsea")[:815], output_names("beluga"))) if a != b]
    assert diff == [576] and output_names("deepsea")[576] == "NA_NA_NA"
    # indices from the Kipoi name tables (models_and_weights notes §1.5)
    assert output_index("GM12878_CTCF_None") == [127, 415, 726, 781]
    assert output_index("GM12878_DNase_None") == [53]
    assert output_index("K562_DNase_None", "beluga") == [61, 1918]
    assert output_index("K562_GATA-1_None") == [622]
    with pytest.raises(ValueError, match="not a deepsea output"):
        output_index("K562_CTCF")


def test_batch_norm_is_an_option_outside_the_published_layout():
    """batch_norm=False (the default) adds nothing to the state dict, so published files load unchanged;
    True adds one BatchNorm1d per convolution, trains on batch statistics and is a fixed affine map in eval."""
    plain = DeepSEA(3, length=200, widths=(8, 8, 8), hidden=8)
    normed = DeepSEA(3, length=200, widths=(8, 8, 8), hidden=8, batch_norm=True)
    assert not any("norm" in k for k in plain.state_dict())
    assert sorted({k.split(".")[0] for k in normed.state_dict()} - {k.split(".")[0] for k in plain.state_dict()}) == [
        "norm1",
        "norm2",
        "norm3",
    ]
    assert sum(p.numel() for p in normed.parameters()) - sum(p.numel() for p in plain.parameters()) == 2 * 24
    X = sq.random_sequences(4, 200, seed=3)
    normed.train()
    normed(X)  # one training batch moves the running statistics
    assert not torch.equal(normed.norm1.running_mean, torch.zeros(8))
    normed.eval()
    with torch.no_grad():  # eval: each sequence's output does not depend on the rest of the batch
        assert torch.allclose(normed(X)[:1], normed(X[:1]), atol=1e-6)
    with pytest.raises(TypeError, match="batch_norm must be True or False"):
        DeepSEA(3, length=200, widths=(8, 8, 8), hidden=8, batch_norm=1)


def test_load_kipoi_matches_the_published_layout(deepsea_file):
    ref, path = deepsea_file
    X = sq.random_sequences(3, SMALL["length"], seed=1)
    model = load_kipoi(path, md5=md5sum(path), **SMALL)
    with torch.no_grad():
        want = ref(agct(X))
        assert torch.allclose(model(X), want, atol=1e-6)
        logit = load_kipoi(path, md5=None, output="logit", **SMALL)
        assert torch.allclose(torch.sigmoid(logit(X)), want, atol=1e-6)
        rc = load_kipoi(path, md5=None, rc_average=True, **SMALL)
        assert torch.allclose(rc(X), (want + ref(agct(revcomp(X)))) / 2, atol=1e-6)


def test_load_kipoi_predict_layout_and_refusals(deepsea_file, tmp_path):
    ref, path = deepsea_file
    prefixed = tmp_path / "predict.pth"
    torch.save({f"2.{k}": v for k, v in ref.state_dict().items()}, prefixed)
    model = load_kipoi(prefixed, md5=None, **SMALL)
    X = sq.random_sequences(2, SMALL["length"], seed=2)
    with torch.no_grad():
        assert torch.allclose(model(X), ref(agct(X)), atol=1e-6)
    with pytest.raises(ValueError, match=f"expected {KIPOI_MD5['deepsea']}"):
        load_kipoi(path, **SMALL)  # the published checksum by default
    state = ref.state_dict()
    state["12.1.weightt"] = state.pop("12.1.weight")
    torch.save(state, tmp_path / "renamed.pth")
    with pytest.raises(ValueError, match="missing '12.1.weight'"):
        load_kipoi(tmp_path / "renamed.pth", md5=None, **SMALL)
    with pytest.raises(ValueError, match="0.weight has shape"):
        load_kipoi(path, md5=None, **(SMALL | {"widths": (7, 5, 4)}))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_kipoi(tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="arch must be"):
        load_kipoi(path, arch="basset")


def test_beluga_layout(tmp_path):
    torch.manual_seed(1)
    ref = kipoi_beluga(**BELUGA_SMALL)
    path = tmp_path / "beluga_small.pth"
    torch.save(ref.state_dict(), path)
    assert next(iter(ref.state_dict())) == "model.0.0.weight"
    model = load_kipoi(path, "beluga", md5=None, **BELUGA_SMALL)
    X = sq.random_sequences(2, BELUGA_SMALL["length"], seed=3)
    with torch.no_grad():
        assert torch.allclose(model(X), ref(agct(X)), atol=1e-6)


@pytest.mark.parametrize("rc_average", [False, True])
def test_windowed_ism_on_deepsea(deepsea_file, rc_average):
    """The dense head over the flattened features is updated from the changed window; exact."""
    _, path = deepsea_file
    model = load_kipoi(path, md5=None, output="logit", rc_average=rc_average, **SMALL)
    X = sq.random_sequences(2, SMALL["length"], seed=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback anywhere in the graph
        fast = ism.saturation_mutagenesis(model, X, engine="windowed")
    plain = ism.saturation_mutagenesis(model, X, engine="plain")
    assert (fast - plain).abs().max() < 2e-5
