"""Kernel launches per model evaluation, counted with torch.profiler: a sampler's loop on the fused step is one
`fastdiff::sampler_step` per row of its table and nothing else (no eager conversion, combine, history shuffling
or noise ops), whatever the sampler. The loop is run at R and 2R steps; the difference is what the extra steps
cost, so set-up work (building the table, allocating history) does not count."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from fastdiff.samplers import solvers

# View and metadata ops launch no kernel; so does .to() to a tensor's own device and dtype (it returns the tensor:
# every tensor here is float32 on the CPU).
VIEWS = {"aten::select", "aten::as_strided", "aten::expand", "aten::view", "aten::slice", "aten::alias",
         "aten::unsqueeze", "aten::reshape", "aten::lift_fresh", "aten::detach", "detach", "aten::empty", "aten::to"}


def _top_level_ops(fn) -> Counter:
    """Counter of the op names fn dispatches at the top level (ops called inside another op are its own work)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.name.startswith(("aten::", "fastdiff::"))),
                    key=lambda e: e.time_range.start)
    top, end = Counter(), -1.0
    for e in events:
        if e.time_range.start >= end:  # not nested in the previous top-level op
            top[e.name] += 1
            end = e.time_range.end
    return Counter({k: v for k, v in top.items() if k not in VIEWS})


def _loop_ops(name: str, steps: int, cfg: bool) -> Counter:
    builder = solvers.BUILDERS[name]
    sigmas = np.append(np.geomspace(14.6, 0.03, steps), 0.0)
    table = builder(sigmas, prediction="epsilon", cfg_scale=3.0 if cfg else 1.0)
    x = torch.randn(2, 4, 8, 8)
    out = torch.randn(4 if cfg else 2, 4, 8, 8)
    model = solvers._Plain(lambda x_in, t, **kw: out, "epsilon", "ve")  # a model that costs nothing
    extra, uncond = ({"y": torch.zeros(2)}, {"y": torch.ones(2)}) if cfg else (None, None)
    return _top_level_ops(lambda: solvers.run_table(model, x, table, extra, disable=True, uncond_args=uncond,
                                                    seed=3, backend="cpu"))


@pytest.mark.parametrize("name", sorted(solvers.BUILDERS))
def test_one_launch_per_model_evaluation(name):
    """Extra rows cost exactly one sampler_step launch each (plus, under classifier-free guidance, the doubled
    batch's concatenations [x; x], [t; t] and [y_c; y_u], which are the model's input, not the step)."""
    for cfg in (False, True):
        short, long = _loop_ops(name, 4, cfg), _loop_ops(name, 8, cfg)
        rows_short = len(solvers.BUILDERS[name](np.append(np.geomspace(14.6, 0.03, 4), 0.0)))
        rows_long = len(solvers.BUILDERS[name](np.append(np.geomspace(14.6, 0.03, 8), 0.0)))
        extra = Counter({k: long[k] - short[k] for k in long | short if long[k] != short[k]})
        per_row = {"fastdiff::sampler_step": rows_long - rows_short}
        if cfg:
            per_row["aten::cat"] = 3 * (rows_long - rows_short)
        assert dict(extra) == per_row, (name, cfg, dict(extra))
