"""RGB patches of the two sample photographs bundled with scikit-learn (china.jpg, flower.jpg, 427×640)."""
from __future__ import annotations

import numpy as np
import torch

from fastdiff.data.dataset import ArrayDataset, check_positive_int, hwc_to_nchw, uint8_to_unit_range

PATCH_PHOTOS = ("china", "flower")


def _sample_photos() -> list[np.ndarray]:
    """The bundled photographs as uint8 [H, W, 3] arrays, in PATCH_PHOTOS order."""
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    by_name = {f.replace("\\", "/").rsplit("/", 1)[-1].split(".")[0]: im
               for f, im in zip(bunch.filenames, bunch.images)}
    return [by_name[name] for name in PATCH_PHOTOS]


def load_patches(n: int = 2048, size: int = 32, seed: int = 0) -> ArrayDataset:
    """n RGB patches size×size: x float32 [n, 3, size, size] in [-1, 1], y int64 [n] = photograph index.

    Patch i comes from photograph i mod 2 (0 = china, 1 = flower: balanced classes) at a top-left corner
    drawn uniformly from a torch.Generator seeded with `seed`, so the set is deterministic in (n, size, seed).
    size must fit in the photographs (<= 427).
    """
    n, size = check_positive_int("n", n), check_positive_int("size", size)
    photos = _sample_photos()
    max_size = min(min(p.shape[:2]) for p in photos)
    if size > max_size:
        raise ValueError(f"size must be <= {max_size} (the photographs' height), got {size}")
    g = torch.Generator().manual_seed(int(seed))
    labels = torch.arange(n, dtype=torch.int64) % len(photos)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for k, photo in enumerate(photos):
        idx = (labels == k).nonzero().flatten()
        h, w = photo.shape[:2]
        top = torch.randint(0, h - size + 1, (idx.numel(),), generator=g)
        left = torch.randint(0, w - size + 1, (idx.numel(),), generator=g)
        for i, r, c in zip(idx.tolist(), top.tolist(), left.tolist()):
            out[i] = photo[r:r + size, c:c + size]
    x = hwc_to_nchw(uint8_to_unit_range(out))
    return ArrayDataset(x=x, y=labels, num_classes=len(photos), name=f"patches{size}",
                        class_names=list(PATCH_PHOTOS))
