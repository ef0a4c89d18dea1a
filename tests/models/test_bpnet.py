"""BPNet architecture and the Keras-h5 weight import, on files the tests write themselves."""

import h5py
import numpy as np
import pytest
import torch

from deepmr_utils import ism
from deepmr_utils import sequence as sq
from deepmr_utils._io import md5sum
from deepmr_utils.models import BPNet, bpnet

TASKS = ("Oct4", "Sox2", "Nanog", "Klf4")


def test_oskn_size_and_shapes():
    m = BPNet()
    assert sum(p.numel() for p in m.parameters()) == 130_960  # the published model without bias branches
    prof, cnt = m(sq.random_sequences(2, 1000, seed=0))
    assert prof.shape == (2, 4, 2, 1000) and cnt.shape == (2, 4, 2)
    assert m.receptive_field == 2069


def _keras_layers(n_layers):
    return {
        "stem": "conv1d_1",
        "dilated": [f"conv1d_{i}" for i in range(2, 2 + n_layers)],
        "profile": [f"conv2d_transpose_{i}" for i in range(1, 5)],
        "counts": [f"dense_{i}" for i in (1, 3, 5, 7)],
    }


def _write_keras_h5(path, rng, n_filters=6, n_layers=3, k=5, tk=7):
    """A Keras-layout file: model_weights/<layer>/<layer>/{kernel,bias}:0 with Keras shapes."""
    layers = _keras_layers(n_layers)
    arrays = {}
    with h5py.File(path, "w") as f:
        g = f.create_group("model_weights")

        def put(name, kernel, bias):
            arrays[name] = (kernel, bias)
            sub = g.create_group(name).create_group(name)
            sub["kernel:0"] = kernel
            sub["bias:0"] = bias

        put(layers["stem"], rng.normal(0, 0.3, (k, 4, n_filters)), rng.normal(0, 0.1, n_filters))
        for name in layers["dilated"]:
            put(name, rng.normal(0, 0.3, (3, n_filters, n_filters)), rng.normal(0, 0.1, n_filters))
        for name in layers["profile"]:
            put(name, rng.normal(0, 0.3, (tk, 1, 2, n_filters)), rng.normal(0, 0.1, 2))
        for name in layers["counts"]:
            put(name, rng.normal(0, 0.3, (n_filters, 2)), rng.normal(0, 0.1, 2))
        g.create_group("add_1")  # other layers without weights exist in real files
    return layers, arrays


def _numpy_bpnet(x, layers, arrays):
    """Reference forward pass with Keras semantics, x: (L, 4). Returns profile (T, 2, L), counts (T, 2)."""

    def conv_same(h, kernel, bias, dil=1):
        k = kernel.shape[0]
        pad = (k - 1) // 2 * dil
        hp = np.pad(h, ((pad, pad), (0, 0)))
        out = np.zeros((h.shape[0], kernel.shape[2]))
        for j in range(k):
            out += hp[j * dil : j * dil + h.shape[0]] @ kernel[j]
        return out + bias

    relu = lambda a: np.maximum(a, 0)  # noqa: E731
    h = relu(conv_same(x, *arrays[layers["stem"]]))
    for i, name in enumerate(layers["dilated"]):
        h = h + relu(conv_same(h, *arrays[name], dil=2 ** (i + 1)))
    L = h.shape[0]
    profiles, counts = [], []
    for pname, cname in zip(layers["profile"], layers["counts"]):
        kern, b = arrays[pname]  # (k, 1, 2, F); transposed conv, stride 1, 'same'
        k = kern.shape[0]
        p = (k - 1) // 2
        out = np.zeros((L, 2))
        for t in range(L):
            for j in range(k):
                src = t - j + p
                if 0 <= src < L:
                    out[t] += kern[j, 0] @ h[src]
        profiles.append((out + b).T)
        kc, bc = arrays[cname]
        counts.append(h.mean(0) @ kc + bc)
    return np.stack(profiles), np.stack(counts)


def test_h5_import_matches_numpy_reference(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "bpnet_small.h5"
    layers, arrays = _write_keras_h5(path, rng)
    md5 = md5sum(path)
    model = bpnet.load_keras_h5(path, md5=md5, layers=layers, tasks=TASKS)
    X = sq.random_sequences(2, 40, seed=1)
    prof, cnt = model(X)
    for n in range(2):
        ref_prof, ref_cnt = _numpy_bpnet(X[n].numpy().T.astype(np.float64), layers, arrays)
        assert np.allclose(prof[n].detach().numpy(), ref_prof, atol=1e-4)
        assert np.allclose(cnt[n].detach().numpy(), ref_cnt, atol=1e-5)
    # the imported model runs through the windowed ISM path exactly
    fast = ism.saturation_mutagenesis(model, X[:1], outputs=bpnet.counts, engine="windowed")
    plain = ism.saturation_mutagenesis(model, X[:1], outputs=bpnet.counts, engine="plain")
    assert (fast - plain).abs().max() < 1e-5


def test_h5_checksum_and_corruption(tmp_path):
    rng = np.random.default_rng(1)
    path = tmp_path / "w.h5"
    layers, _ = _write_keras_h5(path, rng)
    with pytest.raises(ValueError, match="has MD5 .* expected bbe883baef261877bfad07d05feb627d"):
        bpnet.load_keras_h5(path, layers=layers)  # default: the published file's checksum
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="MD5"):
        bpnet.load_keras_h5(truncated, md5=md5sum(path), layers=layers)
    with pytest.raises(ValueError, match="not a readable HDF5 file"):
        bpnet.load_keras_h5(truncated, md5=None, layers=layers)
    with pytest.raises(FileNotFoundError):
        bpnet.load_keras_h5(tmp_path / "missing.h5", md5=None)
    wrong = dict(layers, counts=["dense_1", "dense_3", "dense_5", "dense_99"])
    with pytest.raises(ValueError, match="layer 'dense_99' has no weight"):
        bpnet.load_keras_h5(path, md5=None, layers=wrong)


def test_loss_is_the_multinomial_nll_plus_weighted_counts_mse():
    """bpnet_loss against scipy's multinomial log-pmf on numbers small enough to check by eye."""
    from scipy.stats import multinomial

    logits = torch.tensor(
        [[[[0.0, 1.0, -1.0], [2.0, 0.0, 0.0]]], [[[0.5, 0.5, 0.5], [-1.0, 1.0, 3.0]]]], dtype=torch.float64
    )  # (N=2, T=1, 2, L=3)
    counts = torch.tensor(
        [[[[3.0, 1.0, 0.0], [0.0, 2.0, 2.0]]], [[[1.0, 1.0, 1.0], [0.0, 0.0, 5.0]]]], dtype=torch.float64
    )
    log_counts = torch.tensor([[[1.0, 1.5]], [[1.2, 2.0]]], dtype=torch.float64)  # (N, T, 2)
    nll = np.zeros(2)
    for n in range(2):
        for s in range(2):
            c = counts[n, 0, s].numpy()
            prob = np.exp(logits[n, 0, s].numpy()) / np.exp(logits[n, 0, s].numpy()).sum()
            nll[n] -= multinomial.logpmf(c, n=int(c.sum()), p=prob)
    mse = np.mean((log_counts.numpy() - np.log1p(counts.numpy().sum(-1))) ** 2)
    for weight in (1.0, 10.0, 100.0):
        got = bpnet.bpnet_loss((logits, log_counts), counts, count_weight=weight).item()
        assert got == pytest.approx(nll.mean() + weight * mse, rel=1e-12)


def test_evaluate_profile_and_counts_metrics():
    torch.manual_seed(0)
    m = BPNet(TASKS[:2], n_filters=4, n_layers=2, stem_kernel=5, tconv_kernel=5)
    X = sq.random_sequences(6, 40, seed=1)
    rng = np.random.default_rng(0)
    counts = torch.from_numpy(rng.poisson(0.3, size=(6, 2, 2, 40)).astype(np.float32))
    with torch.no_grad():  # a flat profile head: the model's NLL must equal the uniform floor
        m.profile.weight.zero_()
        m.profile.bias.zero_()
    res = bpnet.evaluate([m, m], X, counts, tasks=TASKS[:2])
    assert list(res.task) == list(TASKS[:2])
    assert np.allclose(res.profile_nll, np.log(80)) and np.allclose(res.uniform_nll, np.log(80))
    # counts metrics against scipy's Pearson r and a plain-Python R^2
    from scipy import stats

    y = np.log1p(counts.numpy().sum(axis=-1, dtype=np.float64)).mean(axis=-1)  # (N, T): BPNet's counts target
    with torch.no_grad():
        pred = m(X)[1].mean(dim=-1).double().numpy()
    assert res.counts_pearson[1] == pytest.approx(stats.pearsonr(y[:, 1], pred[:, 1]).statistic, rel=1e-9)
    ss_res = sum((a - b) ** 2 for a, b in zip(y[:, 0], pred[:, 0]))
    ss_tot = sum((a - y[:, 0].mean()) ** 2 for a in y[:, 0])
    assert res.counts_r2[0] == pytest.approx(1 - ss_res / ss_tot, rel=1e-9)
    # a reference shape that puts all reads where they are scores far better than uniform
    shape = (counts + 1e-3) / (counts + 1e-3).sum(dim=(2, 3), keepdim=True)
    res = bpnet.evaluate(m, X, counts, reference_shape=shape.numpy())
    assert (res.reference_nll < res.uniform_nll - 0.5).all()


def test_init_counts_bias_starts_at_the_mean():
    m = BPNet(TASKS[:2], n_filters=4, n_layers=2, stem_kernel=5, tconv_kernel=5)
    counts = torch.zeros(3, 2, 2, 10)
    counts[:, 1, 0, 0] = torch.tensor([0.0, 1.0, 3.0])
    bpnet.init_counts_bias(m, counts)
    assert torch.allclose(m.head.bias, torch.tensor([0.0, 0.0, np.log([1, 2, 4]).mean(), 0.0], dtype=torch.float32))
    with torch.no_grad():
        m.head.weight.zero_()
    assert torch.allclose(m(sq.random_sequences(1, 10, seed=0))[1][0, 1, 0], m.head.bias[2])
    with pytest.raises(ValueError, match="profile_counts must be"):
        bpnet.init_counts_bias(m, counts[:, :1])
