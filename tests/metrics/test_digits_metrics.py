"""The shipped digits classifier and the metrics in its feature space."""
import pytest
import torch

from fastdiff.data import digits_split, load_digits
from fastdiff.metrics import (
    DigitsClassifier,
    classifier_accuracy,
    digits_fd,
    digits_features,
    digits_precision_recall,
    load_digits_classifier,
)
from fastdiff.metrics.digits_classifier import (
    SPLIT_SEED,
    SPLIT_TEST_FRACTION,
    WEIGHTS_PATH,
    DigitsClassifierConfig,
    pool_to_8x8,
    random_shift,
    train_digits_classifier,
)


@pytest.fixture(scope="module")
def digits():
    ds = load_digits(8)
    train_idx, test_idx = digits_split(SPLIT_TEST_FRACTION, SPLIT_SEED)
    return ds, train_idx, test_idx


def test_shipped_weights_small_and_loaded_cached():
    assert WEIGHTS_PATH.is_file() and WEIGHTS_PATH.stat().st_size < 400_000
    model = load_digits_classifier()
    assert isinstance(model, DigitsClassifier) and not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert load_digits_classifier() is model


def test_missing_weights_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="train_digits_classifier"):
        load_digits_classifier(path=tmp_path / "nope.pt")


def test_held_out_accuracy(digits):
    ds, _, test_idx = digits
    acc = classifier_accuracy(ds.x[test_idx], ds.y[test_idx])
    assert acc >= 0.95                                 # measured 0.989 on the 359 held-out digits
    for size in (16, 32):                              # upsampled inputs are pooled back to 8x8
        assert classifier_accuracy(load_digits(size).x[test_idx], ds.y[test_idx]) >= 0.95
    # wrong intended classes score near chance
    assert classifier_accuracy(ds.x[test_idx], (ds.y[test_idx] + 1) % 10) < 0.1


def test_features_and_logits_shapes():
    model = load_digits_classifier()
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    assert model.features(x).shape == (5, 64) and model.logits(x).shape == (5, 10)
    assert torch.equal(digits_features(x), model.features(x))
    with pytest.raises(ValueError, match="S in"):
        pool_to_8x8(torch.zeros(2, 1, 12, 12))
    with pytest.raises(ValueError, match="N, 1, S, S"):
        pool_to_8x8(torch.zeros(2, 3, 8, 8))


def test_digits_fd_real_far_below_noise(digits):
    ds, train_idx, test_idx = digits
    g = torch.Generator().manual_seed(1)
    real = digits_fd(ds.x[test_idx], ds.x[train_idx])
    noise = digits_fd(torch.rand(len(test_idx), 1, 8, 8, generator=g) * 2 - 1, ds.x[train_idx])
    blurred = digits_fd(torch.nn.functional.avg_pool2d(ds.x[test_idx], 3, 1, 1), ds.x[train_idx])
    assert 0 < real < noise / 10                       # measured 17.8 vs ~600
    assert real < blurred < noise
    assert digits_fd(ds.x[test_idx]) < noise / 10      # default reference: all 1797 digits


def test_digits_precision_recall(digits):
    ds, train_idx, test_idx = digits
    p, r = digits_precision_recall(ds.x[test_idx], ds.x[train_idx])
    assert p > 0.8 and r > 0.8                         # measured 0.89 / 0.91
    # a sampler that only draws zeros: precise but low recall
    zeros = ds.x[test_idx][ds.y[test_idx] == 0]
    p0, r0 = digits_precision_recall(zeros, ds.x[train_idx])
    assert p0 > 0.8 and r0 < 0.3
    assert digits_precision_recall(ds.x) == (1.0, 1.0)  # the reference set itself


def test_classifier_accuracy_errors():
    x = torch.zeros(3, 1, 8, 8)
    with pytest.raises(ValueError, match="labels"):
        classifier_accuracy(x, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="labels"):
        classifier_accuracy(x, torch.zeros(3))


def test_random_shift_is_a_translation():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(16, 1, 8, 8, generator=g)
    out = random_shift(x, 1, torch.Generator().manual_seed(3))
    for i in range(16):                                # each output equals the input shifted by some (dy, dx)
        padded = torch.nn.functional.pad(x[i, 0], (1, 1, 1, 1), value=-1.0)
        assert any(torch.equal(out[i, 0], padded[a:a + 8, b:b + 8]) for a in range(3) for b in range(3))


def test_training_is_deterministic():
    cfg = DigitsClassifierConfig(epochs=1)
    m1, s1 = train_digits_classifier(cfg)
    m2, s2 = train_digits_classifier(cfg)
    assert all(torch.equal(a, b) for a, b in zip(m1.state_dict().values(), m2.state_dict().values()))
    assert s1 == s2 and s1["n_train"] + s1["n_test"] == 1797
    assert s1["test_accuracy"] > 0.5                   # one epoch already learns
