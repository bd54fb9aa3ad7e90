import pytest

from fastdiff.adapters import diffusers_blocks


@pytest.fixture
def fused_everywhere(monkeypatch):
    """Patched forwards take the fused ops at the tiny sizes of the patch tests (by default CPU tensors with fewer
    than diffusers_blocks.CPU_FUSED_MIN_NUMEL elements run the upstream code)."""
    monkeypatch.setattr(diffusers_blocks, "CPU_FUSED_MIN_NUMEL", 0)
