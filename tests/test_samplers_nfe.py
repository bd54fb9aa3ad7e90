"""`fastdiff repro samplers-nfe`: every sampler of the fused step on the demo's digits model at a given number of
model evaluations — the pipeline at toy size (5 training steps, 20 samples)."""
import json

import numpy as np

from fastdiff.experiments.samplers_nfe import QUICK_NFES, SAMPLERS, TWO_EVALS, samplers_nfe, steps_for_nfe


def test_samplers_nfe_every_sampler_counts_its_evaluations(tmp_path):
    res = samplers_nfe(tmp_path, quick=True, num_samples=20,
                       overrides=["train.total_steps=5", "train.save_interval=5", "train.warmup_steps=1"])
    rows = {(r["sampler"], r["target_nfe"]): r for r in res["rows"]}
    assert set(rows) == {(s, n) for s in SAMPLERS for n in QUICK_NFES}
    for (sampler, nfe), r in rows.items():
        # one model call per evaluation (no classifier-free guidance here): Heun-type samplers 2S − 1, others S
        expected = 2 * steps_for_nfe(sampler, nfe) - 1 if sampler in TWO_EVALS else nfe
        assert r["nfe"] == expected <= nfe, (sampler, nfe, r["nfe"])
        assert np.isfinite(r["fd"]), (sampler, nfe)
    assert (tmp_path / "samplers_nfe.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "samples_dpmpp_2m_nfe10.png").read_bytes()[:4] == b"\x89PNG"
    table = (tmp_path / "samplers_nfe.md").read_text()
    assert all(f"| {s} |" in table for s in SAMPLERS)
    assert json.loads((tmp_path / "samplers_nfe.json").read_text())["rows"] == res["rows"]
