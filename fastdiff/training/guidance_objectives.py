"""The training side of guidance: objectives for the networks that classifier guidance and Discriminator Guidance
differentiate at sampling time, and the data plumbing they need.

- `NoisyClassifierObjective`: ADM's noisy classifier (Dhariwal & Nichol 2021 §4; guided-diffusion's
  scripts/classifier_train.py): x_t = q_sample(x_0, t, ε) with t uniform, loss = CE(p_φ(y | x_t, t), y).
- `DiscriminatorObjective`: Discriminator Guidance (Kim et al. 2023 §3.2 L_φ, Algorithm 1): d_φ(x_t, t) tells
  diffused real data (y = 1) from diffused generated samples (y = 0), loss = λ(t) · BCE.
- `discriminator_dataset` (real + generated samples as one labelled ArrayDataset), `cached_samples` (generate the
  fake half once and keep it as .npz) and `load_classifier` (a trained classifier back from its run checkpoint).

Both objectives plug into fastdiff.training.Trainer as DiffusionObjective does (the TrainingObjective protocol):
all randomness of a step (t, ε) is drawn for the GLOBAL batch from the Trainer's generator, so a data-parallel run
does not depend on the world size; there is no state to checkpoint beyond that generator.
"""
from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from fastdiff.data.dataset import ArrayDataset, check_positive_int
from fastdiff.training.checkpoint import atomic_write_bytes
from fastdiff.training.objectives import BatchDraw, check_labels, run_objective

logger = logging.getLogger(__name__)

TIME_WEIGHTINGS = ("uniform",)


def check_t_range(t_range, num_timesteps: int) -> tuple[int, int]:
    """(t_lo, t_hi): the inclusive range of training timestep indices; None is the whole [0, T − 1]."""
    if t_range is None:
        return 0, num_timesteps - 1
    ok = (isinstance(t_range, (tuple, list)) and len(t_range) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in t_range))
    if not ok or not 0 <= t_range[0] <= t_range[1] < num_timesteps:
        raise ValueError(f"t_range must be None or a pair of ints (t_lo, t_hi) with 0 <= t_lo <= t_hi < "
                         f"num_timesteps={num_timesteps}, got {t_range!r}")
    return int(t_range[0]), int(t_range[1])


class _NoisedInputObjective:
    """What both guidance objectives share: t ~ U{t_lo, …, t_hi}, x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (DDPM eq. 4) from
    `diffusion`, the network called as diffusion.training_losses calls a model, and no sampler state."""

    num_classes: int

    def __init__(self, diffusion, t_range=None):
        if not hasattr(diffusion, "q_sample") or not hasattr(diffusion, "num_timesteps"):
            raise TypeError(f"diffusion must be a GaussianDiffusion, got {type(diffusion).__name__}")
        self.diffusion = diffusion
        self.t_range = check_t_range(t_range, diffusion.num_timesteps)

    def draw(self, batch_size: int, sample_shape, generator: torch.Generator) -> BatchDraw:
        """t: int64 [batch_size] uniform in [t_lo, t_hi], then ε: [batch_size, *sample_shape], from `generator` (on
        its device); the importance weights are 1."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        device = generator.device
        t = torch.randint(self.t_range[0], self.t_range[1] + 1, (batch_size,), generator=generator, device=device)
        noise = torch.randn((batch_size, *sample_shape), generator=generator, device=device)
        return BatchDraw(t, torch.ones(batch_size, device=device), noise)

    def forward_noised(self, model, x_start: torch.Tensor, draw: BatchDraw) -> tuple[torch.Tensor, BatchDraw]:
        """(model(x_t, t) [N, ...], draw on x_start's device) for x_start: [N, ...] and the N-row `draw`."""
        if len(draw) != x_start.shape[0]:
            raise ValueError(f"draw has {len(draw)} rows but x_start has {x_start.shape[0]}")
        if tuple(draw.noise.shape) != tuple(x_start.shape):
            raise ValueError(f"draw.noise has shape {tuple(draw.noise.shape)}, x_start {tuple(x_start.shape)}")
        draw = draw.to(x_start.device)
        x_t = self.diffusion.q_sample(x_start, draw.t, noise=draw.noise.to(x_start.dtype))
        # SpacedDiffusion maps its indices to the base process's timesteps, as in training_losses.
        out = self.diffusion.model_forward(model, x_t, draw.t)
        return out, draw

    def update_sampler(self, t: torch.Tensor, per_sample_losses: torch.Tensor) -> None:
        """No-op: the timesteps are uniform."""

    def __call__(self, model, x_start: torch.Tensor, y: torch.Tensor | None, generator: torch.Generator):
        """One batch (see DiffusionObjective.__call__): (loss scalar, terms dict of batch means)."""
        return run_objective(self, model, x_start, y, generator)

    def state_dict(self) -> dict:
        """Empty: all randomness comes from the Trainer's checkpointed generator."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Accept only the empty state of `state_dict()`."""
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")


class NoisyClassifierObjective(_NoisedInputObjective):
    """loss = mean_i CE(classifier(x_t^i, t_i), y_i): ADM's noisy classifier p_φ(y | x_t, t) (Dhariwal & Nichol 2021
    §4; guided-diffusion scripts/classifier_train.py with --noised True), the gradient ∇ₓ log p_φ of classifier
    guidance (their Algorithms 1–2).

    diffusion: the (unrespaced) GaussianDiffusion whose q(x_t | x_0) the classifier sees; num_classes: K, the
    classifier returns logits [N, K] and labels lie in [0, K); t_range: (t_lo, t_hi) inclusive, or None for every
    timestep (t_range=(0, 0) trains an almost clean classifier). Terms: "loss" (CE) and "acc@1" (top-1 accuracy),
    guided-diffusion's log names.
    """

    def __init__(self, diffusion, num_classes: int, t_range=None):
        super().__init__(diffusion, t_range)
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.num_classes = num_classes

    def losses(self, model, x_start: torch.Tensor, y: torch.Tensor | None, draw: BatchDraw):
        """(loss scalar, {"loss", "acc@1"} detached batch means, per-sample CE [N] detached) for x_start: [N, ...],
        y: int64 [N] in [0, num_classes) and the N-row `draw`."""
        if y is None:
            raise ValueError("y (class labels) is required to train a classifier")
        check_labels(y, self.num_classes)
        logits, draw = self.forward_noised(model, x_start, draw)
        n = x_start.shape[0]
        if tuple(logits.shape) != (n, self.num_classes):
            raise ValueError(f"the classifier must return logits [N, num_classes] = [{n}, {self.num_classes}], got "
                             f"{tuple(logits.shape)}")
        y = y.to(logits.device)
        per_sample = F.cross_entropy(logits.float(), y, reduction="none")
        loss = (per_sample * draw.weights).mean()
        terms = {"loss": per_sample.detach().mean(),
                 "acc@1": (logits.detach().argmax(dim=-1) == y).float().mean()}
        return loss, terms, per_sample.detach()


class DiscriminatorObjective(_NoisedInputObjective):
    """L_φ = E_t[λ(t) · (E_{p_r^t}[−log d_φ(x_t, t)] + E_{p_θ^t}[−log(1 − d_φ(x_t, t))])] (Kim et al. 2023 §3.2,
    Algorithm 1): the discriminator of Discriminator Guidance, whose logit log(d_φ/(1 − d_φ)) has the score
    correction c_φ = ∇ₓ logit as gradient.

    The model returns the logit [N] or [N, 1]; the data labels are y = 1 for real data and 0 for generated samples
    (`discriminator_dataset`), so num_classes = 2 and the Trainer passes y. diffusion: the GaussianDiffusion that
    perturbs both halves; time_weighting: "uniform" (λ = 1) or a callable λ(t: int64 [T] indices) -> [T]
    non-negative weights, evaluated once on every timestep at construction; t_range as in NoisyClassifierObjective.
    Terms: "loss" (unweighted BCE), "acc" (logit > 0 on real, < 0 on fake), "d_real" / "d_fake" (mean d_φ = σ(logit)
    over the real / generated rows of the batch; NaN when it has none).
    """

    num_classes = 2

    def __init__(self, diffusion, time_weighting: str | Callable = "uniform", t_range=None):
        super().__init__(diffusion, t_range)
        self.time_weighting = time_weighting
        self.time_weights = self._weight_table(time_weighting, diffusion.num_timesteps)

    @staticmethod
    def _weight_table(time_weighting, num_timesteps: int) -> torch.Tensor:
        """λ(t) for t = 0 … T − 1 as float32 [T], validated."""
        if isinstance(time_weighting, str):
            if time_weighting not in TIME_WEIGHTINGS:
                raise ValueError(f"time_weighting must be one of {TIME_WEIGHTINGS} or a callable t -> weights, got "
                                 f"{time_weighting!r}")
            return torch.ones(num_timesteps)
        if not callable(time_weighting):
            raise TypeError(f"time_weighting must be one of {TIME_WEIGHTINGS} or a callable t -> weights, got "
                             f"{type(time_weighting).__name__}")
        table = torch.as_tensor(time_weighting(torch.arange(num_timesteps)), dtype=torch.float32)
        if tuple(table.shape) != (num_timesteps,):
            raise ValueError(f"time_weighting(t) must return weights of t's shape [T] = [{num_timesteps}], got "
                             f"{tuple(table.shape)}")
        if not bool(torch.isfinite(table).all()) or bool((table < 0).any()):
            raise ValueError(f"time_weighting(t) must return finite weights >= 0, got values in "
                             f"[{float(table.min())}, {float(table.max())}]")
        return table

    def losses(self, model, x_start: torch.Tensor, y: torch.Tensor | None, draw: BatchDraw):
        """(loss scalar, {"loss", "acc", "d_real", "d_fake"} detached, per-sample λ(t)·BCE [N] detached) for
        x_start: [N, ...] (real and generated rows), y: int64 [N] in {0 = generated, 1 = real}, the N-row `draw`."""
        if y is None:
            raise ValueError("y (1 = real, 0 = generated) is required to train a discriminator")
        check_labels(y, 2, name="y (1 = real, 0 = generated)")
        logit, draw = self.forward_noised(model, x_start, draw)
        n = x_start.shape[0]
        if logit.dim() == 2 and logit.shape[1] == 1:
            logit = logit[:, 0]
        if tuple(logit.shape) != (n,):
            raise ValueError(f"the discriminator must return a logit [N] or [N, 1] with N = {n}, got "
                             f"{tuple(logit.shape)}")
        real = y.to(logit.device) == 1
        bce = F.binary_cross_entropy_with_logits(logit.float(), real.float(), reduction="none")
        per_sample = self.time_weights.to(logit.device)[draw.t] * bce
        loss = (per_sample * draw.weights).mean()
        d = torch.sigmoid(logit.detach().float())
        terms = {"loss": bce.detach().mean(), "acc": ((logit.detach() > 0) == real).float().mean(),
                 "d_real": d[real].mean(), "d_fake": d[~real].mean()}
        return loss, terms, per_sample.detach()


# ---------------------------------------------------------------------------------------------------- data


def discriminator_dataset(real, fake) -> ArrayDataset:
    """The labelled set of Algorithm 1 (Kim et al. 2023): x = cat(real, fake) as float32 [N_r + N_f, ...], y = 1 for
    the N_r real rows and 0 for the N_f generated rows; num_classes 2, class_names ["generated", "real"].

    real: [N_r, *data_shape], fake: [N_f, *data_shape] (tensors or arrays, floating point, same example shape).
    """
    parts = []
    for name, x in (("real", real), ("fake", fake)):
        x = torch.as_tensor(x)
        if not x.is_floating_point() or x.dim() < 2:
            raise ValueError(f"{name} must be a floating-point [N, *data_shape] tensor, got {x.dtype} of shape "
                             f"{tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} is empty: a discriminator needs both real and generated samples")
        parts.append(x.detach().to("cpu", torch.float32))
    if parts[0].shape[1:] != parts[1].shape[1:]:
        raise ValueError(f"real and fake must have the same example shape, got real {tuple(parts[0].shape)} and "
                         f"fake {tuple(parts[1].shape)}")
    y = torch.cat([torch.ones(len(parts[0]), dtype=torch.int64), torch.zeros(len(parts[1]), dtype=torch.int64)])
    return ArrayDataset(x=torch.cat(parts).contiguous(), y=y, num_classes=2, name="real-vs-generated",
                        class_names=["generated", "real"])


def cached_samples(path, make: Callable[[], torch.Tensor], n: int) -> torch.Tensor:
    """The first n generated samples, float32 [n, ...] on the CPU: read from the .npz at `path` (key "x", as
    `fastdiff sample` writes samples.npz) when it holds at least n, else x = make() (at least n samples), written
    to `path` atomically (temporary file + os.replace) and returned. DG trains on samples of the model it corrects,
    produced once (Kim et al. 2023 Algorithm 1, step 1)."""
    n = check_positive_int("n", n)
    path = Path(path)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                x = f["x"]
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"cached samples {str(path)!r} cannot be read as an .npz with key 'x' ({e}); delete the "
                             "file to regenerate them") from None
        if x.shape[0] >= n:
            return torch.from_numpy(np.ascontiguousarray(x[:n], dtype=np.float32))
        logger.info("%s holds %d samples, %d needed: generating", path, x.shape[0], n)
    x = make()
    if not isinstance(x, (torch.Tensor, np.ndarray)) or x.ndim < 1 or x.shape[0] < n:
        raise ValueError(f"make() must return a tensor of at least n={n} samples [N, ...], got "
                         f"{type(x).__name__} of shape {tuple(getattr(x, 'shape', ()))}")
    x = torch.as_tensor(x).detach().to("cpu", torch.float32).contiguous()
    buf = io.BytesIO()
    np.savez(buf, x=x.numpy())
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
    return x[:n]
