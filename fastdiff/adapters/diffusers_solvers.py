"""diffusers' σ-space schedulers on the one fused step op: drop-in subclasses whose `step` is one kernel call.

    pipe.scheduler = FastDPMSolverMultistepScheduler.from_config(pipe.scheduler.config)

Each `Fast*` class *is* its diffusers scheduler (a subclass: same constructor, config, `set_timesteps` with every
option — Karras / exponential / beta σ's, `final_sigmas_type`, `shift` / `use_dynamic_shifting` with `mu`, `sigmas=`
/ `timesteps=` lists, `timestep_spacing`, `steps_offset`, prediction types —, `add_noise`, `scale_noise`,
`set_begin_index`, ...). What changes is the step:

- `set_timesteps` runs the stock method, then turns the σ's it chose into a `fastdiff.samplers.tables` coefficient
  table (one row per step, docs/architecture.md "Adding a sampler"): Euler, Euler ancestral and flow Euler
  (`tables.euler`, `euler_ancestral`, `renoise`), DPM-Solver++ 1–3M and SDE (`tables.dpm_multistep`), UniPC
  (`fastdiff.samplers.unipc`), LCM (`tables.lcm`). The table goes to the device once (per device and dtype).
- `step` is one `fastdiff.ops.sampler_step` launch reading row `step_index` of that table: the model-output
  conversion, the update and the multistep history (a device buffer, replacing diffusers' Python list of
  `model_outputs`) happen in the kernel. Noise is drawn exactly as the stock step draws it (`randn_tensor` with
  the same shape, generator and dtype, at the same steps), so a seeded pipeline gives the same images.
- No host synchronisation: the step index is a host counter; the first step's index comes from
  `set_begin_index`, or a host lookup of `timestep` when that costs no device read (a Python number or CPU
  tensor), or else a lookup *on the device* (diffusers reads `.item()` there, a sync), after which the rows of the
  following steps are views of a device index tensor. `scale_model_input` (Euler) multiplies by a device table
  column the same way. So a whole denoising loop can be captured as one CUDA graph (`fastdiff.accelerate`).

Options the fused step does not implement raise ValueError at construction (never a silent difference):
`thresholding`, DPM-Solver's noise-prediction `algorithm_type`s ("dpmsolver", "sde-dpmsolver") and third order
with "sde-dpmsolver++", UniPC's `predict_x0=False` and `solver_p`, LCM's `clip_sample`, flow matching's
`invert_sigmas`; at `step`: Euler's `s_churn > 0`, flow matching's `per_token_timesteps`.

Deviations (documented, tested): UniPC's "bh1" to a final σ = 0 gives the limit x = D where diffusers returns NaN;
LCM draws its noise on the last step too when the first timestep was looked up on the device (the draw is
multiplied by 0: the image is the same, a shared generator ends one draw further on). A multistep solver (DPM-Solver,
UniPC) started mid-schedule restarts its warm-up orders there, as diffusers does, when the start is known on the
host (`set_begin_index`, which diffusers' img2img pipelines call, or a host timestep); after a device lookup it
keeps the full schedule's orders. The step index is only read back from the device when you ask for `step_index`
after such a device lookup.

Extra: the attribute `backend` (None: `fastdiff.ops.use_backend`'s choice) forces a fastdiff backend.
"""
from __future__ import annotations

import copy
import functools

import numpy as np
import torch

try:
    import diffusers
    from diffusers.utils.torch_utils import randn_tensor
except ImportError as exc:  # pragma: no cover - exercised only without the optional dependency
    raise ImportError("fastdiff.adapters.diffusers_solvers needs the diffusers package: "
                      "pip install 'fastdiff[diffusers]'") from exc

from fastdiff.adapters.diffusers import _CONVERSION, FastDDIMScheduler, FastDDPMScheduler
from fastdiff.ops import table as T
from fastdiff.ops.common import check_float
from fastdiff.ops.sampler_step import run as run_step
from fastdiff.samplers import tables
from fastdiff.samplers.unipc import unipc

__all__ = ["FAST_SCHEDULERS", "FastDPMSolverMultistepScheduler", "FastEulerAncestralDiscreteScheduler",
           "FastEulerDiscreteScheduler", "FastFlowMatchEulerDiscreteScheduler", "FastLCMScheduler",
           "FastUniPCMultistepScheduler", "fast_scheduler"]

#: diffusers' prediction_type -> the step op's prediction (`fastdiff.ops.sampler_step.conversion`)
PREDICTIONS = {**_CONVERSION, "flow_prediction": "flow"}


def _set_timesteps(stock_set_timesteps):
    """diffusers' `set_timesteps` with its signature (pipelines inspect it for `sigmas=` / `timesteps=`), then the
    step table of the σ's it chose."""
    @functools.wraps(stock_set_timesteps)
    def set_timesteps(self, *args, **kwargs):
        stock_set_timesteps(self, *args, **kwargs)
        self._reset()
    return set_timesteps


def _checked_init(stock_init):
    """The stock `__init__` (diffusers' ConfigMixin reads its signature through `__wrapped__`), then the check of
    the options the fused step does not implement."""
    @functools.wraps(stock_init)
    def __init__(self, *args, **kwargs):
        stock_init(self, *args, **kwargs)
        self._check_config()
        self._table = None
    return __init__


class _FusedStep:
    """What the Fast schedulers share (put before the stock class): the table, the step index, the fused call.

    Subclasses define `_build(start=0) -> tables.StepTable` (from the stock σ's and config; `start`: the first step
    taken, where a multistep solver's warm-up begins), `_check_config()`, and `step` (the stock signature) calling
    `_fused_step`."""

    #: fastdiff backend for the step kernel; None follows `fastdiff.ops.use_backend` ("auto" by default).
    backend = None
    _table = None
    #: whether the model's input is x·c_in, c_in = 1/√(σ² + 1) (`scale_model_input`: Euler's σ-space state)
    _scaled_input = False

    # ----------------------------------------------------------------------------- options and the table

    def _reject(self, **options) -> None:
        """ValueError naming each option set to a value the fused step does not implement."""
        for name, bad in options.items():
            if bad:
                raise ValueError(f"{type(self).__name__} does not support {name}={self.config.get(name)!r} (the "
                                 f"fused step does not implement it); use diffusers' {type(self).__mro__[2].__name__}")

    def _check_config(self) -> None:
        cfg = self.config
        self._reject(thresholding=cfg.get("thresholding", False))
        if cfg.get("prediction_type", "epsilon") not in PREDICTIONS:
            raise ValueError(f"prediction_type must be one of {tuple(PREDICTIONS)}, got {cfg.prediction_type!r}")

    @property
    def _prediction(self) -> str:
        return PREDICTIONS[self.config.get("prediction_type", "flow_prediction")]

    def _reset(self) -> None:
        self._set_table(self._cached_build())
        self._history = None
        self._first_row = None  # host int, or None while the first step's row is only known on the device
        self._row_views = None  # int64 [S, N] device rows of steps 0.. after a device-side lookup
        self._k = 0  # steps taken since the first

    def _cached_build(self, start: int = 0) -> tables.StepTable:
        """`_build(start)`, remembered for the schedule set_timesteps chose (its σ's and timesteps): a pipeline
        calling set_timesteps with the same options every time builds its table once."""
        key = (start,) + tuple(np.asarray(torch.as_tensor(v).detach().cpu()).tobytes()
                               for v in (getattr(self, "sigmas", ()), self.timesteps))
        cache = self.__dict__.setdefault("_tables", {})
        if key not in cache:
            if len(cache) >= 8:
                cache.clear()
            cache[key] = self._build(start)
        return cache[key]

    def _set_table(self, table: tables.StepTable) -> None:
        old, self._table = self._table, table
        if old is None or (old is not table and not np.array_equal(old.coefs, table.coefs, equal_nan=True)):
            # Device copies of the table are kept while set_timesteps gives the same rows again, so a pipeline's
            # repeated calls copy nothing to the device (and a captured CUDA graph keeps reading them).
            self._device = {}   # (device, dtype) -> the table; ("c_in", device, dtype) -> its c_in column
            self._rows = {}     # (device, N) -> S int64 [N] row indices (row s for every sample)

    def _from_sigmas(self, builder, **options) -> tables.StepTable:
        """builder(σ's of the stock set_timesteps, **options). A final σ equal to the last step's (a final σ_min
        after a last timestep 0) is the identity step x_next = x, as in diffusers."""
        sig = self.sigmas.detach().double().cpu().numpy()
        if not (len(sig) > 2 and sig[-1] == sig[-2] > 0):
            return builder(sig, **options)
        table = builder(sig[:-1], **options)
        row = np.zeros((1, T.STEP_NCOL))
        row[0, T.A_O], row[0, T.C_X], row[0, T.WRITE_D], row[0, T.WRITE_X] = 1.0, 1.0, -1, -1
        return tables.StepTable(np.concatenate([table.coefs, row]), np.append(table.sigmas, sig[-2]),
                                np.append(table.step, table.step[-1] + 1), table.history, table.stochastic,
                                table.var_mode)

    def step_rows(self, steps: int) -> dict:
        """What `fastdiff.samplers.GraphedSampler` runs for this scheduler at `steps` (a copy's set_timesteps; this
        one is left as it is): {"table": the StepTable, "model_t": model timesteps per row, "c_in": model input
        scale per row, "init_sigma": x_T's scale, "alphas_cumprod": float64 [T] (ones for flow matching)}."""
        sched = copy.deepcopy(self)
        sched.set_timesteps(steps)
        table = sched._table
        c_in = tables.alpha_sigma("vp", table.sigmas)[0] if self._scaled_input else np.ones(len(table))
        ac = torch.as_tensor(getattr(sched, "alphas_cumprod", torch.ones(1))).double().cpu().numpy()
        return {"table": table, "model_t": torch.as_tensor(sched.timesteps).cpu().tolist(), "c_in": c_in.tolist(),
                "init_sigma": float(getattr(sched, "init_noise_sigma", 1.0)), "alphas_cumprod": ac}

    # ------------------------------------------------------------------------------------ step index

    @property
    def step_index(self):
        """The index of the current step (diffusers' counter); after a device-side lookup of the first timestep,
        reading it copies that index to the host (a sync), which `step` itself never does."""
        if self._table is None or (self._first_row is None and self._row_views is None):
            return self._step_index
        if self._first_row is None:
            return int(self._row_views[0, 0]) + self._k
        return self._first_row + self._k

    def _lookup_on_host(self, timestep) -> bool:
        return not isinstance(timestep, torch.Tensor) or (timestep.device.type == "cpu"
                                                          and not torch.compiler.is_compiling())

    def _start(self, timestep, sample: torch.Tensor) -> None:
        """Fix the first step's table row: begin_index, a host lookup where free, else a device lookup."""
        if self.begin_index is not None or self._lookup_on_host(timestep):
            first = int(self.begin_index) if self.begin_index is not None else self._host_index(timestep)
            if first and self._table.history:  # a multistep solver starts its warm-up there (img2img)
                self._set_table(self._cached_build(start=first))
            self._first_row = first
        else:  # diffusers' index_for_timestep (the second match when there are several), without .item()
            ts = self.timesteps.to(timestep.device)
            hits = (ts == timestep.reshape(())).cumsum(0)
            count = hits[-1]
            first = torch.where(count > 1, torch.argmax((hits >= 2).int()), torch.argmax((hits >= 1).int()))
            first = torch.where(count > 0, first, torch.full_like(first, len(self._table) - 1))
            n = sample.shape[0]
            rows = (first + torch.arange(len(self._table), device=sample.device)).clamp_(max=len(self._table) - 1)
            self._row_views = rows.unsqueeze(1).expand(-1, n).contiguous()
        self._step_index = self._first_row

    def _host_index(self, timestep) -> int:
        if not isinstance(timestep, torch.Tensor):
            timestep = torch.tensor(timestep, dtype=self.timesteps.dtype)
        ts = self.timesteps.cpu()
        hits = (ts == timestep.cpu().reshape(())).nonzero().flatten()
        if len(hits) == 0:
            raise ValueError(f"timestep {float(timestep)} is not one of the scheduler's timesteps "
                             f"{ts.tolist()}; call set_begin_index for a custom start")
        return int(hits[1 if len(hits) > 1 else 0])

    def _current(self, timestep, sample: torch.Tensor) -> tuple[int | None, torch.Tensor]:
        """(the step's table row on the host or None, its int64 [N] device row indices) — no host read."""
        if self._table is None:
            raise ValueError("Number of inference steps is 'None', you need to run 'set_timesteps' after creating "
                             "the scheduler")
        if self._first_row is None and self._row_views is None:
            self._start(timestep, sample)
        n = sample.shape[0]
        if self._first_row is None:
            if self._k >= len(self._table):
                raise IndexError(f"step {self._k} is past the {len(self._table)} steps set by set_timesteps")
            views = self._row_views
            if views.shape[1] != n:
                views = views[:, :1].expand(-1, n)
            return None, views[self._k]
        row = self._first_row + self._k
        if not 0 <= row < len(self._table):
            raise IndexError(f"step index {row} is outside the {len(self._table)} steps set by set_timesteps")
        key = (sample.device, n)
        if key not in self._rows:  # one contiguous [N] view per row, made once
            rows = torch.arange(len(self._table), device=sample.device).unsqueeze(1).expand(-1, n).contiguous()
            self._rows[key] = rows.unbind(0)
        return row, self._rows[key][row]

    def _on_device(self, sample: torch.Tensor) -> torch.Tensor:
        dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32
        key = (sample.device, dtype)
        if key not in self._device:
            self._device[key] = self._table.tensor(sample.device, dtype)
        return self._device[key]

    # ------------------------------------------------------------------------------------------ the step

    def _fused_step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, generator=None,
                    variance_noise=None, noise_dtype=None, return_denoised: bool = True):
        """(x_next, D) of one step: one `sampler_step` launch on the current table row (no host read)."""
        check_float("sample", sample)
        if not isinstance(model_output, torch.Tensor):
            raise TypeError(f"model_output must be a torch.Tensor, got {type(model_output).__name__}")
        c = sample.shape[1] if sample.dim() > 1 else 0
        if model_output.shape[1:2] == (2 * c,) and self.config.get("variance_type") in ("learned", "learned_range"):
            model_output = model_output[:, :c]  # diffusers drops the learned-variance channels
        if model_output.shape != sample.shape or model_output.device != sample.device:
            raise ValueError(f"model_output must have sample's shape {tuple(sample.shape)} and device "
                             f"{sample.device}, got {tuple(model_output.shape)} on {model_output.device}")
        row, rows = self._current(timestep, sample)
        table = self._on_device(sample)
        noise = None
        if self._table.stochastic and (row is None or self._draws(row)):
            if variance_noise is not None:
                if variance_noise.shape != sample.shape:
                    raise ValueError(f"variance_noise must have sample's shape {tuple(sample.shape)}, got "
                                     f"{tuple(variance_noise.shape)}")
                noise = variance_noise
            else:
                noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                     dtype=noise_dtype or model_output.dtype)
            noise = noise.to(device=sample.device, dtype=sample.dtype)
        if model_output.dtype != sample.dtype:
            model_output = model_output.to(sample.dtype)
        history = None
        if self._table.history:
            if self._history is None or self._history.shape[1:] != sample.shape:
                self._history = sample.new_zeros((self._table.history, *sample.shape))
            history = self._history
        x_next, denoised = run_step(sample, model_output.contiguous(), None, table, rows, history,
                                    self._table.var_mode, noise, -1, 0, return_denoised, None, self.backend)
        self._advance()
        return x_next, denoised

    def _advance(self) -> None:
        """Count a step taken (by the kernel, or by the replay of a captured loop)."""
        self._k += 1
        self._step_index = None if self._first_row is None else self._first_row + self._k

    def _draws(self, row: int) -> bool:
        """Whether the stock step draws noise at this row (every row of a stochastic sampler by default)."""
        return True

    def _c_in(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """c_in = 1/√(σ² + 1) of the current step, as a device scalar (Euler's `scale_model_input`)."""
        row, rows = self._current(timestep, sample)
        key = ("c_in", sample.device, sample.dtype)
        if key not in self._device:
            alpha, _ = tables.alpha_sigma("vp", self._table.sigmas)
            self._device[key] = torch.as_tensor(alpha, dtype=sample.dtype, device=sample.device)
        c_in = self._device[key]
        return c_in[row] if row is not None else c_in[rows[0]]


# ------------------------------------------------------------------------------------------------ Euler


class FastEulerDiscreteScheduler(_FusedStep, diffusers.EulerDiscreteScheduler):
    """diffusers' `EulerDiscreteScheduler` (Karras et al. 2022 Algorithm 2, no churn) with a fused `step`:
    x_next = x + (σ_next − σ)(x − D)/σ, D from ε / v / x0 (`tables.euler` in "ve" space)."""

    __init__ = _checked_init(diffusers.EulerDiscreteScheduler.__init__)
    set_timesteps = _set_timesteps(diffusers.EulerDiscreteScheduler.set_timesteps)
    _scaled_input = True

    def _build(self, start: int = 0):
        return self._from_sigmas(tables.euler, space="ve", prediction=self._prediction)

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """x / √(σ² + 1): the model's input at the current step (no host read)."""
        self.is_scale_input_called = True
        return sample * self._c_in(sample, timestep)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, s_churn: float = 0.0,
             s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """One Euler step in one fused launch. model_output, sample: [N, C, ...]; timestep: the current one (only
        the first step's is looked at). Returns EulerDiscreteSchedulerOutput(prev_sample, pred_original_sample)."""
        if s_churn:
            raise ValueError(f"{type(self).__name__}.step does not support s_churn={s_churn!r} (stochastic churn, "
                             f"Karras et al. Algorithm 2): use diffusers' EulerDiscreteScheduler")
        prev_sample, denoised = self._fused_step(model_output, timestep, sample)
        if not return_dict:
            return prev_sample, denoised
        return diffusers.schedulers.scheduling_euler_discrete.EulerDiscreteSchedulerOutput(
            prev_sample=prev_sample, pred_original_sample=denoised)


class FastEulerAncestralDiscreteScheduler(_FusedStep, diffusers.EulerAncestralDiscreteScheduler):
    """diffusers' `EulerAncestralDiscreteScheduler` with a fused `step`: an Euler step to σ_down plus σ_up·z
    (`tables.euler_ancestral`, η = 1), z drawn as the stock step draws it."""

    __init__ = _checked_init(diffusers.EulerAncestralDiscreteScheduler.__init__)
    set_timesteps = _set_timesteps(diffusers.EulerAncestralDiscreteScheduler.set_timesteps)
    _scaled_input = True

    def _build(self, start: int = 0):
        return self._from_sigmas(tables.euler_ancestral, eta=1.0, space="ve", prediction=self._prediction)

    def scale_model_input(self, sample: torch.Tensor, timestep) -> torch.Tensor:
        """x / √(σ² + 1): the model's input at the current step (no host read)."""
        self.is_scale_input_called = True
        return sample * self._c_in(sample, timestep)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """One ancestral Euler step in one fused launch; returns EulerAncestralDiscreteSchedulerOutput."""
        prev_sample, denoised = self._fused_step(model_output, timestep, sample, generator)
        if not return_dict:
            return prev_sample, denoised
        return diffusers.schedulers.scheduling_euler_ancestral_discrete.EulerAncestralDiscreteSchedulerOutput(
            prev_sample=prev_sample, pred_original_sample=denoised)


class FastFlowMatchEulerDiscreteScheduler(_FusedStep, diffusers.FlowMatchEulerDiscreteScheduler):
    """diffusers' `FlowMatchEulerDiscreteScheduler` (SD3, Flux, ...) with a fused `step`: x_next = x + (s_next − s)·v
    (`tables.euler` in "flow" space), or with stochastic_sampling x_next = (1 − s_next)·D + s_next·z
    (`tables.renoise`)."""

    __init__ = _checked_init(diffusers.FlowMatchEulerDiscreteScheduler.__init__)
    set_timesteps = _set_timesteps(diffusers.FlowMatchEulerDiscreteScheduler.set_timesteps)

    def _check_config(self) -> None:
        self._reject(invert_sigmas=self.config.invert_sigmas)

    def _build(self, start: int = 0):
        builder = tables.renoise if self.config.get("stochastic_sampling", False) else tables.euler
        return self._from_sigmas(builder, space="flow", prediction="flow")

    def step(self, model_output: torch.FloatTensor, timestep, sample: torch.FloatTensor, s_churn: float = 0.0,
             s_tmin: float = 0.0, s_tmax: float = float("inf"), s_noise: float = 1.0,
             generator: torch.Generator | None = None, per_token_timesteps: torch.Tensor | None = None,
             return_dict: bool = True):
        """One flow-matching Euler step in one fused launch; returns FlowMatchEulerDiscreteSchedulerOutput
        (s_churn, s_tmin, s_tmax, s_noise are accepted and unused, as in diffusers)."""
        if per_token_timesteps is not None:
            raise ValueError(f"{type(self).__name__}.step does not support per_token_timesteps: use diffusers' "
                             "FlowMatchEulerDiscreteScheduler")
        prev_sample, _ = self._fused_step(model_output, timestep, sample, generator, return_denoised=False)
        if not return_dict:
            return (prev_sample,)
        return diffusers.schedulers.scheduling_flow_match_euler_discrete.FlowMatchEulerDiscreteSchedulerOutput(
            prev_sample=prev_sample)


# ------------------------------------------------------------------------------------------------ multistep


def _multistep_space(config) -> str:
    return "flow" if config.get("use_flow_sigmas", False) else "vp"


class FastDPMSolverMultistepScheduler(_FusedStep, diffusers.DPMSolverMultistepScheduler):
    """diffusers' `DPMSolverMultistepScheduler` (DPM-Solver++ 1–3M, "sde-dpmsolver++" 1–2M; Lu et al. 2022b) with
    a fused `step`: `tables.dpm_multistep` on the stock σ's (VP, or flow σ's), the earlier D's in a device history
    buffer."""

    __init__ = _checked_init(diffusers.DPMSolverMultistepScheduler.__init__)
    set_timesteps = _set_timesteps(diffusers.DPMSolverMultistepScheduler.set_timesteps)

    def _check_config(self) -> None:
        super()._check_config()
        cfg = self.config
        if cfg.algorithm_type not in ("dpmsolver++", "sde-dpmsolver++"):
            raise ValueError(f"{type(self).__name__} supports algorithm_type 'dpmsolver++' and 'sde-dpmsolver++' "
                             f"(data prediction), got {cfg.algorithm_type!r}: use diffusers' "
                             "DPMSolverMultistepScheduler")
        if cfg.algorithm_type == "sde-dpmsolver++" and cfg.solver_order == 3:
            raise ValueError(f"{type(self).__name__} does not support solver_order=3 with algorithm_type="
                             "'sde-dpmsolver++': use solver_order 2, or diffusers' DPMSolverMultistepScheduler")
        if cfg.solver_order not in (1, 2, 3):
            raise ValueError(f"solver_order must be 1, 2 or 3, got {cfg.solver_order!r}")

    def _build(self, start: int = 0):
        cfg = self.config
        return self._from_sigmas(tables.dpm_multistep, order=cfg.solver_order, solver_type=cfg.solver_type,
                                 eta=1.0 if cfg.algorithm_type == "sde-dpmsolver++" else 0.0,
                                 lower_order_final=cfg.lower_order_final, euler_at_final=cfg.euler_at_final,
                                 start=start, space=_multistep_space(cfg), prediction=self._prediction)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: torch.Generator | None = None, variance_noise: torch.Tensor | None = None,
             return_dict: bool = True):
        """One multistep DPM-Solver++ step in one fused launch; returns SchedulerOutput(prev_sample)."""
        prev_sample, _ = self._fused_step(model_output, timestep, sample, generator, variance_noise,
                                          noise_dtype=torch.float32, return_denoised=False)
        if not return_dict:
            return (prev_sample,)
        return diffusers.schedulers.scheduling_utils.SchedulerOutput(prev_sample=prev_sample)


class FastUniPCMultistepScheduler(_FusedStep, diffusers.UniPCMultistepScheduler):
    """diffusers' `UniPCMultistepScheduler` (Zhao et al. 2023, data prediction, B(h) "bh1"/"bh2") with a fused
    `step`: the corrector of the current point and the next predictor in one row (`fastdiff.samplers.unipc`)."""

    __init__ = _checked_init(diffusers.UniPCMultistepScheduler.__init__)
    set_timesteps = _set_timesteps(diffusers.UniPCMultistepScheduler.set_timesteps)

    def _check_config(self) -> None:
        super()._check_config()
        self._reject(predict_x0=not self.config.predict_x0, solver_p=self.config.solver_p is not None)

    def _build(self, start: int = 0):
        cfg = self.config
        return self._from_sigmas(unipc, order=cfg.solver_order, variant=cfg.solver_type,
                                 disable_corrector=cfg.disable_corrector, lower_order_final=cfg.lower_order_final,
                                 start=start, space=_multistep_space(cfg), prediction=self._prediction)

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True):
        """One UniPC step (UniC on the current point, then UniP) in one fused launch; returns
        SchedulerOutput(prev_sample)."""
        prev_sample, _ = self._fused_step(model_output, timestep, sample, return_denoised=False)
        if not return_dict:
            return (prev_sample,)
        return diffusers.schedulers.scheduling_utils.SchedulerOutput(prev_sample=prev_sample)


# ------------------------------------------------------------------------------------------------ LCM


class FastLCMScheduler(_FusedStep, diffusers.LCMScheduler):
    """diffusers' `LCMScheduler` (Luo et al. 2023 multistep consistency sampling) with a fused `step`:
    D = c_skip·x + c_out·x̂0, x_prev = √ᾱ_prev·D + √(1 − ᾱ_prev)·z (`tables.lcm`)."""

    __init__ = _checked_init(diffusers.LCMScheduler.__init__)
    set_timesteps = _set_timesteps(diffusers.LCMScheduler.set_timesteps)
    _prediction_types = ("epsilon", "sample", "v_prediction")

    def _check_config(self) -> None:
        super()._check_config()
        self._reject(clip_sample=self.config.clip_sample)
        if self.config.prediction_type not in self._prediction_types:
            raise ValueError(f"prediction_type must be one of {self._prediction_types}, got "
                             f"{self.config.prediction_type!r}")

    def _build(self, start: int = 0):
        return tables.lcm(self.alphas_cumprod.double().numpy(), self.timesteps.cpu().tolist(),
                          timestep_scaling=self.config.timestep_scaling, prediction=self._prediction)

    def _draws(self, row: int) -> bool:
        return row != len(self._table) - 1  # the stock step draws no noise on its last step

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True):
        """One LCM step in one fused launch; returns LCMSchedulerOutput(prev_sample, denoised)."""
        prev_sample, denoised = self._fused_step(model_output, timestep, sample, generator)
        if not return_dict:
            return prev_sample, denoised
        return diffusers.schedulers.scheduling_lcm.LCMSchedulerOutput(prev_sample=prev_sample, denoised=denoised)


#: stock diffusers scheduler class name -> its fastdiff scheduler
FAST_SCHEDULERS = {cls.__mro__[2].__name__ if issubclass(cls, _FusedStep) else cls.__name__[4:]: cls for cls in (
    FastDDIMScheduler, FastDDPMScheduler, FastEulerDiscreteScheduler, FastEulerAncestralDiscreteScheduler,
    FastFlowMatchEulerDiscreteScheduler, FastDPMSolverMultistepScheduler, FastUniPCMultistepScheduler,
    FastLCMScheduler)}


def fast_scheduler(scheduler):
    """The Fast scheduler for a diffusers scheduler instance (`from_config` of its config), or None when fastdiff
    has none for its class or its config uses an option the fused step does not implement (the ValueError's
    message is returned as the second element: (scheduler or None, reason))."""
    name = type(scheduler).__name__
    if isinstance(scheduler, (_FusedStep, FastDDIMScheduler, FastDDPMScheduler)):
        return scheduler, "already fast"
    cls = FAST_SCHEDULERS.get(name)
    if cls is None:
        return None, f"fastdiff has no fused {name}"
    try:
        return cls.from_config(scheduler.config), f"{name} -> {cls.__name__}"
    except (ValueError, NotImplementedError) as e:
        return None, f"{name} kept: {e}"
