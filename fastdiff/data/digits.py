"""scikit-learn's bundled handwritten digits (UCI optdigits test set): 1797 images 8×8, 10 classes.

Pixel values are counts 0..16 (of a 4×4 block of a 32×32 bitmap), scaled here to [-1, 1] as v/8 − 1, so the
data has 17 grey levels. fastdiff trains at 8×8 by default (the native resolution: small enough for CPU
training in minutes); `image_size` 16 or 32 upsamples bilinearly (align_corners=False), which smooths the
images rather than adding detail.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from fastdiff.data.dataset import ArrayDataset, uint8_to_unit_range

DIGITS_SIZES = (8, 16, 32)
DIGITS_MAX_VALUE = 16.0
DIGITS_N = 1797


def load_digits(image_size: int = 8) -> ArrayDataset:
    """The 1797 digits as x: float32 [1797, 1, S, S] in [-1, 1], y: int64 [1797] in 0..9 (S = image_size).

    image_size: 8 (native), 16 or 32 (bilinear upsampling, align_corners=False; values stay in [-1, 1]).
    """
    if type(image_size) is not int or image_size not in DIGITS_SIZES:  # 8.0 / True are not sizes
        raise ValueError(f"image_size must be one of {DIGITS_SIZES}, got {image_size!r}")
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    x = uint8_to_unit_range(bunch.images, DIGITS_MAX_VALUE)[:, None]      # [N, 1, 8, 8]
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    y = torch.as_tensor(bunch.target, dtype=torch.int64)
    return ArrayDataset(x=x.contiguous(), y=y, num_classes=10, name=f"digits{image_size}",
                        class_names=[str(i) for i in range(10)])


def digits_split(test_fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random train / held-out split of the 1797 digits: (train_idx [N_train], test_idx [N_test]).

    test_fraction in (0, 1): N_test = round(1797 · test_fraction). The indices are sorted int64 tensors.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    perm = torch.randperm(DIGITS_N, generator=torch.Generator().manual_seed(int(seed)))
    n_test = round(DIGITS_N * test_fraction)
    return perm[n_test:].sort().values, perm[:n_test].sort().values
