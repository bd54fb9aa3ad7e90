"""The 25-Gaussian sampler check (`fastdiff repro toy-samplers`) at reduced size."""
import json

import pytest
import torch

from fastdiff import cli
from fastdiff.data import grid25
from fastdiff.experiments.toy_samplers import SAMPLERS, run_demo, sample_with
from fastdiff.metrics import mode_stats


def _seed():
    return int(torch.randint(0, 2**31, (1,)).item())


def test_run_demo_ddim50_writes_png_and_json(tmp_path, capsys):
    seed = _seed()
    report = run_demo(str(tmp_path), n=500, seed=seed, sampler_names=("ddim-50",), disable_progress=True)
    png = (tmp_path / "toy_samples.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    data = json.loads((tmp_path / "toy_metrics.json").read_text())
    assert data == json.loads(json.dumps(report))
    r = data["results"]["ddim-50"]
    assert r["steps"] == 50 and r["n_samples"] == 500
    assert r["modes_covered"] == 25 and r["high_quality_share"] >= 0.95, (seed, r)
    assert data["results"]["data"]["modes_covered"] == 25
    out = capsys.readouterr().out
    assert "DDIM-50" in out and "data (reference)" in out and "25/25" in out


@pytest.mark.slow
def test_ddpm_1000_covers_all_modes():
    seed = _seed()
    m = grid25()
    x = sample_with(SAMPLERS["ddpm-1000"], m, 200, seed, disable_progress=True)
    s = mode_stats(x, m, min_share=0.0)
    assert x.shape == (200, 2) and x.dtype == torch.float32
    assert s.modes_covered == 25 and s.high_quality_share >= 0.95, (seed, s)


def test_sampling_is_seeded():
    seed = _seed()
    m = grid25()
    a = sample_with(SAMPLERS["ddim-10"], m, 64, seed, disable_progress=True)
    b = sample_with(SAMPLERS["ddim-10"], m, 64, seed, disable_progress=True)
    threads = torch.get_num_threads()
    c = sample_with(SAMPLERS["ddim-10"], m, 64, seed + 1, disable_progress=True, num_threads=1)
    assert torch.get_num_threads() == threads  # restored
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_run_demo_rejects_unknown_sampler(tmp_path):
    with pytest.raises(ValueError, match="ddim-50"):
        run_demo(str(tmp_path), n=10, sampler_names=("euler-3",))


def test_cli_repro_help(capsys):
    assert cli.main(["repro", "--help"]) == 0
    out = capsys.readouterr().out
    for name in ("toy-samplers", "digits-samplers", "hybrid-vs-simple", "--quick"):
        assert name in out


def test_cli_requires_a_command(capsys):
    assert cli.main([]) == 2


def test_cli_repro_toy_samplers_runs(tmp_path, capsys):
    rc = cli.main(["repro", "toy-samplers", "--quick", "--out", str(tmp_path / "o"), "--seed", str(_seed())])
    assert rc == 0
    assert (tmp_path / "o" / "toy_samples.png").exists() and (tmp_path / "o" / "toy_metrics.json").exists()
    out = capsys.readouterr().out
    assert "DDIM-10" in out and "DDPM-1000" in out
