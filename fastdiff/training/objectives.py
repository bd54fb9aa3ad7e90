"""Training objectives: the per-batch loss of a diffusion model, as guided-diffusion's TrainLoop computes it.

One `DiffusionObjective` covers DDPM's L_simple (LossType.MSE, fixed variance; DDPM eq. 14), Improved DDPM's
L_hybrid (RESCALED_MSE with ModelVarType.LEARNED_RANGE; eq. 16), L_vlb alone (KL) with importance-sampled
timesteps (loss-second-moment sampler, eq. 18), class-conditional training (model kwarg y) and classifier-free
training (Ho & Salimans 2022: labels dropped to a null class with probability p_uncond). The loss math itself is
`GaussianDiffusion.training_losses`; this module only draws the randomness and weights the result.

All randomness of a batch comes from one torch.Generator and is drawn for the GLOBAL batch (`draw`), so that under
data parallelism each rank takes its slice and the run does not depend on the world size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from fastdiff.diffusion import (
    GaussianDiffusion,
    LossAwareSampler,
    ScheduleSampler,
    create_named_schedule_sampler,
)


@dataclass
class BatchDraw:
    """The random quantities of one batch of N samples.

    t: int64 [N] timestep indices; weights: float32 [N] importance weights 1/(T p_t); noise: ε [N, ...];
    drop: bool [N] labels replaced by the null class (classifier-free training), or None.
    """

    t: torch.Tensor
    weights: torch.Tensor
    noise: torch.Tensor
    drop: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.t.shape[0])

    def shard(self, start: int, stop: int) -> BatchDraw:
        """Rows [start, stop) of every field (this rank's slice of the global batch)."""
        if not 0 <= start <= stop <= len(self):
            raise ValueError(f"shard [start, stop) = [{start}, {stop}) must lie in [0, {len(self)}]")
        return BatchDraw(self.t[start:stop], self.weights[start:stop], self.noise[start:stop],
                         None if self.drop is None else self.drop[start:stop])

    def to(self, device) -> BatchDraw:
        """Every field on `device`."""
        return BatchDraw(self.t.to(device), self.weights.to(device), self.noise.to(device),
                         None if self.drop is None else self.drop.to(device))


@runtime_checkable
class TrainingObjective(Protocol):
    """What the Trainer calls on an objective (DiffusionObjective, NoisyClassifierObjective,
    DiscriminatorObjective): `num_classes` (None: the data's labels are not passed), `draw` (all randomness of
    the GLOBAL batch from the Trainer's generator), `losses` on this rank's shard, `update_sampler` after a good
    step, and `state_dict` / `load_state_dict` for checkpoints."""

    num_classes: int | None

    def draw(self, batch_size: int, sample_shape, generator: torch.Generator) -> BatchDraw: ...

    def losses(self, model, x_start: torch.Tensor, y: torch.Tensor | None, draw: BatchDraw): ...

    def update_sampler(self, t: torch.Tensor, per_sample_losses: torch.Tensor) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


def check_labels(y, num_classes: int, name: str = "y") -> torch.Tensor:
    """y unchanged when it is an int64 [N] tensor with values in [0, num_classes); else a ValueError naming `name`
    and the values found."""
    if not isinstance(y, torch.Tensor) or y.dim() != 1 or y.dtype != torch.int64:
        raise ValueError(f"{name} must be int64 [N], got "
                         f"{getattr(y, 'dtype', type(y).__name__)} of shape {tuple(getattr(y, 'shape', ()))}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{name} must lie in [0, num_classes={num_classes}), got values in "
                         f"[{int(y.min())}, {int(y.max())}]")
    return y


def run_objective(objective: TrainingObjective, model, x_start: torch.Tensor, y: torch.Tensor | None,
                  generator: torch.Generator):
    """One batch of `objective` outside the Trainer: draw from `generator`, compute the loss, update the timestep
    sampler. x_start: [N, C, ...]; y: int64 [N] or None. Returns (loss scalar, terms dict of batch means)."""
    draw = objective.draw(x_start.shape[0], tuple(x_start.shape[1:]), generator)
    loss, terms, per_sample = objective.losses(model, x_start, y, draw)
    objective.update_sampler(draw.t.to(x_start.device), per_sample)
    return loss, terms


def sample_timesteps(sampler: ScheduleSampler, batch_size: int, generator: torch.Generator):
    """t ~ p_t = w_t / Σw and importance weights 1/(T p_t) (Improved DDPM eq. 18) from the Trainer's checkpointed
    `generator`: (int64 [batch_size], float32 [batch_size]) on the generator's device."""
    return sampler.sample(batch_size, generator.device, generator=generator)


@dataclass
class DiffusionObjective:
    """loss = mean_i w_i · L(x_0^i, t_i) with L = diffusion.training_losses(...)["loss"] and t_i, w_i from
    schedule_sampler.

    diffusion: a GaussianDiffusion (or SpacedDiffusion) whose loss_type / model_var_type select the objective;
    schedule_sampler: "uniform", "loss-second-moment" or a ScheduleSampler for `diffusion`; num_classes: the number
    of real classes for a class-conditional model (None: unconditional, labels are ignored); p_uncond: probability
    of replacing a label by the null class `num_classes` (classifier-free guidance training, Ho & Salimans 2022
    §3.2), so the model needs num_classes + 1 label embeddings (`model_num_classes`); 0 disables.
    """

    diffusion: GaussianDiffusion
    schedule_sampler: str | ScheduleSampler = "uniform"
    p_uncond: float = 0.0
    num_classes: int | None = None
    _sampler: ScheduleSampler = field(init=False, repr=False)

    def __post_init__(self):
        if not hasattr(self.diffusion, "training_losses") or not hasattr(self.diffusion, "num_timesteps"):
            raise TypeError(f"diffusion must be a GaussianDiffusion, got {type(self.diffusion).__name__}")
        if isinstance(self.schedule_sampler, str):
            self._sampler = create_named_schedule_sampler(self.schedule_sampler, self.diffusion)
        elif isinstance(self.schedule_sampler, ScheduleSampler):
            self._sampler = self.schedule_sampler
        else:
            raise TypeError("schedule_sampler must be 'uniform', 'loss-second-moment' or a ScheduleSampler, "
                            f"got {self.schedule_sampler!r}")
        if len(self._sampler.weights()) != self.diffusion.num_timesteps:
            raise ValueError(f"schedule_sampler has {len(self._sampler.weights())} timesteps but diffusion has "
                             f"{self.diffusion.num_timesteps}")
        if self.num_classes is not None and (isinstance(self.num_classes, bool)
                                             or not isinstance(self.num_classes, int) or self.num_classes < 1):
            raise ValueError(f"num_classes must be a positive int or None, got {self.num_classes!r}")
        if not isinstance(self.p_uncond, (int, float)) or not 0.0 <= self.p_uncond < 1.0:
            raise ValueError(f"p_uncond must lie in [0, 1), got {self.p_uncond!r}")
        if self.p_uncond > 0 and self.num_classes is None:
            raise ValueError(f"p_uncond={self.p_uncond} (classifier-free training) needs num_classes")

    @property
    def sampler(self) -> ScheduleSampler:
        """The ScheduleSampler in use."""
        return self._sampler

    @property
    def null_class(self) -> int | None:
        """The label index meaning "no class" (num_classes) when p_uncond > 0, else None."""
        return self.num_classes if self.p_uncond > 0 else None

    @property
    def model_num_classes(self) -> int | None:
        """The `num_classes` to build the UNet with: num_classes, + 1 for the null class when p_uncond > 0."""
        if self.num_classes is None:
            return None
        return self.num_classes + (1 if self.p_uncond > 0 else 0)

    # ------------------------------------------------------------------ randomness

    def draw(self, batch_size: int, sample_shape, generator: torch.Generator) -> BatchDraw:
        """Draw t, weights, ε: [batch_size, *sample_shape] and the label-dropout mask, in that order, from
        `generator` (on its device)."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        t, weights = sample_timesteps(self._sampler, batch_size, generator)
        noise = torch.randn((batch_size, *sample_shape), generator=generator, device=generator.device)
        drop = None
        if self.p_uncond > 0:
            drop = torch.rand(batch_size, generator=generator, device=generator.device) < self.p_uncond
        return BatchDraw(t, weights, noise, drop)

    def labels(self, y: torch.Tensor | None, drop: torch.Tensor | None) -> torch.Tensor | None:
        """The labels the model sees: y: int64 [N] validated in [0, num_classes), with rows where drop: bool [N]
        set to the null class; None for an unconditional objective."""
        if self.num_classes is None:
            return None
        if y is None:
            raise ValueError(f"y (class labels) is required: the objective is class-conditional "
                             f"(num_classes={self.num_classes})")
        check_labels(y, self.num_classes)
        if drop is None:
            return y
        return torch.where(drop.to(y.device), torch.full_like(y, self.num_classes), y)

    # ------------------------------------------------------------------ loss

    def losses(self, model, x_start: torch.Tensor, y: torch.Tensor | None, draw: BatchDraw):
        """(loss scalar, terms {name: detached batch mean}, per-sample loss [N] detached) for x_start: [N, ...]
        with the randomness `draw` (N rows). loss = mean(w · L); terms are the unweighted training_losses terms."""
        if len(draw) != x_start.shape[0]:
            raise ValueError(f"draw has {len(draw)} rows but x_start has {x_start.shape[0]}")
        if tuple(draw.noise.shape) != tuple(x_start.shape):
            raise ValueError(f"draw.noise has shape {tuple(draw.noise.shape)}, x_start {tuple(x_start.shape)}")
        draw = draw.to(x_start.device)
        labels = self.labels(y, draw.drop)
        model_kwargs = {} if labels is None else {"y": labels}
        out = self.diffusion.training_losses(model, x_start, draw.t, model_kwargs=model_kwargs,
                                             noise=draw.noise.to(x_start.dtype))
        per_sample = out["loss"]
        loss = (per_sample * draw.weights).mean()
        terms = {name: value.detach().float().mean() for name, value in out.items()}
        return loss, terms, per_sample.detach()

    def update_sampler(self, t: torch.Tensor, per_sample_losses: torch.Tensor) -> None:
        """Report this rank's (t [N], loss [N]) to a LossAwareSampler (all-gathered over ranks, as guided-diffusion
        does); no-op for other samplers."""
        if isinstance(self._sampler, LossAwareSampler):
            self._sampler.update_with_local_losses(t, per_sample_losses)

    def __call__(self, model, x_start: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator):
        """One batch: draw from `generator`, compute the weighted loss, update a loss-aware sampler.

        x_start: [N, C, ...]; y: int64 [N] or None. Returns (loss scalar, terms dict of batch means).
        """
        return run_objective(self, model, x_start, y, generator)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """The sampler's numpy state (e.g. LossSecondMomentResampler's loss history) as tensors, for checkpoints."""
        return {name: torch.from_numpy(value.copy()) for name, value in vars(self._sampler).items()
                if isinstance(value, np.ndarray)}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`; names and shapes must match this objective's sampler."""
        own = self.state_dict()
        if set(state) != set(own):
            raise ValueError(f"objective state has keys {sorted(state)}, expected {sorted(own)}")
        for name, value in state.items():
            if tuple(value.shape) != tuple(own[name].shape):
                raise ValueError(f"objective state {name!r} has shape {tuple(value.shape)}, expected "
                                 f"{tuple(own[name].shape)}")
            setattr(self._sampler, name, value.numpy().copy())
