"""Shared fixtures for the training tests: tiny ADM UNets on 8x8 images, a stand-in data set (fastdiff.data's
ArrayDataset interface: `.x` [N, ...], `.y` int64 [N] or None) and single-threaded torch (2-core CI machines)."""
from __future__ import annotations

import pytest
import torch
import trainkit as tiny


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: ~10 ms per tiny-UNet step instead of contention spikes on a shared 2-core box."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def make_unet():
    return tiny.make_unet


@pytest.fixture
def make_diffusion():
    return tiny.make_diffusion


@pytest.fixture
def make_dataset():
    return tiny.make_dataset
