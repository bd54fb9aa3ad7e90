"""One call to speed up a diffusers pipeline, one to undo it.

    report = fastdiff.accelerate(pipe)                  # fast scheduler + fused ops
    report = fastdiff.accelerate(pipe, cuda_graph=True) # + the whole denoising loop as one CUDA graph (CUDA only)
    images = pipe(prompt_embeds=..., ...).images        # same call, same images
    fastdiff.deaccelerate(pipe)                         # the pipeline exactly as it was

What `accelerate` does, each reported in the returned `Acceleration`:

1. Scheduler: the pipeline's scheduler is replaced by its fastdiff subclass built from the same config
   (`fastdiff.adapters.diffusers_solvers.FAST_SCHEDULERS`: every step one fused `sampler_step` launch, no host
   synchronisation). A scheduler fastdiff has no fused version of, or whose config uses an option the fused step
   does not implement, is kept (the report says why).
2. Fused ops: `fastdiff.patch` on every diffusers model of the pipeline (UNet, transformer, VAE, ...): GroupNorm
   (+ SiLU, + scale/shift), adaLN modulation with its gated residual, GEGLU and attention run as fused fastdiff
   ops (on the CPU only for tensors big enough to gain: diffusers_blocks.CPU_FUSED_MIN_NUMEL). Models the user had
   already patched are left to the user.
3. CUDA graph (opt-in, CUDA only, fast σ-space schedulers without noise): the pipeline's own denoising loop —
   every denoiser call, the classifier-free guidance arithmetic between them and every scheduler step — is
   captured as one CUDA graph and replayed on later calls with the same shapes and schedule:
   - call 1 with a new (input shapes, schedule) runs eagerly (warm-up); call 2 captures the loop, from the first
     denoiser call to the last scheduler step, then replays it; calls 3+ replay it. A change of shapes, step count
     or scheduler options is a new key (captured afresh; the last 4 keys' graphs are kept).
   - Capture records, per denoiser / step call, which tensor arguments come from outside the loop (the initial
     latents, prompt embeddings, timesteps, ...) by tracking, under a `TorchFunctionMode`, which storages the loop
     itself allocates. On replay each call's outside arguments are copied into the captured ones; the Python loop
     still runs (progress bar and all), its model calls return the captured outputs without computing, and the last
     step replays the graph and returns a copy of the final latents.
   - Anything the loop reads from outside that is not such an argument, a model parameter/buffer or the
     scheduler's own tensors (kept alive, and equal for equal keys) makes the loop unsafe to replay: the captured
     call still returns its correct result, and that key then runs eagerly, with the reason in `report.cuda_graph`
     (e.g. a callback reading its own tensors). A loop that cannot be captured at all (a host synchronisation
     inside it: `.item()`, a CPU generator's noise, a callback) is rerun eagerly with the same generator states.
   - Calls with `callback_on_step_end` / `callback` run eagerly (the callback would see uncomputed tensors).
   For this the pipeline's class is swapped for a subclass of the same name that wraps `__call__` (saving and
   loading are unaffected); `deaccelerate` swaps it back.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import warnings
from collections import OrderedDict

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from fastdiff.adapters.patch import is_patched, unpatch
from fastdiff.adapters.patch import patch as patch_model

__all__ = ["Acceleration", "accelerate", "deaccelerate"]

_STATE = "_fastdiff_acceleration"
_MAX_GRAPHS = 4
_GRAPH_DEVICES = ("cuda",)
_DENOISERS = ("unet", "transformer", "prior")
#: pipeline call arguments that only feed what is computed before the denoising loop (or after it)
_OUTSIDE_LOOP = {"prompt", "prompt_2", "prompt_3", "negative_prompt", "negative_prompt_2", "negative_prompt_3",
                 "generator", "output_type", "return_dict", "callback_steps"}


@dataclasses.dataclass
class Acceleration:
    """What `accelerate` did: the scheduler swap (or why not), the fused-op sites patched per model, and the CUDA
    graph's state (off / on / why it is not used)."""
    scheduler: str
    patched: dict
    cuda_graph: str

    def __str__(self) -> str:
        sites = ", ".join(f"{k}: {v}" for k, v in self.patched.items()) or "none"
        return f"scheduler: {self.scheduler}; fused-op sites: {sites}; cuda graph: {self.cuda_graph}"


@dataclasses.dataclass
class _Saved:
    """What `deaccelerate` restores."""
    scheduler: object
    patched: list
    cls: type | None = None
    graph: "_LoopGraph | None" = None
    report: Acceleration | None = None


def _is_pipeline(pipe) -> bool:
    return hasattr(pipe, "components") and isinstance(getattr(pipe, "components"), dict)


def accelerate(pipe, *, scheduler: bool = True, patch: bool = True, cuda_graph: bool = False
               ) -> Acceleration:
    """Speed up a diffusers pipeline in place (module docstring); returns what was done. Undo with
    `deaccelerate(pipe)`. scheduler: swap in the fused scheduler; patch: fused ops in the models (`fastdiff.patch`;
    False: leave the models alone); cuda_graph: capture the denoising loop (needs the pipeline's models on a CUDA
    device)."""
    if not _is_pipeline(pipe):
        raise TypeError(f"pipe must be a diffusers DiffusionPipeline (with .components), got {type(pipe).__name__}")
    if getattr(pipe, _STATE, None) is not None:
        raise ValueError("pipe is already accelerated: call fastdiff.deaccelerate(pipe) first")
    from fastdiff.adapters.diffusers_solvers import fast_scheduler

    saved = _Saved(scheduler=getattr(pipe, "scheduler", None), patched=[])
    sched_report = "off"
    if scheduler:
        if saved.scheduler is None:
            sched_report = "the pipeline has no scheduler"
        else:
            fast, sched_report = fast_scheduler(saved.scheduler)
            if fast is not None and fast is not saved.scheduler:
                pipe.scheduler = fast
    patched = {}
    if patch:
        for name, module in pipe.components.items():
            if (isinstance(module, nn.Module) and type(module).__module__.startswith("diffusers.")
                    and not any(is_patched(m) for m in module.modules())):
                n = patch_model(module)
                if n:
                    patched[name] = n
                    saved.patched.append(name)
    graph_report = "off"
    if cuda_graph:
        graph_report = _install_graph(pipe, saved)
    saved.report = Acceleration(sched_report, patched, graph_report)
    object.__setattr__(pipe, _STATE, saved)
    return saved.report


def deaccelerate(pipe) -> None:
    """Undo `accelerate(pipe)` exactly: the original scheduler object, unpatched models, the original class."""
    saved = getattr(pipe, _STATE, None)
    if saved is None:
        raise ValueError("pipe is not accelerated (fastdiff.accelerate(pipe) was not called on it)")
    if saved.graph is not None:
        saved.graph.uninstall()
        pipe.__class__ = saved.cls
    for name in saved.patched:
        unpatch(pipe.components[name])
    if saved.scheduler is not None and pipe.scheduler is not saved.scheduler:
        pipe.scheduler = saved.scheduler
    object.__delattr__(pipe, _STATE)


# ----------------------------------------------------------------------------------------------- the graph


def _install_graph(pipe, saved: _Saved) -> str:
    from fastdiff.adapters.diffusers_solvers import _FusedStep

    denoiser = next((getattr(pipe, n) for n in _DENOISERS if isinstance(getattr(pipe, n, None), nn.Module)), None)
    if denoiser is None:
        return f"not used: no denoiser module ({' / '.join(_DENOISERS)}) on the pipeline"
    device = next(denoiser.parameters()).device
    if device.type not in _GRAPH_DEVICES:
        return f"not used: the denoiser is on {device}, CUDA graphs need a CUDA device"
    if not isinstance(pipe.scheduler, _FusedStep):
        return (f"not used: the loop can be captured with fastdiff's σ-space schedulers, the pipeline has "
                f"{type(pipe.scheduler).__name__}")
    saved.graph = _LoopGraph(pipe, denoiser)
    saved.cls = type(pipe)
    pipe.__class__ = _graphed_class(type(pipe))
    return "on (captured on the second call with the same shapes)"


def _graphed_class(cls: type) -> type:
    """A subclass of the pipeline's class, with the same name and module, whose __call__ goes through the graph."""
    def __call__(self, *args, **kwargs):
        return getattr(self, _STATE).graph.call(cls.__call__, self, args, kwargs)

    return type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__,
                                       "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})


def _tensors(obj, path=()):
    """(path, tensor) for every tensor in nested tuples, lists and dicts (diffusers' outputs are dicts), in order."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, path + (i,))
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, path + (k,))


def _get(obj, path):
    for key in path:
        obj = obj[key]
    return obj


def _ptr(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class _Tracker(TorchFunctionMode):
    """Which storages the captured loop allocates itself (`internal`), and every storage it reads that it did not
    (`reads`: ptr -> a tensor on it). A view shares its base's storage, so it shares its status."""

    def __init__(self):
        super().__init__()
        self.internal: set[int] = set()
        self.reads: dict[int, torch.Tensor] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = set()
        for _, t in _tensors((args, kwargs)):
            p = _ptr(t)
            inputs.add(p)
            if p and p not in self.internal:
                self.reads.setdefault(p, t)
        for _, t in _tensors(out):
            p = _ptr(t)
            if p not in inputs:
                self.internal.add(p)
        return out

    def mark(self, out) -> None:
        """Outputs of calls the mode may not see (custom ops): allocated by the loop."""
        for _, t in _tensors(out):
            self.internal.add(_ptr(t))


@dataclasses.dataclass
class _Call:
    """One denoiser or scheduler-step call of a captured loop: its arguments from outside the loop (path, the
    captured tensor) and its output."""
    outside: list
    out: object


@dataclasses.dataclass
class _Captured:
    capture: object
    calls: list
    keep: list          # tensors the graph reads that must stay alive (scheduler state of the captured call)
    eager_reason: str   # "" (replayed), or why this key runs eagerly from now on


class _CudaCapture:
    """One CUDA graph: stream capture on a side stream (torch.cuda.graph's protocol, split in begin / end)."""

    def begin(self) -> None:
        torch.cuda.synchronize()
        self.stream = torch.cuda.Stream()
        self.stream.wait_stream(torch.cuda.current_stream())
        self.ctx = torch.cuda.stream(self.stream)
        self.ctx.__enter__()
        self.graph = torch.cuda.CUDAGraph()
        self.graph.capture_begin()

    def end(self) -> None:
        try:
            self.graph.capture_end()
        finally:
            self.ctx.__exit__(None, None, None)
            torch.cuda.current_stream().wait_stream(self.stream)

    def replay(self) -> None:
        self.graph.replay()


class _LoopGraph:
    """The CUDA graph of a pipeline's denoising loop (module docstring, point 3)."""

    capture_cls = _CudaCapture

    def __init__(self, pipe, denoiser: nn.Module):
        self.pipe, self.denoiser = pipe, denoiser
        self.graphs: OrderedDict = OrderedDict()   # key -> _Captured
        self.warm: set = set()
        self.mode = "eager"     # this call's loop: eager / capture / replay
        self.key = None
        self.calls: list = []   # capture: the _Call list; replay: the index of the next call
        self.index = 0
        self.call_key = None
        self.tracker: _Tracker | None = None
        self._orig_forward = denoiser.__dict__.get("forward")
        self.capture = None
        denoiser.forward = self._denoise
        self._hook_scheduler()

    # ---------------------------------------------------------------- hooks

    def _hook_scheduler(self):
        sched = self.pipe.scheduler
        self.sched = sched
        sched.step = self._step
        sched.set_timesteps = self._set_timesteps

    def uninstall(self):
        if self._orig_forward is None:
            self.denoiser.__dict__.pop("forward", None)
        else:
            self.denoiser.forward = self._orig_forward
        for name in ("step", "set_timesteps"):
            self.sched.__dict__.pop(name, None)

    def _set_timesteps(self, *args, **kwargs):
        type(self.sched).set_timesteps(self.sched, *args, **kwargs)
        self.mode, self.key, self.index = "loop-start", None, 0

    def _forward(self, *args, **kwargs):
        fwd = self._orig_forward or type(self.denoiser).forward.__get__(self.denoiser)
        return fwd(*args, **kwargs)

    # ---------------------------------------------------------------- the loop

    def _key(self, args, kwargs):
        """What a captured loop depends on: the first denoiser call's argument shapes and constants, the step
        table, and the pipeline call's arguments that are neither tensors nor what only feeds tensors computed
        before the loop (a guidance scale is baked into the graph; a prompt only changes the embeddings)."""
        shapes = tuple((p, tuple(t.shape), t.dtype, str(t.device)) for p, t in _tensors((args, kwargs)))
        consts = tuple(sorted((k, repr(v)) for k, v in kwargs.items() if not isinstance(v, (torch.Tensor, dict))))
        digest = hashlib.sha1(self.sched._table.coefs.tobytes()).hexdigest()
        return shapes, consts, digest, self.call_key

    def _begin(self, args, kwargs):
        """The first denoiser call of a loop: choose eager / capture / replay."""
        if self.pipe.scheduler is not self.sched:
            self.mode = "eager"
            self._report("not used: pipe.scheduler was replaced after accelerate(); accelerate the pipeline again")
            return
        self.key = key = self._key(args, kwargs)
        captured = self.graphs.get(key)
        if self.sched._table.stochastic:
            self.mode = "eager"
            self._report("not used for this loop: the scheduler draws noise from the pipeline's generator")
        elif captured is not None:
            self.mode = "eager" if captured.eager_reason else "replay"
        elif key in self.warm:
            self.mode = "capture"
            self._start_capture()
        else:
            self.warm.add(key)
            self.mode = "eager"

    def _denoise(self, *args, **kwargs):
        if self.mode == "loop-start":
            self._begin(args, kwargs)
        return self._call("denoiser", self._forward, args, kwargs)

    def _step(self, *args, **kwargs):
        last = self.sched._k == len(self.sched._table) - 1
        out = self._call("step", lambda *a, **k: type(self.sched).step(self.sched, *a, **k), args, kwargs)
        if self.mode == "replay":
            self.sched._advance()
        if last:
            out = self._end(out)
        return out

    def _call(self, kind, fn, args, kwargs):
        if self.mode in ("eager", "loop-start"):
            return fn(*args, **kwargs)
        if self.mode == "capture":
            outside = [(p, t) for p, t in _tensors((args, kwargs)) if _ptr(t) not in self.tracker.internal]
            out = fn(*args, **kwargs)
            self.tracker.mark(out)
            self.calls.append(_Call(outside, out))
            return out
        call = self.graphs[self.key].calls[self.index]   # replay
        self.index += 1
        for path, captured in call.outside:
            try:
                new = _get((args, kwargs), path)
            except (KeyError, IndexError, TypeError):
                new = None
            if not isinstance(new, torch.Tensor) or new.shape != captured.shape or new.dtype != captured.dtype:
                raise RuntimeError(f"the pipeline's loop differs from the one captured as a CUDA graph ({kind} "
                                   f"argument {path}); call fastdiff.deaccelerate(pipe) and accelerate it again")
            if _ptr(new) != _ptr(captured) or new.data_ptr() != captured.data_ptr():
                captured.copy_(new)
        return call.out

    def _start_capture(self):
        self.calls = []
        self.capture = self.capture_cls()
        self.capture.begin()
        self.tracker = _Tracker()
        self.tracker.__enter__()

    def _stop_capture(self) -> _Tracker:
        tracker, self.tracker = self.tracker, None
        if tracker is not None:
            tracker.__exit__(None, None, None)
        self.capture.end()
        return tracker

    def _end(self, out):
        """The last step of the loop: finish the capture and run it, or replay; the final latents copied out."""
        if self.mode == "capture":
            tracker = self._stop_capture()
            outside = {_ptr(t) for c in self.calls for _, t in c.outside}
            constants = {_ptr(t) for m in self.pipe.components.values() if isinstance(m, nn.Module)
                         for t in (*m.parameters(), *m.buffers())}
            state = [t for _, t in _tensors([v for v in vars(self.sched).values()
                                             if isinstance(v, (torch.Tensor, dict, list, tuple))])]
            constants |= {_ptr(t) for t in state}
            stray = [tuple(t.shape) for p, t in tracker.reads.items() if p not in outside and p not in constants]
            why = ""
            if stray:
                why = (f"not used for this loop: it reads {len(stray)} tensor(s) from outside that are neither call "
                       f"arguments, model weights nor scheduler state (shapes {stray[:3]})")
                self._report(why)
            self.graphs[self.key] = _Captured(self.capture, self.calls, state, why)
            while len(self.graphs) > _MAX_GRAPHS:
                self.graphs.popitem(last=False)
            self.capture.replay()
            if not why:
                self._report("on (loop captured)")
        elif self.mode == "replay":
            self.graphs[self.key].capture.replay()
        else:
            return out
        self.mode = "eager"
        return _copy_output(out)

    def _report(self, text: str) -> None:
        report = getattr(self.pipe, _STATE, None)
        if report is not None and report.report is not None:
            report.report.cuda_graph = text

    # ---------------------------------------------------------------- the pipeline call

    def call(self, orig_call, pipe, args, kwargs):
        self.call_key = (tuple(repr(a) for a in args if not isinstance(a, torch.Tensor)),
                         tuple(sorted((k, repr(v)) for k, v in kwargs.items()
                                      if k not in _OUTSIDE_LOOP and not isinstance(v, (torch.Tensor, list, tuple)))))
        if kwargs.get("callback_on_step_end") is not None or kwargs.get("callback") is not None:
            with self._eager():
                return orig_call(pipe, *args, **kwargs)
        gens = kwargs.get("generator")
        gens = gens if isinstance(gens, (list, tuple)) else [gens] if gens is not None else []
        states = [g.get_state() for g in gens]
        try:
            return orig_call(pipe, *args, **kwargs)
        except Exception as exc:  # a loop that cannot be captured: rerun eagerly, same generator states
            if self.mode != "capture":
                raise
            with contextlib.suppress(Exception):
                self._stop_capture()
            self.graphs[self.key] = _Captured(None, [], [], f"capture failed: {exc}")
            self._report(f"not used for this loop: capture failed ({type(exc).__name__}: {exc})")
            warnings.warn(f"fastdiff.accelerate: the denoising loop could not be captured as a CUDA graph "
                          f"({type(exc).__name__}: {exc}); running it eagerly", RuntimeWarning, stacklevel=3)
            for g, s in zip(gens, states):
                g.set_state(s)
            self.mode = "eager"
            with self._eager():
                return orig_call(pipe, *args, **kwargs)

    @contextlib.contextmanager
    def _eager(self):
        warm, self.warm = self.warm, set()
        graphs, self.graphs = self.graphs, OrderedDict()
        try:
            yield
        finally:
            self.warm, self.graphs = warm, graphs
            self.mode = "eager"


def _copy_output(out):
    """The step output with its tensors copied out of the graph's memory (the next replay overwrites it)."""
    if isinstance(out, tuple):
        return tuple(t.clone() if isinstance(t, torch.Tensor) else t for t in out)
    fields = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in out.items()}
    return type(out)(**fields)
