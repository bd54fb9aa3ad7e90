"""Run configs, the `fastdiff` CLI (train → sample → eval from the checkpoint), chunked sampling and the demo."""
import json

import numpy as np
import pytest
import torch

from fastdiff import cli
from fastdiff.app import config as C
from fastdiff.data import grid25
from fastdiff.experiments.digits_samplers import run_demo
from fastdiff.app.runs import gather_chunks, load_run, make_trainer
from fastdiff.samplers import SamplerOptions, generate, sampling_timesteps

TINY_MLP = ["train.total_steps=30", "train.batch_size=64", "train.save_interval=15", "train.log_interval=10",
            "data.n=512", "model.width=32", "model.depth=1"]


def test_every_shipped_config_loads_and_builds():
    for name in C.config_names():
        cfg = C.load_config(name)
        assert C.train_config(cfg).total_steps > 0
        if cfg.data.name != "patches":  # patches: ~20 s of JPEG decoding; its loader is tested in tests/data
            ds = C.build_dataset(cfg)
            model = C.build_model(cfg, ds)
            assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("override,match", [
    (["train.bogus=1"], r"\[train\]: unknown key\(s\) \['bogus'\]"),
    (["model.colour=1"], r"\[model\]: unknown key\(s\) \['colour'\]"),
    (["extra.x=1"], "unknown top-level key"),
    (["model.kind='transformer'"], "kind must be one of"),
    (["diffusion.p_uncond=0.2", "model.class_cond=false"], "needs \\[model\\] class_cond"),
    (["train.total_steps=-3"], "total_steps"),
    (["train.amp='fp8'"], "amp"),
    (["nokey"], "section.key=value"),
])
def test_bad_configs_name_the_key(override, match):
    with pytest.raises(ValueError, match=match):
        C.load_config("digits_cfg", override)


def test_missing_config_and_unlabelled_class_cond(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        C.load_config(tmp_path / "nope.toml")
    cfg = C.load_config("swiss_roll", ["model.class_cond=true"])
    with pytest.raises(ValueError, match="has no labels"):
        C.build_model(cfg, C.build_dataset(cfg))
    cfg = C.load_config("digits_cfg", ["data.image_size=12"])
    with pytest.raises(ValueError, match="image_size"):
        C.build_dataset(cfg)


def test_batch_larger_than_data_is_refused(tmp_path):
    cfg = C.load_config("grid25", ["data.n=100", "train.batch_size=128"])
    with pytest.raises(ValueError, match="batch"):
        make_trainer(cfg, tmp_path)


def test_cli_train_sample_eval(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert cli.main(["train", "--config", "grid25", "--out", str(run_dir), *TINY_MLP]) == 0
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 30 and np.isfinite(log[-1]["loss"])
    assert cli.main(["sample", "--ckpt", str(run_dir), "--sampler", "ddim", "--steps", "10", "--num-samples", "300",
                     "--batch-size", "128", "--out", str(tmp_path / "s")]) == 0
    data = np.load(tmp_path / "s" / "samples.npz", allow_pickle=True)
    assert data["x"].shape == (300, 2) and np.isfinite(data["x"]).all()
    assert (tmp_path / "s" / "samples.png").read_bytes()[:4] == b"\x89PNG"
    for sampler, schedule in (("dpmpp_2m", "karras"), ("unipc", "exponential"), ("euler_ancestral", "uniform"),
                              ("lcm", "karras")):
        out = tmp_path / f"s_{sampler}"
        assert cli.main(["sample", "--ckpt", str(run_dir), "--sampler", sampler, "--schedule", schedule, "--steps",
                         "6", "--num-samples", "40", "--out", str(out)]) == 0
        x = np.load(out / "samples.npz", allow_pickle=True)["x"]
        assert x.shape == (40, 2) and np.isfinite(x).all() and x.std() > 0.1, sampler
    capsys.readouterr()
    assert cli.main(["eval", "--ckpt", str(run_dir), "--num-samples", "200", "--steps", "10"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["step"] == 30 and scores["n_modes"] == 25 and np.isfinite(scores["mmd2"])


def test_resume_continues_the_run(tmp_path):
    run_dir = tmp_path / "run"
    cli.main(["train", "--config", "grid25", "--out", str(run_dir), *TINY_MLP])
    assert cli.main(["train", "--config", "grid25", "--out", str(run_dir), "--resume", *TINY_MLP[1:],
                     "train.total_steps=40"]) == 0
    assert load_run(run_dir).step == 40


def test_chunks_do_not_depend_on_world_size():
    """Sample k is the same whether one process draws all chunks or three ranks split them."""
    m = grid25()
    ac = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    eps = m.eps_model(ac)
    options = SamplerOptions(sampler="ddpm", steps=20, seed=3, batch_size=16)
    whole = generate(eps, ac, 50, (2,), options)
    parts = [generate(eps, ac, 50, (2,), options, rank=r, world_size=3)
             for r in range(3)]
    chunks = {r + 3 * j: c for r, p in enumerate(parts) for j, c in enumerate(p.split(16))}
    assert torch.equal(torch.cat([chunks[b] for b in sorted(chunks)]), whole)
    assert gather_chunks(whole, 50, 16) is whole  # single process: nothing to gather
    assert sampling_timesteps(1000, 10) == list(range(0, 1000, 100)) and len(sampling_timesteps(1000, 30)) == 30


def test_guidance_needs_labels_and_null_class():
    ac = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    with pytest.raises(ValueError, match="null_label"):
        generate(lambda x, t, y=None: x, ac, 4, (2,), SamplerOptions(guidance=1.0), labels=torch.zeros(4, dtype=torch.long))


def test_demo_writes_pictures_and_table(tmp_path):
    """The demo end to end at toy size (5 training steps, 20 samples): grids, the FD-vs-steps plot, the table."""
    res = run_demo(tmp_path, num_samples=20, progress=False,
                   overrides=["train.total_steps=5", "train.save_interval=5", "train.warmup_steps=1"])
    assert res["train"]["steps"] == 5
    names = [r["name"] for r in res["rows"]]
    assert {"DDPM-1000", "DDIM-50", "DDIM-10", "DDPM-10", "DDIM-50, w=1", "DDIM-50, w=3",
            "DPM-Solver++ 2M (Karras σ)-10"} <= set(names)
    for r in res["rows"]:
        assert np.isfinite(r["fd"]) and 0 <= r["accuracy"] <= 1 and r["seconds"] > 0
    assert res["reference"]["fd"] < min(r["fd"] for r in res["rows"])  # 5 steps of training: far from real digits
    for png in ["fd_vs_steps.png", "samples_ddpm1000_w0.png", "samples_ddim50_w3.png"]:
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG", png
    table = (tmp_path / "demo_results.md").read_text()
    assert "| DDPM-1000 | 0 |" in table and "real digits" in table
