"""No silent failures: each class of bad input gets its exception type and a message naming the argument, before
any work starts; the CLI shows one line and exits 2. (Op-level checks: tests/ops/test_errors.py; checkpoints and
resume: tests/training.)"""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastdiff import errors, samplers
from fastdiff import cli
from fastdiff.app import config as C
from fastdiff.adapters import openai
from fastdiff.adapters.diffusers import FastDDIMScheduler, FastDDPMScheduler
from fastdiff.diffusion import create_gaussian_diffusion, get_named_beta_schedule, space_timesteps
from fastdiff.models import MLPDenoiser, UNetModel
from fastdiff.app.runs import make_trainer

AC = np.cumprod(1 - get_named_beta_schedule("linear", 100))


def zero_model(x, t, **kwargs):
    return torch.zeros_like(x)


# ---------------------------------------------------------------------------------------------- shared checks


def test_checks_name_the_argument_and_never_truncate():
    assert errors.check_whole_numbers("ts", torch.tensor([3, 7])) == [3, 7]
    assert errors.check_whole_numbers("ts", np.array([3.0, 7.0])) == [3, 7]  # whole floats are exact
    for bad, shown in (([10.7, 50.9], "10.7"), ([True, 4], "True"), (torch.tensor([1.5]), "1.5")):
        with pytest.raises(TypeError, match=f"ts must hold whole numbers, got {shown}"):
            errors.check_whole_numbers("ts", bad)
    with pytest.raises(TypeError, match="n must be an int, got 2.5"):
        errors.check_int("n", 2.5, 1)
    with pytest.raises(ValueError, match=r"n must lie in \[1, inf\], got 0"):
        errors.check_int("n", 0, 1)
    with pytest.raises(ValueError, match="device='cuda:99'"):
        errors.check_device("device", "cuda:99")
    with pytest.raises(ValueError, match="device must be a device such as"):
        errors.check_device("device", "gpu0")


# ------------------------------------------------------------------------------------ fractional timesteps


@pytest.mark.parametrize("call", [
    lambda: samplers.sample_ddim(zero_model, torch.randn(2, 3, 4, 4), [10.7, 50.9], alphas_cumprod=AC),
    lambda: samplers.sample_ddpm(zero_model, torch.randn(2, 3, 4, 4), torch.tensor([10.7, 50.9]), alphas_cumprod=AC),
    lambda: space_timesteps(100, [10.5]),
    lambda: FastDDPMScheduler(num_train_timesteps=100).set_timesteps(timesteps=[50.5, 10]),
], ids=["sample_ddim", "sample_ddpm-tensor", "space_timesteps", "diffusers-custom-timesteps"])
def test_fractional_timesteps_are_refused_not_truncated(call):
    with pytest.raises(TypeError, match="must hold whole numbers"):
        call()


def test_generate_counts_are_ints():
    with pytest.raises(TypeError, match="num_samples must be an int, got 2.5"):
        samplers.generate(zero_model, AC, 2.5, (3, 4, 4), samplers.SamplerOptions(steps=2))
    with pytest.raises(ValueError, match="batch_size must lie in"):
        samplers.SamplerOptions(steps=2, batch_size=0)
    with pytest.raises(TypeError, match="steps must be an int, got 2.5"):
        samplers.SamplerOptions(steps=2.5)


def test_generate_keyword_options_still_work_with_a_warning():
    """0.1's keyword sampler options (with 0.1's defaults) give the same samples as the equivalent options."""
    model = lambda x, t: 0.1 * x  # noqa: E731
    with pytest.warns(DeprecationWarning, match="pass options=SamplerOptions"):
        old = samplers.generate(model, AC, 3, (2,), sampler="ddpm", steps=5, seed=1)
    new = samplers.generate(model, AC, 3, (2,), samplers.SamplerOptions(
        sampler="ddpm", steps=5, seed=1, var_type="fixed_large", clip_denoised=True))
    assert torch.equal(old, new)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['stepz'\]"):
        samplers.generate(model, AC, 3, (2,), stepz=5)


# ------------------------------------------------------------------------------------- diffusers schedulers


@pytest.mark.parametrize("cls", [FastDDIMScheduler, FastDDPMScheduler])
@pytest.mark.parametrize("timestep", [-1, 5000], ids=["negative", "past-T"])
def test_scheduler_tensor_timestep_out_of_range_names_the_users_value(cls, timestep):
    """DDIM's table is shifted by one row internally: the message must show the value passed (not 5001), and −1
    must not read the unused row."""
    s = cls()
    s.set_timesteps(10)
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match=rf"timestep must lie in \[0, num_train_timesteps = 1000\), got min "
                                         rf"{timestep} max {timestep}$"):
        s.step(torch.randn_like(x), torch.tensor(timestep), x)


def test_ddim_unused_row_is_nan():
    """On a GPU the range is not read on the host; timestep −1 then lands on row 0, which must poison (NaN), not
    hold a plausible step."""
    s = FastDDIMScheduler()
    s.set_timesteps(10)
    for table in s._build(0.0, False) + s._build(1.0, True):
        assert np.isnan(table[0]).all() and np.isfinite(table[1:, :9]).all()


# ---------------------------------------------------------------------------------------------- models


def _unet(num_classes=10):
    return UNetModel(image_size=8, in_channels=1, model_channels=32, out_channels=1, num_res_blocks=1,
                     attention_resolutions=(), channel_mult=(1, 2), num_classes=num_classes)


@pytest.mark.parametrize("inputs,exc,match", [
    (dict(y=torch.tensor([1, 10])), ValueError, r"UNetModel: y must lie in \[0, num_classes=10\), got values in "
                                                r"\[1, 10\] \(a classifier-free null label"),
    (dict(y=torch.tensor([1.0, 2.0])), TypeError, "y must be an int64 tensor"),
    (dict(x=torch.randn(2, 1, 7, 7)), ValueError, r"spatial size \(7, 7\) must be divisible by 2\^\(levels - 1\)"),
    (dict(x=torch.randn(2, 1, 8, 8, dtype=torch.float64)), TypeError, "x has dtype torch.float64 but the model's"),
    (dict(x=torch.randn(2, 3, 8, 8)), ValueError, r"x must be \[N, in_channels=1"),
    (dict(t=5), TypeError, "timesteps must be a tensor"),
], ids=["label-out-of-range", "float-labels", "size", "dtype", "channels", "int-timesteps"])
def test_unet_refuses_inputs_before_any_work(inputs, exc, match):
    args = dict(x=torch.randn(2, 1, 8, 8), t=torch.tensor([1, 2]), y=torch.tensor([1, 2]))
    args.update(inputs)
    with pytest.raises(exc, match=match):
        _unet()(args["x"], args["t"], args["y"])


def test_mlp_label_out_of_range():
    with pytest.raises(ValueError, match=r"MLPDenoiser: y must lie in \[0, num_classes=3\)"):
        MLPDenoiser(2, num_classes=3)(torch.randn(2, 2), torch.tensor([1, 2]), torch.tensor([0, 3]))


# ------------------------------------------------------------------------------------------ adapters


def test_openai_load_names_a_file_that_is_not_a_state_dict(tmp_path):
    junk = tmp_path / "model.pt"
    junk.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(errors.CorruptCheckpointError, match=r"model\.pt' is not a torch\.save'd state dict"):
        openai.load(junk, "--image_size 64")


# --------------------------------------------------------------------------------------- training seed


def test_train_seed_fixes_the_initial_weights(tmp_path):
    cfg = C.load_config("grid25", ["data.n=64", "train.batch_size=16", "model.width=16", "model.depth=1"])
    torch.manual_seed(123)
    a = make_trainer(cfg, tmp_path / "a")[0].model.state_dict()
    torch.manual_seed(456)  # whatever ran before must not matter
    b = make_trainer(cfg, tmp_path / "b")[0].model.state_dict()
    c = make_trainer(C.load_config("grid25", ["data.n=64", "train.batch_size=16", "model.width=16",
                                              "model.depth=1", "train.seed=1"]), tmp_path / "c")[0].model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_short_linear_schedule_names_steps():
    with pytest.raises(ValueError, match="steps"):
        create_gaussian_diffusion(steps=10)


# ----------------------------------------------------------------------------------------------- CLI


@pytest.mark.parametrize("argv,match", [
    (["demo", "--num-samples", "0"], "argument --num-samples: must be >= 2, got 0"),
    (["demo", "--num-samples", "-5"], "argument --num-samples: must be >= 2, got -5"),
    (["eval", "--ckpt", "x", "--num-samples", "1"], "argument --num-samples: must be >= 2, got 1"),
    (["sample", "--ckpt", "x", "--steps", "2.5"], "argument --steps: must be an int, got '2.5'"),
    (["sample", "--ckpt", "x", "--eta", "-1"], "argument --eta: must be a finite number >= 0"),
    (["sample", "--ckpt", "NOFILE"], "checkpoint 'NOFILE' does not exist"),
    (["sample", "--ckpt", "JUNK"], "has no integrity footer"),
    (["sample", "--openai-ckpt", "JUNK", "--flags", "--image_size 64"], "is not a torch.save'd state dict"),
    (["train", "--config", "grid25", "train.lr='fast'"], "TrainConfig.lr must be a finite number, got 'fast'"),
    (["train", "--config", "nope"], "config file 'nope' does not exist"),
], ids=["demo-zero", "demo-negative", "eval-one", "steps-fraction", "eta-negative", "missing-ckpt", "not-a-ckpt",
        "not-an-openai-ckpt", "type-error", "missing-config"])
def test_cli_user_errors_are_one_line_with_exit_2(argv, match, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint" * 50)
    argv = [str(junk) if a == "JUNK" else str(tmp_path / "missing.pt") if a == "NOFILE" else a for a in argv]
    match = match.replace("NOFILE", str(tmp_path / "missing.pt"))
    assert cli.main(argv + (["--out", str(tmp_path / "out")] if argv[0] == "train" else [])) == 2
    err = capsys.readouterr().err
    assert match in err and err.count("\n") == 1 and "Traceback" not in err, err
    assert not (tmp_path / "out").exists()


def test_cli_without_cuda_names_the_device(capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert cli.main(["train", "--config", "grid25", "--device", "cuda"]) == 2
    assert "argument --device: 'cuda', but CUDA is not available" in capsys.readouterr().err


def test_cli_bug_keeps_its_traceback(tmp_path):
    """Only user errors are shortened: a bug (here an AttributeError) still shows where it happened."""
    code = ("import sys; from fastdiff import cli; import fastdiff.app.runs as r\n"
            "def boom(*a, **k): raise AttributeError('a bug')\n"
            "r.make_trainer = boom\n"
            "sys.exit(cli.main(['train', '--config', 'grid25', '--out', sys.argv[1]]))")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], capture_output=True, text=True,
                          env={**os.environ, "TRITON_INTERPRET": "1"}, timeout=120, check=False)
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "AttributeError: a bug" in proc.stderr
