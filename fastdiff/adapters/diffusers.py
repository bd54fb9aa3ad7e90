"""Drop-in diffusers schedulers whose every step is one launch of the fused `sampler_step` op.

`FastDDPMScheduler` and `FastDDIMScheduler` take diffusers' `DDPMScheduler` / `DDIMScheduler` constructor arguments
(the same config keys and defaults, saved and loaded by diffusers' `ConfigMixin`), expose the same attributes
(`betas`, `alphas`, `alphas_cumprod`, `timesteps`, `num_inference_steps`, `init_noise_sigma`, `order`) and methods
(`set_timesteps`, `step`, `add_noise`, `get_velocity`, `scale_model_input`, `previous_timestep`), and return the same
output classes, so `pipe.scheduler = FastDDIMScheduler.from_config(pipe.scheduler.config)` just works.

How a step runs. Both samplers' updates are rows of the one fused step op, `fastdiff.ops.sampler_step`
(docs/architecture.md, "Adding a sampler"): per sample, D = clip(a_x·x + a_o·o) is the model's x̂0 (DDPM eq. 15
for ε, the output itself for `sample`, √ᾱ_t·x − √(1−ᾱ_t)·v for v; clamped to ±clip_sample_range by the row's
CLIP column, 0 when clip_sample is off) and x_{t-1} = c_x·x + c_D·D + c_o·o + c_z·σ_var·z. The first `step` after
`set_timesteps` on a (device, dtype) — and, for DDIM, per (η, whether ε̂ is the model's own) — fills the whole
[T, STEP_NCOL] table in float64 numpy (one row per *training* timestep t, holding the step from t to the timestep
listed after it) and copies it to the device once; every `step` after that is exactly one unchecked `sampler_step`
launch that gathers row `timestep` inside the kernel: no host synchronisation, no table math, no coefficient
tensor built per step (an int timestep's row index is a cached device tensor too).

- DDPM (eq. 7, Algorithm 2): c_D, c_x = the posterior mean's coefficients; c_z = σ_t (fixed variance types), 0 at
  t = 0 (row 0: no noise, as DDPM adds none at t = 0), or 1 with the op's learned variance modes, which read
  log σ² from the model's channels C..2C (`learned`) or interpolate LOGVAR_LO = log β̃_t and LOGVAR_HI = log β_t
  (`learned_range`, Improved DDPM eq. 15).
- DDIM (eq. 12): with ε̂ re-derived from the clipped x̂0 (use_clipped_model_output, or no clipping),
  x_{t-1} = c_x·x + c_D·clip(x̂0) + σ·z. diffusers' default with clip_sample=True mixes the *clipped* x̂0 with the
  model's *unclipped* ε̂ = e_x·x + e_o·o; the op's C_O column carries that raw term, so this is one launch as well:
  x_{t-1} = √ᾱ_s·clip(x̂0) + d·e_x·x + d·e_o·o + σ·z, d = √(1 − ᾱ_s − σ²). DDIM's table has one leading row,
  row 0 (timestep −1), filled with NaN so that a misused −1 poisons the output instead of taking a plausible step;
  row t + 1 holds the step from t.

Noise. Steps with noise take `variance_noise` when given, else draw it exactly as diffusers does
(`diffusers.utils.torch_utils.randn_tensor(model_output.shape, generator=generator, ...)`), at the same steps, so the
same generator gives the same images. The one exception: DDPM skips the draw at t = 0 only when `timestep` is a
Python int; for a tensor timestep (what pipelines pass) deciding t > 0 would read the device, so the noise is drawn
and row 0's c_z = 0 drops it: the image is identical, the generator ends one draw further on.

Deviations from diffusers (documented, tested):

- DDIM's previous timestep is the next one in `self.timesteps` (−1 after the last), where diffusers uses
  t − T // N. The two agree for "leading" spacing and for "trailing" spacing when N divides T; for "linspace"
  (whose spacing is (T−1)/(N−1), not T//N) and "trailing" with N ∤ T diffusers steps to a timestep it never visits
  (e.g. T = 1000, N = 10, linspace: 999 → 899 instead of 888). DDPM already uses the listed timestep in diffusers.
- A timestep that is not in `self.timesteps` steps to the largest listed timestep below it (diffusers' DDPM raises;
  DDIM uses t − T // N).
- `variance_type="fixed_large_log"`: σ = exp(½ log β_t) = √β_t (Glide's max_log, as named); diffusers takes the
  square root of log β_t < 0 and returns NaN images.
- `thresholding=True` (dynamic thresholding, Imagen) is not supported: constructing raises ValueError. The per-sample
  quantile it needs is a reduction the fused elementwise step does not do.
- `eta` must be ≥ 0 (diffusers accepts a negative η, which flips the noise's sign). DDIM's direction coefficient
  √(1 − ᾱ_s − σ²) is clamped at 0 (`fastdiff.ops.ddim_step.ddim_coefficients`): diffusers returns NaN where it
  rounds below 0 (zero terminal SNR with η = 1 at ᾱ_t = 0) or is negative (η > 1).
- Zero terminal SNR (ᾱ = 0) with ε prediction: x̂0 = (x − ε)/0 = ±inf, which diffusers clamps to ±r; the row's
  a_x, a_o use √ᾱ floored at 2^-60 (`fastdiff.ops.sampler_step.conversion`), so the kernel's a_x·x + a_o·o is
  ±huge with the same sign (clamped alike) rather than inf − inf = NaN.
- `model_output` must have `sample`'s dtype and device, and C channels (2C for the learned variance types).
- `variance_type="learned"` (the model's channels C..2C are the variance itself) costs one extra pass: the op
  takes a log-variance, so the step passes [ε, log v] (`learned_range` needs none).

Extra (not in diffusers): the attribute `backend` (None: `fastdiff.ops.use_backend`'s choice) forces a fastdiff
backend ("reference", "cpu", "cuda", "triton"); DDPM's `step` also accepts `variance_noise=`.
"""
from __future__ import annotations

import math

import numpy as np
import torch

try:
    from diffusers.configuration_utils import ConfigMixin, register_to_config
    from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
    from diffusers.schedulers.scheduling_ddpm import DDPMSchedulerOutput
    from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin
    from diffusers.utils.torch_utils import randn_tensor
except ImportError as exc:  # pragma: no cover - exercised only without the optional dependency
    raise ImportError("fastdiff.adapters.diffusers needs the diffusers package: pip install 'fastdiff[diffusers]'"
                      ) from exc

from fastdiff.schedules import SPACINGS, betas_for_alpha_bar, cosine_alpha_bar
# moved to fastdiff.schedules; kept importable here (spaced_timesteps is inference_timesteps' old name)
from fastdiff.schedules import inference_timesteps as spaced_timesteps  # noqa: F401
from fastdiff.schedules import rescale_zero_terminal_snr  # noqa: F401
from fastdiff.errors import check_whole_numbers
from fastdiff.ops import common as C
from fastdiff.ops import table as T
from fastdiff.ops.ddim_step import ddim_coefficients
from fastdiff.ops.q_sample import q_sample
from fastdiff.ops.sampler_step import conversion
from fastdiff.ops.sampler_step import run as run_step

__all__ = ["FastDDIMScheduler", "FastDDPMScheduler"]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned", "learned_range")
DDIM_BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
DDPM_BETA_SCHEDULES = DDIM_BETA_SCHEDULES + ("laplace", "sigmoid")
#: diffusers' prediction_type -> `fastdiff.ops.sampler_step.conversion`'s name
_CONVERSION = {"epsilon": "epsilon", "sample": "x0", "v_prediction": "v"}
#: variance_type -> the op's var_mode (`fastdiff.ops.table.VAR_MODES`); the fixed types are 0 (σ in C_Z)
_VAR_MODE = {"learned": T.VAR_MODES["learned"], "learned_range": T.VAR_MODES["learned_range"]}


# --------------------------------------------------------------------------------------------- schedules


def laplace_alpha_bar(t: float) -> float:
    """ᾱ(t) of the Laplace noise schedule (Hang et al. 2024, diffusers' "laplace"): λ = −½·sgn(½−t)·log(1−2|½−t|),
    ᾱ = √(e^λ / (1 + e^λ)), with 1e-6 inside the log as diffusers."""
    lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
    snr = math.exp(lmb)
    return math.sqrt(snr / (1 + snr))


def make_betas(num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str,
               trained_betas, allowed: tuple[str, ...]) -> torch.Tensor:
    """β: float32 [T] exactly as diffusers builds it (same float32 ops, so ᾱ matches bit for bit)."""
    n = num_train_timesteps
    if trained_betas is not None:
        return torch.tensor(trained_betas, dtype=torch.float32)
    if beta_schedule not in allowed:  # NotImplementedError: the type diffusers' schedulers raise here
        raise NotImplementedError(f"beta_schedule must be one of {allowed} (or pass trained_betas), "
                                  f"got {beta_schedule!r}")
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
    if beta_schedule == "scaled_linear":  # latent diffusion's schedule: linear in √β
        return torch.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=torch.float32) ** 2
    if beta_schedule == "squaredcos_cap_v2":  # Improved DDPM eq. 17, β ≤ 0.999
        return torch.tensor(betas_for_alpha_bar(n, cosine_alpha_bar).tolist(), dtype=torch.float32)
    if beta_schedule == "laplace":
        return torch.tensor(betas_for_alpha_bar(n, laplace_alpha_bar).tolist(), dtype=torch.float32)
    return torch.sigmoid(torch.linspace(-6, 6, n)) * (beta_end - beta_start) + beta_start  # GeoDiff "sigmoid"


def previous_map(timesteps: np.ndarray, num_train_timesteps: int) -> np.ndarray:
    """prev[t] for every t in [0, T): the largest listed timestep below t, −1 when there is none (int64 [T])."""
    listed = np.sort(np.asarray(timesteps, dtype=np.int64))
    pos = np.searchsorted(listed, np.arange(num_train_timesteps), side="left")  # listed[pos-1] < t
    return np.where(pos > 0, listed[np.maximum(pos - 1, 0)], -1)


# ----------------------------------------------------------------------------------------- sampler_step rows


def _host_read_is_free(t: torch.Tensor) -> bool:
    """Whether reading `t`'s values costs no device synchronisation (a CPU tensor, outside torch.compile)."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def _new_rows(ac: np.ndarray, prediction: str, clip: float) -> np.ndarray:
    """A float64 [T, STEP_NCOL] `sampler_step` table, one row per ᾱ_t, with D = x̂0 = a_x·x + a_o·o clamped to
    ±clip (0: no clipping): DDPM eq. 15 for ε, the output for `sample`, √ᾱ·x − √(1−ᾱ)·v for v (x = √ᾱ·x0 +
    √(1−ᾱ)·ε); √ᾱ is floored at 2^-60 for ε (zero terminal SNR, see the module docstring). The step's
    coefficients are left 0, the history writes off and the guidance scale 1 (no unconditional output)."""
    table = np.zeros((len(ac), T.STEP_NCOL), dtype=np.float64)
    table[:, T.A_X], table[:, T.A_O] = conversion(_CONVERSION[prediction], np.sqrt(ac), np.sqrt(1.0 - ac))
    table[:, T.CLIP] = clip
    table[:, T.CFG_SCALE] = 1.0
    table[:, T.WRITE_D] = table[:, T.WRITE_X] = -1.0
    return table


def _log(v: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):  # log 0 = −inf (β = 0 only where float32 ᾱ_t rounds to ᾱ_s)
        return np.log(v)


# ------------------------------------------------------------------------------------------------ the base


class _FastScheduler(SchedulerMixin, ConfigMixin):
    """What both schedulers share: β/ᾱ, timesteps, step tables on the device, argument checks, noise."""

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1
    _beta_schedules: tuple[str, ...] = DDIM_BETA_SCHEDULES

    def _init_common(self, num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                     prediction_type, thresholding, clip_sample, clip_sample_range, timestep_spacing,
                     steps_offset, rescale_betas_zero_snr):
        if thresholding:
            raise ValueError(f"{type(self).__name__} does not support thresholding=True (dynamic thresholding needs "
                             "a per-sample quantile the fused step does not compute); use diffusers' "
                             f"{type(self).__name__[4:]} or clip_sample/clip_sample_range instead")
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")
        if timestep_spacing not in SPACINGS:
            raise ValueError(f"timestep_spacing must be one of {SPACINGS}, got {timestep_spacing!r}")
        if not isinstance(num_train_timesteps, int) or num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be a positive int, got {num_train_timesteps!r}")
        if clip_sample and not clip_sample_range > 0:
            raise ValueError(f"clip_sample_range must be > 0 when clip_sample=True, got {clip_sample_range!r}")
        if not isinstance(steps_offset, int) or steps_offset < 0:
            raise ValueError(f"steps_offset must be an int >= 0, got {steps_offset!r}")
        self.betas = make_betas(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                                self._beta_schedules)
        if self.betas.shape != (num_train_timesteps,):
            raise ValueError(f"trained_betas must have num_train_timesteps = {num_train_timesteps} entries, got "
                             f"shape {tuple(self.betas.shape)}")
        if rescale_betas_zero_snr:
            self.betas = rescale_zero_terminal_snr(self.betas)
        #: the rows' CLIP column: x̂0 is clamped to [-r, r], r = clip_sample_range (0: clipping off).
        self._clip = float(clip_sample_range) if clip_sample else 0.0
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None
        self.timesteps = torch.from_numpy(np.arange(0, num_train_timesteps)[::-1].copy().astype(np.int64))
        #: fastdiff backend for the step op; None follows `fastdiff.ops.use_backend` ("auto" by default).
        self.backend = None
        self._reset_tables(self.timesteps.numpy(), None)

    # ------------------------------------------------------------------ timesteps

    def _reset_tables(self, timesteps: np.ndarray, device) -> None:
        self._listed = np.asarray(timesteps, dtype=np.int64)
        self._prev = previous_map(self._listed, self.config.num_train_timesteps)
        self._prev_device = {}
        self._tables = {}  # (kind, options..., device, dtype) -> the [T(+1), STEP_NCOL] sampler_step table
        self._rows = {}  # (device, N, shift) -> int64 [T, N]: rows[t] is timestep t's [N] row index on the device
        self._q_table = None

    def _check_num_inference_steps(self, num_inference_steps) -> int:
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, (int, np.integer)):
            raise TypeError(f"num_inference_steps must be an int, got {type(num_inference_steps).__name__}")
        n = int(num_inference_steps)
        total = self.config.num_train_timesteps
        if n < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {n}")
        if n > total:
            raise ValueError(f"`num_inference_steps`: {n} cannot be larger than `self.config.train_timesteps`: "
                             f"{total} as the unet model trained with this scheduler can only handle maximal {total} "
                             "timesteps.")
        return n

    def _set_listed(self, timesteps: np.ndarray, device) -> None:
        total = self.config.num_train_timesteps
        if timesteps.size and (timesteps.max() >= total or timesteps.min() < 0):
            raise ValueError(f"timesteps must lie in [0, num_train_timesteps = {total}), got min {timesteps.min()} "
                             f"max {timesteps.max()} (timestep_spacing={self.config.timestep_spacing!r}, "
                             f"steps_offset={self.config.steps_offset})")
        self.timesteps = torch.from_numpy(timesteps).to(device)
        self._reset_tables(timesteps, device)

    def previous_timestep(self, timestep):
        """The timestep the step from `timestep` lands on: the next one in `self.timesteps`, −1 after the last
        (an int for an int; a tensor on the same device for a tensor, looked up without a host read)."""
        if isinstance(timestep, torch.Tensor):
            key = timestep.device
            if key not in self._prev_device:
                self._prev_device[key] = torch.from_numpy(self._prev).to(key)
            return self._prev_device[key][timestep.long()]
        return int(self._prev[self._check_int_timestep(timestep)])

    def _check_int_timestep(self, timestep) -> int:
        t = int(timestep)
        if not 0 <= t < self.config.num_train_timesteps:
            raise ValueError(f"timestep must lie in [0, num_train_timesteps = {self.config.num_train_timesteps}), "
                             f"got {t}")
        return t

    # ------------------------------------------------------------------ step plumbing

    def _alpha_prev(self, final: float) -> tuple[np.ndarray, np.ndarray]:
        """(ᾱ_t, ᾱ_prev) float64 [T] from the float32 ᾱ (diffusers' values), ᾱ_prev = `final` after the last step."""
        ac = self.alphas_cumprod.double().numpy()
        ac_prev = np.where(self._prev >= 0, ac[np.maximum(self._prev, 0)], final)
        return ac, ac_prev

    def _device_table(self, key: tuple, device, dtype: torch.dtype, build) -> torch.Tensor:
        """The `sampler_step` table for `key` on `device` (float64 for float64 samples, else float32), built once
        per set_timesteps by build() -> (float64 [S, STEP_NCOL] array,) and copied to the device once."""
        table_dtype = torch.float64 if dtype == torch.float64 else torch.float32
        full = key + (device, table_dtype)
        if full not in self._tables:
            (table,) = build()
            self._tables[full] = torch.as_tensor(table, dtype=table_dtype).to(device)
        return self._tables[full]

    def _row_index(self, timestep, sample: torch.Tensor, shift: int = 0) -> tuple[torch.Tensor, int | None]:
        """(int64 [N] table rows = timestep + shift on sample's device, timestep as a host int or None when it is a
        tensor). DDIM's tables have one leading NaN row for timestep −1 (shift 1); DDPM's rows are the timesteps
        themselves. An int timestep's rows are a view of a cached [T, N] device tensor (no per-step op)."""
        n = sample.shape[0]
        if isinstance(timestep, torch.Tensor):
            if timestep.is_floating_point() or timestep.is_complex() or timestep.dtype == torch.bool:
                raise TypeError(f"timestep must be an int or an integer tensor, got dtype {timestep.dtype}")
            if timestep.numel() == 1:
                rows = timestep.to(device=sample.device, dtype=torch.int64).reshape(1).expand(n)
            elif timestep.shape == (n,):
                rows = timestep.to(device=sample.device, dtype=torch.int64)
            else:
                raise ValueError(f"timestep must be a scalar or have shape [N] = [{n}], got {tuple(timestep.shape)}")
            # Checked where it costs no device read; on a GPU the kernels give NaN for a row outside the table,
            # and DDIM's unused row 0 (timestep −1) is NaN.
            total = self.config.num_train_timesteps
            if (_host_read_is_free(timestep) and timestep.numel()
                    and (int(timestep.min()) < 0 or int(timestep.max()) >= total)):
                raise ValueError(f"timestep must lie in [0, num_train_timesteps = {total}), got min "
                                 f"{int(timestep.min())} max {int(timestep.max())}")
            return (rows + shift if shift else rows), None
        if isinstance(timestep, bool) or not isinstance(timestep, (int, np.integer)):
            raise TypeError(f"timestep must be an int or an integer tensor, got {type(timestep).__name__}")
        t = self._check_int_timestep(timestep)
        key = (sample.device, n, shift)
        if key not in self._rows:
            total = self.config.num_train_timesteps
            rows = torch.arange(shift, total + shift, device=sample.device)
            self._rows[key] = rows.unsqueeze(1).expand(total, n).contiguous()
        return self._rows[key][t], t

    def _check_step_args(self, model_output, sample, channels_factor: int) -> None:
        C.check_float("sample", sample)
        if sample.dim() < 2:
            raise ValueError(f"sample must be [N, C, ...] with at least 2 dims, got shape {tuple(sample.shape)}")
        if not isinstance(model_output, torch.Tensor):
            raise TypeError(f"model_output must be a torch.Tensor, got {type(model_output).__name__}")
        if model_output.device != sample.device:
            raise ValueError(f"model_output is on {model_output.device} but sample is on {sample.device}")
        if model_output.dtype != sample.dtype:
            raise TypeError(f"model_output has dtype {model_output.dtype} but sample has {sample.dtype}; cast one")
        want = (sample.shape[0], channels_factor * sample.shape[1], *sample.shape[2:])
        if tuple(model_output.shape) != want:
            extra = " (ε and the variance channels)" if channels_factor == 2 else ""
            raise ValueError(f"model_output must have shape {want}{extra} for sample {tuple(sample.shape)}, got "
                             f"{tuple(model_output.shape)}")

    def _noise(self, model_output, sample, generator, variance_noise) -> torch.Tensor:
        """The step's z: variance_noise, or randn_tensor(...) exactly as diffusers draws it."""
        if variance_noise is not None:
            if generator is not None:
                raise ValueError("Cannot pass both generator and variance_noise. Please make sure that either "
                                 "`generator` or `variance_noise` stays `None`.")
            if not isinstance(variance_noise, torch.Tensor) or variance_noise.shape != sample.shape:
                raise ValueError(f"variance_noise must be a tensor of sample's shape {tuple(sample.shape)}, got "
                                 f"{getattr(variance_noise, 'shape', type(variance_noise).__name__)}")
            if variance_noise.device != sample.device or variance_noise.dtype != sample.dtype:
                raise ValueError(f"variance_noise must have sample's device and dtype ({sample.device}, "
                                 f"{sample.dtype}), got ({variance_noise.device}, {variance_noise.dtype})")
            return variance_noise
        return randn_tensor(tuple(sample.shape), generator=generator, device=model_output.device,
                            dtype=model_output.dtype)

    # ------------------------------------------------------------------ diffusers API

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """The model input for `timestep`: `sample` itself (DDPM/DDIM need no input scaling)."""
        return sample

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """q(x_t | x_0): √ᾱ_t x_0 + √(1 − ᾱ_t) ε (DDPM eq. 4). original_samples, noise: [N, ...]; timesteps: [N] (the
        fused `q_sample` op) or anything diffusers broadcasts (a scalar, [1])."""
        if not isinstance(timesteps, torch.Tensor):
            timesteps = torch.as_tensor(timesteps)
        timesteps = timesteps.to(original_samples.device)
        if (original_samples.dim() >= 1 and timesteps.shape == original_samples.shape[:1]
                and noise.shape == original_samples.shape and noise.dtype == original_samples.dtype
                and original_samples.is_floating_point() and not timesteps.is_floating_point()):
            if self._q_table is None or self._q_table.device != original_samples.device:
                # q_sample reads the √ᾱ_t, √(1 − ᾱ_t) columns of a [T, NCOEF] schedule table (fastdiff.ops.table)
                ac = self.alphas_cumprod.double().numpy()
                table = np.zeros((len(ac), T.NCOEF), dtype=np.float64)
                table[:, T.SQRT_AC], table[:, T.SQRT_1M_AC] = np.sqrt(ac), np.sqrt(1.0 - ac)
                self._q_table = torch.as_tensor(table, dtype=torch.float32).to(original_samples.device)
            return q_sample(original_samples, noise, self._q_table, timesteps, backend=self.backend)
        ac = self.alphas_cumprod.to(device=original_samples.device, dtype=original_samples.dtype)[timesteps]
        shape = (-1,) + (1,) * (original_samples.dim() - 1)
        return ac.flatten().sqrt().reshape(shape) * original_samples + (1 - ac).flatten().sqrt().reshape(shape) * noise

    def get_velocity(self, sample: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """v = √ᾱ_t ε − √(1 − ᾱ_t) x_0 (Salimans & Ho, "Progressive Distillation", §4); shapes as add_noise."""
        timesteps = torch.as_tensor(timesteps).to(sample.device)
        ac = self.alphas_cumprod.to(device=sample.device, dtype=sample.dtype)[timesteps]
        shape = (-1,) + (1,) * (sample.dim() - 1)
        return ac.flatten().sqrt().reshape(shape) * noise - (1 - ac).flatten().sqrt().reshape(shape) * sample

    def __len__(self) -> int:
        return self.config.num_train_timesteps


# ------------------------------------------------------------------------------------------------ DDPM


class FastDDPMScheduler(_FastScheduler):
    """diffusers' `DDPMScheduler` (Ho et al. 2020; Improved DDPM's learned variance) on the fused step op.

    Same constructor, config and methods as `diffusers.DDPMScheduler` (see the module docstring for the few
    deviations). `step` computes x_{t-1} = μ̃_t(x_t, x̂0) + [t > 0]·σ_t·z with μ̃_t = c1·x̂0 + c2·x_t the posterior
    mean (DDPM eq. 7; x̂0 from eq. 15, or the model's sample / v; clipped to ±clip_sample_range), where for the step
    t → s = the next listed timestep, α_t = ᾱ_t/ᾱ_s, β_t = 1 − α_t, c1 = √ᾱ_s·β_t/(1 − ᾱ_t),
    c2 = √α_t·(1 − ᾱ_s)/(1 − ᾱ_t), and σ²_t = β̃_t = (1 − ᾱ_s)/(1 − ᾱ_t)·β_t (fixed_small, fixed_small_log; clamped
    at 1e-20), β_t (fixed_large, fixed_large_log), the model's v (learned), or
    exp(frac·log β_t + (1 − frac)·log β̃_t), frac = (v + 1)/2 (learned_range, Improved DDPM eq. 15).
    """

    _beta_schedules = DDPM_BETA_SCHEDULES

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: np.ndarray | list[float] | None = None,
                 variance_type: str = "fixed_small", clip_sample: bool = True, prediction_type: str = "epsilon",
                 thresholding: bool = False, dynamic_thresholding_ratio: float = 0.995,
                 clip_sample_range: float = 1.0, sample_max_value: float = 1.0, timestep_spacing: str = "leading",
                 steps_offset: int = 0, rescale_betas_zero_snr: bool = False):
        if variance_type not in VARIANCE_TYPES:
            raise ValueError(f"variance_type must be one of {VARIANCE_TYPES}, got {variance_type!r}")
        self._init_common(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type,
                          thresholding, clip_sample, clip_sample_range, timestep_spacing, steps_offset,
                          rescale_betas_zero_snr)
        self.one = torch.tensor(1.0)
        self.custom_timesteps = False
        self.variance_type = variance_type

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      timesteps: list[int] | None = None) -> None:
        """Choose the N timesteps to visit (descending) and build the step table on `device`.

        Either num_inference_steps (spaced by `timestep_spacing`, `steps_offset`) or custom `timesteps`
        (strictly descending ints in [0, T)), not both.
        """
        if num_inference_steps is not None and timesteps is not None:
            raise ValueError("Can only pass one of `num_inference_steps` or `custom_timesteps`.")
        if timesteps is not None:
            ts = np.array(check_whole_numbers("timesteps", timesteps), dtype=np.int64)
            if ts.size == 0:
                raise ValueError("timesteps must not be empty")
            if np.any(np.diff(ts) >= 0):
                raise ValueError(f"`custom_timesteps` must be in descending order, got {ts.tolist()}")
            if ts[0] >= self.config.num_train_timesteps:
                raise ValueError(f"`timesteps` must start before `self.config.train_timesteps`: "
                                 f"{self.config.num_train_timesteps}.")
            if ts[-1] < 0:
                raise ValueError(f"timesteps must be >= 0, got {ts[-1]}")
            self.num_inference_steps = len(ts)
            self.custom_timesteps = True
        else:
            if num_inference_steps is None:
                raise ValueError("pass num_inference_steps or timesteps to set_timesteps")
            self.num_inference_steps = self._check_num_inference_steps(num_inference_steps)
            self.custom_timesteps = False
            ts = spaced_timesteps(self.config.num_train_timesteps, self.num_inference_steps,
                                  self.config.timestep_spacing, self.config.steps_offset)
        self._set_listed(ts, device)

    def _build(self) -> tuple[np.ndarray]:
        """(the [T, STEP_NCOL] sampler_step table,): row t is the step t → s = prev(t) (see the class docstring),
        float64: D = clip(x̂0), c_D = c1, c_x = c2, c_z = σ_t (1 with a learned variance: the op's var_mode reads
        it from the model; LOGVAR_HI/LO = log β_t, log β̃_t for learned_range), c_z = 0 on row 0 (no noise at
        t = 0)."""
        ac, ac_prev = self._alpha_prev(1.0)
        table = _new_rows(ac, self.config.prediction_type, self._clip)
        alpha = ac / ac_prev
        beta = 1.0 - alpha
        table[:, T.C_D] = np.sqrt(ac_prev) * beta / (1.0 - ac)
        table[:, T.C_X] = np.sqrt(alpha) * (1.0 - ac_prev) / (1.0 - ac)
        post_var = np.maximum((1.0 - ac_prev) / (1.0 - ac) * beta, 1e-20)  # β̃_t, clamped as diffusers
        table[:, T.LOGVAR_HI] = _log(beta)
        table[:, T.LOGVAR_LO] = np.log(post_var)
        vt = self.config.variance_type
        if vt in _VAR_MODE:
            table[:, T.C_Z] = 1.0
        else:
            table[:, T.C_Z] = np.sqrt(beta if vt in ("fixed_large", "fixed_large_log") else post_var)
        table[0, T.C_Z] = 0.0
        return (table,)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True, *,
             variance_noise: torch.Tensor | None = None) -> DDPMSchedulerOutput | tuple:
        """One ancestral step x_t -> x_{t-1} (DDPM eq. 7 / Algorithm 2): one `sampler_step` launch.

        model_output: [N, C, ...] (ε, x0 or v per prediction_type), or [N, 2C, ...] with variance channels for
        variance_type learned / learned_range; timestep: int or integer tensor (scalar or [N]); sample: x_t
        [N, C, ...]; generator: for the noise z (see the module docstring); variance_noise: z itself (fastdiff
        extension). Returns DDPMSchedulerOutput(prev_sample, pred_original_sample), or that tuple.
        """
        vt = self.config.variance_type
        learned = vt in _VAR_MODE
        self._check_step_args(model_output, sample, 2 if learned else 1)
        rows, host_t = self._row_index(timestep, sample)
        table = self._device_table(("ddpm",), sample.device, sample.dtype, self._build)
        noise = None
        if host_t is None or host_t > 0:
            noise = self._noise(model_output, sample, generator, variance_noise)
        if vt == "learned":  # the op takes log σ²; diffusers' channels are σ²
            c = sample.shape[1]
            model_output = torch.cat([model_output[:, :c], model_output[:, c:].log()], dim=1)
        prev_sample, x0 = run_step(sample, model_output, None, table, rows, None, _VAR_MODE.get(vt, 0), noise, -1, 0,
                                   True, None, self.backend)
        if not return_dict:
            return prev_sample, x0
        return DDPMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


# ------------------------------------------------------------------------------------------------ DDIM


class FastDDIMScheduler(_FastScheduler):
    """diffusers' `DDIMScheduler` (Song et al. 2021) on the fused step op.

    Same constructor, config and methods as `diffusers.DDIMScheduler` (see the module docstring for the few
    deviations, chiefly: the previous timestep s is the next listed one). `step` computes DDIM eq. 12 (table row
    t + 1 holds the step from t),
    x_{t-1} = √ᾱ_s·x̂0 + √(1 − ᾱ_s − σ²)·ε̂ + σ·z, σ = η·√((1 − ᾱ_s)/(1 − ᾱ_t)·(1 − ᾱ_t/ᾱ_s)) (eq. 16), with ᾱ_s
    = final_alpha_cumprod after the last step (1 when set_alpha_to_one, else ᾱ_0). ε̂ is re-derived from the
    clipped x̂0 when use_clipped_model_output or clipping is off (c1·clip(x̂0) + c2·x_t + σz with
    c1 = √ᾱ_s − d√ᾱ_t/√(1−ᾱ_t), c2 = d/√(1−ᾱ_t), d = √(1 − ᾱ_s − σ²)), else it is the model's own ε̂, whose raw
    output term rides in the row's C_O column (see `_build`); either way one `sampler_step` launch.
    """

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02,
                 beta_schedule: str = "linear", trained_betas: np.ndarray | list[float] | None = None,
                 clip_sample: bool = True, set_alpha_to_one: bool = True, steps_offset: int = 0,
                 prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, clip_sample_range: float = 1.0,
                 sample_max_value: float = 1.0, timestep_spacing: str = "leading",
                 rescale_betas_zero_snr: bool = False):
        self._init_common(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas, prediction_type,
                          thresholding, clip_sample, clip_sample_range, timestep_spacing, steps_offset,
                          rescale_betas_zero_snr)
        self.final_alpha_cumprod = torch.tensor(1.0) if set_alpha_to_one else self.alphas_cumprod[0]

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Choose the N timesteps to visit (descending, by `timestep_spacing` and `steps_offset`) on `device`."""
        self.num_inference_steps = self._check_num_inference_steps(num_inference_steps)
        ts = spaced_timesteps(self.config.num_train_timesteps, self.num_inference_steps,
                              self.config.timestep_spacing, self.config.steps_offset)
        self._set_listed(ts, device)

    def _build(self, eta: float, raw_eps: bool) -> tuple[np.ndarray]:
        """(the [T + 1, STEP_NCOL] sampler_step table for one η,): row t + 1 is the step t → s = prev(t) (see
        `_row_index`), row 0 (timestep −1) is NaN. D = clip(x̂0) and σ = η√((1−ᾱ_s)/(1−ᾱ_t))√(1 − ᾱ_t/ᾱ_s),
        d = √(1 − ᾱ_s − σ²) (clamped at 0), c_z = σ. ε̂ re-derived from D (raw_eps False): c_x = d/√(1−ᾱ_t),
        c_D = √ᾱ_s − c_x√ᾱ_t. The model's own ε̂ = e_x·x + e_o·o (raw_eps: clip_sample without
        use_clipped_model_output): c_D = √ᾱ_s, c_x = d·e_x and the raw output's c_o = d·e_o."""
        ac, ac_prev = self._alpha_prev(float(self.final_alpha_cumprod))
        prediction = self.config.prediction_type
        table = _new_rows(ac, prediction, self._clip)
        c_x, c_d, sigma = ddim_coefficients(ac, ac_prev, eta)
        if raw_eps:
            if prediction == "epsilon":
                e_x, e_o = np.zeros_like(ac), np.ones_like(ac)
            elif prediction == "sample":  # ε̂ = (x − √ᾱ_t·x̂0)/√(1−ᾱ_t) from the unclipped x̂0 = o
                e_x, e_o = 1.0 / np.sqrt(1.0 - ac), -np.sqrt(ac) / np.sqrt(1.0 - ac)
            else:  # v: ε̂ = √ᾱ_t·v + √(1−ᾱ_t)·x
                e_x, e_o = np.sqrt(1.0 - ac), np.sqrt(ac)
            d = c_x * np.sqrt(1.0 - ac)
            c_x, c_d = d * e_x, np.sqrt(ac_prev)
            table[:, T.C_O] = d * e_o
        table[:, T.C_X], table[:, T.C_D], table[:, T.C_Z] = c_x, c_d, sigma
        return (np.concatenate([np.full((1, T.STEP_NCOL), np.nan), table]),)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: bool = False, generator: torch.Generator | None = None,
             variance_noise: torch.Tensor | None = None, return_dict: bool = True) -> DDIMSchedulerOutput | tuple:
        """One DDIM step x_t -> x_{t-1} (DDIM eq. 12): one `sampler_step` launch for every option.

        model_output: [N, C, ...] (ε, x0 or v per prediction_type); timestep: int or integer tensor (scalar or
        [N]); sample: x_t [N, C, ...]; eta: η ≥ 0 (0 = DDIM, 1 = DDPM-like); generator / variance_noise: the noise z
        when η > 0 (drawn as diffusers does). Returns DDIMSchedulerOutput(prev_sample, pred_original_sample), or
        that tuple.
        """
        if self.num_inference_steps is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating "
                             "the scheduler")
        eta = C.check_eta(eta)
        self._check_step_args(model_output, sample, 1)
        rows, _ = self._row_index(timestep, sample, shift=1)
        raw_eps = bool(self.config.clip_sample) and not use_clipped_model_output
        table = self._device_table(("ddim", eta, raw_eps), sample.device, sample.dtype,
                                   lambda: self._build(eta, raw_eps))
        noise = self._noise(model_output, sample, generator, variance_noise) if eta > 0 else None
        prev_sample, x0 = run_step(sample, model_output, None, table, rows, None, 0, noise, -1, 0, True, None,
                                   self.backend)
        if not return_dict:
            return prev_sample, x0
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)
