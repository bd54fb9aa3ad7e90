import pytest
import torch

import fastdiff.ops as ops

FUSED = ["cpu", "triton", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(params=FUSED)
def backend(request):
    """Every fused backend; a backend this install lacks fails loudly (it must be built), except CUDA without a GPU."""
    name = request.param
    status = ops.available_backends()[name]
    assert status.available, f"backend {name!r} is not available: {status.reason}"
    if name == "triton" and torch.cuda.is_available() is False:
        assert ops.backend.triton_interpret()
    return name
