"""Timestep respacing (Improved DDPM §4): sample with a subsequence of the trained timesteps."""
from __future__ import annotations

import torch

from fastdiff.diffusion.gaussian_diffusion import GaussianDiffusion
from fastdiff.errors import check_whole_numbers
from fastdiff.ops import betas_for_timesteps


def _ddim_striding(num_timesteps: int, section_counts: str) -> set:
    """"ddimN": the DDIM paper's integer stride, range(0, T, s) with exactly N elements."""
    try:
        desired_count = int(section_counts[len("ddim"):])
    except ValueError:
        raise ValueError(f"section_counts {section_counts!r} must be 'ddimN' with an integer N") from None
    if not 0 < desired_count <= num_timesteps:
        raise ValueError(f"section_counts {section_counts!r} asks for {desired_count} steps; it must be in "
                         f"[1, num_timesteps = {num_timesteps}]")
    for stride in range(1, num_timesteps + 1):
        if len(range(0, num_timesteps, stride)) == desired_count:
            return set(range(0, num_timesteps, stride))
    raise ValueError(f"section_counts {section_counts!r}: cannot take exactly {desired_count} of "
                     f"{num_timesteps} steps with an integer stride")


def _parse_section_counts(section_counts) -> list[int]:
    if isinstance(section_counts, str):
        try:
            return [int(x) for x in section_counts.split(",")]
        except ValueError:
            raise ValueError(f"section_counts must be 'ddimN' or comma-separated integers, "
                             f"got {section_counts!r}") from None
    counts = check_whole_numbers("section_counts", section_counts)
    if not counts:
        raise ValueError("section_counts must not be empty")
    return counts


def space_timesteps(num_timesteps: int, section_counts) -> set:
    """The kept timesteps: T is cut into len(section_counts) near-equal sections (the first T % K one longer)
    and section i is strided to section_counts[i] evenly spaced, rounded steps.

    E.g. T = 300 with [10, 15, 20]: 10 steps from 0..99, 15 from 100..199, 20 from 200..299.
    section_counts: a list of ints, a comma-separated string of them, or "ddimN" for the DDIM paper's fixed
    integer stride (one section). Returns a set of ints in [0, T).
    """
    if int(num_timesteps) != num_timesteps or num_timesteps <= 0:
        raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
    num_timesteps = int(num_timesteps)
    if isinstance(section_counts, str) and section_counts.startswith("ddim"):
        return _ddim_striding(num_timesteps, section_counts)
    counts = _parse_section_counts(section_counts)
    if sum(counts) > num_timesteps:
        raise ValueError(f"section_counts {section_counts!r} asks for {sum(counts)} steps, more than "
                         f"num_timesteps = {num_timesteps}")
    size_per, extra = divmod(num_timesteps, len(counts))
    start_idx, all_steps = 0, []
    for i, section_count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if section_count < 0 or size < section_count:
            raise ValueError(f"section_counts {section_counts!r}: cannot divide section {i} of {size} steps "
                             f"into {section_count}")
        frac_stride = 1 if section_count <= 1 else (size - 1) / (section_count - 1)
        cur_idx = 0.0  # repeated addition (not j·stride) so rounding matches guided-diffusion's steps exactly
        for _ in range(section_count):
            all_steps.append(start_idx + round(cur_idx))
            cur_idx += frac_stride
        start_idx += size
    return set(all_steps)


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


