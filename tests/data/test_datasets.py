"""fastdiff.data: ArrayDataset, digits, 2-D toys, photo patches and the get_dataset registry."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from fastdiff.data import (
    ArrayDataset,
    dataset_options,
    digits_split,
    get_dataset,
    grid25,
    load_digits,
    load_patches,
    ring8,
    swiss_roll,
    toy_dataset,
)
from fastdiff.data.patches import _sample_photos

# ---------------------------------------------------------------- ArrayDataset

def test_array_dataset_items_and_loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 3, 5, 5, generator=g)
    y = torch.randint(0, 4, (7,), generator=g)
    ds = ArrayDataset(x=x, y=y, num_classes=4, name="t")
    assert len(ds) == 7 and ds.data_shape == (3, 5, 5)
    xi, yi = ds[3]
    assert torch.equal(xi, x[3]) and int(yi) == int(y[3])
    xb, yb = next(iter(DataLoader(ds, batch_size=7, shuffle=False)))
    assert torch.equal(xb, x) and torch.equal(yb, y)
    unl = ArrayDataset(x=x)
    assert int(unl[2][1]) == -1 and unl.num_classes is None


@pytest.mark.parametrize("kwargs, word", [
    ({"x": torch.zeros(3, 2, dtype=torch.float64)}, "x"),
    ({"x": torch.zeros(3)}, "x"),
    ({"x": torch.zeros(3, 2), "y": torch.zeros(3, dtype=torch.int32), "num_classes": 2}, "y"),
    ({"x": torch.zeros(3, 2), "y": torch.zeros(2, dtype=torch.int64), "num_classes": 2}, "y"),
    ({"x": torch.zeros(3, 2), "y": torch.tensor([0, 1, 2]), "num_classes": 2}, "y"),
    ({"x": torch.zeros(3, 2), "y": torch.tensor([0, 1, 1])}, "num_classes"),
    ({"x": torch.zeros(3, 2), "num_classes": 2}, "num_classes"),
    ({"x": torch.zeros(3, 2), "y": torch.tensor([0, 1, 1]), "num_classes": 2, "class_names": ["a"]},
     "class_names"),
])
def test_array_dataset_rejects_bad_fields(kwargs, word):
    with pytest.raises(ValueError, match=word):
        ArrayDataset(**kwargs)


# ---------------------------------------------------------------- digits

def test_digits_8x8_grid_range_and_labels():
    ds = load_digits()
    assert ds.x.shape == (1797, 1, 8, 8) and ds.x.dtype == torch.float32
    assert ds.y.shape == (1797,) and ds.y.dtype == torch.int64 and ds.num_classes == 10
    assert float(ds.x.min()) == -1.0 and float(ds.x.max()) == 1.0
    levels = (ds.x + 1.0) * 8.0                      # back to the 0..16 counts
    assert torch.allclose(levels, levels.round(), atol=1e-5)
    counts = torch.bincount(ds.y, minlength=10)
    assert counts.min() >= 170 and int(counts.sum()) == 1797


@pytest.mark.parametrize("size", [16, 32])
def test_digits_upsampled(size):
    small, big = load_digits(8).x, load_digits(size).x
    assert big.shape == (1797, 1, size, size)
    assert float(big.min()) >= -1.0 and float(big.max()) <= 1.0
    # bilinear upsampling then average pooling back is close to (not equal to) the original
    back = torch.nn.functional.avg_pool2d(big, size // 8)
    assert (back - small).abs().mean() < 0.2          # measured 0.14 (the blur of sharp strokes)
    assert (back - small).abs().max() > 0
    assert (big.mean((1, 2, 3)) - small.mean((1, 2, 3))).abs().max() < 0.05
    corr = torch.corrcoef(torch.stack([back.flatten(), small.flatten()]))[0, 1]
    assert corr > 0.95


@pytest.mark.parametrize("bad", [0, 7, 28, 64, 8.0, True])
def test_digits_rejects_size(bad):
    with pytest.raises(ValueError, match="image_size"):
        load_digits(bad)


def test_digits_split_partition_and_seed():
    tr, te = digits_split(0.2, seed=3)
    assert te.numel() == round(1797 * 0.2) and tr.numel() + te.numel() == 1797
    assert torch.equal(torch.cat([tr, te]).sort().values, torch.arange(1797))
    tr2, te2 = digits_split(0.2, seed=3)
    assert torch.equal(tr, tr2) and torch.equal(te, te2)
    assert not torch.equal(te, digits_split(0.2, seed=4)[1])
    with pytest.raises(ValueError, match="test_fraction"):
        digits_split(1.0)


# ---------------------------------------------------------------- 2-D toys

@pytest.mark.parametrize("name, mixture", [("grid25", grid25()), ("ring8", ring8())])
def test_toy_mixture_dataset(name, mixture):
    ds = toy_dataset(name, n=4000, seed=5)
    assert ds.x.shape == (4000, 2) and ds.x.dtype == torch.float32 and ds.name == name
    assert ds.num_classes == mixture.n_components
    assert set(ds.y.tolist()) == set(range(mixture.n_components))
    # each point lies within 5 std of the centre its label names
    dist = (ds.x.double() - mixture.means[ds.y]).norm(dim=1)
    assert float(dist.max()) < 5 * float(mixture.std.max())
    same = toy_dataset(name, n=4000, seed=5)
    assert torch.equal(ds.x, same.x) and torch.equal(ds.y, same.y)
    assert not torch.equal(ds.x, toy_dataset(name, n=4000, seed=6).x)


def test_swiss_roll_standardised_unlabelled_deterministic():
    ds = toy_dataset("swiss_roll", n=40000, seed=1)
    assert ds.y is None and ds.num_classes is None and ds.x.shape == (40000, 2)
    assert ds.x.mean(0).abs().max() < 0.03
    assert (ds.x.std(0) - 1).abs().max() < 0.03
    assert torch.equal(toy_dataset("swiss_roll", n=500, seed=2).x, toy_dataset("swiss_roll", n=500, seed=2).x)
    # without noise every point lies on the spiral r = t, angle t (mod 2π), t in [1.5π, 4.5π]
    from fastdiff.data.toy import _swiss_roll_moments
    clean = swiss_roll(1000, torch.Generator().manual_seed(0), noise=0.0).double()
    mean, std = _swiss_roll_moments(0.0)
    raw = clean * std + mean
    r = raw.norm(dim=1)
    assert float(r.min()) > 1.5 * np.pi - 1e-3 and float(r.max()) < 4.5 * np.pi + 1e-3
    ang = torch.atan2(raw[:, 1], raw[:, 0])
    wrapped = torch.remainder(r - ang + np.pi, 2 * np.pi) - np.pi
    assert wrapped.abs().max() < 1e-4


def test_toy_dataset_errors():
    with pytest.raises(ValueError, match="name"):
        toy_dataset("moons", n=10)
    with pytest.raises(ValueError, match="n"):
        toy_dataset("grid25", n=0)


# ---------------------------------------------------------------- photo patches

def test_patches_shapes_labels_determinism():
    ds = load_patches(n=65, size=32, seed=4)
    assert ds.x.shape == (65, 3, 32, 32) and ds.x.dtype == torch.float32
    assert float(ds.x.min()) >= -1.0 and float(ds.x.max()) <= 1.0
    assert ds.class_names == ["china", "flower"] and ds.num_classes == 2
    assert torch.bincount(ds.y).tolist() == [33, 32]
    assert torch.equal(ds.x, load_patches(n=65, size=32, seed=4).x)
    assert not torch.equal(ds.x, load_patches(n=65, size=32, seed=5).x)
    # the two photographs differ in colour statistics: mean patch colours differ by class
    assert (ds.x[ds.y == 0].mean((0, 2, 3)) - ds.x[ds.y == 1].mean((0, 2, 3))).abs().max() > 0.05


def _find_patch(photo: np.ndarray, patch: np.ndarray) -> bool:
    """Whether patch [s, s, 3] occurs in photo [H, W, 3] (candidates by its top-left pixel, then exact)."""
    s = patch.shape[0]
    rows, cols = np.nonzero((photo[: photo.shape[0] - s + 1, : photo.shape[1] - s + 1] == patch[0, 0]).all(-1))
    return any(np.array_equal(photo[r:r + s, c:c + s], patch) for r, c in zip(rows, cols))


def test_patches_are_crops_of_their_photograph():
    ds = load_patches(n=4, size=16, seed=9)
    photos = _sample_photos()
    for i in range(4):
        pix = np.rint((ds.x[i].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)
        assert _find_patch(photos[int(ds.y[i])], pix)


def test_patches_errors():
    with pytest.raises(ValueError, match="size"):
        load_patches(n=2, size=500)
    with pytest.raises(ValueError, match="n"):
        load_patches(n=0)


# ---------------------------------------------------------------- registry

def test_get_dataset_names_and_options():
    assert get_dataset("digits", image_size=16).x.shape == (1797, 1, 16, 16)
    assert torch.equal(get_dataset("ring8", n=50, seed=2).x, toy_dataset("ring8", n=50, seed=2).x)
    assert get_dataset("swiss_roll", n=10).x.shape == (10, 2)
    assert get_dataset("grid25", n=10).num_classes == 25
    assert get_dataset("patches", n=3, size=8).x.shape == (3, 3, 8, 8)
    assert set(dataset_options("patches")) == {"n", "size", "seed"}


def test_get_dataset_errors_list_valid_values():
    with pytest.raises(ValueError, match="digits, grid25, ring8, swiss_roll, patches, folder"):
        get_dataset("mnist")
    with pytest.raises(ValueError, match="valid options: image_size"):
        get_dataset("digits", n=3)
    with pytest.raises(ValueError, match="root"):
        get_dataset("folder", image_size=8)
