"""Whole-loop CUDA graphs: every step's model forward and fused sampler step captured once, replayed per call.

    sampler = GraphedSampler(model, diffusion, (16, 3, 64, 64), steps=50, eta=0.0, guidance_scale=4.0,
                             model_kwargs={"y": labels}, uncond_kwargs={"y": null_labels}, dtype=torch.bfloat16)
    x0 = sampler(seed=1, y=new_labels)      # replay: no Python per step, no re-capture for new seeds/labels

What is captured: per model evaluation, `model(x, t, **kwargs)` (one forward on the doubled batch [x; x] under
classifier-free guidance, as `fastdiff.samplers._loop.model_outputs`) followed by one fused `ops.sampler_step` on
the sampler's table (`fastdiff.samplers.tables`: DDPM, DDIM, or a σ-space solver — Euler, Heun, DPM-Solver++,
... — on a Karras / exponential / uniform σ schedule; multistep history lives in a device buffer). The graph reads
static device buffers: x_T, every tensor model kwarg, and the seed. Everything else (shape, steps, η, guidance
scale, schedule) is fixed at capture; build another sampler to change it.

Noise (fastdiff.ops.philox): step i uses the Philox stream at offset `step_offset(i)`, as the eager loop with `seed=` does.
The fused steps draw it in-kernel, keyed by the seed held in a 0-dim int64 device buffer that they read from
device memory (`ops.sampler_step(..., seed=<tensor>)`); only the offset is a kernel scalar, fixed per captured step.
A replay with a new seed therefore needs no re-capture and costs nothing extra: one fused kernel per step.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch

from fastdiff import ops
from fastdiff.errors import GraphCaptureError
from fastdiff.ops import common as C
from fastdiff.ops import table as T
from fastdiff.ops import betas_for_timesteps, philox, step_table
from fastdiff.ops.ddim_step import step_rows as ddim_rows
from fastdiff.ops.ddpm_step import VAR_MODE as DDPM_VAR_MODE, step_rows as ddpm_rows
from fastdiff.samplers import solvers, tables
from fastdiff.samplers._loop import STEP_OFFSET_SHIFT, model_outputs, step_offset
from fastdiff.samplers.generate import SIGMA_SAMPLERS, SIGMA_SCHEDULES, sampling_sigmas

log = logging.getLogger(__name__)

__all__ = ["GraphCaptureError", "GraphedSampler", "SamplingPlan", "StaticLoop", "sampling_plan"]

SAMPLERS = ("ddim", "ddpm", "lcm") + SIGMA_SAMPLERS
_CPU_MESSAGE = "GraphedSampler needs a CUDA device; got {} — use fastdiff.samplers.sample_ddim for the eager loop"


# ----------------------------------------------------------------------------------------------- the plan


@dataclass
class SamplingPlan:
    """What a sampler visits, device-independent: the ᾱ table's timesteps (ascending; `table_ts[0]` may be a
    virtual row that is never stepped, see `first_step_row`), the model input timestep of each table row, and the
    step options. Rows first_step_row..S-1 are visited in descending order."""
    alphas_cumprod: np.ndarray   # [T] float64 of the trained process
    table_ts: list               # timesteps of the table rows, ascending
    model_t: list                # the value fed to the model for each row (int, or float when rescaled)
    sampler: str
    prediction: str = "epsilon"
    var_type: str = "fixed_small"
    clip_denoised: bool = False
    first_step_row: int = 0
    all_model_t: list | None = None  # model input of every timestep of the process (σ-space solvers need it)
    step_table: tables.StepTable | None = None  # a diffusers σ-space scheduler's own rows (its Fast scheduler's)
    c_in: list | None = None          # with step_table: the model's input scale per row
    init_sigma: float = 1.0           # with step_table: x_T = init_sigma · z

    @property
    def steps(self) -> int:
        if self.step_table is not None:
            return len(self.step_table)
        return len(self.table_ts) - self.first_step_row


def _even_steps(num: int, steps: int) -> list[int]:
    from fastdiff.samplers.generate import sampling_timesteps

    return sampling_timesteps(num, steps)


def _plan_from_diffusion(diffusion, steps: int, sampler: str | None) -> SamplingPlan:
    """fastdiff GaussianDiffusion / SpacedDiffusion: steps of its (respaced) process, model fed the base timesteps
    (· 1000/T when rescale_timesteps), as its p_sample_loop / ddim_sample_loop do."""
    ac = np.asarray(diffusion.alphas_cumprod, dtype=np.float64)
    idx = _even_steps(len(ac), steps)
    base = getattr(diffusion, "timestep_map", None) or list(range(len(ac)))
    model_t = [base[i] for i in idx]
    if getattr(diffusion, "rescale_timesteps", False):
        scale = 1000.0 / getattr(diffusion, "original_num_steps", len(ac))
        model_t = [t * scale for t in model_t]
    if diffusion.prediction not in ("epsilon", "x0"):
        raise TypeError(f"diffusion_or_scheduler: model_mean_type {diffusion.model_mean_type} is not supported "
                        f"(EPSILON or START_X)")
    all_t = list(base)
    if getattr(diffusion, "rescale_timesteps", False):
        all_t = [t * scale for t in all_t]
    return SamplingPlan(ac, list(idx), model_t, sampler or "ddim", diffusion.prediction, diffusion.var_type,
                        all_model_t=all_t)


def _plan_from_scheduler(scheduler, steps: int, sampler: str | None) -> SamplingPlan:
    """A diffusers-style DDIM/DDPM scheduler (diffusers' or fastdiff's Fast* ones), by duck typing on its
    `config`, `alphas_cumprod` and `set_timesteps`: the timesteps it would visit, its prediction type, clipping,
    variance type and (DDIM) final ᾱ."""
    name = type(scheduler).__name__
    kind = "ddim" if name.endswith("DDIMScheduler") else "ddpm" if name.endswith("DDPMScheduler") else None
    if kind is None:
        return _plan_from_sigma_scheduler(scheduler, steps, sampler)
    cfg = scheduler.config
    get = lambda key, default=None: getattr(cfg, key, None) if hasattr(cfg, key) else (
        cfg.get(key, default) if hasattr(cfg, "get") else default)
    if get("thresholding", False):
        raise TypeError(f"diffusion_or_scheduler: {name} with thresholding=True (dynamic thresholding) is not "
                        f"supported by the fused steps")
    try:
        prediction = C.prediction_name(get("prediction_type", "epsilon"))
    except ValueError as e:
        raise TypeError(f"diffusion_or_scheduler: {name}.config.prediction_type={get('prediction_type')!r} is not "
                        f"supported: {e}") from None
    clip = bool(get("clip_sample", False))
    if clip and float(get("clip_sample_range", 1.0)) != 1.0:
        raise TypeError(f"diffusion_or_scheduler: {name}.config.clip_sample_range="
                        f"{get('clip_sample_range')} is not supported (the fused steps clip x̂0 to [-1, 1])")
    var_type = "fixed_small"
    if kind == "ddpm":
        try:
            var_type = C.var_type_name(get("variance_type", "fixed_small"))
        except ValueError as e:
            raise TypeError(f"diffusion_or_scheduler: {name}.config.variance_type={get('variance_type')!r} is not "
                            f"supported: {e}") from None
    sched = copy.deepcopy(scheduler)  # set_timesteps mutates; leave the caller's scheduler as it was
    sched.set_timesteps(steps)
    ts = sorted(int(t) for t in torch.as_tensor(sched.timesteps).tolist())
    if len(set(ts)) != len(ts):
        raise ValueError(f"{name}.set_timesteps({steps}) gave repeated timesteps {ts}")
    ac = torch.as_tensor(sched.alphas_cumprod).double().cpu().numpy()
    first = 0
    if kind == "ddim" and not get("set_alpha_to_one", True):
        # The last step goes to ᾱ_prev = ᾱ_0 instead of 1: a virtual table row at timestep 0 holds it. A step at
        # t = 0 itself would go from ᾱ_0 to ᾱ_0 (the identity), so it is dropped.
        ts = [0] + [t for t in ts if t != 0]
        first = 1
    return SamplingPlan(ac, ts, list(ts), sampler or kind, prediction, var_type, clip, first)


def _plan_from_sigma_scheduler(scheduler, steps: int, sampler: str | None) -> SamplingPlan:
    """A scheduler that gives its own step rows (fastdiff's Fast diffusers schedulers: Euler, Euler ancestral,
    flow-match Euler, DPM-Solver multistep, UniPC, LCM, through `step_rows`): those rows at `steps`, fed its
    model timesteps and input scale."""
    name = type(scheduler).__name__
    if not callable(getattr(scheduler, "step_rows", None)):
        raise TypeError(f"diffusion_or_scheduler: {name} is not supported; GraphedSampler takes a diffusers "
                        f"DDIM/DDPM scheduler, a fastdiff Fast scheduler (for a stock one with a Fast version: "
                        f"fastdiff.adapters.FAST_SCHEDULERS[{name!r}].from_config(scheduler.config)), a fastdiff "
                        f"GaussianDiffusion, or alphas_cumprod [T]")
    if sampler is not None:
        raise ValueError(f"sampler: a {name} runs its own sampler; pass sampler=None")
    rows = scheduler.step_rows(steps)
    return SamplingPlan(rows["alphas_cumprod"], [], rows["model_t"], name, step_table=rows["table"],
                        c_in=rows["c_in"], init_sigma=rows["init_sigma"])


def sampling_plan(diffusion_or_scheduler, steps: int, sampler: str | None = None) -> SamplingPlan:
    """The `SamplingPlan` of a fastdiff diffusion, a diffusers DDIM/DDPM scheduler, a fastdiff Fast σ-space
    scheduler or alphas_cumprod [T] (model fed the timesteps themselves; DDIM's uniform stride when it divides T, else even
    spacing)."""
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    obj = diffusion_or_scheduler
    if hasattr(obj, "model_mean_type") and hasattr(obj, "alphas_cumprod"):
        return _plan_from_diffusion(obj, steps, sampler)
    if hasattr(obj, "config") and hasattr(obj, "set_timesteps"):
        return _plan_from_scheduler(obj, steps, sampler)
    if isinstance(obj, (np.ndarray, torch.Tensor, list, tuple)):
        ac = torch.as_tensor(obj, dtype=torch.float64).cpu().numpy()
        if ac.ndim != 1 or ac.size == 0:
            raise ValueError(f"alphas_cumprod must be a non-empty 1-D sequence, got shape {tuple(ac.shape)}")
        idx = _even_steps(len(ac), steps)
        return SamplingPlan(ac, list(idx), list(idx), sampler or "ddim", all_model_t=list(range(len(ac))))
    raise TypeError(f"diffusion_or_scheduler must be a fastdiff GaussianDiffusion/SpacedDiffusion, a diffusers "
                    f"DDIM/DDPM scheduler, a fastdiff Fast scheduler, or alphas_cumprod [T]; got "
                    f"{type(obj).__name__}")


# ----------------------------------------------------------------------------------------------- the loop


@dataclass
class _Rows:
    """A loop's `sampler_step` table [R, STEP_NCOL] and, per model evaluation j in visiting order: its table row,
    sampler step, model input timestep, input scale c_in and whether it draws noise."""
    table: torch.Tensor
    visits: list
    step_of: list
    model_t: list
    c_in: list
    noisy: list
    var_mode: int
    history: int
    init_sigma: float  # x_T = init_sigma · Philox(seed): σ_max for the σ-space solvers


def _tensor_output(out):
    """A model's output as a tensor: diffusers' UNet2DOutput (.sample) and tuples (their first element) too."""
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "sample") and isinstance(out.sample, torch.Tensor):
        return out.sample
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(f"the model must return a tensor (or an object with .sample / a tuple), got {type(out).__name__}")


class StaticLoop:
    """The sampling loop over static buffers, device-agnostic: what GraphedSampler captures, runnable eagerly.

    x: [N, C, ...] buffer of x_T; kwargs: static copies of the tensor model kwargs (non-tensor kwargs are
    constants); seed: 0-dim int64 buffer. `run()` does no host synchronisation and creates no tensor from host data.
    """

    def __init__(self, model, plan: SamplingPlan, shape, *, eta: float, guidance_scale: float | None,
                 model_kwargs: dict | None, uncond_kwargs: dict | None, dtype: torch.dtype, device,
                 backend: str | None = None, schedule: str = "karras"):
        shape = tuple(int(s) for s in shape)
        if len(shape) < 2 or min(shape) < 1:
            raise ValueError(f"shape must be [N, C, ...] with positive sizes, got {shape}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        eta = C.check_eta(eta)
        if plan.sampler != "ddim" and eta != 0.0:
            raise ValueError(f"eta applies to the DDIM sampler only, got eta={eta} with sampler={plan.sampler!r}")
        if guidance_scale is not None and not uncond_kwargs:
            raise ValueError("guidance_scale needs uncond_kwargs (the model kwargs of the unconditional branch, "
                             "e.g. {'y': null labels})")
        if uncond_kwargs and guidance_scale is None:
            raise ValueError("uncond_kwargs given without guidance_scale")
        numel = int(np.prod(shape))
        if numel >= 1 << STEP_OFFSET_SHIFT:
            raise ValueError(f"in-kernel noise needs N·M < 2^32 elements per step, shape {shape} has {numel}")
        self.model, self.plan, self.shape, self.dtype = model, plan, shape, dtype
        self.device = torch.device(device)
        self.eta, self.backend = eta, backend
        self.guidance_scale = None if guidance_scale is None else float(guidance_scale)
        n = shape[0]
        self.x = torch.zeros(shape, dtype=dtype, device=self.device)
        self.seed = torch.zeros((), dtype=torch.int64, device=self.device)
        self.kwargs = self._static("model_kwargs", model_kwargs or {}, n)
        self.uncond = self._static("uncond_kwargs", uncond_kwargs or {}, n) if uncond_kwargs else None
        rows = self._rows(plan, eta, schedule)
        self.var_mode, self.init_sigma, self.visits = rows.var_mode, rows.init_sigma, rows.visits
        self.noisy, self.c_in, self.step_of = rows.noisy, rows.c_in, rows.step_of
        self.table = rows.table.to(device=self.device, dtype=torch.float64 if dtype == torch.float64 else
                                   torch.float32)
        self.history = (torch.zeros((rows.history, *shape), dtype=dtype, device=self.device)
                        if rows.history else None)
        r = self.table.shape[0]
        self.rows = torch.arange(r, device=self.device).unsqueeze(1).expand(r, n).contiguous()
        model_t = rows.model_t
        t_dtype = torch.float32 if any(isinstance(t, float) for t in model_t) else torch.int64
        self.model_t = torch.tensor(model_t, dtype=t_dtype).to(self.device).unsqueeze(1).expand(
            len(model_t), n).contiguous()

    def _rows(self, plan: SamplingPlan, eta: float, schedule: str) -> "_Rows":
        """The sampler's `sampler_step` table and, per model evaluation in visiting order, its row, step, model
        timestep, input scale and whether it draws noise."""
        ac = plan.alphas_cumprod
        scale = 1.0 if self.guidance_scale is None else self.guidance_scale
        if plan.step_table is not None:  # a diffusers scheduler's rows, guided at `scale`
            steps = plan.step_table
            coefs = steps.coefs.copy()
            coefs[:, T.CFG_SCALE] = scale
            return _Rows(torch.as_tensor(coefs), list(range(len(steps))), list(steps.step), plan.model_t,
                         plan.c_in, list(steps.noisy_rows()), steps.var_mode, steps.history, plan.init_sigma)
        if plan.sampler in ("ddim", "ddpm"):  # the rows of the eager loop (`_loop.run_steps`), bit for bit
            coefs = step_table(betas_for_timesteps(ac, plan.table_ts), device=self.device)
            if plan.sampler == "ddim":
                table, var_mode = ddim_rows(coefs, eta, plan.prediction, plan.clip_denoised, scale), 0
            else:
                vt = C.var_type_code(plan.var_type)
                table, var_mode = ddpm_rows(coefs, plan.prediction, vt, plan.clip_denoised, scale), DDPM_VAR_MODE[vt]
            last = len(plan.table_ts) - 1
            visits = [last - i for i in range(plan.steps)]
            stochastic = plan.sampler == "ddpm" or eta > 0.0
            return _Rows(table, visits, list(range(plan.steps)), [plan.model_t[k] for k in visits],
                         [1.0] * plan.steps, [stochastic] * plan.steps, var_mode, 0, 1.0)
        common = dict(prediction=plan.prediction, clip=1.0 if plan.clip_denoised else 0.0, cfg_scale=scale)
        if plan.sampler == "lcm":
            visits = plan.table_ts[::-1]
            steps = tables.lcm(ac, visits, **common)
            model_t, c_in, init_sigma = [plan.model_t[plan.table_ts.index(t)] for t in visits], [1.0] * len(steps), 1.0
        else:
            if schedule not in SIGMA_SCHEDULES:
                raise ValueError(f"schedule must be one of {SIGMA_SCHEDULES}, got {schedule!r}")
            if plan.all_model_t is None:
                raise TypeError(f"sampler {plan.sampler!r} runs in σ-space on a fastdiff diffusion or alphas_cumprod "
                                f"[T]; a diffusers scheduler gives only its own DDIM/DDPM timesteps")
            den = solvers.DiscreteVPDenoiser(None, ac, prediction=plan.prediction, quantize=True)
            steps = solvers.BUILDERS[plan.sampler](sampling_sigmas(den, plan.steps, schedule), space="ve", **common)
            c_in, idx = den.model_inputs(steps.sigmas)
            model_t, c_in, init_sigma = [plan.all_model_t[i] for i in idx], list(c_in), float(steps.sigmas[0])
        return _Rows(torch.as_tensor(steps.coefs), list(range(len(steps))), list(steps.step), model_t, c_in,
                     list(steps.noisy_rows()), steps.var_mode, steps.history, init_sigma)

    def _static(self, name: str, kwargs: dict, n: int) -> dict:
        out = {}
        for key, value in kwargs.items():
            if isinstance(value, torch.Tensor):
                if value.dim() == 0 or value.shape[0] != n:
                    raise ValueError(f"{name}[{key!r}] must have the batch size {n} first, got {tuple(value.shape)}")
                out[key] = value.detach().to(self.device).clone()
            else:
                out[key] = value
        return out

    def load(self, x_T: torch.Tensor | None, seed: int, kwargs: dict) -> None:
        """Fill the buffers: x_T ([N, C, ...]; None: Philox(seed, offset 0), as fastdiff.samplers.generate draws
        it), seed, and new values of tensor model kwargs (same shapes; the others keep their values)."""
        philox.check_seed_offset(seed, 0)
        if x_T is None:  # σ-space solvers start from σ_max·z
            self.x.copy_(ops.randn_like(self.x, seed=seed) * self.init_sigma)
        else:
            if not isinstance(x_T, torch.Tensor):
                raise TypeError(f"x_T must be a tensor of the captured shape {self.shape}, got {type(x_T).__name__}")
            if tuple(x_T.shape) != self.shape:
                raise ValueError(f"x_T must be a tensor of the captured shape {self.shape}, got {tuple(x_T.shape)}")
            self.x.copy_(x_T)
        for key, value in kwargs.items():
            static = self.kwargs.get(key)
            if not isinstance(static, torch.Tensor):
                tensors = sorted(k for k, v in self.kwargs.items() if isinstance(v, torch.Tensor))
                raise ValueError(  # noqa: TRY004 - an unknown key, not a wrong type
                    f"model kwarg {key!r} was not a tensor at capture; the graph reads only the tensor "
                    f"kwargs given at construction: {tensors}")
            value = torch.as_tensor(value)
            if value.shape != static.shape:
                raise ValueError(f"model kwarg {key!r} must keep its captured shape {tuple(static.shape)}, got "
                                 f"{tuple(value.shape)}")
            static.copy_(value)
        self.seed.fill_(seed)

    def run(self, num_steps: int | None = None) -> torch.Tensor:
        """The loop from the x buffer: [N, C, ...] after the model evaluations of `num_steps` sampler steps
        (default all), one model call and one fused `sampler_step` each. No host syncs."""
        x = self.x
        model = lambda *a, **k: _tensor_output(self.model(*a, **k))
        if self.history is not None:
            self.history.zero_()
        for j, row in enumerate(self.visits):
            if num_steps is not None and self.step_of[j] >= num_steps:
                break
            x_in = x if self.c_in[j] == 1.0 else x * float(self.c_in[j])
            out, out_u = model_outputs(model, x_in, self.model_t[j], self.kwargs, self.uncond)
            noise = {"seed": self.seed, "offset": step_offset(j)} if self.noisy[j] else {}
            x = ops.sampler_step(x, out, self.table, self.rows[row], history=self.history, var_mode=self.var_mode,
                                 model_output_uncond=out_u, backend=self.backend, **noise)
        return x


# ----------------------------------------------------------------------------------------------- the graph


def _cuda_device(model, device) -> torch.device:
    if device is None:
        params = next(iter(model.parameters()), None) if isinstance(model, torch.nn.Module) else None
        device = params.device if params is not None else torch.device("cuda")
    device = torch.device(device)
    if device.type != "cuda":
        raise RuntimeError(_CPU_MESSAGE.format(device.type))
    if not torch.cuda.is_available():
        raise RuntimeError(_CPU_MESSAGE.format("cuda, but torch.cuda.is_available() is False"))
    return device


def capture_hint(exc: BaseException) -> str:
    """The message of a GraphCaptureError for the exception `exc` raised while capturing."""
    text = f"{type(exc).__name__}: {exc}"
    low = text.lower()
    causes = {
        "sync": "a host synchronisation in the model (.item(), .cpu(), .tolist(), float(tensor), print(tensor), "
                "torch.nonzero / boolean-mask indexing, or Python control flow on tensor values)",
        "cpu": "a CPU tensor inside the model's forward (a tensor created without device=, or a module or "
               "kwarg left on the CPU): move it to the GPU before capture",
        "shape": "a dynamic shape (an output whose size depends on tensor values); the graph needs static shapes",
    }
    if "same device" in low or "cpu" in low and "cuda" in low:
        first = "cpu"
    elif any(s in low for s in ("capturing", "capture", "synchron", "not permitted")):
        first = "sync"
    elif "shape" in low or "size" in low:
        first = "shape"
    else:
        first = None
    order = ([first] if first else []) + [c for c in ("sync", "cpu", "shape") if c != first]
    lead = f"likely cause: {causes[first]}" if first else "likely causes: " + "; ".join(causes[c] for c in order)
    rest = "" if not first else "; other causes: " + "; ".join(causes[c] for c in order[1:])
    return f"CUDA graph capture of the sampling loop failed ({text}); {lead}{rest}"


class GraphedSampler:
    """A whole sampling loop captured as one CUDA graph; `sampler(x_T=None, seed=0, **model_kwargs)` replays it.

    model(x: [N', C, ...], t: [N'], **kwargs) -> [N', C or 2C, ...] (a tensor, diffusers' output with .sample, or
    a tuple), with N' = N, or 2N under classifier-free guidance (one forward on [x; x], kwargs stacked as
    [cond; uncond]); fastdiff models, diffusers UNets patched with `fastdiff.adapters.patch` and any callable with
    static shapes and no host syncs. diffusion_or_scheduler: a fastdiff GaussianDiffusion/SpacedDiffusion, a
    diffusers-style DDIM/DDPM scheduler (by duck typing on config / alphas_cumprod / set_timesteps), a fastdiff
    Fast σ-space scheduler (Euler, Euler ancestral, flow-match Euler, DPM-Solver multistep, UniPC, LCM: its own
    rows, timesteps and input scaling; noise from the in-kernel stream) or alphas_cumprod [T] (`sampling_plan`). shape: [N, C, ...] of x_T; steps: sampler steps.
    sampler: "ddim" | "ddpm" (default: the scheduler's kind, DDIM otherwise) or a σ-space solver of
    `fastdiff.samplers.solvers` ("euler", "heun", "dpmpp_2m", ...; on a fastdiff diffusion or alphas_cumprod, with
    the σ `schedule` "karras" | "exponential" | "polyexponential" | "uniform"); eta: DDIM η; guidance_scale: the
    classifier-free s (ε = ε_u + s(ε_c − ε_u)) with uncond_kwargs the unconditional branch's kwargs;
    model_kwargs: example tensors ([N, ...]) whose buffers later calls refill; dtype: of x (bf16 models: bf16).
    prediction / var_type / clip_denoised override what the diffusion or scheduler says.
    Mixed precision: put torch.autocast(..., cache_enabled=False) inside the model callable (a cast-weight cache
    kept across the capture would point outside the graph's memory). Diffusers schedulers with clip_sample=True
    follow guided-diffusion: ε is re-derived from the clipped x̂0 (diffusers' use_clipped_model_output=True).

    Raises RuntimeError on a non-CUDA device and GraphCaptureError when the capture fails.
    """

    def __init__(self, model, diffusion_or_scheduler, shape, steps: int, *, sampler: str | None = None,
                 eta: float = 0.0, guidance_scale: float | None = None, model_kwargs: dict | None = None,
                 uncond_kwargs: dict | None = None, dtype: torch.dtype = torch.float32, device=None,
                 prediction: str | None = None, var_type: str | None = None, clip_denoised: bool | None = None,
                 backend: str | None = None, warmup_steps: int = 2, schedule: str = "karras"):
        if not callable(model):
            raise TypeError(f"model must be callable, got {type(model).__name__}")
        plan = sampling_plan(diffusion_or_scheduler, steps, sampler)
        for name, value in (("prediction", prediction), ("var_type", var_type), ("clip_denoised", clip_denoised)):
            if value is not None:
                setattr(plan, name, value)
        self.device = _cuda_device(model, device)
        self.plan = plan
        self.loop = StaticLoop(model, plan, shape, eta=eta, guidance_scale=guidance_scale, model_kwargs=model_kwargs,
                               uncond_kwargs=uncond_kwargs, dtype=dtype, device=self.device, backend=backend,
                               schedule=schedule)
        self.captures = 0
        with torch.cuda.device(self.device):  # capture on the model's device, whichever one is current
            self._capture(int(warmup_steps))

    @torch.no_grad()
    def _capture(self, warmup_steps: int) -> None:
        loop = self.loop
        loop.load(None, 0, {})
        # Warm-up on a side stream (Triton compiles, cuDNN picks algorithms, lazy inits) before capture.
        stream = torch.cuda.Stream(device=self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            loop.run(max(1, warmup_steps))
        torch.cuda.current_stream(self.device).wait_stream(stream)
        torch.cuda.synchronize(self.device)
        self.graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(self.graph):
                self._out = loop.run()
        except Exception as exc:  # the capture's own error says what failed; add what usually causes it
            self.graph = None
            raise GraphCaptureError(capture_hint(exc)) from exc
        self.captures += 1
        log.debug("captured %d %s steps of %s into one CUDA graph", self.plan.steps, self.plan.sampler,
                  tuple(loop.shape))

    @torch.no_grad()
    def __call__(self, x_T: torch.Tensor | None = None, seed: int = 0, *, clone: bool = True,
                 **model_kwargs) -> torch.Tensor:
        """x_0: [N, C, ...] from x_T (None: Philox noise of `seed`, offset 0); seed keys the step noise (Philox at
        offset (i + 1)·2^32 in step i, as the eager loop with `seed=`); model_kwargs: new values of the tensor
        kwargs given at construction (same shapes; omitted ones keep their last values). clone=False returns the
        graph's output buffer itself, which the next call overwrites."""
        self.loop.load(x_T, seed, model_kwargs)
        with torch.cuda.device(self.device):
            self.graph.replay()
        return self._out.clone() if clone else self._out

    def eager(self, x_T: torch.Tensor | None = None, seed: int = 0, **model_kwargs) -> torch.Tensor:
        """The same loop without the graph (for checks): same buffers, same noise."""
        with torch.no_grad():
            self.loop.load(x_T, seed, model_kwargs)
            return self.loop.run().clone()
