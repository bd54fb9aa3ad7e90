"""`ImageFolder`: PNG / JPEG files on disk as an in-memory `ArrayDataset`.

Layouts: root/<class>/**/*.png (labelled; class names sorted, label = index in that order) or root/*.png
(unlabelled). Every image is center-cropped to a square and resized (bicubic) to image_size, converted to
RGB (channels=3) or greyscale (channels=1), and scaled from [0, 255] to [-1, 1].
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fastdiff.data.dataset import ArrayDataset, check_positive_int, hwc_to_nchw, uint8_to_unit_range

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_MODES = {1: "L", 3: "RGB"}


def _is_image(path: Path) -> bool:
    """A regular, non-hidden file with a PNG / JPEG extension (case-insensitive)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _class_dirs(root: Path) -> list[Path]:
    """Non-hidden sub-folders of root, sorted by name."""
    return sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def load_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """One file -> uint8 [image_size, image_size, channels]: center crop to the shorter side, bicubic resize.

    Raises ValueError naming the file when PIL cannot decode it.
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im = im.convert(_MODES[channels])
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError... for bad files
        raise ValueError(f"cannot read image file {str(path)!r}: {e}") from e
    w, h = im.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    im = im.crop((left, top, left + side, top + side))
    if side != image_size:
        im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[..., None] if arr.ndim == 2 else arr


def _list_files(root: Path) -> tuple[list[Path], list[int] | None, list[str] | None]:
    """(files, labels or None, class names or None) for either layout; errors name the offending path."""
    classes = _class_dirs(root)
    top_images = sorted(p for p in root.iterdir() if _is_image(p))
    if classes and top_images:
        raise ValueError(f"{str(root)!r} has both images ({top_images[0].name}, ...) and sub-folders "
                         f"({classes[0].name}, ...): use one sub-folder per class or images directly in root")
    if not classes:
        if not top_images:
            raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found in {str(root)!r}")
        return top_images, None, None
    files, labels = [], []
    for label, d in enumerate(classes):
        found = sorted(p for p in d.rglob("*") if _is_image(p))
        if not found:
            raise ValueError(f"class folder {str(d)!r} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        files += found
        labels += [label] * len(found)
    return files, labels, [d.name for d in classes]


class ImageFolder(ArrayDataset):
    """Images under `root` as an ArrayDataset: x float32 [N, channels, image_size, image_size] in [-1, 1].

    Labelled (one sub-folder per class: y int64 [N], class_names = sorted folder names, num_classes) or
    unlabelled (images directly in root: y None). `files` holds the source path of each row, `root` the folder.
    Raises FileNotFoundError for a missing root, ValueError for no images, a mixed layout or an unreadable
    file (naming it), and for image_size < 1 or channels not in (1, 3).
    """

    def __init__(self, root, image_size: int, channels: int = 3) -> None:
        image_size = check_positive_int("image_size", image_size)
        if channels not in _MODES:
            raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels!r}")
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder root {str(root)!r} does not exist or is not a directory")
        files, labels, class_names = _list_files(root)
        pixels = np.stack([load_image(f, image_size, channels) for f in files])    # [N, S, S, C]
        super().__init__(
            x=hwc_to_nchw(uint8_to_unit_range(pixels)),
            y=None if labels is None else torch.tensor(labels, dtype=torch.int64),
            num_classes=None if class_names is None else len(class_names),
            name=root.name or str(root),
            class_names=class_names,
        )
        self.root = root
        self.files = files
