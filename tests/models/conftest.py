"""Helpers for the model tests: random (non-zero) weights, since ADM zero-initialises its output layers."""
import math

import pytest
import torch


def randomize_(model: torch.nn.Module) -> torch.nn.Module:
    """Fill every parameter with U(-1, 1) / sqrt(fan_in) (fresh values each run), in place."""
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            p.uniform_(-1.0, 1.0).mul_(1.0 / math.sqrt(fan_in))
    return model


@pytest.fixture
def randomize():
    return randomize_
