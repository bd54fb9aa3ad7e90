"""Timestep samplers for training (Improved DDPM §3.3, importance sampling of L_vlb, eq. 18)."""
from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch
import torch.distributed as dist

SAMPLER_NAMES = ("uniform", "loss-second-moment")


def create_named_schedule_sampler(name: str, diffusion) -> ScheduleSampler:
    """"uniform" -> UniformSampler, "loss-second-moment" -> LossSecondMomentResampler, for `diffusion`."""
    if name == "uniform":
        return UniformSampler(diffusion)
    if name == "loss-second-moment":
        return LossSecondMomentResampler(diffusion)
    raise ValueError(f"name must be one of {list(SAMPLER_NAMES)}, got {name!r}")


class ScheduleSampler(ABC):
    """A distribution over timesteps; sample() draws t ~ p_t = w_t/Σw and returns importance weights
    1/(T p_t), so the weighted objective's mean is unchanged."""

    @abstractmethod
    def weights(self) -> np.ndarray:
        """Positive, unnormalised weights, float [T]."""

    def sample(self, batch_size: int, device, generator: torch.Generator | None = None):
        """(timesteps int64 [batch_size], weights float32 [batch_size]) on `device`, drawn with numpy's global RNG
        as guided-diffusion does, or with `generator` (a torch.Generator on `device`; same distribution and
        weights) so a training run's timesteps follow one checkpointed generator."""
        w = self.weights()
        p = w / np.sum(w)
        if generator is not None:
            pt = torch.from_numpy(np.asarray(p, dtype=np.float64)).to(device)
            t = torch.multinomial(pt, batch_size, replacement=True, generator=generator)
            return t, (1.0 / (len(p) * pt[t])).float()
        indices_np = np.random.choice(len(p), size=(batch_size,), p=p)
        indices = torch.from_numpy(indices_np).long().to(device)
        weights = torch.from_numpy(1 / (len(p) * p[indices_np])).float().to(device)
        return indices, weights


class UniformSampler(ScheduleSampler):
    """p_t = 1/T."""

    def __init__(self, diffusion):
        self.diffusion = diffusion
        self._weights = np.ones([diffusion.num_timesteps])

    def weights(self):
        return self._weights


class LossAwareSampler(ScheduleSampler):
    """A sampler whose weights follow the training losses reported to it."""

    def update_with_local_losses(self, local_ts: torch.Tensor, local_losses: torch.Tensor) -> None:
        """Report this rank's timesteps int [B] and losses [B]; under torch.distributed every rank's are
        all-gathered first so all ranks keep the same weights."""
        if not (dist.is_available() and dist.is_initialized()):
            self.update_with_all_losses(local_ts.tolist(), local_losses.tolist())
            return
        batch_sizes = [torch.tensor([0], dtype=torch.int32, device=local_ts.device)
                       for _ in range(dist.get_world_size())]
        dist.all_gather(batch_sizes, torch.tensor([len(local_ts)], dtype=torch.int32, device=local_ts.device))
        batch_sizes = [int(x.item()) for x in batch_sizes]
        max_bs = max(batch_sizes)
        # all_gather needs equal sizes: pad every rank's batch to the largest.
        timestep_batches = [torch.zeros(max_bs).to(local_ts) for _ in batch_sizes]
        loss_batches = [torch.zeros(max_bs).to(local_losses) for _ in batch_sizes]
        dist.all_gather(timestep_batches, _pad(local_ts, max_bs))
        dist.all_gather(loss_batches, _pad(local_losses, max_bs))
        timesteps = [int(x) for y, bs in zip(timestep_batches, batch_sizes) for x in y[:bs].tolist()]
        losses = [float(x) for y, bs in zip(loss_batches, batch_sizes) for x in y[:bs].tolist()]
        self.update_with_all_losses(timesteps, losses)

    @abstractmethod
    def update_with_all_losses(self, ts, losses) -> None:
        """Update the weights from every rank's (timestep, loss) pairs; deterministic, so ranks stay in sync."""


def _pad(x: torch.Tensor, size: int) -> torch.Tensor:
    return torch.cat([x, x.new_zeros(size - len(x))]) if len(x) < size else x


class LossSecondMomentResampler(LossAwareSampler):
    """p_t ∝ √E[L_t²] over the last `history_per_term` losses per t, mixed with `uniform_prob` of uniform
    (Improved DDPM eq. 18); uniform until every t has a full history."""

    def __init__(self, diffusion, history_per_term: int = 10, uniform_prob: float = 0.001):
        if history_per_term <= 0:
            raise ValueError(f"history_per_term must be > 0, got {history_per_term}")
        if not 0.0 <= uniform_prob <= 1.0:
            raise ValueError(f"uniform_prob must lie in [0, 1], got {uniform_prob}")
        self.diffusion = diffusion
        self.history_per_term = history_per_term
        self.uniform_prob = uniform_prob
        self._loss_history = np.zeros([diffusion.num_timesteps, history_per_term], dtype=np.float64)
        self._loss_counts = np.zeros([diffusion.num_timesteps], dtype=np.int64)

    def weights(self):
        if not self._warmed_up():
            return np.ones([self.diffusion.num_timesteps], dtype=np.float64)
        weights = np.sqrt(np.mean(self._loss_history ** 2, axis=-1))
        weights /= np.sum(weights)
        weights *= 1 - self.uniform_prob
        weights += self.uniform_prob / len(weights)
        return weights

    def update_with_all_losses(self, ts, losses):
        for t, loss in zip(ts, losses):
            if self._loss_counts[t] == self.history_per_term:
                # Shift out the oldest loss.
                self._loss_history[t, :-1] = self._loss_history[t, 1:]
                self._loss_history[t, -1] = loss
            else:
                self._loss_history[t, self._loss_counts[t]] = loss
                self._loss_counts[t] += 1

    def _warmed_up(self) -> bool:
        return bool((self._loss_counts == self.history_per_term).all())
