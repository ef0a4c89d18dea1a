"""The book's own architectures (models.dilated, models.pooled, models.counts, models.scale): shapes, the
properties their docstrings promise, and bad arguments refused."""

import pytest
import torch

from deepmr_utils import sequence as sq
from deepmr_utils.models import CountsRegressor, DilatedResidualNet, PooledRegressor
from deepmr_utils.models.scale import TargetScale


def test_target_scale_maps_standardised_outputs_back_to_the_targets_units():
    s = TargetScale(2)
    z = torch.randn(5, 2)
    torch.testing.assert_close(s(z), z)  # the identity until set
    s.set(torch.tensor([10.0, -1.0]), torch.tensor([2.0, 0.5]))
    torch.testing.assert_close(s(z), z * torch.tensor([2.0, 0.5]) + torch.tensor([10.0, -1.0]))
    assert set(s.state_dict()) == {"mean", "std"}  # saved with the model
    with pytest.raises(ValueError, match="SDs positive"):
        s.set(torch.zeros(2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="expected 2 means"):
        s.set(torch.zeros(3), torch.ones(3))


def test_pooled_regressor_is_translation_invariant():
    torch.manual_seed(0)
    m = PooledRegressor(2, n_filters=8, hidden=8, output_names=["a", "b"]).eval()
    motif = sq.one_hot("ACGTTGCA")
    x = sq.one_hot("T" * 100)
    a, b = x.clone(), x.clone()
    # the same motif in two places, each farther from the edges than the 3 convolutions see (radius 9)
    a[:, :, 30:38], b[:, :, 60:68] = motif, motif
    torch.testing.assert_close(m(a), m(b), rtol=1e-5, atol=1e-6)
    assert m(a).shape == (1, 2) and m.output_names == ["a", "b"]
    with pytest.raises(ValueError, match="output_names has 1 names for 2 outputs"):
        PooledRegressor(2, output_names=["a"])
    with pytest.raises(ValueError, match=">= 1"):
        PooledRegressor(2, n_filters=0)


def test_counts_regressor_is_position_specific_and_checks_its_length():
    torch.manual_seed(0)
    m = CountsRegressor(length=40, n_filters=4, hidden=6).eval()
    x = sq.random_sequences(3, 40, seed=1)
    assert m(x).shape == (3, 2)
    rolled = torch.roll(x, 5, dims=2)
    assert not torch.allclose(m(x), m(rolled))  # a flatten head reads every position on its own
    with pytest.raises(ValueError):
        CountsRegressor(length=10, kernel=7)  # three valid convolutions leave no position


def test_dilated_residual_net_keeps_the_length_and_reaches_its_receptive_field():
    torch.manual_seed(0)
    m = DilatedResidualNet(3, 8, 3, stem_kernel=5).eval()
    x = sq.random_sequences(2, 80, seed=2)
    assert m(x).shape == (2, 3)
    with pytest.raises(ValueError, match="stem_kernel must be odd"):
        DilatedResidualNet(3, 8, 3, stem_kernel=4)
    with pytest.raises(ValueError):
        DilatedResidualNet(3, 8, 3, output_names=["a"])
