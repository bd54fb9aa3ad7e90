"""Shared fixtures for the training tests: tiny ADM UNets on 8x8 images, a stand-in data set (fastdiff.data's
ArrayDataset interface: `.x` [N, ...], `.y` int64 [N] or None) and single-threaded torch (2-core CI machines)."""
from __future__ import annotations

import pytest
import trainkit as tiny


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Every training test on one intra-op thread (tests/conftest.py)."""


@pytest.fixture
def make_unet():
    return tiny.make_unet


@pytest.fixture
def make_diffusion():
    return tiny.make_diffusion


@pytest.fixture
def make_dataset():
    return tiny.make_dataset
