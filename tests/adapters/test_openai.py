"""fastdiff.adapters.openai: guided-diffusion / improved-diffusion flags, checkpoints, classifiers and the CLI.

Tiny checkpoints are written with torch.save in tmp_path; their keys come from the independent layouts in
tests/models/_spec.py and, where the `guided_diffusion` package (dev extra) is installed, from its own models.
"""
import warnings

import numpy as np
import pytest
import torch

from fastdiff import cli
from fastdiff.adapters import openai as oa
from fastdiff.app.runs import load_openai_run
from fastdiff.diffusion import ModelVarType
from fastdiff.samplers.guidance import ClassifierGuidance
from tests.models import _spec
from tests.models.conftest import randomize_

pytestmark = pytest.mark.usefixtures("one_thread")

# A 16x16 guided-diffusion UNet: 2 levels, attention at 8x8, BigGAN up/down, class-conditional, learned Σ.
GUIDED = {"image_size": 16, "num_channels": 32, "num_res_blocks": 1, "channel_mult": "1,2", "attention_resolutions": "8",
              "num_heads": 2, "class_cond": True, "learn_sigma": True, "resblock_updown": True}
GUIDED_STR = ("--image_size 16 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 8 "
              "--num_heads 2 --class_cond True --learn_sigma True --resblock_updown True")
# improved-diffusion at its smallest size (channel_mult (1, 2, 2, 2) is fixed for 32x32).
IMPROVED = {"image_size": 32, "num_channels": 32, "num_res_blocks": 1, "attention_resolutions": "16", "num_heads": 2}


def _shapes(model):
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _save(tmp_path, model, name="model.pt"):
    path = tmp_path / name
    torch.save(randomize_(model).state_dict(), path)
    return path


# ----------------------------------------------------------------------------------------------- flags


def test_flag_defaults_follow_each_repository():
    g = oa.parse_flags()
    assert g["attention_resolutions"] == "16,8" and g["num_heads"] == 4 and g["channel_mult"] == ""
    assert g["rescale_timesteps"] is False and g["rescale_learned_sigmas"] is False and g["resblock_updown"] is False
    i = oa.parse_flags(variant="improved")
    assert i["rescale_timesteps"] is True and i["rescale_learned_sigmas"] is True and i["sigma_small"] is False
    assert "resblock_updown" not in i and "channel_mult" not in i and "num_head_channels" not in i
    c = oa.parse_flags(kind="classifier")
    assert c["classifier_attention_resolutions"] == "32,16,8" and c["classifier_pool"] == "attention"
    assert c["classifier_resblock_updown"] is True and c["learn_sigma"] is False


def test_flags_from_string_and_kwargs_agree():
    from_str = oa.parse_flags(GUIDED_STR)
    from_kw = oa.parse_flags(**GUIDED)
    assert from_str == from_kw
    assert from_str["class_cond"] is True and from_str["num_channels"] == 32 and from_str["image_size"] == 16
    mixed = oa.parse_flags("--image_size=16 --class_cond yes", num_channels="64", dropout=0.1)
    assert (mixed["image_size"], mixed["class_cond"], mixed["num_channels"], mixed["dropout"]) == (16, True, 64, 0.1)
    assert oa.parse_flags({"use_fp16": "0"})["use_fp16"] is False


@pytest.mark.parametrize("flags, match", [
    ("--num_chanels 32", r"unknown guided-diffusion model flag --num_chanels.*did you mean --num_channels"),
    ("--batch_size 4", r"--batch_size.*sampling/training script.*--batch-size"),
    ("--classifier_width 64", r"--classifier_width.*kind='classifier'"),
    ("--sigma_small True", r"--sigma_small.*variant='improved'"),
    ("--class_cond maybe", r"--class_cond expects a boolean.*'maybe'"),
    ("--num_channels 3.5", r"--num_channels expects an integer.*'3.5'"),
    ("--dropout high", r"--dropout expects a number"),
    ("--image_size", r"--image_size has no value"),
    ("image_size 64", r"expected --name VALUE"),
    ("--image_size 64 --image_size 32", r"--image_size is given twice"),
])
def test_bad_flags_name_the_flag(flags, match):
    with pytest.raises(ValueError, match=match):
        oa.parse_flags(flags)


def test_bad_kwargs_and_variants():
    with pytest.raises(ValueError, match="--image_size is given twice"):
        oa.parse_flags("--image_size 64", image_size=32)
    with pytest.raises(ValueError, match="--class_cond expects a boolean"):
        oa.parse_flags(class_cond=3)
    with pytest.raises(ValueError, match="variant must be one of"):
        oa.parse_flags(variant="glide")
    with pytest.raises(ValueError, match="no classifier checkpoints"):
        oa.parse_flags(variant="improved", kind="classifier")
    with pytest.raises(ValueError, match="resblock_updown"):
        oa.parse_flags(variant="improved", resblock_updown=True)


# ----------------------------------------------------------------------------------------------- models


def test_guided_layout_and_round_trip(tmp_path):
    model, diffusion = oa.build(oa.parse_flags(**GUIDED))
    expected = _spec.unet(3, 32, 6, 1, (2,), (1, 2), ss=True, updown=True, num_classes=1000)
    assert _shapes(model) == expected
    path = _save(tmp_path, model)
    loaded, diffusion = oa.load(path, GUIDED_STR)
    assert diffusion.model_var_type == ModelVarType.LEARNED_RANGE and diffusion.num_timesteps == 1000
    assert not loaded.training and loaded.openai_flags["class_cond"] is True
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([0, 999]), torch.tensor([3, 999])
    with torch.no_grad():
        out = loaded(x, t, y)
        torch.testing.assert_close(out, model(x, t, y))
    assert out.shape == (2, 6, 16, 16) and out.abs().max() > 0


def test_guided_checkpoint_from_guided_diffusion_itself(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        su = pytest.importorskip("guided_diffusion.script_util")
    args = su.model_and_diffusion_defaults()
    args.update(GUIDED, timestep_respacing="ddim10", num_head_channels=16)
    theirs, their_diffusion = su.create_model_and_diffusion(**args)
    path = _save(tmp_path, theirs)
    ours, diffusion = oa.load(str(path), **GUIDED, timestep_respacing="ddim10", num_head_channels=16)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert diffusion.timestep_map == list(their_diffusion.timestep_map) == list(range(0, 1000, 100))
    np.testing.assert_allclose(diffusion.alphas_cumprod, their_diffusion.alphas_cumprod, rtol=1e-12)
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([5, 900]), torch.tensor([0, 42])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t, y), theirs(x, t, y), atol=1e-5, rtol=1e-4)


def test_improved_diffusion_layout_round_trip_and_rescaled_timesteps(tmp_path):
    flags = dict(IMPROVED, diffusion_steps=4000, timestep_respacing="100", sigma_small=True)
    model, diffusion = oa.build(oa.parse_flags(**flags, variant="improved"), variant="improved")
    # improved-diffusion's UNet: legacy attention order, conv resampling, scale-shift norm, channel_mult fixed.
    assert _shapes(model) == _spec.unet(3, 32, 3, 1, (2,), (1, 2, 2, 2), ss=True)
    assert model.channel_mult == (1, 2, 2, 2) and type(model.input_blocks[3][1].attention).__name__ == \
        "QKVAttentionLegacy"
    path = _save(tmp_path, model)
    loaded, diffusion = oa.load(path, variant="improved", **flags)
    assert diffusion.model_var_type == ModelVarType.FIXED_SMALL and diffusion.num_timesteps == 100
    seen = []
    wrapped = oa.RespacedModel(lambda x, t: seen.append(t) or x, diffusion)
    wrapped(torch.zeros(2, 1), torch.tensor([0, 99]))
    # rescale_timesteps (improved's default): base timestep · 1000 / 4000
    expected = torch.tensor([diffusion.timestep_map[0], diffusion.timestep_map[99]]) * 0.25
    torch.testing.assert_close(seen[0], expected.float())
    assert diffusion.timestep_map[99] == 3999
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, torch.tensor([10])), model(x, torch.tensor([10])))


def test_improved_rejects_sizes_without_a_channel_mult():
    with pytest.raises(ValueError, match=r"--image_size 16.*no default channel_mult.*\[32, 64, 256\]"):
        oa.build(oa.parse_flags(variant="improved", image_size=16), variant="improved")


def test_wrong_flags_give_a_helpful_error(tmp_path):
    path = _save(tmp_path, oa.build(oa.parse_flags(**GUIDED))[0])
    wrong = dict(GUIDED, class_cond=False, learn_sigma=False)
    with pytest.raises(ValueError) as err:
        oa.load(path, **wrong)
    msg = str(err.value)
    assert "unexpected keys: label_emb.weight" in msg and "out.2.weight: checkpoint (6, 32, 3, 3)" in msg
    assert "probably trained with --class_cond True --learn_sigma True" in msg
    with pytest.raises(ValueError, match=r"probably trained with --num_channels 32"):
        oa.load(path, **dict(GUIDED, num_channels=64))
    with pytest.raises(ValueError, match=r"probably trained with --resblock_updown True"):
        oa.load(path, **dict(GUIDED, resblock_updown=False))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        oa.load(tmp_path / "nope.pt", **GUIDED)
    with pytest.raises(ValueError, match="not a plain state dict"):
        oa.load({"model": {}, "step": 3}, **GUIDED)


# ----------------------------------------------------------------------------------------------- classifier


CLASSIFIER = {"image_size": 64, "classifier_width": 64, "classifier_depth": 1, "classifier_attention_resolutions": "8"}
# A 64x64 unconditional model to guide (two levels keep it cheap on CPU).
UNCOND64 = ("--image_size 64 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2 --attention_resolutions 32 "
            "--timestep_respacing 4")


@pytest.fixture(scope="module")
def classifier_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openai")
    classifier = oa.build(oa.parse_flags(kind="classifier", **CLASSIFIER), kind="classifier")[0]
    model = oa.build(oa.parse_flags(UNCOND64))[0]
    return _save(tmp, classifier, "classifier.pt"), _save(tmp, model, "model.pt")


def test_classifier_layout_and_load(classifier_files):
    classifier, _diffusion = oa.load_classifier(classifier_files[0], **CLASSIFIER)
    expected = _spec.encoder(64, 3, 64, 1000, 1, (8,), (1, 2, 3, 4), ss=True, updown=True, pool="attention",
                             num_head_channels=64)
    assert _shapes(classifier) == expected and classifier.out_channels == 1000
    with torch.no_grad():
        logits = classifier(torch.randn(2, 3, 64, 64), torch.tensor([0, 999]))
    assert logits.shape == (2, 1000) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="unknown guided-diffusion classifier flag --num_channels"):
        oa.load_classifier(classifier_files[0], num_channels=3)


def test_classifier_guided_sampling_feeds_mapped_timesteps(classifier_files):
    classifier = oa.load_classifier(classifier_files[0], **CLASSIFIER, timestep_respacing="4")[0]
    run = load_openai_run(classifier_files[1], UNCOND64)
    assert run.num_classes is None and run.cfg.sample.steps == 4 and run.data_shape == (3, 64, 64)
    seen = []
    hook = classifier.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
    labels = torch.tensor([1, 500])
    kw = {"sampler": "ddim", "steps": 4, "seed": 3, "batch_size": 2, "labels": labels, "conditional": False}
    plain = run.sample(2, **kw)
    guided = run.sample(2, guidance=["cg=20"], classifier=classifier, **kw)
    hook.remove()
    assert plain.shape == guided.shape == (2, 3, 64, 64)
    assert (plain - guided).abs().max() > 1e-3  # the classifier moved the samples
    # the classifier saw the base timesteps of the respaced steps (999, 666, 333, 0), not indices 3..0
    assert [int(t[0]) for t in seen] == sorted(run.diffusion.timestep_map, reverse=True) == [999, 666, 333, 0]
    assert isinstance(ClassifierGuidance(oa.RespacedModel(classifier, run.diffusion), 1.0), ClassifierGuidance)
    with pytest.raises(ValueError, match=r"steps must be an int in \[1, 4\]"):
        run.sample(2, steps=50)


# ----------------------------------------------------------------------------------------------- CLI


def test_cli_samples_an_openai_checkpoint(tmp_path):
    path = _save(tmp_path, oa.build(oa.parse_flags(**GUIDED))[0])
    out = tmp_path / "samples"
    rc = cli.main(["sample", "--openai-ckpt", str(path), "--flags", GUIDED_STR, "--sampler", "ddpm",
                   "--steps", "3", "--num-samples", "3", "--batch-size", "2", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    data = np.load(out / "samples.npz")
    assert data["x"].shape == (3, 3, 16, 16) and np.isfinite(data["x"]).all()
    assert np.abs(data["x"]).max() <= 1.0 + 1e-6 and data["x"].std() > 0
    assert data["labels"].tolist() == [0, 1, 2]
    assert (out / "samples.png").stat().st_size > 0


def test_cli_classifier_guidance_and_errors(tmp_path, classifier_files, capsys):
    cls_path, model_path = classifier_files
    cls_flags = "--image_size 64 --classifier_width 64 --classifier_depth 1 --classifier_attention_resolutions 8"
    out = tmp_path / "cg"
    rc = cli.main(["sample", "--openai-ckpt", str(model_path), "--flags", UNCOND64, "--openai-classifier",
                   str(cls_path), "--classifier-flags", cls_flags, "--guidance", "cg=2", "--steps", "2",
                   "--num-samples", "2", "--out", str(out), "--device", "cpu"])
    assert rc == 0
    assert np.load(out / "samples.npz")["x"].shape == (2, 3, 64, 64)
    assert cli.main(["sample", "--openai-ckpt", str(model_path), "--flags", UNCOND64 + " --class_cond True",
                     "--out", str(out), "--device", "cpu"]) == 2
    assert "probably trained with --class_cond False" in capsys.readouterr().err
    assert cli.main(["sample", "--openai-ckpt", str(model_path), "--flags", UNCOND64, "--guidance", "cg=1",
                     "--out", str(out), "--device", "cpu"]) == 2
    assert "needs --classifier" in capsys.readouterr().err
    assert cli.main(["sample", "--out", str(out)]) == 2
    assert "--ckpt (or --openai-ckpt) is required" in capsys.readouterr().err
