"""fastdiff.data.ImageFolder on PNG / JPEG files written to tmp_path: layouts, cropping, channels, errors."""
import numpy as np
import pytest
import torch
from PIL import Image

from fastdiff.data import ArrayDataset, ImageFolder, get_dataset


def _save(path, arr, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, format=fmt)


def _rand_image(rng, h, w):
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_labelled_folder_sorted_classes_nested_and_exact_pixels(tmp_path):
    rng = np.random.default_rng(0)
    imgs = {"dog/a.png": _rand_image(rng, 6, 6), "cat/b.png": _rand_image(rng, 6, 6),
            "cat/sub/c.PNG": _rand_image(rng, 6, 6), "dog/d.png": _rand_image(rng, 6, 6)}
    for rel, arr in imgs.items():
        _save(tmp_path / rel, arr, "PNG")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    ds = ImageFolder(tmp_path, image_size=6)
    assert isinstance(ds, ArrayDataset)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert ds.x.shape == (4, 3, 6, 6) and ds.x.dtype == torch.float32
    assert ds.y.tolist() == [0, 0, 1, 1]
    # no resize at the native size: pixels are exactly v / 127.5 - 1
    for i, f in enumerate(ds.files):
        rel = f.relative_to(tmp_path).as_posix()
        want = torch.from_numpy(imgs[rel].astype(np.float32)).permute(2, 0, 1) / 127.5 - 1
        assert torch.allclose(ds.x[i], want, atol=1e-6)


def test_unlabelled_folder_center_crop_and_resize(tmp_path):
    # 12 wide x 8 high: 2-pixel red margins left and right of an 8x8 blue centre -> crop keeps only blue
    arr = np.zeros((8, 12, 3), dtype=np.uint8)
    arr[:, :2] = arr[:, 10:] = (255, 0, 0)
    arr[:, 2:10] = (0, 0, 255)
    _save(tmp_path / "wide.png", arr)
    tall = np.zeros((20, 10, 3), dtype=np.uint8)
    tall[5:15] = (0, 255, 0)                         # green centre square, black top and bottom
    _save(tmp_path / "tall.png", tall)
    ds = ImageFolder(tmp_path, image_size=4)
    assert ds.y is None and ds.num_classes is None and ds.x.shape == (2, 3, 4, 4)
    by_name = {f.name: ds.x[i] for i, f in enumerate(ds.files)}
    blue = torch.tensor([-1.0, -1.0, 1.0])[:, None, None].expand(3, 4, 4)
    green = torch.tensor([-1.0, 1.0, -1.0])[:, None, None].expand(3, 4, 4)
    assert torch.allclose(by_name["wide.png"], blue, atol=1e-6)
    assert torch.allclose(by_name["tall.png"], green, atol=1e-6)


def test_jpeg_and_greyscale(tmp_path):
    rng = np.random.default_rng(1)
    smooth = np.repeat(np.linspace(0, 255, 16, dtype=np.uint8)[None, :, None], 16, 0).repeat(3, 2)
    _save(tmp_path / "x" / "g.jpg", smooth, "JPEG")
    _save(tmp_path / "y" / "h.jpeg", _rand_image(rng, 16, 16), "JPEG")
    ds = ImageFolder(tmp_path, image_size=8, channels=1)
    assert ds.x.shape == (2, 1, 8, 8) and ds.y.tolist() == [0, 1]
    assert float(ds.x.min()) >= -1 and float(ds.x.max()) <= 1
    ramp = ds.x[0, 0].mean(0)                        # a left-to-right ramp survives JPEG and resizing
    assert bool((ramp[1:] > ramp[:-1]).all())
    via_registry = get_dataset("folder", root=str(tmp_path), image_size=8, channels=1)
    assert torch.equal(via_registry.x, ds.x)


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        ImageFolder(tmp_path / "missing", image_size=8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        ImageFolder(tmp_path / "empty", image_size=8)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match="broken.png"):
        ImageFolder(bad, image_size=8)
    mixed = tmp_path / "mixed"
    _save(mixed / "top.png", np.zeros((4, 4, 3), np.uint8))
    _save(mixed / "cls" / "a.png", np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="sub-folders"):
        ImageFolder(mixed, image_size=4)
    hollow = tmp_path / "hollow"
    _save(hollow / "a" / "x.png", np.zeros((4, 4, 3), np.uint8))
    (hollow / "b").mkdir()
    with pytest.raises(ValueError, match="no images"):
        ImageFolder(hollow, image_size=4)
    with pytest.raises(ValueError, match="channels"):
        ImageFolder(hollow / "a", image_size=4, channels=4)
    with pytest.raises(ValueError, match="image_size"):
        ImageFolder(hollow / "a", image_size=0)
