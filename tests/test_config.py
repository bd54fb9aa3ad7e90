"""Run configs of noisy classifiers ([model] kind = "classifier"): validation, builders, `fastdiff train`, and
load_classifier from the run's checkpoint."""
import json

import pytest
import torch

from fastdiff import cli
from fastdiff.app import config as C
from fastdiff.models import EncoderUNetModel
from fastdiff.app.runs import load_run
from fastdiff.app.runs import load_classifier
from fastdiff.training import NoisyClassifierObjective, load_checkpoint

TINY = ["model.channel_mult=[1]", "model.attention_resolutions=[]", "train.total_steps=4", "train.batch_size=16",
        "train.save_interval=4", "train.log_interval=2", "train.ema_rates=[0.5]"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_digits_classifier_config_builds_an_adm_classifier():
    cfg = C.load_config("configs/digits_classifier.toml")
    assert cfg.model.kind == "classifier" and cfg.model.class_cond  # class_cond defaults to true for a classifier
    assert C.from_dict(cfg.to_dict()) == cfg
    ds = C.build_dataset(cfg)
    model = C.build_model(cfg, ds)
    assert isinstance(model, EncoderUNetModel) and model.out_channels == 10 and model.pool == "attention"
    assert model.attention_resolutions == (2,)  # attention at 4x4 pixels of the 8x8 input
    diffusion = C.build_diffusion(cfg)
    assert diffusion.num_timesteps == 1000
    ref = C.build_diffusion(C.load_config("digits_cfg"))  # the schedule of the diffusion it will guide
    assert torch.equal(torch.as_tensor(diffusion.betas), torch.as_tensor(ref.betas))
    obj = C.build_objective(cfg, diffusion, ds)
    assert isinstance(obj, NoisyClassifierObjective) and obj.num_classes == 10 and obj.t_range == (0, 999)
    with torch.no_grad():
        assert model(ds.x[:4], torch.tensor([0, 10, 500, 999])).shape == (4, 10)


@pytest.mark.parametrize("override,match", [
    (["model.class_cond=false"], "kind = 'classifier' is trained on the data's labels; class_cond must be true"),
    (["model.pool='max'"], r"\[model\] pool must be one of"),
    (["diffusion.p_uncond=0.1"], r"p_uncond \(label dropout\) does not apply"),
    (["diffusion.schedule_sampler='loss-second-moment'"], "schedule_sampler must be 'uniform'"),
    (["model.bogus=1"], r"\[model\]: unknown key\(s\) \['bogus'\]"),
    (["model.kind='gan'"], "kind must be one of"),
])
def test_bad_classifier_configs_name_the_key(override, match):
    with pytest.raises(ValueError, match=match):
        C.load_config("digits_classifier", override)


def test_classifier_needs_labelled_images():
    cfg = C.load_config("digits_classifier", ["data.name='swiss_roll'", "data.n=64"])
    with pytest.raises(ValueError, match="has no labels"):
        C.build_model(cfg, C.build_dataset(cfg))
    cfg = C.load_config("digits_classifier", ["data.name='grid25'", "data.n=64"])  # labelled by mode, but 2-D
    with pytest.raises(ValueError, match=r"kind = 'classifier' needs square images \[C, H, H\], got data shape"):
        C.build_model(cfg, C.build_dataset(cfg))


def test_fastdiff_train_then_load_classifier(tmp_path):
    run_dir = tmp_path / "clf"
    assert cli.main(["train", "--config", "configs/digits_classifier.toml", "--out", str(run_dir), *TINY]) == 0
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 and {"term/loss", "term/acc@1"} <= set(log[-1])
    clf = load_classifier(run_dir)
    assert isinstance(clf, EncoderUNetModel) and not clf.training and clf.out_channels == 10
    ckpt = max((run_dir / "checkpoints").iterdir())
    state = load_checkpoint(ckpt)
    params = dict(clf.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in state["ema"]["0.5"].items())  # EMA weights by default
    raw = load_classifier(ckpt, ema_rate=None)  # a checkpoint file works too
    assert all(torch.equal(p, state["model"][k]) for k, p in raw.named_parameters())
    assert any(not torch.equal(params[k], state["model"][k]) for k in params)
    with torch.no_grad():
        assert clf(torch.zeros(2, 1, 8, 8), torch.tensor([0, 999])).shape == (2, 10)
    with pytest.raises(ValueError, match="ema_rate must be one of"):
        load_classifier(run_dir, ema_rate=0.9)


def test_load_classifier_refuses_diffusion_runs_which_load_run_still_loads(tmp_path):
    run_dir = tmp_path / "mlp"
    assert cli.main(["train", "--config", "grid25", "--out", str(run_dir), "train.total_steps=2",
                     "train.batch_size=16", "data.n=64", "model.width=16", "model.depth=1"]) == 0
    assert load_run(run_dir).step == 2
    with pytest.raises(ValueError, match="kind = 'mlp' model, not a noisy classifier"):
        load_classifier(run_dir)
    with pytest.raises(ValueError, match="no valid checkpoint under"):
        load_classifier(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_classifier(tmp_path / "nope.pt")
