"""torch.distributed helpers for training: init from torchrun's environment, rank / world size, barrier, and the
collectives the Trainer needs (gradient averaging, parameter broadcast, gathering per-sample losses).

Every helper degrades to the single-process behaviour when torch.distributed is not initialised, so the same
Trainer code runs under `python` and `torchrun`.
"""
from __future__ import annotations

import logging
import os

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def is_initialized() -> bool:
    """Whether a default process group exists."""
    return dist.is_available() and dist.is_initialized()


def init_distributed(backend: str | None = None) -> bool:
    """Initialise the default process group from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...).

    backend: "nccl" / "gloo" / None (nccl when CUDA is available, else gloo). Returns True when a process group
    is (now) initialised, False when the environment describes a single process (no WORLD_SIZE or WORLD_SIZE=1).
    Under nccl the current CUDA device is set to LOCAL_RANK.
    """
    if is_initialized():
        return True
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return False
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world_size} but this torch build has no torch.distributed")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'nccl', 'gloo' or None, got {backend!r}")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    logger.info("initialised %s process group: rank %d of %d", backend, get_rank(), get_world_size())
    return True


def get_rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main_process() -> bool:
    """Rank 0: the only process that writes logs and checkpoints."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if is_initialized():
        dist.barrier()


def default_device() -> torch.device:
    """cuda:LOCAL_RANK when CUDA is available, else CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def all_reduce_mean_(tensors: list[torch.Tensor]) -> None:
    """In place: each tensor becomes its mean over ranks (one flat all_reduce; no-op in a single process).

    tensors: same dtype and device.
    """
    world = get_world_size()
    if world == 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def all_gather_losses(local: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's 1-D tensor local: [B_r] in rank order -> [Σ B_r] (sizes may differ)."""
    if local.dim() != 1:
        raise ValueError(f"local must be 1-D, got shape {tuple(local.shape)}")
    if not is_initialized():
        return local
    sizes = [torch.zeros(1, dtype=torch.int64, device=local.device) for _ in range(get_world_size())]
    dist.all_gather(sizes, torch.tensor([local.numel()], dtype=torch.int64, device=local.device))
    sizes = [int(s.item()) for s in sizes]
    padded = torch.zeros(max(sizes), dtype=local.dtype, device=local.device)
    padded[:local.numel()] = local
    out = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(out, padded)
    return torch.cat([o[:n] for o, n in zip(out, sizes)])
