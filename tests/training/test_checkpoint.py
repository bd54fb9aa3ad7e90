"""Checkpoint files: atomic write, integrity footer, newest-valid selection, naming and pruning."""
from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from fastdiff.training import checkpoint as ckpt


def _state(seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"step": seed, "w": torch.randn(64, 64, generator=g), "nested": {"b": torch.randn(3, generator=g)}}


def test_atomic_write_replaces_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.bin"
    ckpt.atomic_write_bytes(path, b"old")
    ckpt.atomic_write_bytes(path, b"new contents")
    assert path.read_bytes() == b"new contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]


def test_atomic_write_failure_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    ckpt.atomic_write_bytes(path, b"good")

    def boom(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(ckpt.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        ckpt.atomic_write_bytes(path, b"bad")
    assert path.read_bytes() == b"good"


def test_round_trip_and_plain_torch_load(tmp_path):
    state = _state(3)
    path = ckpt.save_checkpoint(tmp_path, 3, state)
    assert path.name == "ckpt_000000003.pt"
    for loaded in (ckpt.load_checkpoint(path), torch.load(path, weights_only=True)):
        assert loaded["step"] == 3 and torch.equal(loaded["w"], state["w"])
        assert torch.equal(loaded["nested"]["b"], state["nested"]["b"])


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_damaged_files_are_rejected(tmp_path, damage):
    path = ckpt.save_checkpoint(tmp_path, 1, _state(1))
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) * 2 // 3]
    elif damage == "flip":
        data[len(data) // 2] ^= 0x01
    elif damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    else:
        data = bytearray()
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CorruptCheckpointError, match=path.name):
        ckpt.load_checkpoint(path)


def test_newest_valid_skips_bad_files_with_warning(tmp_path, caplog):
    for step in (5, 10, 15):
        ckpt.save_checkpoint(tmp_path, step, _state(step))
    newest = tmp_path / "ckpt_000000015.pt"
    truncated = newest.read_bytes()[:1000]
    newest.write_bytes(truncated)
    (tmp_path / ".ckpt_000000020.pt.tmp-123").write_bytes(b"partial")  # a crashed write: ignored
    with caplog.at_level(logging.WARNING, logger="fastdiff.training.checkpoint"):
        path, state, bad = ckpt.newest_valid_checkpoint(tmp_path)
    assert path.name == "ckpt_000000010.pt" and state["step"] == 10 and bad == [newest]
    assert any(newest.name in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert newest.read_bytes() == truncated  # reported, not deleted or rewritten


def test_no_valid_checkpoint(tmp_path):
    assert ckpt.newest_valid_checkpoint(tmp_path / "missing") == (None, None, [])
    (tmp_path / "ckpt_000000001.pt").write_bytes(b"junk")
    path, state, bad = ckpt.newest_valid_checkpoint(tmp_path)
    assert path is None and state is None and len(bad) == 1


def test_existing_name_is_never_overwritten(tmp_path):
    first = ckpt.save_checkpoint(tmp_path, 7, _state(1))
    first.write_bytes(b"corrupt")
    second = ckpt.save_checkpoint(tmp_path, 7, _state(2))
    assert second.name == "ckpt_000000007-1.pt" and first.read_bytes() == b"corrupt"
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ckpt_000000007.pt", "ckpt_000000007-1.pt"]
    assert ckpt.newest_valid_checkpoint(tmp_path)[0] == second
    assert ckpt.checkpoint_step(second) == 7


def test_listing_orders_by_step_not_name_length(tmp_path):
    for step in (100, 9, 1000):
        ckpt.save_checkpoint(tmp_path, step, {"step": step})
    (tmp_path / "notes.txt").write_text("x")
    assert [ckpt.checkpoint_step(p) for p in ckpt.list_checkpoints(tmp_path)] == [9, 100, 1000]


def test_prune_keeps_newest_and_protected(tmp_path):
    paths = [ckpt.save_checkpoint(tmp_path, s, {"step": s}) for s in (1, 2, 3, 4, 5)]
    deleted = ckpt.prune_checkpoints(tmp_path, keep=2, protect=[paths[1]])
    assert deleted == [paths[0], paths[2]]
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == [paths[1].name, paths[3].name, paths[4].name]
    with pytest.raises(ValueError, match="keep must be >= 1"):
        ckpt.prune_checkpoints(tmp_path, keep=0)


def test_save_rejects_negative_step(tmp_path):
    with pytest.raises(ValueError, match="step must be >= 0"):
        ckpt.save_checkpoint(tmp_path, -1, {})


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    """A SIGKILL mid-write leaves .<name>.tmp-<pid>; the next save deletes it once that process is gone, and never
    a live writer's file."""
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    stale = tmp_path / f".ckpt_000000004.pt.tmp-{int(dead.stdout)}"
    live = tmp_path / f".ckpt_000000005.pt.tmp-{os.getppid()}"
    stale.write_bytes(b"half")
    live.write_bytes(b"half")
    ckpt.save_checkpoint(tmp_path, 6, _state(6))
    assert not stale.exists() and live.exists()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["ckpt_000000006.pt"]


def test_failed_write_removes_its_temporary(tmp_path, monkeypatch):
    def boom(src, dst):
        raise OSError("disk full")
    monkeypatch.setattr(ckpt.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_checkpoint(tmp_path, 1, _state(1))
    assert list(tmp_path.iterdir()) == []
