"""Test configuration: Triton runs in its interpreter on CPU tensors when no GPU is present.

TRITON_INTERPRET must be set before anything imports triton, hence at conftest import time.

Every test starts from its own seed (torch, numpy's global generator, `random`): the base seed (tests/_seed.py:
fixed unless FASTDIFF_TEST_SEED says otherwise) plus a hash of the test's id, so its random inputs are the same
whatever ran before it, whichever tests are selected and however the run is ordered: a failure reproduces with
`pytest <its id>`, and a statistical test cannot fail on one run and pass on the next.
"""
import os
import random
import zlib

import numpy as np
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from tests._seed import RUN_SEED  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _test_seed(nodeid: str) -> int:
    return (zlib.crc32(nodeid.encode()) + RUN_SEED) % 2**32


def pytest_report_header(config):
    return f"fastdiff test seed: FASTDIFF_TEST_SEED={RUN_SEED}"


@pytest.fixture(autouse=True)
def _seeded(request):
    seed = _test_seed(request.node.nodeid)
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


@pytest.fixture
def rng(request) -> np.random.Generator:
    """A numpy Generator seeded like the test."""
    return np.random.default_rng(_test_seed(request.node.nodeid))


@pytest.fixture
def one_thread():
    """One intra-op thread: tiny models on a shared 2-core machine run faster without thread contention."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
