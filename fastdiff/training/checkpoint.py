"""Crash-safe checkpoint files: atomic writes, integrity footer, newest-valid selection, pruning.

A checkpoint is `torch.save` output followed by a footer line `FASTDIFF-CKPT-SHA256:<hex digest of the payload>\\n`
(torch.load ignores trailing bytes after the zip archive, so plain `torch.load(path)` still works; `load_checkpoint`
verifies the digest, which catches truncation and flipped bytes that torch's zip reader does not check).

Files are `ckpt_<step:09d>.pt` (or `ckpt_<step:09d>-<k>.pt` when that name is taken, so a corrupt file is never
overwritten); a write goes to a hidden temporary file in the same directory, is flushed and fsynced, then
`os.replace`d over the final name and the directory is fsynced. Test hook: FASTDIFF_TEST_KILL_IN_SAVE=<step> makes
the writer SIGKILL its own process after writing half of step <step>'s temporary file (simulating a crash mid-save);
the next save or resume in that directory deletes such a dead writer's temporary file.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import signal
from pathlib import Path

import torch

from fastdiff.errors import CorruptCheckpointError

logger = logging.getLogger(__name__)

FOOTER_PREFIX = b"FASTDIFF-CKPT-SHA256:"
_FOOTER_LEN = len(FOOTER_PREFIX) + 64 + 1
_NAME = re.compile(r"^ckpt_(\d{9})(?:-(\d+))?\.pt$")
KILL_IN_SAVE_ENV = "FASTDIFF_TEST_KILL_IN_SAVE"
_TMP_MARK = ".tmp-"  # .<name>.tmp-<pid>: atomic_write_bytes' temporary file


def _fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path, data: bytes, *, kill_after_half: bool = False) -> Path:
    """Write `data` to `path` atomically: temporary file in the same directory, flush + fsync, os.replace, fsync
    of the directory. A crash leaves either the old `path` (or none) or the complete new one, never a mix.

    kill_after_half: test hook, SIGKILL this process after half the bytes reached the temporary file.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            if kill_after_half:
                f.write(data[:len(data) // 2])
                f.flush()
                os.fsync(f.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def remove_stale_temporaries(directory) -> list[Path]:
    """Delete the temporary files of `atomic_write_bytes` in `directory` whose writer process is gone (killed
    mid-write: a SIGKILL runs no cleanup). A live writer's file is left alone. Returns the deleted paths."""
    directory = Path(directory)
    deleted = []
    for p in directory.glob(f".*{_TMP_MARK}*") if directory.is_dir() else ():
        pid = p.name.rpartition(_TMP_MARK)[2]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            p.unlink(missing_ok=True)
            deleted.append(p)
    if deleted:
        logger.info("removed %d temporary file(s) of interrupted writes: %s", len(deleted),
                    ", ".join(p.name for p in deleted))
    return deleted


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def checkpoint_bytes(state: dict) -> bytes:
    """torch.save(state) followed by the sha256 footer."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    return payload + FOOTER_PREFIX + hashlib.sha256(payload).hexdigest().encode() + b"\n"


def list_checkpoints(directory) -> list[Path]:
    """Checkpoint files in `directory`, oldest first by (step, k); temporary files are not listed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for p in directory.iterdir():
        m = _NAME.match(p.name)
        if m and p.is_file():
            found.append(((int(m.group(1)), int(m.group(2) or 0)), p))
    return [p for _, p in sorted(found)]


def checkpoint_step(path) -> int:
    """The step encoded in a checkpoint file name."""
    m = _NAME.match(Path(path).name)
    if not m:
        raise ValueError(f"path {str(path)!r} is not a checkpoint name ckpt_<step:09d>[-<k>].pt")
    return int(m.group(1))


def free_checkpoint_path(directory, step: int) -> Path:
    """ckpt_<step>.pt, or ckpt_<step>-<k>.pt with the smallest free k when that file exists (so an existing file,
    valid or corrupt, is never overwritten)."""
    directory = Path(directory)
    path = directory / f"ckpt_{step:09d}.pt"
    k = 0
    while path.exists():
        k += 1
        path = directory / f"ckpt_{step:09d}-{k}.pt"
    return path


def save_checkpoint(directory, step: int, state: dict) -> Path:
    """Atomically write `state` as the checkpoint of `step` in `directory`; returns its path."""
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(directory)
    data = checkpoint_bytes(state)
    kill = os.environ.get(KILL_IN_SAVE_ENV)
    return atomic_write_bytes(free_checkpoint_path(directory, step), data,
                              kill_after_half=kill is not None and kill.strip() == str(step))


def load_checkpoint(path, map_location="cpu") -> dict:
    """Read and verify a checkpoint (footer digest, then torch.load with weights_only=True).

    Raises CorruptCheckpointError naming the file when it is truncated, altered or unreadable.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CorruptCheckpointError(f"cannot read checkpoint {path}: {e}") from e
    payload, footer = data[:-_FOOTER_LEN], data[-_FOOTER_LEN:]
    if len(data) < _FOOTER_LEN or not footer.startswith(FOOTER_PREFIX) or not footer.endswith(b"\n"):
        raise CorruptCheckpointError(f"checkpoint {path} has no integrity footer (truncated or not written by "
                                     f"fastdiff; {len(data)} bytes)")
    expected = footer[len(FOOTER_PREFIX):-1].decode("ascii", errors="replace")
    actual = hashlib.sha256(payload).hexdigest()
    if actual != expected:
        raise CorruptCheckpointError(f"checkpoint {path} is corrupt: sha256 {actual} != recorded {expected}")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as e:
        raise CorruptCheckpointError(f"checkpoint {path} cannot be unpickled: {e}") from e
    if not isinstance(state, dict):
        raise CorruptCheckpointError(f"checkpoint {path} holds a {type(state).__name__}, expected a dict")
    return state


def newest_valid_checkpoint(directory, map_location="cpu"):
    """(path, state, bad_paths): the newest checkpoint in `directory` that verifies and its state ((None, None,
    bad_paths) when none does); every newer file that fails is reported with logging.warning, listed in bad_paths
    and left in place."""
    bad = []
    for path in reversed(list_checkpoints(directory)):
        try:
            return path, load_checkpoint(path, map_location=map_location), bad
        except CorruptCheckpointError as e:
            logger.warning("skipping checkpoint: %s", e)
            bad.append(path)
    return None, None, bad


def prune_checkpoints(directory, keep: int, protect=()) -> list[Path]:
    """Delete the oldest checkpoints so that at most `keep` remain, never deleting paths in `protect` (e.g. files
    found corrupt, kept for inspection; they do not count towards `keep`). Returns the deleted paths.

    Call only after the newest checkpoint is on disk (save_checkpoint returned).
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    protect = {Path(p).resolve() for p in protect}
    candidates = [p for p in list_checkpoints(directory) if p.resolve() not in protect]
    deleted = []
    for path in candidates[:-keep]:
        path.unlink()
        deleted.append(path)
    if deleted:
        logger.info("pruned %d old checkpoint(s): %s", len(deleted), ", ".join(p.name for p in deleted))
    return deleted


def load_run_checkpoint(path, map_location="cpu") -> tuple[Path, dict]:
    """(file, verified state) of a checkpoint file, or of the newest valid checkpoint of a run directory (its
    checkpoints/ folder, or the folder itself). ValueError naming the path when there is none."""
    path = Path(path)
    if path.is_dir():
        found, state, _ = newest_valid_checkpoint(path / "checkpoints" if (path / "checkpoints").is_dir() else path,
                                                  map_location=map_location)
        if found is None:
            raise ValueError(f"no valid checkpoint under {str(path)!r}")
        return found, state
    if path.is_file():
        return path, load_checkpoint(path, map_location=map_location)
    raise ValueError(f"checkpoint {str(path)!r} does not exist")


def copy_ema_(model: torch.nn.Module, state: dict, ema_rate: float | str | None = "best") -> float | None:
    """Copy the EMA parameters of a Trainer checkpoint `state` into `model` (already holding state["model"]).

    ema_rate: "best" (the slowest EMA, the usual evaluation weights), one of the run's rates, or None (keep the raw
    weights). Returns the rate used (None when none was applied: None asked, or no EMA in the checkpoint)."""
    if ema_rate is None or not state.get("ema"):
        return None
    rates = {float(r): r for r in state["ema"]}
    rate = max(rates) if ema_rate == "best" else float(ema_rate)
    if rate not in rates:
        raise ValueError(f"ema_rate must be one of {sorted(rates)} or 'best', got {ema_rate!r}")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, tensor in state["ema"][rates[rate]].items():
            params[name].copy_(tensor)
    return rate
