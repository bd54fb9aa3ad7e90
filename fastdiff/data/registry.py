"""`get_dataset(name, **options)`: one registry over every embedded data set and the image-folder loader."""
from __future__ import annotations

import inspect
from collections.abc import Callable

from fastdiff.data.dataset import ArrayDataset
from fastdiff.data.digits import load_digits
from fastdiff.data.folder import ImageFolder
from fastdiff.data.patches import load_patches
from fastdiff.data.toy import toy_dataset


def _toy(name: str) -> Callable[..., ArrayDataset]:
    """toy_dataset with the name bound (options: n, seed)."""
    def load(n: int = 10000, seed: int = 0) -> ArrayDataset:
        return toy_dataset(name, n=n, seed=seed)
    load.__doc__ = toy_dataset.__doc__  # not functools.wraps: its __wrapped__ would expose toy_dataset's `name`
    return load


DATASETS: dict[str, Callable[..., ArrayDataset]] = {
    "digits": load_digits,
    "grid25": _toy("grid25"),
    "ring8": _toy("ring8"),
    "swiss_roll": _toy("swiss_roll"),
    "patches": load_patches,
    "folder": ImageFolder,
}


def dataset_options(name: str) -> dict[str, object]:
    """The options `name` accepts and their defaults (inspect.Parameter.empty where required)."""
    _check_name(name)
    params = inspect.signature(DATASETS[name]).parameters
    return {k: p.default for k, p in params.items() if k != "self"}


def _check_name(name: str) -> None:
    """ValueError listing the registered names unless `name` is one."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")


def get_dataset(name: str, **options) -> ArrayDataset:
    """The data set `name` built with `options` (e.g. get_dataset("digits", image_size=16),
    get_dataset("folder", root="imgs", image_size=32)).

    Names: digits, grid25, ring8, swiss_roll, patches, folder. An unknown name, an unknown option or a missing
    required option raises ValueError listing the valid ones.
    """
    accepted = dataset_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for dataset {name!r}; valid options: "
                         f"{', '.join(accepted) or 'none'}")
    missing = [k for k, d in accepted.items() if d is inspect.Parameter.empty and k not in options]
    if missing:
        raise ValueError(f"dataset {name!r} needs option(s) {missing}; valid options: {', '.join(accepted)}")
    return DATASETS[name](**options)
