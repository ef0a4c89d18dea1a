"""Plain predictions (deepmr_utils.predict): members stacked, batches that do not change the numbers,
output selection and its names."""

import pytest
import torch

from deepmr_utils import predict
from deepmr_utils import sequence as sq
from deepmr_utils.models import DilatedResidualNet


@pytest.fixture(scope="module")
def members():
    torch.manual_seed(0)
    return [DilatedResidualNet(3, 8, 2, stem_kernel=5, output_names=["a", "b", "c"]) for _ in range(2)]


def test_predictions_stack_members_and_do_not_depend_on_the_batch(members):
    X = sq.random_sequences(7, 30, seed=1)
    y = predict.predict(members, X, device="cpu")
    assert y.shape == (7, 2, 3) and y.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(y[:, 1], members[1].eval()(X))
    torch.testing.assert_close(predict.predict(members, X, batch_size=2, device="cpu"), y)
    members[0].train()
    predict.predict(members, X, device="cpu")
    assert members[0].training and not members[1].training  # each member's mode is restored


def test_output_selection_and_names(members):
    X = sq.random_sequences(3, 30, seed=2)
    y = predict.predict(members, X, outputs=[2, 0], device="cpu")
    torch.testing.assert_close(y, predict.predict(members, X, device="cpu")[:, :, [2, 0]])
    assert predict.output_names(members, [2, 0]) == ["c", "a"]
    assert predict.output_names(members, lambda t: t[:, :1]) is None  # a callable: name them yourself
    assert predict.predict(members[0], ["ACGT" * 8], device="cpu").shape == (1, 1, 3)  # strings and one model
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        predict.predict(members, X, batch_size=0)
