"""Kill and resume: SIGKILL a training subprocess mid-training and mid-checkpoint-write, resume, and end
bit-identical (model, every EMA, optimizer, sampler, RNG, data position) to an uninterrupted CPU fp32 run."""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import run_train
import torch
from trainkit import assert_tree_equal

from fastdiff.training import list_checkpoints, load_checkpoint
from fastdiff.training.checkpoint import KILL_IN_SAVE_ENV

SCRIPT = Path(__file__).with_name("run_train.py")
STEPS, INTERVAL = 12, 4
COMPARED = ("model", "ema", "optimizer", "objective", "rng", "data", "scaler", "skipped", "step", "run_config")


def _run(out, *extra, env=None, expect_kill=False):
    cmd = [sys.executable, str(SCRIPT), str(out), "--steps", str(STEPS), "--save-interval", str(INTERVAL), *extra]
    proc = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=120,
                          check=False)
    if expect_kill:
        assert proc.returncode == -signal.SIGKILL, f"expected SIGKILL, got rc {proc.returncode}:\n{proc.stderr}"
    else:
        assert proc.returncode == 0, proc.stderr
    return proc


def _final_state(out):
    path = list_checkpoints(Path(out) / "checkpoints")[-1]
    state = load_checkpoint(path)
    assert state["step"] == STEPS
    return state


def _assert_same_run(state, reference):
    n = sum(assert_tree_equal(state[k], reference[k], k) for k in COMPARED)
    assert n > 50  # every parameter, both EMAs, Adam moments, sampler history, RNG states


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: its final checkpoint state and directory."""
    out = tmp_path_factory.mktemp("uninterrupted")
    _run(out)
    state = _final_state(out)
    # The loss-second-moment sampler warmed up mid-run, so its saved history steers the resumed t draws.
    assert bool((state["objective"]["_loss_counts"] == 2).all())
    return state, out


def test_kill_during_training_then_resume(tmp_path, reference):
    out = tmp_path / "run"
    _run(out, "--kill-at-step", "6", expect_kill=True)
    ckpts = list_checkpoints(out / "checkpoints")
    assert [c.name for c in ckpts] == ["ckpt_000000004.pt"]  # nothing lost beyond the last interval (4 of 6)
    assert load_checkpoint(ckpts[0])["step"] == 4
    _run(out, "--resume")
    _assert_same_run(_final_state(out), reference[0])


def test_kill_during_checkpoint_write_then_resume(tmp_path, reference):
    out = tmp_path / "run"
    _run(out, env={KILL_IN_SAVE_ENV: "8"}, expect_kill=True)
    ckpt_dir = out / "checkpoints"
    good = ckpt_dir / "ckpt_000000004.pt"
    assert [c.name for c in list_checkpoints(ckpt_dir)] == [good.name]  # the partial file replaced nothing
    partial = [p for p in ckpt_dir.iterdir() if p.name.startswith(".ckpt_000000008.pt.tmp-")]
    assert len(partial) == 1 and 0 < partial[0].stat().st_size < good.stat().st_size
    good_bytes = good.read_bytes()
    assert load_checkpoint(good)["step"] == 4
    _run(out, "--resume")
    _assert_same_run(_final_state(out), reference[0])
    assert not partial[0].exists(), "the dead writer's partial temporary file is removed on resume"
    assert not [p for p in ckpt_dir.iterdir() if ".tmp-" in p.name]
    assert not good.exists() or good.read_bytes() == good_bytes  # pruned (keep=2) or untouched


def test_corrupt_newest_checkpoint_is_skipped(tmp_path, reference, caplog):
    """Flip bytes in the newest checkpoint: resume warns, loads the previous one, never touches the corrupt file,
    writes the re-trained step beside it and still ends equal to the uninterrupted run."""
    out = tmp_path / "run"
    shutil.copytree(reference[1], out)
    newest = out / "checkpoints" / "ckpt_000000012.pt"
    data = bytearray(newest.read_bytes())
    data[len(data) // 3] ^= 0xFF
    newest.write_bytes(bytes(data))
    args = SimpleNamespace(out=str(out), steps=STEPS, save_interval=INTERVAL, adam_eps=1e-8, objective="diffusion")
    torch.set_num_threads(1)
    trainer = run_train.build(args)
    with caplog.at_level(logging.WARNING, logger="fastdiff.training.checkpoint"):
        loaded = trainer.resume()
    assert loaded.name == "ckpt_000000008.pt" and trainer.step == 8
    assert any("ckpt_000000012.pt" in r.getMessage() and "corrupt" in r.getMessage() for r in caplog.records)
    trainer.train()
    assert newest.read_bytes() == bytes(data), "the corrupt checkpoint was modified"
    names = [c.name for c in list_checkpoints(out / "checkpoints")]
    assert "ckpt_000000012-1.pt" in names and newest.name in names
    _assert_same_run(_final_state(out), reference[0])
