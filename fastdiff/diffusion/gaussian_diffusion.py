"""GaussianDiffusion: training and sampling utilities with guided-diffusion's names and numbers.

Notation (DDPM): β_t, α_t = 1 − β_t, ᾱ_t = ∏_{s≤t} α_s; timesteps are 0-based indices into [T] arrays.
Schedule arrays are float64 numpy [T] from `fastdiff.ops.schedule_coefficients`; per-step math that a fused op
implements (q_sample, posterior, DDPM and DDIM steps) goes through `fastdiff.ops` on a [T, 12] table cached
per device. Loops without denoised_fn / cond_fn run on `fastdiff.samplers`.
"""
from __future__ import annotations

import enum
from collections.abc import Callable, Iterator

import numpy as np
import torch

from fastdiff import ops
from fastdiff.diffusion.losses import discretized_gaussian_log_likelihood, mean_flat, normal_kl
from fastdiff.ops import common as C

_LOG2 = float(np.log(2.0))


class ModelMeanType(enum.Enum):
    """What the model's first C output channels predict."""

    PREVIOUS_X = enum.auto()  # μ_θ(x_t, t), the mean of x_{t-1}
    START_X = enum.auto()     # x_0
    EPSILON = enum.auto()     # ε (DDPM eq. 11)
    V = enum.auto()           # v = √ᾱ ε − √(1−ᾱ) x_0 (Salimans & Ho 2022)


class ModelVarType(enum.Enum):
    """How Σ_θ(x_t, t) is obtained; LEARNED_RANGE interpolates between FIXED_SMALL and FIXED_LARGE (Improved DDPM
    eq. 15)."""

    LEARNED = enum.auto()
    FIXED_SMALL = enum.auto()
    FIXED_LARGE = enum.auto()
    LEARNED_RANGE = enum.auto()


class LossType(enum.Enum):
    MSE = enum.auto()          # L_simple (DDPM eq. 14), + L_vlb when variances are learned (Improved DDPM eq. 16)
    RESCALED_MSE = enum.auto()  # as MSE, with the L_vlb term scaled by T/1000 (λ = 0.001 at T = 1000)
    KL = enum.auto()           # the variational bound L_vlb (Improved DDPM eqs. 4-6)
    RESCALED_KL = enum.auto()  # KL · T, an estimate of the full bound

    def is_vb(self) -> bool:
        return self in (LossType.KL, LossType.RESCALED_KL)


_LEARNED_VAR = (ModelVarType.LEARNED, ModelVarType.LEARNED_RANGE)


def _extract_into_tensor(arr: np.ndarray, timesteps: torch.Tensor, broadcast_shape) -> torch.Tensor:
    """arr[timesteps] as float32 [N, 1, ...] expanded to broadcast_shape (guided-diffusion's gather)."""
    res = torch.from_numpy(arr).to(device=timesteps.device)[timesteps].float()
    return res.reshape(-1, *([1] * (len(broadcast_shape) - 1))).expand(broadcast_shape)


def _check_enum(name: str, value, enum_cls):
    if not isinstance(value, enum_cls):
        raise TypeError(f"{name} must be a {enum_cls.__name__} member ({', '.join(m.name for m in enum_cls)}), "
                        f"got {value!r}")
    return value


def _check_model_kwargs(model_kwargs) -> dict:
    """model_kwargs (extra keyword arguments of every model call, e.g. {"y": labels}) as a dict; None is {}."""
    if model_kwargs is None:
        return {}
    if not isinstance(model_kwargs, dict):
        raise TypeError(f"model_kwargs must be a dict of the model's extra arguments (e.g. {{'y': labels}}) or "
                        f"None, got {type(model_kwargs).__name__}")
    return model_kwargs


def _model_device(model, noise, device):
    """guided-diffusion's device rule (a model parameter's device), with noise's device or CPU for plain callables."""
    if device is not None:
        return torch.device(device)
    if noise is not None:
        return noise.device
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


class GaussianDiffusion:
    """Utilities for training and sampling diffusion models (guided-diffusion's GaussianDiffusion).

    betas: [T] (β_t for t = 0..T-1); model_mean_type / model_var_type / loss_type: the enums above;
    rescale_timesteps: pass float timesteps t·1000/T to the model instead of integer indices.
    """

    def __init__(self, *, betas, model_mean_type, model_var_type, loss_type, rescale_timesteps=False):
        self.model_mean_type = _check_enum("model_mean_type", model_mean_type, ModelMeanType)
        self.model_var_type = _check_enum("model_var_type", model_var_type, ModelVarType)
        self.loss_type = _check_enum("loss_type", loss_type, LossType)
        self.rescale_timesteps = bool(rescale_timesteps)
        # The same choices as the fused ops and samplers name them (None: PREVIOUS_X has no fused step).
        self.prediction = (None if self.model_mean_type == ModelMeanType.PREVIOUS_X
                           else C.prediction_name(self.model_mean_type))
        self.var_type = C.var_type_name(self.model_var_type)
        coefs = ops.schedule_coefficients(betas)
        for name, arr in coefs.items():
            setattr(self, name, arr)
        self.num_timesteps = int(self.betas.shape[0])
        self.alphas = 1.0 - self.betas
        self._tables: dict[torch.device, torch.Tensor] = {}

    # ------------------------------------------------------------------ tables and timesteps

    def step_table(self, device) -> torch.Tensor:
        """The [T, 12] fp32 coefficient table of this process on `device` (built once per device)."""
        device = torch.device(device)
        if device not in self._tables:
            self._tables[device] = ops.step_table(self.betas, device)
        return self._tables[device]

    def _check_t(self, x: torch.Tensor, t) -> torch.Tensor:
        """t: int [N] timestep indices for x: [N, ...], validated against T."""
        return C.check_coefs_t(x, self.step_table(x.device), t)

    def _scale_timesteps(self, t: torch.Tensor) -> torch.Tensor:
        """Timesteps as the model sees them: t, or t·1000/T as float when rescale_timesteps."""
        if self.rescale_timesteps:
            return t.float() * (1000.0 / self.num_timesteps)
        return t

    # ------------------------------------------------------------------ forward process q

    def q_mean_variance(self, x_start: torch.Tensor, t: torch.Tensor):
        """q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I) (DDPM eq. 4; Improved DDPM eq. 8). x_start: [N, ...]; returns (mean, variance,
        log_variance), each x_start's shape."""
        mean = _extract_into_tensor(self.sqrt_alphas_cumprod, t, x_start.shape) * x_start
        variance = _extract_into_tensor(1.0 - self.alphas_cumprod, t, x_start.shape)
        log_variance = _extract_into_tensor(self.log_one_minus_alphas_cumprod, t, x_start.shape)
        return mean, variance, log_variance

    def q_sample(self, x_start: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x_t = √ᾱ_t x_0 + √(1 − ᾱ_t) ε (DDPM eq. 4; Improved DDPM eq. 9) via the fused op. x_start, noise: [N, ...]; t: int [N]."""
        if noise is None:
            noise = torch.randn_like(x_start)
        t = self._check_t(x_start, t)
        return ops.q_sample(x_start, noise, self.step_table(x_start.device), t)

    def q_posterior_mean_variance(self, x_start: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """q(x_{t-1} | x_t, x_0) = N(μ̃_t, β̃_t I) (DDPM eqs. 6-7; Improved DDPM eqs. 10-12) via the fused op.

        x_start, x_t: [N, ...]; returns (mean, variance, log_variance_clipped), each x_t's shape.
        """
        t = self._check_t(x_start, t)
        mean, var, log_var = ops.posterior_mean_variance(x_start, x_t, self.step_table(x_start.device), t)
        return mean, var.float().expand(x_t.shape), log_var.float().expand(x_t.shape)

    # ------------------------------------------------------------------ reverse process p

    def _split_model_output(self, model_output: torch.Tensor, x: torch.Tensor):
        """[N, C or 2C, ...] model output -> (mean part [N, C, ...], variance part [N, C, ...] or None)."""
        B, Ch = x.shape[:2]
        channels = 2 * Ch if self.model_var_type in _LEARNED_VAR else Ch
        expected = (B, channels, *x.shape[2:])
        if tuple(model_output.shape) != expected:
            raise ValueError(f"model output must have shape {expected} for model_var_type="
                             f"{self.model_var_type.name} and x of shape {tuple(x.shape)}, "
                             f"got {tuple(model_output.shape)}")
        if channels == Ch:
            return model_output, None
        return torch.split(model_output, Ch, dim=1)

    def _model_variance(self, model_var_values, x: torch.Tensor, t: torch.Tensor):
        """(Σ_θ, log Σ_θ), x's shape: exp(v) (LEARNED), exp(frac log β_t + (1 − frac) log β̃_t) with
        frac = (v + 1)/2 (LEARNED_RANGE, Improved DDPM eq. 15), β̃_t (FIXED_SMALL) or (β̃_1, β_1, β_2, …)
        (FIXED_LARGE, whose t = 0 value gives a better decoder likelihood)."""
        if self.model_var_type == ModelVarType.LEARNED:
            log_variance = model_var_values
        elif self.model_var_type == ModelVarType.LEARNED_RANGE:
            min_log = _extract_into_tensor(self.posterior_log_variance_clipped, t, x.shape)
            max_log = _extract_into_tensor(self.log_betas, t, x.shape)
            frac = (model_var_values + 1) / 2
            log_variance = frac * max_log + (1 - frac) * min_log
        elif self.model_var_type == ModelVarType.FIXED_LARGE:
            log_variance = _extract_into_tensor(self.fixed_large_log_variance, t, x.shape)
            return _extract_into_tensor(np.exp(self.fixed_large_log_variance), t, x.shape), log_variance
        else:
            return (_extract_into_tensor(self.posterior_variance, t, x.shape),
                    _extract_into_tensor(self.posterior_log_variance_clipped, t, x.shape))
        return torch.exp(log_variance), log_variance

    def _predict_xstart(self, model_output: torch.Tensor, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x̂_0 from the model's mean output, per model_mean_type (before denoised_fn and clipping)."""
        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            return self._predict_xstart_from_xprev(x_t=x, t=t, xprev=model_output)
        if self.model_mean_type == ModelMeanType.START_X:
            return model_output
        if self.model_mean_type == ModelMeanType.V:
            return self._predict_xstart_from_v(x_t=x, t=t, v=model_output)
        return self._predict_xstart_from_eps(x_t=x, t=t, eps=model_output)

    def p_mean_variance(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None) -> dict:
        """Apply the model to get p_θ(x_{t-1} | x_t) = N(μ_θ, Σ_θ) (Improved DDPM eq. 3) and x̂_0; μ_θ is the
        posterior mean at x̂_0 (eq. 11, equal to eq. 13 for ε-prediction), Σ_θ as in _model_variance (eq. 15).

        model(x, t', **model_kwargs) -> [N, C or 2C, ...]; x: [N, C, ...]; t: int [N]. denoised_fn is applied to
        x̂_0 before clipping to [-1, 1] (clip_denoised). Returns {"mean", "variance", "log_variance",
        "pred_xstart"}, each x's shape.
        """
        model_kwargs = _check_model_kwargs(model_kwargs)
        B = x.shape[0]
        if tuple(t.shape) != (B,):
            raise ValueError(f"t must have shape [N] = [{B}], got {tuple(t.shape)}")
        model_output = model(x, self._scale_timesteps(t), **model_kwargs)
        model_output, model_var_values = self._split_model_output(model_output, x)
        model_variance, model_log_variance = self._model_variance(model_var_values, x, t)
        pred_xstart = self._predict_xstart(model_output, x, t)
        if denoised_fn is not None:
            pred_xstart = denoised_fn(pred_xstart)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            model_mean = model_output
        else:
            model_mean, _, _ = self.q_posterior_mean_variance(x_start=pred_xstart, x_t=x, t=t)
        return {"mean": model_mean, "variance": model_variance, "log_variance": model_log_variance,
                "pred_xstart": pred_xstart}

    def _coef(self, col: int, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Column `col` of the step table at t, as [N, 1, ...] in x's promoted-with-fp32 dtype."""
        dtype = torch.promote_types(x.dtype, torch.float32)
        return C.gather(self.step_table(x.device), t, col, x.dim(), dtype)

    def _predict_xstart_from_eps(self, x_t, t, eps):
        """x̂_0 = x_t/√ᾱ_t − √(1/ᾱ_t − 1) ε (Improved DDPM eq. 9 solved for x_0; with eq. 11 it gives eq. 13)."""
        t = self._check_t(x_t, t)
        dtype = torch.promote_types(x_t.dtype, torch.float32)
        return C.predict_x0(ops.PREDICTIONS["epsilon"], x_t, eps, self.step_table(x_t.device), t, dtype)

    def _predict_xstart_from_v(self, x_t, t, v):
        """x̂_0 = √ᾱ_t x_t − √(1 − ᾱ_t) v (v-prediction, Salimans & Ho 2022 §4)."""
        t = self._check_t(x_t, t)
        dtype = torch.promote_types(x_t.dtype, torch.float32)
        return C.predict_x0(ops.PREDICTIONS["v"], x_t, v, self.step_table(x_t.device), t, dtype)

    def _predict_xstart_from_xprev(self, x_t, t, xprev):
        """x̂_0 = (μ − coef2 x_t)/coef1, inverting the posterior mean (DDPM eq. 7)."""
        return (_extract_into_tensor(1.0 / self.posterior_mean_coef1, t, x_t.shape) * xprev
                - _extract_into_tensor(self.posterior_mean_coef2 / self.posterior_mean_coef1, t, x_t.shape) * x_t)

    def _predict_eps_from_xstart(self, x_t, t, pred_xstart):
        """ε̂ = (x_t/√ᾱ_t − x̂_0)/√(1/ᾱ_t − 1) (DDPM eq. 4 solved for ε)."""
        t = self._check_t(x_t, t)
        return ((self._coef(ops.table.SQRT_RECIP_AC, t, x_t) * x_t - pred_xstart)
                / self._coef(ops.table.SQRT_RECIPM1_AC, t, x_t))

    def _v_target(self, x_start, t, noise):
        """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0, the V regression target."""
        t = self._check_t(x_start, t)
        sqrt_ac = self._coef(ops.table.SQRT_AC, t, x_start)
        return sqrt_ac * noise - self._coef(ops.table.SQRT_1M_AC, t, x_start) * x_start

    # ------------------------------------------------------------------ guidance hooks

    def condition_mean(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """μ' = μ + Σ ∇_x log p(y | x_t) (Sohl-Dickstein et al. 2015; ADM Algorithm 1). Returns the new mean."""
        model_kwargs = _check_model_kwargs(model_kwargs)
        gradient = cond_fn(x, self._scale_timesteps(t), **model_kwargs)
        return p_mean_var["mean"].float() + p_mean_var["variance"] * gradient.float()

    def condition_score(self, cond_fn, p_mean_var, x, t, model_kwargs=None):
        """ε' = ε̂ − √(1 − ᾱ_t) ∇_x log p(y | x_t) (Song et al. 2020; ADM Algorithm 2): p_mean_var with the
        conditioned pred_xstart and mean."""
        model_kwargs = _check_model_kwargs(model_kwargs)
        alpha_bar = _extract_into_tensor(self.alphas_cumprod, t, x.shape)
        eps = self._predict_eps_from_xstart(x, t, p_mean_var["pred_xstart"])
        eps = eps - (1 - alpha_bar).sqrt() * cond_fn(x, self._scale_timesteps(t), **model_kwargs)
        out = p_mean_var.copy()
        out["pred_xstart"] = self._predict_xstart_from_eps(x, t, eps)
        out["mean"], _, _ = self.q_posterior_mean_variance(x_start=out["pred_xstart"], x_t=x, t=t)
        return out

    # ------------------------------------------------------------------ single steps

    def _can_fuse(self, denoised_fn, cond_fn) -> bool:
        """Whether a step is exactly one fused op: no hooks on x̂_0 or the mean, and x̂_0 is not derived from μ."""
        return denoised_fn is None and cond_fn is None and self.model_mean_type != ModelMeanType.PREVIOUS_X

    @staticmethod
    def _step_noise(x, noise, seed, offset):
        """The step's z: the given tensor, Philox(seed, offset) when seeded, else _randn_like(x)."""
        if noise is not None:
            return noise
        if seed is not None:
            return ops.randn_like(x, seed, offset)
        return _randn_like(x)

    def p_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None, *,
                 noise=None, seed=None, offset=0) -> dict:
        """x_{t-1} = μ_θ + [t > 0] σ_θ z (DDPM Algorithm 2; with cond_fn, ADM Algorithm 1).

        x: [N, C, ...]; t: int [N]. z is `noise`, Philox(seed, offset) or torch.randn_like(x) (drawn after the
        model call, as guided-diffusion). Returns {"sample", "pred_xstart"}.
        """
        if self._can_fuse(denoised_fn, cond_fn):
            return self._fused_p_sample(model, x, t, clip_denoised, model_kwargs, noise, seed, offset)
        out = self.p_mean_variance(model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                                   model_kwargs=model_kwargs)
        noise = self._step_noise(x, noise, seed, offset)
        if cond_fn is not None:
            out["mean"] = self.condition_mean(cond_fn, out, x, t, model_kwargs=model_kwargs)
        nonzero_mask = (t != 0).float().view(-1, *([1] * (x.dim() - 1)))
        sample = out["mean"] + nonzero_mask * torch.exp(0.5 * out["log_variance"]) * noise
        return {"sample": sample, "pred_xstart": out["pred_xstart"]}

    def model_forward(self, model, x: torch.Tensor, t: torch.Tensor, **model_kwargs):
        """model(x, t as the model was trained to see it, **model_kwargs) for this process's timestep indices t: [N]
        (a respaced process maps them to the base process's; rescale_timesteps scales them to [0, 1000))."""
        return self._wrap_model(model)(x, self._scale_timesteps(t), **model_kwargs)

    def _model_output(self, model, x, t, model_kwargs):
        """The model's raw output at t, shape-checked against model_var_type."""
        out = self.model_forward(model, x, t, **_check_model_kwargs(model_kwargs))
        self._split_model_output(out, x)
        return out

    def _fused_p_sample(self, model, x, t, clip_denoised, model_kwargs, noise, seed, offset) -> dict:
        t = self._check_t(x, t)
        model_output = self._model_output(model, x, t, model_kwargs)
        if noise is None and seed is None:
            noise = _randn_like(x)
        sample, pred_xstart = ops.ddpm_step(
            x, model_output, self.step_table(x.device), t, prediction=self.prediction,
            var_type=self.model_var_type.name.lower(), clip_denoised=clip_denoised, noise=noise, seed=seed,
            offset=offset, return_x0=True)
        return {"sample": sample, "pred_xstart": pred_xstart}

    def ddim_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, cond_fn=None, model_kwargs=None,
                    eta=0.0, *, noise=None, seed=None, offset=0) -> dict:
        """DDIM step (Song et al. eq. 12): x_{t-1} = √ᾱ_{t-1} x̂_0 + √(1 − ᾱ_{t-1} − σ²) ε̂ + [t > 0] σ z with
        σ = η √((1 − ᾱ_{t-1})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t-1}) (eq. 16); ε̂ re-derived from x̂_0; cond_fn as ADM
        Algorithm 2. Same arguments as p_sample. Returns {"sample", "pred_xstart"}."""
        if self._can_fuse(denoised_fn, cond_fn):
            return self._fused_ddim_sample(model, x, t, clip_denoised, model_kwargs, eta, noise, seed, offset)
        out = self.p_mean_variance(model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                                   model_kwargs=model_kwargs)
        if cond_fn is not None:
            out = self.condition_score(cond_fn, out, x, t, model_kwargs=model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar = _extract_into_tensor(self.alphas_cumprod, t, x.shape)
        alpha_bar_prev = _extract_into_tensor(self.alphas_cumprod_prev, t, x.shape)
        sigma = eta * torch.sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) * torch.sqrt(1 - alpha_bar / alpha_bar_prev)
        noise = self._step_noise(x, noise, seed, offset)
        mean_pred = out["pred_xstart"] * torch.sqrt(alpha_bar_prev) + torch.sqrt(1 - alpha_bar_prev - sigma ** 2) * eps
        nonzero_mask = (t != 0).float().view(-1, *([1] * (x.dim() - 1)))
        return {"sample": mean_pred + nonzero_mask * sigma * noise, "pred_xstart": out["pred_xstart"]}

    def _fused_ddim_sample(self, model, x, t, clip_denoised, model_kwargs, eta, noise, seed, offset) -> dict:
        t = self._check_t(x, t)
        model_output = self._model_output(model, x, t, model_kwargs)
        if noise is None and seed is None:
            noise = _randn_like(x)  # drawn even at η = 0, as guided-diffusion, so RNG streams line up
        sample, pred_xstart = ops.ddim_step(
            x, model_output, self.step_table(x.device), t, eta=eta, prediction=self.prediction,
            clip_denoised=clip_denoised, noise=noise, seed=seed, offset=offset, return_x0=True)
        return {"sample": sample, "pred_xstart": pred_xstart}

    def ddim_reverse_sample(self, model, x, t, clip_denoised=True, denoised_fn=None, model_kwargs=None,
                            eta=0.0) -> dict:
        """Deterministic DDIM inversion x_t -> x_{t+1} = √ᾱ_{t+1} x̂_0 + √(1 − ᾱ_{t+1}) ε̂ (eq. 12 reversed, η = 0)."""
        if eta != 0.0:
            raise ValueError(f"ddim_reverse_sample is the deterministic ODE: eta must be 0.0, got {eta}")
        out = self.p_mean_variance(model, x, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn,
                                   model_kwargs=model_kwargs)
        eps = self._predict_eps_from_xstart(x, t, out["pred_xstart"])
        alpha_bar_next = _extract_into_tensor(self.alphas_cumprod_next, t, x.shape)
        mean_pred = out["pred_xstart"] * torch.sqrt(alpha_bar_next) + torch.sqrt(1 - alpha_bar_next) * eps
        return {"sample": mean_pred, "pred_xstart": out["pred_xstart"]}

    # ------------------------------------------------------------------ sampling loops

    def p_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                      model_kwargs=None, device=None, progress=False, *, seed=None, use_fused=True):
        """Samples x_0: [shape] by ancestral sampling from x_T (`noise`, or drawn). See p_sample_loop_progressive."""
        final = None
        for final in self.p_sample_loop_progressive(
                model, shape, noise=noise, clip_denoised=clip_denoised, denoised_fn=denoised_fn, cond_fn=cond_fn,
                model_kwargs=model_kwargs, device=device, progress=progress, seed=seed, use_fused=use_fused):
            pass
        return final["sample"]

    def p_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                  cond_fn=None, model_kwargs=None, device=None, progress=False, *, seed=None,
                                  use_fused=True) -> Iterator[dict]:
        """Yield p_sample's {"sample", "pred_xstart"} for t = T-1 .. 0, without gradients.

        shape: (N, C, ...); noise: x_T of that shape (else torch.randn, or Philox(seed, 0) when seeded).
        seed: draw every step's z from fastdiff's in-kernel Philox stream (step i at offset (i+1)·2^32) instead
        of torch.randn_like. Without denoised_fn / cond_fn (and for non-PREVIOUS_X models) the loop runs on
        fastdiff.samplers.ddpm_steps; use_fused=False forces guided-diffusion's per-step loop.
        """
        img = self._initial_noise(model, shape, noise, device, seed)
        if use_fused and self._can_fuse(denoised_fn, cond_fn):
            from fastdiff.samplers import ddpm_steps
            steps = ddpm_steps(
                self._sampler_model(model, img), img, range(self.num_timesteps), model_kwargs,
                alphas_cumprod=self.alphas_cumprod, prediction=self.prediction,
                var_type=self.model_var_type.name.lower(), clip_denoised=clip_denoised, seed=seed,
                disable=not progress)
            yield from _no_grad_steps(steps)
            return
        step = lambda x, t, **kw: self.p_sample(model, x, t, clip_denoised=clip_denoised,
                                                denoised_fn=denoised_fn, cond_fn=cond_fn,
                                                model_kwargs=model_kwargs, **kw)
        yield from self._per_step_loop(step, img, progress, seed)

    def ddim_sample_loop(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None, cond_fn=None,
                         model_kwargs=None, device=None, progress=False, eta=0.0, *, seed=None, use_fused=True):
        """Samples x_0: [shape] by DDIM from x_T. See ddim_sample_loop_progressive."""
        final = None
        for final in self.ddim_sample_loop_progressive(
                model, shape, noise=noise, clip_denoised=clip_denoised, denoised_fn=denoised_fn, cond_fn=cond_fn,
                model_kwargs=model_kwargs, device=device, progress=progress, eta=eta, seed=seed,
                use_fused=use_fused):
            pass
        return final["sample"]

    def ddim_sample_loop_progressive(self, model, shape, noise=None, clip_denoised=True, denoised_fn=None,
                                     cond_fn=None, model_kwargs=None, device=None, progress=False, eta=0.0, *,
                                     seed=None, use_fused=True) -> Iterator[dict]:
        """Yield ddim_sample's {"sample", "pred_xstart"} for t = T-1 .. 0 (respace with SpacedDiffusion for fewer
        steps). Arguments as p_sample_loop_progressive; the fused path is fastdiff.samplers.ddim_steps."""
        img = self._initial_noise(model, shape, noise, device, seed)
        if use_fused and self._can_fuse(denoised_fn, cond_fn):
            from fastdiff.samplers import ddim_steps
            steps = ddim_steps(
                self._sampler_model(model, img), img, range(self.num_timesteps), model_kwargs,
                alphas_cumprod=self.alphas_cumprod, eta=eta, prediction=self.prediction,
                clip_denoised=clip_denoised, seed=seed, disable=not progress)
            yield from _no_grad_steps(steps)
            return
        step = lambda x, t, **kw: self.ddim_sample(model, x, t, clip_denoised=clip_denoised,
                                                   denoised_fn=denoised_fn, cond_fn=cond_fn,
                                                   model_kwargs=model_kwargs, eta=eta, **kw)
        yield from self._per_step_loop(step, img, progress, seed)

    def _initial_noise(self, model, shape, noise, device, seed) -> torch.Tensor:
        """x_T: the given noise, Philox(seed, offset 0), or torch.randn(*shape) on the model's device."""
        if not isinstance(shape, (tuple, list)):
            raise TypeError(f"shape must be a tuple or list like (N, C, H, W), got {shape!r}")
        if noise is not None:
            if tuple(noise.shape) != tuple(shape):
                raise ValueError(f"noise must have shape {tuple(shape)}, got {tuple(noise.shape)}")
            return noise
        device = _model_device(model, noise, device)
        if seed is not None:
            return ops.randn_like(torch.empty(*shape, device=device), seed, 0)
        return torch.randn(*shape, device=device)

    def _per_step_loop(self, step: Callable, img: torch.Tensor, progress: bool, seed) -> Iterator[dict]:
        """guided-diffusion's loop: one p_sample / ddim_sample per t = T-1 .. 0, each under no_grad."""
        from fastdiff.samplers import step_offset
        indices = list(range(self.num_timesteps))[::-1]
        if progress:
            from tqdm.auto import tqdm
            indices = tqdm(indices)
        for i, k in enumerate(indices):
            t = torch.tensor([k] * img.shape[0], device=img.device)
            with torch.no_grad():
                out = step(img, t, seed=seed, offset=step_offset(i) if seed is not None else 0)
            yield out
            img = out["sample"]

    def _wrap_model(self, model):
        """The model as this process calls it with its own timestep indices (identity; SpacedDiffusion maps)."""
        return model

    def _sampler_model(self, model, x: torch.Tensor):
        """model as fastdiff.samplers calls it, model(x, t: int64 [N] indices, **kw), with _scale_timesteps."""
        model = self._wrap_model(model)

        def wrapped(x_t, t, **kwargs):
            out = model(x_t, self._scale_timesteps(t), **kwargs)
            self._split_model_output(out, x_t)
            return out
        return wrapped

    # ------------------------------------------------------------------ likelihood and training

    def _vb_terms_bpd(self, model, x_start, x_t, t, clip_denoised=True, model_kwargs=None) -> dict:
        """One term of L_vlb in bits/dim (Improved DDPM eqs. 4-6): KL(q(x_{t-1}|x_t,x_0) ‖ p_θ(x_{t-1}|x_t)) for
        index t > 0, and at index t = 0 (the paper's t = 1) the discretised Gaussian decoder NLL −log p_θ(x_0|x_1).

        x_start, x_t: [N, ...]; t: int [N]. Returns {"output": [N], "pred_xstart": [N, ...]}.
        """
        true_mean, _, true_log_variance_clipped = self.q_posterior_mean_variance(x_start=x_start, x_t=x_t, t=t)
        out = self.p_mean_variance(model, x_t, t, clip_denoised=clip_denoised, model_kwargs=model_kwargs)
        kl = mean_flat(normal_kl(true_mean, true_log_variance_clipped, out["mean"], out["log_variance"])) / _LOG2
        decoder_nll = -discretized_gaussian_log_likelihood(x_start, means=out["mean"],
                                                           log_scales=0.5 * out["log_variance"])
        decoder_nll = mean_flat(decoder_nll) / _LOG2
        return {"output": torch.where(t == 0, decoder_nll, kl), "pred_xstart": out["pred_xstart"]}

    def _mse_target(self, x_start, x_t, t, noise):
        """The regression target of the model's mean channels for model_mean_type."""
        if self.model_mean_type == ModelMeanType.PREVIOUS_X:
            return self.q_posterior_mean_variance(x_start=x_start, x_t=x_t, t=t)[0]
        if self.model_mean_type == ModelMeanType.START_X:
            return x_start
        if self.model_mean_type == ModelMeanType.V:
            return self._v_target(x_start, t, noise)
        return noise

    def training_losses(self, model, x_start, t, model_kwargs=None, noise=None) -> dict:
        """Training losses for one timestep per sample. x_start: [N, C, ...]; t: int [N]; noise: ε like x_start.

        KL / RESCALED_KL: L_vlb term (· T for RESCALED_KL). MSE / RESCALED_MSE: "mse" = ‖target − output‖² mean
        (DDPM eq. 14), plus, for learned variances, "vb" = L_vlb with the predicted mean detached so it trains Σ_θ
        only (Improved DDPM eq. 16, L_hybrid = L_simple + λ L_vlb; RESCALED_MSE scales vb by T/1000, λ = 0.001 at
        T = 1000). Returns {"loss": [N], and "mse"/"vb" where used}.
        """
        model_kwargs = _check_model_kwargs(model_kwargs)
        C.check_float("x_start", x_start)
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise=noise)
        terms = {}
        if self.loss_type.is_vb():
            terms["loss"] = self._vb_terms_bpd(model=model, x_start=x_start, x_t=x_t, t=t, clip_denoised=False,
                                               model_kwargs=model_kwargs)["output"]
            if self.loss_type == LossType.RESCALED_KL:
                terms["loss"] = terms["loss"] * self.num_timesteps
            return terms
        model_output = model(x_t, self._scale_timesteps(t), **model_kwargs)
        model_output, model_var_values = self._split_model_output(model_output, x_t)
        if model_var_values is not None:
            frozen_out = torch.cat([model_output.detach(), model_var_values], dim=1)
            terms["vb"] = self._vb_terms_bpd(model=lambda *args, r=frozen_out: r, x_start=x_start, x_t=x_t, t=t,
                                             clip_denoised=False)["output"]
            if self.loss_type == LossType.RESCALED_MSE:
                # λ = T/1000 · 1/T per term: without the 1/1000 the VB term hurts the MSE term (Improved DDPM §3.1).
                terms["vb"] = terms["vb"] * (self.num_timesteps / 1000.0)
        terms["mse"] = mean_flat((self._mse_target(x_start, x_t, t, noise) - model_output) ** 2)
        terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
        return terms

    def _prior_bpd(self, x_start) -> torch.Tensor:
        """L_T = KL(q(x_T | x_0) ‖ N(0, I)) in bits/dim, [N] (Improved DDPM eq. 7; constant in θ)."""
        t = torch.full((x_start.shape[0],), self.num_timesteps - 1, dtype=torch.int64, device=x_start.device)
        qt_mean, _, qt_log_variance = self.q_mean_variance(x_start, t)
        return mean_flat(normal_kl(mean1=qt_mean, logvar1=qt_log_variance, mean2=0.0, logvar2=0.0)) / _LOG2

    def calc_bpd_loop(self, model, x_start, clip_denoised=True, model_kwargs=None) -> dict:
        """The whole bound in bits/dim, one fresh x_t per timestep: {"total_bpd": [N], "prior_bpd": [N],
        "vb": [N, T], "xstart_mse": [N, T], "mse": [N, T]}; column j holds t = T-1-j (guided-diffusion's order)."""
        C.check_float("x_start", x_start)
        model_kwargs = _check_model_kwargs(model_kwargs)
        batch_size = x_start.shape[0]
        vb, xstart_mse, mse = [], [], []
        for t in list(range(self.num_timesteps))[::-1]:
            t_batch = torch.full((batch_size,), t, dtype=torch.int64, device=x_start.device)
            noise = torch.randn_like(x_start)
            x_t = self.q_sample(x_start=x_start, t=t_batch, noise=noise)
            with torch.no_grad():
                out = self._vb_terms_bpd(model, x_start=x_start, x_t=x_t, t=t_batch, clip_denoised=clip_denoised,
                                         model_kwargs=model_kwargs)
            vb.append(out["output"])
            xstart_mse.append(mean_flat((out["pred_xstart"] - x_start) ** 2))
            eps = self._predict_eps_from_xstart(x_t, t_batch, out["pred_xstart"])
            mse.append(mean_flat((eps - noise) ** 2))
        vb, xstart_mse, mse = (torch.stack(v, dim=1) for v in (vb, xstart_mse, mse))
        prior_bpd = self._prior_bpd(x_start)
        return {"total_bpd": vb.sum(dim=1) + prior_bpd, "prior_bpd": prior_bpd, "vb": vb,
                "xstart_mse": xstart_mse, "mse": mse}


def _randn_like(x: torch.Tensor) -> torch.Tensor:
    """torch.randn_like(x) in x's logical (row-major) order whatever x's strides: the same values as
    fastdiff.samplers draws, and as guided-diffusion's randn_like for contiguous x."""
    return torch.randn(x.shape, dtype=x.dtype, device=x.device)


def _no_grad_steps(steps: Iterator[dict]) -> Iterator[dict]:
    """Map fastdiff.samplers step dicts to guided-diffusion's {"sample", "pred_xstart"}, each step under no_grad
    (the caller's grad mode is untouched between steps)."""
    while True:
        with torch.no_grad():
            info = next(steps, None)
        if info is None:
            return
        yield {"sample": info["x"], "pred_xstart": info["denoised"]}
