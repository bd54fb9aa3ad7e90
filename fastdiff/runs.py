"""Glue between run configs, the Trainer and the samplers: what `fastdiff train | sample | eval`, `make demo` and
`fastdiff repro` share. A checkpoint's `run_config` holds the whole RunConfig plus the data shape and class count,
so a checkpoint alone rebuilds its model."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastdiff import config as C
from fastdiff.samplers import generate

log = logging.getLogger(__name__)


@dataclass
class LoadedRun:
    """A trained model ready to sample: its config, ε-model (eval mode, EMA weights when asked), diffusion, data
    shape and class count (None when unconditional), the label-dropout null class (None without p_uncond)."""
    cfg: C.RunConfig
    model: torch.nn.Module
    diffusion: object
    data_shape: tuple
    num_classes: int | None
    null_label: int | None
    step: int

    def sample(self, num_samples: int, *, sampler="ddim", steps=50, eta=0.0, guidance=0.0, labels=None, seed=0,
               batch_size=256, rank=0, world_size=1, progress=False) -> torch.Tensor:
        """Samples [num_samples, *data_shape] in [-1, 1]; labels default to classes 0..K-1 in turn when
        class-conditional."""
        if labels is None and self.num_classes:
            labels = torch.arange(num_samples) % self.num_classes
        device = next(self.model.parameters()).device
        return generate(self.model, self.diffusion.alphas_cumprod, num_samples, self.data_shape, sampler=sampler,
                        steps=steps, eta=eta, var_type=C.var_type(self.cfg), labels=labels, guidance=guidance,
                        null_label=self.null_label, seed=seed, batch_size=batch_size, device=device,
                        rank=rank, world_size=world_size, progress=progress)


def make_trainer(cfg: C.RunConfig, out_dir, device=None):
    """(Trainer, dataset) for `cfg`, writing into out_dir (checkpoints/, log.jsonl)."""
    from fastdiff.training import Trainer

    dataset = C.build_dataset(cfg)
    model = C.build_model(cfg, dataset)
    diffusion = C.build_diffusion(cfg)
    objective = C.build_objective(cfg, diffusion, dataset)
    run_config = {"config": cfg.to_dict(), "data_shape": list(dataset.data_shape),
                  "num_classes": dataset.num_classes if cfg.model.class_cond else None}
    trainer = Trainer(model, objective, dataset, C.train_config(cfg), out_dir, device=device,
                      run_config=json.loads(json.dumps(run_config)))
    return trainer, dataset


def load_run(checkpoint, ema_rate: float | str | None = "best", device="cpu") -> LoadedRun:
    """Rebuild the model of a Trainer checkpoint (a file, or a run directory: its newest valid checkpoint).

    ema_rate: "best" (the slowest EMA, the usual sampling weights), None (raw weights) or one of the run's rates.
    """
    from fastdiff.training import load_checkpoint, newest_valid_checkpoint

    path = Path(checkpoint)
    if path.is_dir():
        found, state, _ = newest_valid_checkpoint(path / "checkpoints" if (path / "checkpoints").is_dir() else path)
        if found is None:
            raise ValueError(f"no valid checkpoint under {str(path)!r}")
        path = found
    elif path.is_file():
        state = load_checkpoint(path, map_location="cpu")
    else:
        raise ValueError(f"checkpoint {str(path)!r} does not exist")
    meta = state.get("run_config") or {}
    if "config" not in meta:
        raise ValueError(f"checkpoint {path} was not written by a fastdiff run (no run_config['config'])")
    cfg = C.from_dict(meta["config"], where=f"checkpoint {path.name}")
    shape, classes = tuple(meta["data_shape"]), meta["num_classes"]
    dataset_stub = _DataShape(shape, classes)
    model = C.build_model(cfg, dataset_stub)
    model.load_state_dict(state["model"])
    if ema_rate is not None and state.get("ema"):
        rates = {float(r): r for r in state["ema"]}
        rate = max(rates) if ema_rate == "best" else float(ema_rate)
        if rate not in rates:
            raise ValueError(f"ema_rate must be one of {sorted(rates)} or 'best', got {ema_rate!r}")
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, tensor in state["ema"][rates[rate]].items():
                params[name].copy_(tensor)
    model.to(device).eval()
    null = classes if classes is not None and cfg.diffusion.p_uncond > 0 else None
    return LoadedRun(cfg, model, C.build_diffusion(cfg), shape, classes, null, int(state["step"]))


@dataclass
class _DataShape:
    """What build_model needs of a data set, from a checkpoint."""
    data_shape: tuple
    num_classes: int | None


def to_uint8_images(x: torch.Tensor) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> uint8 [N, H, W, C]."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_grid(x: torch.Tensor, path, nrow: int = 10, scale: int = 4) -> Path:
    """Write images [N, C, H, W] in [-1, 1] as one PNG grid (nrow per row, each pixel scale×scale, 1 px gaps)."""
    from PIL import Image

    imgs = to_uint8_images(x)
    n, h, w, c = imgs.shape
    rows = -(-n // nrow)
    grid = np.full((rows * (h + 1) + 1, nrow * (w + 1) + 1, c), 255, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + k * (w + 1):1 + k * (w + 1) + w] = imgs[i]
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def timed(fn, *args, **kwargs):
    """(result, seconds) of fn(*args, **kwargs), synchronising CUDA around it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - start


def gather_chunks(x: torch.Tensor, num_samples: int, batch_size: int) -> torch.Tensor:
    """All ranks' `generate` outputs (rank r holds chunks r, r + W, ...) in chunk order, on every rank (CPU)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    world = dist.get_world_size()
    parts = [None] * world
    dist.all_gather_object(parts, x.cpu())
    chunks = {r + j * world: c for r, part in enumerate(parts) for j, c in enumerate(part.split(batch_size))}
    out = torch.cat([chunks[b] for b in sorted(chunks)])
    if out.shape[0] != num_samples:
        raise RuntimeError(f"gathered {out.shape[0]} samples from {world} ranks, expected {num_samples}")
    return out


def finish_distributed() -> None:
    """Tear down the process group torchrun's init created (no-op in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
