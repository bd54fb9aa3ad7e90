"""MLP SIDDM / DDGAN nets' `in_scale` (fastdiff.models.siddm): default 1 leaves them unchanged; in_scale = s is the
same net on data · s (generator output divided by s); bad values are named."""
from __future__ import annotations

import pytest
import torch

from fastdiff.models.siddm import MLPDDGANDiscriminator, MLPGenerator, MLPSIDDMDiscriminator


def _twins(cls, s, **kw):
    torch.manual_seed(0)
    a = cls(2, width=16, depth=1, **kw)
    torch.manual_seed(0)
    b = cls(2, width=16, depth=1, in_scale=s, **kw)
    return a.eval(), b.eval()


def test_in_scale_is_the_net_on_scaled_data():
    s = 7.5
    x, x2, t = torch.randn(5, 2), torch.randn(5, 2), torch.tensor([0, 1, 2, 3, 0])
    z = torch.randn(5, 3)
    g1, gs = _twins(MLPGenerator, s, nz=3)
    assert g1.in_scale == 1.0
    torch.testing.assert_close(gs(x, t, z), g1(x * s, t, z) / s)
    d1, ds = _twins(MLPSIDDMDiscriminator, s)
    for a, b in zip(ds(x, t), d1(x * s, t)):
        torch.testing.assert_close(a, b)
    j1, js = _twins(MLPDDGANDiscriminator, s)
    torch.testing.assert_close(js(x, t, x2), j1(x * s, t, x2 * s))


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), True])
def test_bad_in_scale_is_named(bad):
    with pytest.raises(ValueError, match="in_scale"):
        MLPSIDDMDiscriminator(2, width=8, depth=1, in_scale=bad)
