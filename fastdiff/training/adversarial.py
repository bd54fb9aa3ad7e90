"""Few-step adversarial denoising: SIDDM (Xu et al. 2023, "Semi-Implicit Denoising Diffusion Models") and its
DDGAN baseline (Xiao et al. 2022, "Tackling the Generative Learning Trilemma with Denoising Diffusion GANs").

Network call contract (image networks implement exactly this; shapes for data x: [N, ...]):

- generator `G(x_t, t, z, y=None) -> x0_pred`, x0_pred of x_t's shape; t: int64 [N] step indices in [0, T);
  z: [N, nz] ~ N(0, I), fresh for every step; y: int64 [N] labels only when the objective has num_classes.
- SIDDM discriminator `D(x_prev, t, y=None) -> (logit [N], afd_pred, denoised)`: afd_pred = C_ψ(x_{t−1})
  predicts x'_t (the AFD regression head), denoised predicts x_0 (the regulariser's output); both x_prev's shape.
- DDGAN discriminator `D(x_prev, t, x_t, y=None) -> logit [N]`.
- The Trainer's model is an `AdversarialPair(generator, discriminator)`; its state-dict keys are "generator.*" and
  "discriminator.*", and the Trainer keeps the EMA of the generator alone.

Indexing: step index t ∈ {0, …, T−1} is the paper's step t+1: x_t (the paper's) is the level t+1 of the
forward chain and x_{t−1} the level t, level 0 being the data x_0. With `diffusion` a GaussianDiffusion over the
few-step betas, q_sample(x_0, t) is level t+1, q_posterior_mean_variance(x_0, x_t, t) is q(x_{t−1} | x_t, x_0),
and β_t = diffusion.betas[t].

The schedule (`vp_sde_betas`) is DDGAN's discretised VP-SDE (their get_sigma_schedule, use_geometric=False):
t_i = ε + (1 − ε)·i/T, i = 0 … T (ε = 1e-3 keeps t_0 off zero), ᾱ(t) = exp(−½ t² (β_max − β_min) − t β_min)
(the VP-SDE marginal, Song et al. 2021 eq. 33) and β_i = 1 − ᾱ(t_i)/ᾱ(t_{i−1}), i = 1 … T; β_min = 0.1,
β_max = 20. Every T ends at ᾱ = 4.3e-5, so x_T is N(0, I) to 7e-3 in scale.

Losses (per sample, averaged over the batch; ‖·‖² the squared norm over every non-batch dimension, or its mean
with reduction="mean"):

- SIDDM total objective (§3.2): real x_{t−1} ~ q(x_{t−1} | x_0), x_t ~ q(x_t | x_{t−1}); fake
  x'_{t−1} ~ p_θ(x_{t−1} | x_t) = q(x_{t−1} | x_t, x_0 = G_θ(x_t, t, z)) (§3.2 eq. for p_θ); x'_t ~ q(x_t | x'_{t−1}).
  Discriminator player (φ, ψ): softplus(−D(x_{t−1})) + softplus(D(x'_{t−1})) + ‖C_ψ(x'_{t−1}) − x̄'_t‖²
  + λ_denoise ‖D_den(x_{t−1}) − x_0‖² (§3.3) [+ γ/2 ‖∇_{x_{t−1}} D(x_{t−1})‖², R1, when r1_gamma > 0], with
  x'_{t−1} detached (no gradient to θ).
  Generator player (θ): softplus(−D(x'_{t−1})) (non-saturating) + λ_AFD [(1 − β_t)‖x'_{t−1} − x_{t−1}‖²
  − ‖C_ψ(x'_{t−1}) − x̄'_t‖²] / β_t: the first part is the cross entropy H(p_θ(x_t | x_{t−1}), q(x_t | x_{t−1})),
  the second maximises the conditional entropy of p_θ(x_t | x_{t−1}) against the frozen C_ψ (the min_θ max_ψ
  E log p_ψ game of §3.2); gradients reach θ through x'_{t−1} (and C_ψ).
  x̄'_t = √(1 − β_t) x'_{t−1} is x'_t's mean under q(x_t | x'_{t−1}): with x'_t = x̄'_t + √β_t ε and ε independent of
  x'_{t−1}, E_ε ‖C − x'_t‖² = ‖C − x̄'_t‖² + β_t·d, so both players' expected losses and gradients are the paper's,
  without the variance of √β_t ε, which at few steps (β_t ≥ 0.85 for T ≤ 2) is nearly all of x'_t and reached
  the generator as noise of size ~λ_AFD ‖∂C_ψ/∂x'‖ (siddm-mog at T = 1 / 2, seed 0: 18 / 22 modes with the sampled
  x'_t, 22 / 23 with its mean; README, "Few-step adversarial denoising").
  λ_AFD = 0 is exactly the marginal GAN: neither player computes the AFD regression.
- DDGAN (eq. 6-7, with R1): discriminator softplus(−D(x_{t−1}, t, x_t)) + softplus(D(x'_{t−1}, t, x_t))
  + γ/2 ‖∇_{x_{t−1}} D(x_{t−1}, t, x_t)‖²; generator softplus(−D(x'_{t−1}, t, x_t)).

Both objectives are two-player objectives for fastdiff.training.Trainer: `players` = ("discriminator",
"generator") in update order, `losses(model, x_0, y, draw, player)` and `draw` giving all randomness of both phases
(the generator phase redraws t, ε and z on the same data batch, as DDGAN's train_ddgan.py does).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastdiff import ops
from fastdiff.diffusion import GaussianDiffusion, LossType, ModelMeanType, ModelVarType
from fastdiff.diffusion.gaussian_diffusion import _extract_into_tensor
from fastdiff.training.objectives import check_labels

PLAYERS = ("discriminator", "generator")
FEW_STEPS = (1, 2, 4, 8)
REDUCTIONS = ("sum", "mean")


# ---------------------------------------------------------------------------------------------------- schedule

def _check_steps(num_steps) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ValueError(f"num_steps (T) must be an int >= 1, got {num_steps!r}")
    return int(num_steps)


def vp_sde_alpha_bar(t, beta_min: float = 0.1, beta_max: float = 20.0):
    """ᾱ(t) = exp(−½ t² (β_max − β_min) − t β_min), the VP-SDE's signal power at time t ∈ [0, 1] (Song et al.
    2021 eq. 33; DDGAN's var_func_vp is 1 − ᾱ). t: float or float64 array."""
    return np.exp(-0.5 * np.asarray(t, dtype=np.float64) ** 2 * (beta_max - beta_min) - np.asarray(t) * beta_min)


def vp_sde_betas(num_steps: int, beta_min: float = 0.1, beta_max: float = 20.0, eps_small: float = 1e-3) -> np.ndarray:
    """DDGAN's few-step schedule: β_i = 1 − ᾱ(t_i)/ᾱ(t_{i−1}) for i = 1 … T with t_i = ε + (1 − ε)·i/T, float64 [T].

    num_steps: T ≥ 1; beta_min < beta_max, both > 0; eps_small: ε ∈ [0, 1) (DDGAN: 1e-3).
    """
    T = _check_steps(num_steps)
    if not (math.isfinite(beta_min) and math.isfinite(beta_max) and 0 < beta_min < beta_max):
        raise ValueError(f"beta_min and beta_max must satisfy 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
    if not 0.0 <= eps_small < 1.0:
        raise ValueError(f"eps_small must lie in [0, 1), got {eps_small}")
    t = eps_small + (1.0 - eps_small) * np.arange(T + 1, dtype=np.float64) / T
    ab = vp_sde_alpha_bar(t, beta_min, beta_max)
    return 1.0 - ab[1:] / ab[:-1]


def few_step_diffusion(num_steps: int, beta_min: float = 0.1, beta_max: float = 20.0,
                       eps_small: float = 1e-3) -> GaussianDiffusion:
    """A GaussianDiffusion over `vp_sde_betas(num_steps, ...)` with x_0-prediction (the generator's output) and the
    posterior variance β̃_t: its q_sample, q_posterior_mean_variance and step table serve SIDDM / DDGAN."""
    return GaussianDiffusion(betas=vp_sde_betas(num_steps, beta_min, beta_max, eps_small),
                             model_mean_type=ModelMeanType.START_X, model_var_type=ModelVarType.FIXED_SMALL,
                             loss_type=LossType.MSE)


# ---------------------------------------------------------------------------------------------------- chain math

def q_step(diffusion: GaussianDiffusion, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One forward step x_t = √(1 − β_t) x_{t−1} + √β_t ε, a sample of q(x_t | x_{t−1}) (DDPM eq. 2).

    x_prev, noise: [N, ...]; t: int64 [N] step indices. Differentiable in x_prev.
    """
    a = _extract_into_tensor(np.sqrt(diffusion.alphas), t, x_prev.shape)
    b = _extract_into_tensor(np.sqrt(diffusion.betas), t, x_prev.shape)
    return a.to(x_prev.dtype) * x_prev + b.to(x_prev.dtype) * noise


def q_sample_pairs(diffusion: GaussianDiffusion, x_start: torch.Tensor, t: torch.Tensor, noise_prev: torch.Tensor,
                   noise_step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_{t−1}, x_t): x_{t−1} ~ q(x_{t−1} | x_0) (DDPM eq. 4; x_0 itself at step index 0) and x_t ~ q(x_t | x_{t−1})
    (eq. 2), as DDGAN's q_sample_pairs. x_start, noise_prev, noise_step: [N, ...]; t: int64 [N]."""
    level = diffusion.q_sample(x_start, (t - 1).clamp(min=0), noise=noise_prev)
    first = (t == 0).view(-1, *([1] * (x_start.dim() - 1)))
    x_prev = torch.where(first, x_start, level)
    return x_prev, q_step(diffusion, x_prev, t, noise_step)


def posterior_sample(diffusion: GaussianDiffusion, x0_pred: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor,
                     noise: torch.Tensor) -> torch.Tensor:
    """x'_{t−1} = μ̃_t(x_t, x̂_0) + [t > 0] σ̃_t ε, a sample of q(x_{t−1} | x_t, x_0 = x̂_0) (DDPM eqs. 6-7; DDGAN eq. 8)
    through the fused posterior op; differentiable in x0_pred. x0_pred, x_t, noise: [N, ...]; t: int64 [N]."""
    mean, _, log_var = ops.posterior_mean_variance(x0_pred, x_t, diffusion.step_table(x_t.device), t)
    nonzero = (t != 0).to(mean.dtype).view(-1, *([1] * (x_t.dim() - 1)))
    return mean + nonzero * torch.exp(0.5 * log_var).to(mean.dtype) * noise


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Inside: `module`'s parameters do not require grad, so a graph built there sends no gradient to them (while
    still flowing through the module to its inputs); their flags are restored on exit."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield module
    finally:
        for p in params:
            p.requires_grad_(True)


def _generate_x0(generator, x_t: torch.Tensor, t: torch.Tensor, z: torch.Tensor, y) -> torch.Tensor:
    """G(x_t, t, z[, y]) with the contract's shape check."""
    x0 = generator(x_t, t, z) if y is None else generator(x_t, t, z, y=y)
    if tuple(x0.shape) != tuple(x_t.shape):
        raise ValueError(f"the generator must return x0_pred of x_t's shape {tuple(x_t.shape)}, got "
                         f"{tuple(x0.shape)}")
    return x0


@torch.no_grad()
def sample_few_step(generator, diffusion: GaussianDiffusion, shape, *, nz: int, seed: int | None = None,
                    rng: torch.Generator | None = None, y: torch.Tensor | None = None, device=None,
                    noise: torch.Tensor | None = None) -> torch.Tensor:
    """x_0: [shape] by T steps of p_θ(x_{t−1} | x_t) = q(x_{t−1} | x_t, x_0 = G(x_t, t, z)) from x_T ~ N(0, I).

    generator: G(x_t, t, z[, y]); diffusion: the few-step GaussianDiffusion it was trained with; shape: (N, ...);
    nz: the latent size (z: [N, nz] ~ N(0, I) fresh every step); randomness from `rng` (a torch.Generator on
    `device`), else a CPU-independent one seeded with `seed` on `device`, else torch's default; per step z is drawn
    before the posterior noise, and the last step (t = 0) adds none. noise: x_T instead of a draw.
    """
    nz = _check_nz(nz)
    shape = tuple(int(s) for s in shape)
    if device is None:
        param = next(iter(generator.parameters()), None) if hasattr(generator, "parameters") else None
        device = param.device if param is not None else torch.device("cpu")
    device = torch.device(device)
    if rng is None and seed is not None:
        rng = torch.Generator(device).manual_seed(int(seed))
    randn = lambda *s: torch.randn(s, generator=rng, device=device)  # noqa: E731
    x = randn(*shape) if noise is None else noise.to(device)
    if tuple(x.shape) != shape:
        raise ValueError(f"noise must have shape {shape}, got {tuple(x.shape)}")
    for i in reversed(range(diffusion.num_timesteps)):
        t = torch.full((shape[0],), i, dtype=torch.int64, device=device)
        x0 = _generate_x0(generator, x, t, randn(shape[0], nz), y)
        x = posterior_sample(diffusion, x0, x, t, randn(*shape) if i > 0 else torch.zeros_like(x))
    return x


# ---------------------------------------------------------------------------------------------------- networks

class AdversarialPair(nn.Module):
    """The two players as one module for the Trainer: `generator` (G_θ) and `discriminator` (D_φ, with C_ψ for
    SIDDM). Calling the pair calls the generator."""

    def __init__(self, generator: nn.Module, discriminator: nn.Module):
        super().__init__()
        for name, net in (("generator", generator), ("discriminator", discriminator)):
            if not isinstance(net, nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(net).__name__}")
        self.generator = generator
        self.discriminator = discriminator

    def forward(self, x_t, t, z, y=None):
        """G(x_t, t, z[, y]) -> x̂_0."""
        return self.generator(x_t, t, z) if y is None else self.generator(x_t, t, z, y=y)


# ---------------------------------------------------------------------------------------------------- randomness

@dataclass
class PhaseDraw:
    """One player's randomness for N samples: t: int64 [N]; eps_prev (x_{t−1} ~ q(x_{t−1}|x_0)), eps_step
    (x_t ~ q(x_t|x_{t−1})), eps_post (the posterior sample): each [N, ...]; z: [N, nz]."""

    t: torch.Tensor
    eps_prev: torch.Tensor
    eps_step: torch.Tensor
    z: torch.Tensor
    eps_post: torch.Tensor

    def _map(self, fn) -> PhaseDraw:
        return PhaseDraw(*(fn(v) for v in (self.t, self.eps_prev, self.eps_step, self.z, self.eps_post)))

    def shard(self, start: int, stop: int) -> PhaseDraw:
        return self._map(lambda v: v[start:stop])

    def to(self, device) -> PhaseDraw:
        return self._map(lambda v: v.to(device))


@dataclass
class AdversarialDraw:
    """The randomness of one two-player step: {player: PhaseDraw} for the GLOBAL batch (shard per rank)."""

    phases: dict[str, PhaseDraw]

    def __len__(self) -> int:
        return int(next(iter(self.phases.values())).t.shape[0])

    @property
    def t(self) -> torch.Tensor:
        """The generator phase's step indices [N]."""
        return self.phases["generator"].t

    def shard(self, start: int, stop: int) -> AdversarialDraw:
        """Rows [start, stop) of every phase (this rank's slice of the global batch)."""
        if not 0 <= start <= stop <= len(self):
            raise ValueError(f"shard [start, stop) = [{start}, {stop}) must lie in [0, {len(self)}]")
        return AdversarialDraw({k: v.shard(start, stop) for k, v in self.phases.items()})

    def to(self, device) -> AdversarialDraw:
        return AdversarialDraw({k: v.to(device) for k, v in self.phases.items()})


# ---------------------------------------------------------------------------------------------------- objectives

def _check_nz(nz) -> int:
    if isinstance(nz, bool) or not isinstance(nz, (int, np.integer)) or nz < 1:
        raise ValueError(f"nz must be an int >= 1, got {nz!r}")
    return int(nz)


def _check_weight(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


class _AdversarialObjective:
    """What SIDDM and DDGAN share: the diffusion, latent size, labels, the randomness of both phases, the fake
    sample x'_{t−1} and the player protocol the Trainer calls."""

    players = PLAYERS
    ema_players = ("generator",)

    def __init__(self, diffusion: GaussianDiffusion, nz: int, num_classes: int | None, reduction: str):
        if not hasattr(diffusion, "q_sample") or not hasattr(diffusion, "step_table"):
            raise TypeError(f"diffusion must be a GaussianDiffusion (few_step_diffusion(T)), got "
                            f"{type(diffusion).__name__}")
        self.diffusion = diffusion
        self.nz = _check_nz(nz)
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 1):
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        self.num_classes = num_classes
        if reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    # ------------------------------------------------------------------ protocol

    def draw(self, batch_size: int, sample_shape, generator: torch.Generator) -> AdversarialDraw:
        """Both phases' randomness (discriminator first; per phase t, ε_prev, ε_step, z, ε_post) for the
        GLOBAL batch from `generator`, on its device."""
        if batch_size <= 0:
            raise ValueError(f"batch_size must be > 0, got {batch_size}")
        dev, shape = generator.device, (batch_size, *sample_shape)
        randn = lambda *s: torch.randn(s, generator=generator, device=dev)  # noqa: E731
        phases = {}
        for player in self.players:
            t = torch.randint(0, self.diffusion.num_timesteps, (batch_size,), generator=generator, device=dev)
            phases[player] = PhaseDraw(t, randn(*shape), randn(*shape), randn(batch_size, self.nz), randn(*shape))
        return AdversarialDraw(phases)

    def player_parameters(self, model, player: str) -> list[tuple[str, nn.Parameter]]:
        """(name in model.state_dict(), parameter) of what `player` updates: the pair's `player` sub-module."""
        if player not in self.players:
            raise ValueError(f"player must be one of {self.players}, got {player!r}")
        net = getattr(model, player, None)
        if not isinstance(net, nn.Module):
            raise TypeError(f"model must have a `{player}` sub-module (an AdversarialPair), got "
                            f"{type(model).__name__}")
        return [(f"{player}.{n}", p) for n, p in net.named_parameters() if p.requires_grad]

    def update_sampler(self, t: torch.Tensor, per_sample_losses: torch.Tensor) -> None:
        """No-op: step indices are uniform."""

    def state_dict(self) -> dict:
        """Empty: all randomness comes from the Trainer's checkpointed generator."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ValueError(f"{type(self).__name__} has no state, got keys {sorted(state)}")

    def losses(self, model, x_start: torch.Tensor, y: torch.Tensor | None, draw: AdversarialDraw,
               player: str = "generator"):
        """(loss scalar, terms {name: detached batch mean}, per-sample loss [N] detached) of `player` for the data
        x_start: [N, ...] (y: int64 [N] when class-conditional) and its rows of `draw`."""
        if player not in self.players:
            raise ValueError(f"player must be one of {self.players}, got {player!r}")
        phase = draw.phases[player] if isinstance(draw, AdversarialDraw) else draw
        if int(phase.t.shape[0]) != x_start.shape[0]:
            raise ValueError(f"draw has {int(phase.t.shape[0])} rows but x_start has {x_start.shape[0]}")
        if tuple(phase.eps_prev.shape) != tuple(x_start.shape):
            raise ValueError(f"draw noise has shape {tuple(phase.eps_prev.shape)}, x_start {tuple(x_start.shape)}")
        phase = phase.to(x_start.device)
        y = self._labels(y)
        if player == "discriminator":  # x'_{t−1} is drawn without a graph: no gradient reaches θ
            per_sample, terms = self._discriminator_losses(model, x_start, y, phase)
        else:  # D_φ and C_ψ are frozen for θ's loss: gradients pass through them to x'_{t−1} only
            with frozen(model.discriminator):
                per_sample, terms = self._generator_losses(model, x_start, y, phase)
        return per_sample.mean(), {k: v.detach().float().mean() for k, v in terms.items()}, per_sample.detach()

    # ------------------------------------------------------------------ shared pieces

    def _labels(self, y):
        if self.num_classes is None:
            return None
        if y is None:
            raise ValueError(f"y (class labels) is required: the objective is class-conditional "
                             f"(num_classes={self.num_classes})")
        return check_labels(y, self.num_classes)

    def _sq(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """‖a − b‖² per sample [N] (sum, or mean with reduction="mean", over non-batch dimensions), in fp32."""
        d = (a.float() - b.float()).square().flatten(1)
        return d.sum(1) if self.reduction == "sum" else d.mean(1)

    def _pairs(self, x_start, phase: PhaseDraw):
        x_prev, x_t = q_sample_pairs(self.diffusion, x_start, phase.t, phase.eps_prev.to(x_start.dtype),
                                     phase.eps_step.to(x_start.dtype))
        return x_prev, x_t

    def _fake(self, model, x_t, phase: PhaseDraw, y) -> torch.Tensor:
        """x'_{t−1} ~ p_θ(x_{t−1} | x_t) = q(x_{t−1} | x_t, x_0 = G_θ(x_t, t, z))."""
        x0 = _generate_x0(model.generator, x_t, phase.t, phase.z.to(x_t.dtype), y)
        return posterior_sample(self.diffusion, x0, x_t, phase.t, phase.eps_post.to(x_t.dtype))

    def _discriminate(self, model, x_start, y, phase: PhaseDraw):
        """The discriminator phase's forward: (x_{t−1}, x'_{t−1}, D's output on x_{t−1}, D's output on x'_{t−1}).
        x'_{t−1} is drawn without a graph (no gradient reaches θ); x_{t−1} requires grad when the R1 penalty is on,
        and its pass runs on the backend that has R1's double backward (`_r1_backend`)."""
        x_prev, x_t = self._pairs(x_start, phase)
        with torch.no_grad():
            fake = self._fake(model, x_t, phase, y)
        x_prev = x_prev.detach().requires_grad_(self.r1_gamma > 0)
        with _r1_backend(self.r1_gamma):
            real_out = self._call_d(model, x_prev, phase.t, x_t, y)
        return x_prev, fake, real_out, self._call_d(model, fake, phase.t, x_t, y)

    def _beta(self, t: torch.Tensor) -> torch.Tensor:
        """β_t as float32 [N]."""
        return torch.from_numpy(self.diffusion.betas).to(t.device)[t].float()


def _r1_backend(r1_gamma: float):
    """The fastdiff backend of the discriminator's pass on real samples: "reference" when the R1 penalty needs its
    double backward (the fused attention backward kernels and PyTorch's flash SDPA have none), else unchanged."""
    return ops.use_backend("reference") if r1_gamma > 0 else contextlib.nullcontext()


def _discriminator_gan_loss(logit_real: torch.Tensor, logit_fake: torch.Tensor, x_prev: torch.Tensor,
                            r1_gamma: float) -> tuple[torch.Tensor, dict]:
    """The discriminator's GAN loss per sample [N], softplus(−D(real)) + softplus(D(fake)) + γ/2 ‖∇_{x_{t−1}} D(real)‖²
    (Mescheder et al. 2018's R1, differentiable for D's update; only when γ > 0, x_prev requiring grad), and its
    terms "d_real", "d_fake"[, "r1"]."""
    terms = {"d_real": F.softplus(-logit_real), "d_fake": F.softplus(logit_fake)}
    loss = terms["d_real"] + terms["d_fake"]
    if r1_gamma > 0:
        (grad,) = torch.autograd.grad(logit_real.sum(), x_prev, create_graph=True)
        terms["r1"] = grad.float().square().flatten(1).sum(1)
        loss = loss + 0.5 * r1_gamma * terms["r1"]
    return loss, terms


def _logit(out, n: int, what: str) -> torch.Tensor:
    if out.dim() == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if tuple(out.shape) != (n,):
        raise ValueError(f"the discriminator's {what} must be [N] = [{n}], got {tuple(out.shape)}")
    return out.float()


class SIDDMObjective(_AdversarialObjective):
    """SIDDM's semi-implicit objective (Xu et al. 2023 §3.2 total objective, §3.3 regulariser); see the module
    docstring for both players' losses.

    diffusion: few_step_diffusion(T); nz: latent size of z; lambda_afd: λ_AFD ≥ 0 (0: the marginal GAN alone);
    lambda_denoise: weight ≥ 0 of the discriminator's denoising regulariser ‖D_den(x_{t−1}, t) − x_0‖²;
    num_classes: labels passed to both networks as y, or None; reduction: "sum" (the papers' ‖·‖²) or "mean" over
    the non-batch dimensions of every squared error; r1_gamma: γ ≥ 0 of an optional R1 penalty
    γ/2 ‖∇_{x_{t−1}} D_φ(x_{t−1}, t)‖² on real x_{t−1} (as DDGANObjective's). R1 is not in the paper's objective:
    default 0 (off); siddm-mog sets DDGAN's γ, which at T ≤ 2 keeps modes the paper's recipe drops (README).
    Terms: discriminator "d_real", "d_fake" (softplus losses), "afd_regression", "denoise"[, "r1"]; generator "g_adv",
    "afd_cross_entropy" ((1 − β)‖x'_{t−1} − x_{t−1}‖²/β), "afd_entropy" (−‖C_ψ(x'_{t−1}) − x̄'_t‖²/β).
    """

    def __init__(self, diffusion: GaussianDiffusion, nz: int, lambda_afd: float = 1.0, lambda_denoise: float = 1.0,
                 num_classes: int | None = None, reduction: str = "sum", r1_gamma: float = 0.0):
        super().__init__(diffusion, nz, num_classes, reduction)
        self.lambda_afd = _check_weight("lambda_afd", lambda_afd)
        self.lambda_denoise = _check_weight("lambda_denoise", lambda_denoise)
        self.r1_gamma = _check_weight("r1_gamma", r1_gamma)

    def _call_d(self, model, x_prev, t, x_t, y):
        """D(x_{t−1}, t[, y]) -> (logit [N], afd_pred, denoised); x_t is unused (SIDDM's D sees x_{t−1} alone)."""
        out = model.discriminator(x_prev, t) if y is None else model.discriminator(x_prev, t, y=y)
        if not isinstance(out, (tuple, list)) or len(out) != 3:
            raise ValueError("the SIDDM discriminator must return (logit [N], afd_pred, denoised)")
        logit, afd, den = out
        for name, v in (("afd_pred", afd), ("denoised", den)):
            if tuple(v.shape) != tuple(x_prev.shape):
                raise ValueError(f"the SIDDM discriminator's {name} must have x_prev's shape {tuple(x_prev.shape)}, "
                                 f"got {tuple(v.shape)}")
        return _logit(logit, x_prev.shape[0], "logit"), afd, den

    def _afd_mean(self, fake: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x̄'_t = √(1 − β_t) x'_{t−1}, the mean of q(x_t | x'_{t−1}): the AFD regression's target (module docstring)."""
        return q_step(self.diffusion, fake, t, torch.zeros_like(fake))

    def _discriminator_losses(self, model, x_start, y, phase):
        x_prev, fake, (logit_real, _, denoised), (logit_fake, afd_pred, _) = self._discriminate(model, x_start, y,
                                                                                                  phase)
        loss, terms = _discriminator_gan_loss(logit_real, logit_fake, x_prev, self.r1_gamma)
        if self.lambda_afd > 0:  # C_ψ: max_ψ E log p_ψ(x'_t | x'_{t−1}), a Gaussian likelihood: an L2 regression
            terms["afd_regression"] = self._sq(afd_pred, self._afd_mean(fake, phase.t))
            loss = loss + terms["afd_regression"]
        if self.lambda_denoise > 0:
            terms["denoise"] = self._sq(denoised, x_start)
            loss = loss + self.lambda_denoise * terms["denoise"]
        return loss, terms

    def _generator_losses(self, model, x_start, y, phase):
        x_prev, x_t = self._pairs(x_start, phase)
        fake = self._fake(model, x_t, phase, y)
        logit_fake, afd_pred, _ = self._call_d(model, fake, phase.t, x_t, y)
        terms = {"g_adv": F.softplus(-logit_fake)}
        loss = terms["g_adv"]
        if self.lambda_afd > 0:
            beta = self._beta(phase.t)
            terms["afd_cross_entropy"] = (1.0 - beta) * self._sq(fake, x_prev) / beta
            terms["afd_entropy"] = -self._sq(afd_pred, self._afd_mean(fake, phase.t)) / beta
            loss = loss + self.lambda_afd * (terms["afd_cross_entropy"] + terms["afd_entropy"])
        return loss, terms


class DDGANObjective(_AdversarialObjective):
    """DDGAN (Xiao et al. 2022 eqs. 6-7): a joint discriminator D_φ(x_{t−1}, t, x_t) with the non-saturating loss and
    the R1 penalty γ/2 ‖∇_{x_{t−1}} D_φ(x_{t−1}, t, x_t)‖² on real pairs (their train_ddgan.py, lazy_reg off).

    diffusion, nz, num_classes, reduction: as SIDDMObjective; r1_gamma: γ ≥ 0 (DDGAN: 0.02-2 by data set).
    Terms: discriminator "d_real", "d_fake", "r1"; generator "g_adv".
    """

    def __init__(self, diffusion: GaussianDiffusion, nz: int, r1_gamma: float = 0.05,
                 num_classes: int | None = None, reduction: str = "sum"):
        super().__init__(diffusion, nz, num_classes, reduction)
        self.r1_gamma = _check_weight("r1_gamma", r1_gamma)

    def _call_d(self, model, x_prev, t, x_t, y):
        out = model.discriminator(x_prev, t, x_t) if y is None else model.discriminator(x_prev, t, x_t, y=y)
        return _logit(out, x_prev.shape[0], "logit")

    def _discriminator_losses(self, model, x_start, y, phase):
        x_prev, _, logit_real, logit_fake = self._discriminate(model, x_start, y, phase)
        loss, terms = _discriminator_gan_loss(logit_real, logit_fake, x_prev, self.r1_gamma)
        return loss, terms

    def _generator_losses(self, model, x_start, y, phase):
        _, x_t = self._pairs(x_start, phase)
        fake = self._fake(model, x_t, phase, y)
        terms = {"g_adv": F.softplus(-self._call_d(model, fake, phase.t, x_t, y))}
        return terms["g_adv"], terms


__all__ = [
    "AdversarialDraw", "AdversarialPair", "DDGANObjective", "FEW_STEPS", "PLAYERS", "PhaseDraw", "SIDDMObjective",
    "few_step_diffusion", "frozen", "posterior_sample", "q_sample_pairs", "q_step", "sample_few_step", "vp_sde_alpha_bar",
    "vp_sde_betas",
]
