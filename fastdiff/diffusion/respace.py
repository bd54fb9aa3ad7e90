"""Timestep respacing (Improved DDPM §4): sample with a subsequence of the trained timesteps."""
from __future__ import annotations

import torch

from fastdiff.diffusion.gaussian_diffusion import GaussianDiffusion
from fastdiff.errors import check_whole_numbers
from fastdiff.ops import betas_for_timesteps


class SpacedDiffusion(GaussianDiffusion):
    """A diffusion process that keeps only `use_timesteps` of a base process (Improved DDPM §4):
    β'_i = 1 − ᾱ_{τ_i}/ᾱ_{τ_{i-1}}, so ᾱ' at step i equals the base ᾱ at τ_i.

    use_timesteps: collection of kept base timesteps; kwargs: the base GaussianDiffusion's arguments.
    timestep_map[i] = τ_i is passed to the model (rescaled by 1000/T_base when rescale_timesteps).
    """

    def __init__(self, use_timesteps, **kwargs):
        if "betas" not in kwargs:
            raise TypeError("SpacedDiffusion needs betas= (the base process) among its keyword arguments")
        self.use_timesteps = set(check_whole_numbers("use_timesteps", use_timesteps))
        self.original_num_steps = len(kwargs["betas"])
        base = GaussianDiffusion(**kwargs)
        if not self.use_timesteps:
            raise ValueError("use_timesteps must not be empty")
        if min(self.use_timesteps) < 0 or max(self.use_timesteps) >= base.num_timesteps:
            raise ValueError(f"use_timesteps must lie in [0, {base.num_timesteps}), got min "
                             f"{min(self.use_timesteps)} max {max(self.use_timesteps)}")
        self.timestep_map = sorted(self.use_timesteps)
        kwargs["betas"] = betas_for_timesteps(base.alphas_cumprod, self.timestep_map)
        super().__init__(**kwargs)

    def p_mean_variance(self, model, *args, **kwargs):  # pylint: disable=signature-differs
        return super().p_mean_variance(self._wrap_model(model), *args, **kwargs)

    def training_losses(self, model, *args, **kwargs):  # pylint: disable=signature-differs
        return super().training_losses(self._wrap_model(model), *args, **kwargs)

    def condition_mean(self, cond_fn, *args, **kwargs):
        return super().condition_mean(self._wrap_model(cond_fn), *args, **kwargs)

    def condition_score(self, cond_fn, *args, **kwargs):
        return super().condition_score(self._wrap_model(cond_fn), *args, **kwargs)

    def _wrap_model(self, model):
        if isinstance(model, _WrappedModel):
            return model
        return _WrappedModel(model, self.timestep_map, self.rescale_timesteps, self.original_num_steps)

    def _scale_timesteps(self, t):
        # The wrapped model maps and scales timesteps.
        return t


class _WrappedModel:
    """Calls model(x, timestep_map[t] (· 1000/T_base when rescale_timesteps), **kwargs) for respaced indices t."""

    def __init__(self, model, timestep_map, rescale_timesteps, original_num_steps):
        self.model = model
        self.timestep_map = timestep_map
        self.rescale_timesteps = rescale_timesteps
        self.original_num_steps = original_num_steps
        self._maps: dict[tuple, torch.Tensor] = {}

    def _map_tensor(self, ts: torch.Tensor) -> torch.Tensor:
        key = (ts.device, ts.dtype)
        if key not in self._maps:
            self._maps[key] = torch.tensor(self.timestep_map, device=ts.device, dtype=ts.dtype)
        return self._maps[key]

    def __call__(self, x, ts, **kwargs):
        new_ts = self._map_tensor(ts)[ts]
        if self.rescale_timesteps:
            new_ts = new_ts.float() * (1000.0 / self.original_num_steps)
        return self.model(x, new_ts, **kwargs)


