"""`ArrayDataset`: an in-memory data set of float32 tensors, what every fastdiff loader returns."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset


@dataclass(eq=False)
class ArrayDataset(Dataset):
    """In-memory data set: x: float32 [N, *data_shape] (images NCHW in [-1, 1]); y: int64 [N] or None.

    num_classes: number of classes when labelled (labels in [0, num_classes)), else None; name: a label for
    tables; class_names: optional [num_classes] names of the labels. `ds[i]` is `(x[i], y[i])`, with y = -1
    when unlabelled. Trainers index `.x` / `.y` directly with index tensors, so both stay plain tensors.
    """

    x: torch.Tensor
    y: torch.Tensor | None = None
    num_classes: int | None = None
    name: str = "array"
    class_names: list[str] | None = None

    def __post_init__(self) -> None:
        """Validate dtypes, shapes and label ranges (messages name the field)."""
        if not isinstance(self.x, torch.Tensor) or self.x.dtype != torch.float32 or self.x.dim() < 2:
            raise ValueError(f"x must be a float32 tensor [N, *data_shape], got "
                             f"{getattr(self.x, 'dtype', type(self.x))} {tuple(getattr(self.x, 'shape', ()))}")
        n = self.x.shape[0]
        if self.y is None:
            if self.num_classes is not None:
                raise ValueError(f"num_classes must be None for an unlabelled data set, got {self.num_classes}")
        else:
            if not isinstance(self.y, torch.Tensor) or self.y.dtype != torch.int64 or tuple(self.y.shape) != (n,):
                raise ValueError(f"y must be an int64 tensor [N] = [{n}], got "
                                 f"{getattr(self.y, 'dtype', type(self.y))} {tuple(getattr(self.y, 'shape', ()))}")
            if self.num_classes is None or self.num_classes < 1:
                raise ValueError(f"num_classes must be an int >= 1 for a labelled data set, got {self.num_classes}")
            if n and (int(self.y.min()) < 0 or int(self.y.max()) >= self.num_classes):
                raise ValueError(f"y must lie in [0, num_classes) = [0, {self.num_classes}), got "
                                 f"[{int(self.y.min())}, {int(self.y.max())}]")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names must have num_classes = {self.num_classes} entries, "
                             f"got {len(self.class_names)}")

    def __len__(self) -> int:
        """N."""
        return self.x.shape[0]

    def __getitem__(self, i):
        """(x[i]: [*data_shape], y[i]: int64 scalar, -1 when unlabelled)."""
        y = self.y[i] if self.y is not None else torch.tensor(-1, dtype=torch.int64)
        return self.x[i], y

    @property
    def data_shape(self) -> tuple[int, ...]:
        """The shape of one example, e.g. (1, 8, 8) or (2,)."""
        return tuple(self.x.shape[1:])

    def __repr__(self) -> str:
        """Name, size, example shape and classes (not the tensors)."""
        return (f"ArrayDataset(name={self.name!r}, n={len(self)}, data_shape={self.data_shape}, "
                f"num_classes={self.num_classes})")


def uint8_to_unit_range(images: np.ndarray | torch.Tensor, max_value: float = 255.0) -> torch.Tensor:
    """Integer-valued pixels in [0, max_value] -> float32 in [-1, 1] (v / max_value · 2 − 1), any shape."""
    t = torch.as_tensor(np.asarray(images), dtype=torch.float64)
    return (t * (2.0 / max_value) - 1.0).to(torch.float32)


def hwc_to_nchw(images: torch.Tensor) -> torch.Tensor:
    """[N, H, W, C] -> contiguous [N, C, H, W]."""
    return images.permute(0, 3, 1, 2).contiguous()


def check_positive_int(name: str, value) -> int:
    """value as an int, or a ValueError naming `name` unless it is an integer >= 1 (no silent casts)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)
