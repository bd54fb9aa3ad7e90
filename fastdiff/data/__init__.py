"""Embedded data sets (no downloads: everything comes from installed packages) and an image-folder loader.

Every loader returns an `ArrayDataset` (in-memory float32 x, images NCHW in [-1, 1]; int64 labels or None):
`load_digits` (scikit-learn's 8×8 digits; fastdiff trains at 8×8 by default), `toy_dataset` (grid25, ring8,
swiss_roll in 2-D), `load_patches` (RGB patches of scikit-learn's sample photographs), `ImageFolder` (PNG/JPEG
files), all reachable by name through `get_dataset`. The 2-D mixtures also come with their exact ε-predictors.
"""
from fastdiff.data.dataset import ArrayDataset
from fastdiff.data.digits import digits_split, load_digits
from fastdiff.data.folder import ImageFolder
from fastdiff.data.patches import load_patches
from fastdiff.data.registry import DATASETS, dataset_options, get_dataset
from fastdiff.data.toy import GaussianMixture, MixtureEpsModel, grid25, ring8, swiss_roll, toy_dataset

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "GaussianMixture",
    "ImageFolder",
    "MixtureEpsModel",
    "dataset_options",
    "digits_split",
    "get_dataset",
    "grid25",
    "load_digits",
    "load_patches",
    "ring8",
    "swiss_roll",
    "toy_dataset",
]
