"""Glue between run configs, the Trainer and the samplers: what `fastdiff train | sample | eval`, `make demo` and
`fastdiff repro` share. A checkpoint's `run_config` holds the whole RunConfig plus the data shape and class count,
so a checkpoint alone rebuilds its model."""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fastdiff.adapters import openai
from fastdiff.app import config as C
from fastdiff.app.config import SampleConfig
from fastdiff.samplers import SamplerOptions, generate
from fastdiff.training import Trainer, copy_ema_, load_run_checkpoint

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
               batch_size=256, rank=0, world_size=1, progress=False, conditional=True, classifier=None,
               discriminator=None, schedule="karras") -> torch.Tensor:
        """Samples [num_samples, *data_shape] in [-1, 1]; labels default to classes 0..K-1 in turn when
        class-conditional. guidance, conditional, classifier, discriminator: as `fastdiff.samplers.generate`."""
        if labels is None and self.num_classes:
            labels = torch.arange(num_samples) % self.num_classes
        if labels is not None and self.num_classes is None and conditional:
            raise ValueError("labels given to an unconditional model: pass conditional=False (they are then "
                             "classifier-guidance targets)")
        if labels is not None and self.num_classes and conditional:
            labels = torch.as_tensor(labels)
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
                raise ValueError(f"labels must lie in [0, num_classes={self.num_classes}), got values in "
                                 f"[{int(labels.min())}, {int(labels.max())}]")
        device = next(self.model.parameters()).device
        options = SamplerOptions(sampler=sampler, steps=steps, eta=eta, var_type=self.diffusion.var_type,
                                 clip_denoised=self.cfg.sample.clip_denoised, guidance=guidance, seed=seed,
                                 batch_size=batch_size, schedule=schedule)
        return generate(self.model, self.diffusion.alphas_cumprod, num_samples, self.data_shape, options,
                        labels=labels, null_label=self.null_label, conditional=conditional, classifier=classifier,
                        discriminator=discriminator, device=device, rank=rank, world_size=world_size,
                        progress=progress)


def make_trainer(cfg: C.RunConfig, out_dir, device=None):
    """(Trainer, dataset) for `cfg`, writing into out_dir (checkpoints/, log.jsonl)."""
    train_config = C.train_config(cfg)
    dataset = C.build_dataset(cfg)
    torch.manual_seed(train_config.seed)  # the initial weights are part of the run: train.seed fixes them too
    model = C.build_model(cfg, dataset)
    diffusion = C.build_diffusion(cfg)
    objective = C.build_objective(cfg, diffusion, dataset)
    run_config = {"config": cfg.to_dict(), "data_shape": list(dataset.data_shape),
                  "num_classes": dataset.num_classes if cfg.model.class_cond else None}
    trainer = Trainer(model, objective, dataset, train_config, out_dir, device=device,
                      run_config=json.loads(json.dumps(run_config)))
    return trainer, dataset


def load_run(checkpoint, ema_rate: float | str | None = "best", device="cpu") -> LoadedRun:
    """Rebuild the model of a Trainer checkpoint (a file, or a run directory: its newest valid checkpoint).

    ema_rate: "best" (the slowest EMA, the usual sampling weights), None (raw weights) or one of the run's rates.
    """
    path, state = load_run_checkpoint(checkpoint)
    meta = state.get("run_config") or {}
    cfg, model = C.model_from_run_config(meta, where=f"checkpoint {path}")
    shape, classes = tuple(meta["data_shape"]), meta["num_classes"]
    model.load_state_dict(state["model"])
    copy_ema_(model, state, ema_rate)
    model.to(device).eval()
    null = classes if classes is not None and cfg.diffusion.p_uncond > 0 else None
    return LoadedRun(cfg, model, C.build_diffusion(cfg), shape, classes, null, int(state["step"]))


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


# ------------------------------------------------------------------------ guidance models of fastdiff runs


def load_classifier(checkpoint, device="cpu", ema_rate: float | str | None = "best") -> torch.nn.Module:
    """The noisy classifier (EncoderUNetModel, eval mode, on `device`) of a `fastdiff train` run with [model] kind
    = "classifier", rebuilt from the run_config in its checkpoint (a file or a run directory: its newest valid
    checkpoint), as fastdiff.app.runs.load_run rebuilds diffusion models.

    ema_rate: "best" (the slowest EMA), one of the run's rates, or None (the raw weights). The classifier expects
    the timesteps of the run's [diffusion] (fastdiff.app.config.build_diffusion of the checkpoint's config).
    """
    path, state = load_run_checkpoint(checkpoint)
    cfg, model = C.model_from_run_config(state.get("run_config"), where=f"checkpoint {path}")
    if cfg.model.kind != "classifier":
        raise ValueError(f"checkpoint {path} holds a [model] kind = {cfg.model.kind!r} model, not a noisy classifier "
                         "(kind = 'classifier'); load it with fastdiff.app.runs.load_run")
    model.load_state_dict(state["model"])
    copy_ema_(model, state, ema_rate)
    return model.to(device).eval()


def build_discriminator(spec: dict) -> torch.nn.Module:
    """A fresh discriminator from the JSON-able `spec` a discriminator run stores in its checkpoint (run_config
    ["discriminator"]): {"kind": "mlp", "kwargs": MLPDiscriminator kwargs}, {"kind": "encoder", "kwargs":
    EncoderUNetModel kwargs} (out_channels = 1) or {"kind": "classifier_features",
    "classifier": the noisy classifier run's run_config, "head": ClassifierFeatureDiscriminator.from_classifier
    kwargs}. The classifier's weights come with the discriminator's state dict."""
    from fastdiff.models import ClassifierFeatureDiscriminator, EncoderUNetModel, MLPDiscriminator

    kind = spec.get("kind") if isinstance(spec, dict) else None
    if kind == "mlp":
        return MLPDiscriminator(**spec.get("kwargs", {}))
    if kind == "encoder":  # from scratch on x_t (the paper's latent-space discriminator)
        return EncoderUNetModel(**{**spec.get("kwargs", {}), "out_channels": 1})
    if kind == "classifier_features":
        _, classifier = C.model_from_run_config(spec["classifier"], where="discriminator spec's classifier")
        return ClassifierFeatureDiscriminator.from_classifier(classifier, **spec.get("head", {}))
    raise ValueError(f"discriminator spec kind must be 'mlp', 'encoder' or 'classifier_features', got {spec!r}")


def load_discriminator(checkpoint, device="cpu", ema_rate: float | str | None = "best") -> torch.nn.Module:
    """The discriminator (eval mode, on `device`, EMA weights by default) of a run trained with run_config
    {"discriminator": spec} (see `build_discriminator`); checkpoint: a file or a run directory."""
    path, state = load_run_checkpoint(checkpoint)
    spec = (state.get("run_config") or {}).get("discriminator")
    if spec is None:
        raise ValueError(f"checkpoint {path} is not a discriminator run (no run_config['discriminator'])")
    model = build_discriminator(spec)
    model.load_state_dict(state["model"])
    copy_ema_(model, state, ema_rate)
    return model.to(device).eval()


# ------------------------------------------------------------------------ OpenAI guided-diffusion checkpoints


@dataclass
class OpenAIRunConfig:
    """What `fastdiff sample` reads from a run: the checkpoint's flags and the sampling defaults."""
    flags: dict
    sample: SampleConfig = field(default_factory=SampleConfig)


@dataclass
class OpenAIRun:
    """A loaded OpenAI checkpoint with `fastdiff.app.runs.LoadedRun`'s sampling interface (for `fastdiff sample`)."""
    cfg: OpenAIRunConfig
    model: torch.nn.Module
    diffusion: object
    data_shape: tuple
    num_classes: int | None
    null_label: int | None = None  # the OpenAI models were not trained with label dropout: no classifier-free

    def sample(self, num_samples: int, *, sampler="ddim", steps=50, eta=0.0, guidance=0.0, labels=None, seed=0,
               batch_size=256, rank=0, world_size=1, progress=False, conditional=True, classifier=None,
               discriminator=None, schedule="karras") -> torch.Tensor:
        """Samples [num_samples, 3, S, S] in [-1, 1] with `fastdiff.samplers.generate` over the diffusion's
        (respaced) steps, `steps` of them; labels: int64 [num_samples] classes (default 0..999 in turn when
        class-conditional, the targets of a classifier otherwise). classifier: a `load_classifier` model (fed the
        model's timesteps). Arguments as `LoadedRun.sample`."""
        if self.diffusion.prediction != "epsilon":
            raise ValueError("fastdiff sample supports ε-prediction checkpoints; this one has predict_xstart=True "
                             "(use fastdiff.samplers.sample_ddim(..., prediction='x0') directly)")
        if labels is None and self.num_classes and conditional:
            labels = torch.arange(num_samples) % self.num_classes
        if labels is not None and self.num_classes is None and conditional:
            raise ValueError("labels given to an unconditional checkpoint (class_cond=False): pass "
                             "conditional=False (they are then classifier-guidance targets)")
        if not isinstance(steps, int) or not 1 <= steps <= self.diffusion.num_timesteps:
            raise ValueError(f"steps must be an int in [1, {self.diffusion.num_timesteps}] (the steps of "
                             f"timestep_respacing={self.cfg.flags['timestep_respacing']!r}), got {steps!r}")
        device = next(self.model.parameters()).device
        wrap = lambda m: None if m is None else openai.RespacedModel(m, self.diffusion).to(device)
        options = SamplerOptions(sampler=sampler, steps=steps, eta=eta, var_type=self.diffusion.var_type,
                                 clip_denoised=True, guidance=guidance, seed=seed, batch_size=batch_size,
                                 schedule=schedule)
        return generate(wrap(self.model), self.diffusion.alphas_cumprod, num_samples, self.data_shape, options,
                        labels=labels, null_label=self.null_label, conditional=conditional,
                        classifier=wrap(classifier), discriminator=wrap(discriminator), device=device, rank=rank,
                        world_size=world_size, progress=progress)


def load_openai_run(checkpoint, flags: str | dict | None = None, *, variant: str = "guided", device="cpu",
             **kwargs) -> OpenAIRun:
    """`fastdiff.adapters.openai.load` wrapped as an `OpenAIRun` (what `fastdiff sample --openai-ckpt ... --flags ...`
    samples)."""
    model, diffusion = openai.load(checkpoint, flags, variant=variant, device=device, **kwargs)
    flags = model.openai_flags
    # Default steps: every step of timestep_respacing when it is set (as the upstream scripts sample), else 50.
    steps = diffusion.num_timesteps if flags["timestep_respacing"] else min(50, diffusion.num_timesteps)
    defaults = SampleConfig(steps=steps, num_samples=16, batch_size=16)
    size = flags["image_size"]
    return OpenAIRun(OpenAIRunConfig(flags, defaults), model, diffusion, (3, size, size), model.num_classes)
