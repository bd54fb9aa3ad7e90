"""Data parallelism: a 2-process gloo run equals a 1-process run at the same global batch (world-size-free
randomness: global draws, rank slices, averaged gradients, all-gathered sampler losses)."""
from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import torch
from trainkit import assert_tree_equal

from fastdiff.training import distributed as D
from fastdiff.training import list_checkpoints, load_checkpoint

SCRIPT = Path(__file__).with_name("run_train.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train(out, world_size, objective="diffusion"):
    cmd = [sys.executable, str(SCRIPT), str(out), "--steps", "10", "--save-interval", "10",
           "--world-size", str(world_size), "--port", str(_free_port()), "--objective", objective,
           # Adam's m/√v maps a ~1e-9 rounding-noise gradient (e.g. of a bias feeding a GroupNorm, whose true
           # gradient is 0) to a full ±lr step; ε = 1e-4 keeps such noise at ~1e-8 per step, so the comparison
           # measures the data-parallel machinery (after 10 steps at ε = 1e-8 the two runs differ by ~3e-4).
           "--adam-eps", "1e-4"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    ckpts = list_checkpoints(Path(out) / "checkpoints")
    assert [c.name for c in ckpts] == ["ckpt_000000010.pt"], "only rank 0 writes, once"
    return load_checkpoint(ckpts[0])


def test_two_process_gloo_equals_one_process(tmp_path):
    one = _train(tmp_path / "w1", 1)
    two = _train(tmp_path / "w2", 2)
    for key in ("model", "ema", "optimizer"):
        assert_tree_equal(two[key], one[key], key, atol=1e-6)
    assert_tree_equal(two["data"], one["data"], "data")
    assert_tree_equal(two["objective"]["_loss_counts"], one["objective"]["_loss_counts"], "sampler counts")
    assert_tree_equal(two["objective"]["_loss_history"], one["objective"]["_loss_history"], "history", atol=1e-5)
    # The run really trained: weights moved from their initialisation (out conv starts at zero).
    assert one["model"]["out.2.weight"].abs().max() > 0
    log = (tmp_path / "w2" / "log.jsonl").read_text().splitlines()
    assert len(log) == 5, "rank 0 alone logs (every 2 steps)"


def test_two_process_gloo_two_player_siddm_equals_one_process(tmp_path):
    """SIDDM's generator and discriminator (each its own optimizer), the generator's EMA and the data order: a
    2-process run equals the 1-process run at the same global batch."""
    one = _train(tmp_path / "w1", 1, "siddm")
    two = _train(tmp_path / "w2", 2, "siddm")
    for key in ("model", "ema", "optimizer", "data"):
        assert_tree_equal(two[key], one[key], key, atol=1e-6)
    from run_train import siddm_pair

    init = siddm_pair().state_dict()
    for player in ("generator", "discriminator"):  # both players trained
        assert not torch.equal(one["model"][f"{player}.layers.0.weight"], init[f"{player}.layers.0.weight"])
    assert torch.equal(one["model"]["generator.fourier.B"], init["generator.fourier.B"])


def test_helpers_single_process():
    assert D.get_rank() == 0 and D.get_world_size() == 1 and D.is_main_process()
    assert not D.init_distributed()  # no WORLD_SIZE: single process
    x = torch.randn(5)
    assert D.all_gather_losses(x) is x
    t = [torch.ones(3)]
    D.all_reduce_mean_(t)
    assert torch.equal(t[0], torch.ones(3))
    D.barrier()
