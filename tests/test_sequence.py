import numpy as np
import pytest
import torch

from deepmr_utils import sequence as sq


def test_one_hot_roundtrip_and_order():
    X = sq.one_hot(["ACGT", "TTGA"])
    assert X.shape == (2, 4, 4) and X.dtype == torch.float32
    assert X[0].argmax(0).tolist() == [0, 1, 2, 3]  # ACGT order
    assert sq.decode(X) == ["ACGT", "TTGA"]
    assert sq.decode(sq.one_hot("acgt")) == ["ACGT"]


def test_non_acgt_policy():
    with pytest.raises(ValueError, match=r"non-ACGT character 'N' at position 2"):
        sq.one_hot("ACNT")
    X = sq.one_hot("ACNT", non_acgt="zero")
    assert X[0, :, 2].sum() == 0 and sq.decode(X) == ["ACNT"]
    with pytest.raises(ValueError, match="non_acgt"):
        sq.one_hot("ACGT", non_acgt="guess")


def test_bad_inputs():
    with pytest.raises(ValueError, match="equal length"):
        sq.one_hot(["ACG", "AC"])
    with pytest.raises(ValueError, match="no sequences"):
        sq.one_hot([])
    with pytest.raises(ValueError, match=r"shape \(N, 4, L\)"):
        sq.check_one_hot(torch.zeros(2, 5, 3))
    with pytest.raises(TypeError, match="floating"):
        sq.check_one_hot(torch.zeros(1, 4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="not one-hot: sequence 0, position 1"):
        sq.check_one_hot(torch.tensor([[[1.0, 0.5], [0, 0.5], [0, 0], [0, 0]]]))
    with pytest.raises(ValueError, match="empty"):
        sq.check_one_hot(torch.zeros(0, 4, 3))


def test_reverse_complement():
    X = sq.one_hot(["AACGTT", "ACCGGG"])
    assert sq.decode(sq.reverse_complement(X)) == ["AACGTT", "CCCGGT"]


def test_random_sequences_seeded_and_gc():
    a = sq.random_sequences(4, 1000, gc=0.7, seed=3)
    assert torch.equal(a, sq.random_sequences(4, 1000, gc=0.7, seed=3))
    sq.check_one_hot(a, allow_zero_columns=False)
    gc = a[:, 1:3].sum() / a.sum()
    assert abs(gc.item() - 0.7) < 0.03


def _dinucs(x):
    c = x.argmax(0).numpy()
    m = np.zeros((4, 4), int)
    np.add.at(m, (c[:-1], c[1:]), 1)
    return m


def test_dinucleotide_shuffle_keeps_counts():
    X = sq.random_sequences(6, 150, seed=0)
    Y = sq.dinucleotide_shuffle(X, n_shuffles=2, seed=1)
    assert Y.shape == (12, 4, 150)
    for i in range(6):
        for s in range(2):
            y = Y[2 * i + s]
            assert (_dinucs(X[i]) == _dinucs(y)).all()
            assert y[:, 0].argmax() == X[i, :, 0].argmax() and y[:, -1].argmax() == X[i, :, -1].argmax()
    assert not torch.equal(X[0], Y[0])
    assert torch.equal(Y, sq.dinucleotide_shuffle(X, n_shuffles=2, seed=1))
    for n in (0, -1, 1.5, True):  # 0 returned an empty tensor, silently
        with pytest.raises(ValueError, match="n_shuffles must be an integer >= 1"):
            sq.dinucleotide_shuffle(X, n_shuffles=n)


def test_read_fasta(tmp_path):
    f = tmp_path / "x.fa"
    f.write_text(">s1 desc\nACGT\nAC\n>s2\nTTTT\n")
    assert sq.read_fasta(f) == {"s1": "ACGTAC", "s2": "TTTT"}
    bad = tmp_path / "bad.fa"
    bad.write_text("ACGT\n")
    with pytest.raises(ValueError, match="before the first '>'"):
        sq.read_fasta(bad)


def test_base_indices_and_substitute_take_any_length_including_none():
    assert sq.base_indices(["A", "c", "G", "t"]).tolist() == [0, 1, 2, 3]
    assert sq.base_indices([]).dtype == np.int64
    with pytest.raises(ValueError, match="base 'N' at index 1 is not one of ACGT"):
        sq.base_indices(["A", "N"])
    X = sq.one_hot(["ACGT", "AAAA"])
    assert torch.equal(sq.substitute(X, [0, 3], [3, 1]), sq.one_hot(["TCGT", "AAAC"]))
    assert sq.substitute(X[:0], np.array([], dtype=float), np.array([], dtype=float)).shape == (0, 4, 4)
    with pytest.raises(ValueError, match="2 sequences but 1 positions"):
        sq.substitute(X, [0], [1])
