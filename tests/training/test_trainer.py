"""Trainer: non-finite steps skipped bit-exactly, K-in-a-row abort, AMP loss scaling, clipping, warmup, EMA,
data order, logs, safetensors export and argument checks."""
from __future__ import annotations

import copy
import dataclasses
import json
import logging

import pytest
import torch
from safetensors.torch import load_file
from trainkit import TensorData, assert_tree_equal

from fastdiff.training import CheckpointMismatchError, DiffusionObjective, TrainConfig, Trainer, TrainingDivergedError


def _trainer(make_unet, make_diffusion, make_dataset, tmp_path, learn_sigma=False, **overrides):
    cfg = {"total_steps": 6, "batch_size": 8, "lr": 2e-3, "ema_rates": (0.9, 0.5), "save_interval": 100,
           "log_interval": 2}
    cfg.update(overrides)
    diffusion = make_diffusion(loss="rescaled_mse" if learn_sigma else "mse",
                               var="learned_range" if learn_sigma else "fixed_small", steps=50)
    return Trainer(make_unet(learn_sigma=learn_sigma), DiffusionObjective(diffusion), make_dataset(32),
                   TrainConfig(**cfg), tmp_path / "out", device="cpu")


def _snapshot(tr: Trainer) -> dict:
    return copy.deepcopy({"model": tr.model.state_dict(), "optimizer": tr.optimizer.state_dict(),
                          "ema": {r: list(e) for r, e in tr.ema.items()}})


def _nan_grad_on(tr: Trainer, steps):
    """A hook that turns one parameter's gradient into NaN while trainer.step is in `steps` (None: always)."""
    param = tr.model.out[2].weight
    return param.register_hook(lambda g: g * float("nan") if steps is None or tr.step in steps else g)


@pytest.mark.parametrize("amp", ["none", "bf16", "fp16"])
def test_nan_gradient_step_is_skipped(make_unet, make_diffusion, make_dataset, tmp_path, amp):
    tr = _trainer(make_unet, make_diffusion, make_dataset, tmp_path, amp=amp, initial_loss_scale=256.0)
    _nan_grad_on(tr, {2})
    tr.train_step()
    tr.train_step()
    before = _snapshot(tr)
    info = tr.train_step()
    assert info["skipped"] and tr.skipped_total == 1 and tr.skipped_in_a_row == 1 and tr.step == 3
    assert not torch.isfinite(info["grad_norm"])
    assert_tree_equal(_snapshot(tr), before)  # weights, Adam moments and step counts, every EMA: bit-unchanged
    assert tr.loss_scale == (128.0 if amp == "fp16" else 1.0)
    info = tr.train_step()
    assert not info["skipped"] and tr.skipped_in_a_row == 0 and tr.skipped_total == 1
    assert not torch.equal(tr.model.out[2].weight, before["model"]["out.2.weight"])


def test_k_skips_in_a_row_abort(make_unet, make_diffusion, make_dataset, tmp_path):
    tr = _trainer(make_unet, make_diffusion, make_dataset, tmp_path, max_skipped_steps=3)
    _nan_grad_on(tr, None)
    before = _snapshot(tr)
    with pytest.raises(TrainingDivergedError, match=r"3 steps in a row .*max_skipped_steps=3"):
        tr.train()
    assert tr.step == 3 and tr.skipped_total == 3
    assert_tree_equal(_snapshot(tr), before)


def test_skips_not_in_a_row_do_not_abort(make_unet, make_diffusion, make_dataset, tmp_path):
    tr = _trainer(make_unet, make_diffusion, make_dataset, tmp_path, max_skipped_steps=2)
    _nan_grad_on(tr, {1, 3, 5})
    summary = tr.train()
    assert summary["skipped_total"] == 3 and summary["step"] == 6
    records = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [r["skipped_total"] for r in records] == [1, 2, 3]


def test_fp16_loss_scale_grows_after_interval(make_unet, make_diffusion, make_dataset, tmp_path):
    tr = _trainer(make_unet, make_diffusion, make_dataset, tmp_path, amp="fp16", initial_loss_scale=64.0,
                  loss_scale_growth_interval=2)
    scales = []
    for _ in range(5):
        tr.train_step()
        scales.append(tr.loss_scale)
    assert scales == [64.0, 128.0, 128.0, 256.0, 256.0]


def test_grad_clip_and_reported_norm(make_unet, make_diffusion, make_dataset, tmp_path):
    tr = _trainer(make_unet, make_diffusion, make_dataset, tmp_path, grad_clip=0.05)
    info = tr.train_step()
    clipped = torch.nn.utils.get_total_norm([p.grad for p in tr.model.parameters()])
    assert float(info["grad_norm"]) > 0.05  # the pre-clip norm is reported
    assert float(clipped) <= 0.05 * (1 + 1e-4)


def test_warmup_and_ema(make_unet, make_diffusion, make_dataset, tmp_path):
    tr = _trainer(make_unet, make_diffusion, make_dataset, tmp_path, warmup_steps=4, lr=1e-3)
    assert [tr.lr_at(s) for s in range(6)] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    init = [p.detach().clone() for p in tr.model.parameters()]
    info = tr.train_step()
    assert info["lr"] == pytest.approx(2.5e-4) and tr.optimizer.param_groups[0]["lr"] == pytest.approx(2.5e-4)
    for rate in (0.9, 0.5):
        for ema, p0, p in zip(tr.ema[rate], init, tr.model.parameters()):
            torch.testing.assert_close(ema, rate * p0 + (1 - rate) * p.detach(), rtol=1e-6, atol=1e-7)
    assert not torch.equal(tr.ema[0.9][-1], tr.ema[0.5][-1])


def test_cosine_lr_decay(make_unet, make_diffusion, make_dataset, tmp_path):
    tr = _trainer(make_unet, make_diffusion, make_dataset, tmp_path, warmup_steps=2, lr=1e-3, lr_decay="cosine",
                  total_steps=6)
    # warmup 5e-4, 1e-3; then ½(1 + cos(π·k/4)) for k = 0..3 of the 4 remaining steps.
    assert [tr.lr_at(s) for s in range(6)] == pytest.approx(
        [5e-4, 1e-3, 1e-3, 1e-3 * (0.5 + 0.5 ** 1.5), 5e-4, 1e-3 * (0.5 - 0.5 ** 1.5)])


def test_epochs_are_permutations_and_tail_dropped(make_unet, make_diffusion, tmp_path):
    x = torch.arange(20, dtype=torch.float32).view(20, 1, 1, 1).expand(20, 1, 8, 8).contiguous()
    tr = Trainer(make_unet(), DiffusionObjective(make_diffusion(steps=10)), TensorData(x),
                 TrainConfig(total_steps=4, batch_size=8, seed=3), tmp_path, device="cpu")
    ids = [tr.next_batch()[0][:, 0, 0, 0].long() for _ in range(4)]
    epoch0, epoch1 = torch.cat(ids[:2]), torch.cat(ids[2:])
    assert len(set(epoch0.tolist())) == 16 and len(set(epoch1.tolist())) == 16
    assert not torch.equal(epoch0, epoch1) and (tr.epoch, tr.data_index) == (1, 16)


def test_log_and_summary(make_unet, make_diffusion, make_dataset, tmp_path):
    tr = _trainer(make_unet, make_diffusion, make_dataset, tmp_path, learn_sigma=True, total_steps=5,
                  save_interval=2, keep_checkpoints=2)
    summary = tr.train()
    records = [json.loads(line) for line in (tmp_path / "out" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 5]
    for r in records:
        assert {"loss", "term/mse", "term/vb", "term/loss", "grad_norm", "lr", "loss_scale", "samples_per_s",
                "skipped"} <= set(r)
        assert r["samples_per_s"] > 0 and r["term/vb"] >= 0
    assert summary["step"] == 5 and summary["checkpoint"].endswith("ckpt_000000005.pt")
    names = sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir())
    assert names == ["ckpt_000000004.pt", "ckpt_000000005.pt"]  # step 2 pruned, keep_checkpoints=2


def test_export_safetensors_round_trip(make_unet, make_diffusion, make_dataset, tmp_path):
    tr = _trainer(make_unet, make_diffusion, make_dataset, tmp_path)
    tr.train_step()
    tr.train_step()
    raw = load_file(tr.export_safetensors(tmp_path / "model.safetensors"))
    assert_tree_equal(raw, {k: v for k, v in tr.model.state_dict().items()})
    ema = load_file(tr.export_safetensors(tmp_path / "ema.safetensors", ema_rate=0.9))
    names = [n for n, _ in tr.model.named_parameters()]
    assert_tree_equal({n: ema[n] for n in names}, dict(zip(names, tr.ema[0.9])))
    assert not torch.equal(ema["out.2.weight"], raw["out.2.weight"])
    fresh = make_unet()
    fresh.load_state_dict(ema, strict=True)
    with pytest.raises(ValueError, match="ema_rate must be one of"):
        tr.export_safetensors(tmp_path / "x.safetensors", ema_rate=0.99)


def test_resume_without_checkpoint_starts_fresh(make_unet, make_diffusion, make_dataset, tmp_path):
    tr = _trainer(make_unet, make_diffusion, make_dataset, tmp_path)
    assert tr.resume() is None and tr.step == 0


@pytest.mark.parametrize("field, value, match", [
    ("total_steps", -1, "total_steps"),
    ("total_steps", 1.5, "total_steps"),
    ("batch_size", 0, "batch_size"),
    ("lr", 0.0, "lr"),
    ("amp", "fp8", "amp must be one of"),
    ("ema_rates", (1.0,), r"ema_rates\[0\]"),
    ("ema_rates", 0.999, "ema_rates"),
    ("adam_betas", (0.9,), "adam_betas"),
    ("grad_clip", -1.0, "grad_clip"),
    ("warmup_steps", -2, "warmup_steps"),
    ("lr_decay", "linear", "lr_decay must be one of"),
    ("max_skipped_steps", 0, "max_skipped_steps"),
    ("keep_checkpoints", 0, "keep_checkpoints"),
    ("initial_loss_scale", float("inf"), "initial_loss_scale"),
])
def test_bad_config_values_name_the_field(field, value, match):
    kwargs = {"total_steps": 10, "batch_size": 4, field: value}
    with pytest.raises((ValueError, TypeError), match=match):
        TrainConfig(**kwargs)


def test_bad_trainer_arguments(make_unet, make_diffusion, make_dataset, tmp_path):
    obj = DiffusionObjective(make_diffusion(steps=10))
    cfg = TrainConfig(total_steps=2, batch_size=8)
    with pytest.raises(ValueError, match=r"batch_size=64 is larger than the data set \(32 samples\)"):
        Trainer(make_unet(), obj, make_dataset(32), dataclasses.replace(cfg, batch_size=64), tmp_path)
    with pytest.raises(TypeError, match="dataset must have a .y"):
        Trainer(make_unet(), obj, type("D", (), {"x": torch.zeros(8, 1, 8, 8)})(), cfg, tmp_path)
    with pytest.raises(ValueError, match="dataset.y is None"):
        Trainer(make_unet(num_classes=3), DiffusionObjective(make_diffusion(steps=10), num_classes=3),
                make_dataset(32), cfg, tmp_path)
    with pytest.raises(ValueError, match="dataset.y must be int64"):
        Trainer(make_unet(), obj, TensorData(torch.zeros(8, 1, 8, 8), torch.zeros(8)), cfg, tmp_path)
    with pytest.raises(TypeError, match="run_config must be JSON-serialisable"):
        Trainer(make_unet(), obj, make_dataset(32), cfg, tmp_path, run_config={"x": object()})
    with pytest.raises(ValueError, match="float32 master weights"):
        Trainer(make_unet().half(), obj, make_dataset(32), cfg, tmp_path)
    with pytest.raises(TypeError, match="config must be a TrainConfig"):
        Trainer(make_unet(), obj, make_dataset(32), {"total_steps": 2}, tmp_path)


def test_resume_applies_changed_hyperparameters_with_warning(make_unet, make_diffusion, make_dataset, tmp_path,
                                                             caplog):
    tr = _trainer(make_unet, make_diffusion, make_dataset, tmp_path, total_steps=2, save_interval=2)
    tr.train()
    again = _trainer(make_unet, make_diffusion, make_dataset, tmp_path, total_steps=4, adam_eps=1e-4,
                     weight_decay=0.1)
    with caplog.at_level(logging.WARNING, logger="fastdiff.training.trainer"):
        assert again.resume().name == "ckpt_000000002.pt"
    assert any("adam_eps" in r.getMessage() and "weight_decay" in r.getMessage() for r in caplog.records)
    group = again.optimizer.param_groups[0]
    assert group["eps"] == 1e-4 and group["weight_decay"] == 0.1 and again.step == 2
    assert_tree_equal(again.model.state_dict(), tr.model.state_dict())


def test_all_steps_nonfinite_writes_no_checkpoint(make_unet, make_diffusion, make_dataset, tmp_path):
    """Fewer steps than max_skipped_steps, every one non-finite: the run must not 'finish' with untrained weights."""
    tr = _trainer(make_unet, make_diffusion, make_dataset, tmp_path, total_steps=3, max_skipped_steps=10)
    _nan_grad_on(tr, None)
    with pytest.raises(TrainingDivergedError, match="all 3 steps had non-finite gradients"):
        tr.train()
    assert not list((tmp_path / "out" / "checkpoints").glob("*.pt"))


def _run_trainer(make_unet, make_diffusion, make_dataset, out, run_config, num_classes=None):
    return Trainer(make_unet(num_classes=num_classes), DiffusionObjective(make_diffusion(steps=50)),
                   make_dataset(32), TrainConfig(total_steps=2, batch_size=8, save_interval=2), out, device="cpu",
                   run_config=run_config)


def test_resume_refuses_another_runs_checkpoint(make_unet, make_diffusion, make_dataset, tmp_path):
    """Another data set / model / schedule in the run config, or other weights: CheckpointMismatchError naming
    the difference and the file, raised before any state is loaded. [train] and [sample] may change."""
    run = {"config": {"data": {"name": "digits"}, "diffusion": {"steps": 50}, "train": {"lr": 1e-3},
                      "sample": {"steps": 50}}, "data_shape": [1, 8, 8]}
    _run_trainer(make_unet, make_diffusion, make_dataset, tmp_path, run).train()
    changed = {**run, "config": {**run["config"], "train": {"lr": 5e-4}, "sample": {"steps": 10}}}
    assert _run_trainer(make_unet, make_diffusion, make_dataset, tmp_path, changed).resume() is not None
    other = {**run, "config": {**run["config"], "data": {"name": "ring8"}}}
    tr = _run_trainer(make_unet, make_diffusion, make_dataset, tmp_path, other)
    before = _snapshot(tr)
    with pytest.raises(CheckpointMismatchError, match=r"ckpt_000000002\.pt.*config\.data\.name: 'digits' in the "
                                                      r"checkpoint, 'ring8' now"):
        tr.resume()
    assert_tree_equal(_snapshot(tr), before)
    assert tr.step == 0
    tr = _run_trainer(make_unet, make_diffusion, make_dataset, tmp_path, None, num_classes=3)
    with pytest.raises(CheckpointMismatchError, match=r"another model's weights: missing \['label_emb.weight'\]"):
        tr.resume()
    assert tr.step == 0
