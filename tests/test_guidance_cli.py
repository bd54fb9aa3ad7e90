"""Composed guidance from the command line (`fastdiff sample --guidance cfg=… --guidance cg=… --guidance dg=…`)
on tiny trained digits runs, and the guidance repro experiments (`fastdiff repro dg-toy --quick`)."""
import numpy as np
import pytest
import torch

from fastdiff import cli
from fastdiff.data import load_digits
from fastdiff.experiments.guidance import dg_toy, train_discriminator
from fastdiff.app.runs import load_run
from fastdiff.app.runs import load_classifier, load_discriminator
from fastdiff.training import load_run_checkpoint

TINY = ["train.total_steps=4", "train.save_interval=4", "train.warmup_steps=1", "train.batch_size=32"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny classifier-free digits model, noisy classifier and classifier-feature discriminator."""
    root = tmp_path_factory.mktemp("guidance")
    assert cli.main(["train", "--config", "configs/digits_cfg.toml", "--out", str(root / "model"), *TINY]) == 0
    assert cli.main(["train", "--config", "configs/digits_classifier.toml", "--out", str(root / "clf"), *TINY]) == 0
    run, clf = load_run(root / "model"), load_classifier(root / "clf")
    spec = {"kind": "classifier_features", "classifier": load_run_checkpoint(root / "clf")[1]["run_config"],
            "head": {"model_channels": 32, "num_res_blocks": 1}}
    fake = run.sample(64, steps=2, seed=1)
    disc = train_discriminator(root / "disc", load_digits().x[:64], fake, spec, run.diffusion, steps=3,
                               batch_size=32, lr=1e-3, init=lambda d: d.classifier.load_state_dict(clf.state_dict()))
    return root, run, clf, disc


def test_discriminator_round_trips_through_its_checkpoint(runs):
    root, run, clf, disc = runs
    again = load_discriminator(root / "disc")
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 500, 999])
    torch.testing.assert_close(again(x, t), disc(x, t))
    # the frozen classifier came back with the classifier run's (EMA) weights
    torch.testing.assert_close(again.classifier.forward_features(x, t), clf.forward_features(x, t))


def test_cli_composes_all_three_guidance_kinds(runs, tmp_path):
    root, run, clf, disc = runs
    out = tmp_path / "s"
    args = ["sample", "--ckpt", str(root / "model"), "--steps", "5", "--num-samples", "12", "--out", str(out),
            "--guidance", "cfg=2", "--guidance", "cg=1,t=0:500", "--guidance", "dg=1,schedule=increasing",
            "--classifier", str(root / "clf"), "--discriminator", str(root / "disc")]
    assert cli.main(args) == 0
    composed = np.load(out / "samples.npz")
    assert composed["x"].shape == (12, 1, 8, 8) and np.isfinite(composed["x"]).all()
    # The same call through the Python API gives the same samples; guidance changed them.
    labels = torch.arange(12) % 10
    api = run.sample(12, steps=5, labels=labels, guidance=["cfg=2", "cg=1,t=0:500", "dg=1,schedule=increasing"],
                     classifier=clf, discriminator=disc)
    np.testing.assert_allclose(composed["x"], api.numpy(), atol=1e-5)
    assert (api - run.sample(12, steps=5, labels=labels)).abs().max() > 1e-3
    # --unconditional: the null class, steered by the classifier only
    assert cli.main(["sample", "--ckpt", str(root / "model"), "--steps", "3", "--num-samples", "4", "--out",
                     str(tmp_path / "u"), "--unconditional", "--guidance", "cg=2", "--classifier", str(root / "clf")]) == 0


@pytest.mark.parametrize("extra, match", [
    (["--guidance", "cg=1"], "needs --classifier"),
    (["--discriminator", "DIR"], "--discriminator needs --guidance dg"),
    (["--guidance", "cg=-2", "--classifier", "DIR"], "finite number >= 0"),
    (["--guidance", "zz=1"], "kind must be one of"),
])
def test_cli_guidance_errors(runs, tmp_path, capsys, extra, match):
    root = runs[0]
    extra = [str(root / "clf") if a == "DIR" else a for a in extra]
    assert cli.main(["sample", "--ckpt", str(root / "model"), "--steps", "2", "--num-samples", "2", "--out",
                     str(tmp_path), *extra]) == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "samples.npz").exists()


def test_dg_toy_quick_halves_the_distance_to_the_data(tmp_path):
    """`fastdiff repro dg-toy --quick`: the trained discriminator's correction cuts Fréchet distance and MMD to
    the data by >= 50 % in DDPM and DDIM sampling (the issue's bar), the exact density ratio by more."""
    res = dg_toy(tmp_path, quick=True)
    by = {(r["sampler"], r["score"]): r for r in res["rows"]}
    for sampler in ("DDPM-250", "DDIM-50"):
        assert by[sampler, "+ DG (trained MLP)"]["fd_reduction"] >= 0.5
        assert by[sampler, "+ DG (trained MLP)"]["mmd_reduction"] >= 0.5
        assert by[sampler, "+ DG (exact ratio)"]["fd_reduction"] >= 0.9
    assert (tmp_path / "dg_toy.png").read_bytes()[:4] == b"\x89PNG"
    assert "| DDPM-250 | wrong score |" in (tmp_path / "dg_toy.md").read_text()


def test_guidance_digits_quick(tmp_path):
    """`fastdiff repro guidance-digits --quick` end to end (~2 CPU minutes): both kinds of class guidance raise
    the class accuracy of samples over the unguided model; every row is scored and pictured."""
    from fastdiff.experiments.guidance import guidance_digits

    res = guidance_digits(tmp_path, quick=True)
    acc = {(r["method"], r["scale"]): r["accuracy"] for r in res["rows"]}
    assert acc["classifier-free", 3] > acc["classifier-free", 0] + 0.2
    assert acc["classifier", 8] > acc["classifier", 0] + 0.2
    assert abs(acc["classifier", 0] - 0.1) < 0.1      # the unconditional branch: about chance
    assert all(np.isfinite(r["fd"]) for r in res["rows"])
    assert set(res["dg_fd_reduction"]) == {1}
    for png in ("accuracy_vs_scale.png", "samples_classifier-free_3.png", "samples_discriminator_1.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"
