"""Guidance for the fused samplers: classifier-free, noisy-classifier and Discriminator Guidance, alone or together.

Every term has a weight w(t) = scale · schedule(t) on model timesteps t inside [t_min, t_max] (0 outside), and all
act on the ε-prediction or the mean of the step at x_t:

- `ClassifierFree` (Ho & Salimans 2022 eq. 6): ε̃ = ε_u + (1 + w)(ε_c − ε_u). ε_c and ε_u come from ONE forward
  pass on the doubled batch; the combination runs inside the fused step kernel (its guidance_scale = 1 + w).
- `ClassifierGuidance` (Dhariwal & Nichol 2021, Algorithms 1 and 2): g = ∇ₓ log p_φ(y | x_t, t), taken where
  guided-diffusion's `cond_fn` takes it: at the step's input x_t, with the classifier fed the model timestep t.
  DDPM: the mean moves by w·Σ_t·g after the step, Σ_t being the step's variance (guided-diffusion's
  `condition_mean`, at every t including 0). DDIM: ε̂ = ε − w·√(1 − ᾱ_t)·g (`condition_score`).
- `DiscriminatorGuidance` (Kim et al. 2023 eq. 9–10): c = ∇ₓ log(d_φ/(1 − d_φ)) = ∇ₓ logit_φ(x_t, t), added to the
  score s = −ε/√(1 − ᾱ_t): ε̂ = ε − w·√(1 − ᾱ_t)·c in both samplers. With CG too this is the paper's ADM-G++.

fastdiff applies the ε-corrections to the model output before the fused step, so x̂0 is clipped after the
correction (guided-diffusion's `condition_score` clips before it; the two agree when clip_denoised is off). Under
classifier-free guidance the ε-correction is subtracted from both branches, which subtracts it once from ε̃.
Gradient terms of one kind of use share one backward pass: the gradient of Σ_k w_k·f_k is Σ_k w_k·∇f_k, so
composed guidance is exactly the sum of its parts.
"""
from __future__ import annotations

import abc
import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

SCHEDULES = ("constant", "increasing", "decreasing")
KINDS = ("cfg", "cg", "dg")


def _checked(kind: str, scale, t_range, schedule):
    """(scale, t_range, schedule) validated, with errors naming the guidance kind."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale < 0:
        raise ValueError(f"{kind} guidance scale must be a finite number >= 0, got {scale!r}")
    if t_range is not None:
        if len(t_range) != 2 or not all(isinstance(v, int) for v in t_range) or not 0 <= t_range[0] <= t_range[1]:
            raise ValueError(f"{kind} t_range must be (t_min, t_max) ints with 0 <= t_min <= t_max, got {t_range!r}")
        t_range = tuple(t_range)
    if not callable(schedule) and schedule not in SCHEDULES:
        raise ValueError(f"{kind} schedule must be one of {SCHEDULES} or a callable, got {schedule!r}")
    return float(scale), t_range, schedule


class Guidance:
    """A guidance term: weight w(t) = scale · schedule(t) for model timesteps t in t_range = (t_min, t_max)
    (inclusive; None: all), 0 elsewhere. schedule: "constant" (1), "increasing" (t/(T − 1), strongest at high
    noise), "decreasing" (1 − t/(T − 1)) or a callable (t: int, T: int) -> float."""

    kind = ""

    def __init__(self, scale: float, t_range: tuple[int, int] | None = None,
                 schedule: str | Callable[[int, int], float] = "constant"):
        self.scale, self.t_range, self.schedule = _checked(self.kind, scale, t_range, schedule)

    def weight(self, t: int, num_timesteps: int) -> float:
        """w(t) for model timestep t of a T = num_timesteps process."""
        if self.t_range is not None and not self.t_range[0] <= t <= self.t_range[1]:
            return 0.0
        if callable(self.schedule):
            return self.scale * float(self.schedule(t, num_timesteps))
        frac = t / max(1, num_timesteps - 1)
        return self.scale * {"constant": 1.0, "increasing": frac, "decreasing": 1.0 - frac}[self.schedule]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scale={self.scale:g}, t_range={self.t_range}, schedule={self.schedule!r})"


class ClassifierFree(Guidance):
    """Classifier-free guidance with weight w: the unconditional branch sees `uncond_args` (e.g. {"y": null
    labels [N]}) in place of the conditional model kwargs."""

    kind = "cfg"

    def __init__(self, scale: float, uncond_args: dict, t_range=None, schedule="constant"):
        super().__init__(scale, t_range, schedule)
        if not isinstance(uncond_args, dict) or not uncond_args:
            raise ValueError("cfg guidance needs uncond_args, the model kwargs of the unconditional branch "
                             "(e.g. {'y': null labels}); the model must be trained with label dropout")
        self.uncond_args = uncond_args


class _GradientGuidance(Guidance, abc.ABC):
    """A term whose correction is w·∇ₓ f(x_t, t) for a differentiable f of the guidance model."""

    @abc.abstractmethod
    def log_term(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """f(x_t, t): [N], summed over the batch before the backward pass."""


class ClassifierGuidance(_GradientGuidance):
    """Noisy-classifier guidance toward `labels`: int64 [N] (None: the sampler's labels); classifier(x_t, t) ->
    logits [N, K]. f = log softmax(logits)[y]."""

    kind = "cg"

    def __init__(self, classifier, scale: float, labels: torch.Tensor | None = None, t_range=None,
                 schedule="constant"):
        super().__init__(scale, t_range, schedule)
        if not callable(classifier):
            raise ValueError("cg guidance needs a classifier (a module classifier(x_t, t) -> logits)")
        self.classifier, self.labels = classifier, labels

    def bind(self, labels: torch.Tensor | None, n: int) -> None:
        """Check the target labels before sampling starts (the sampler's when none were given)."""
        y = self.labels if self.labels is not None else labels
        if y is None:
            raise ValueError("cg guidance needs labels (the target class of every sample)")
        y = torch.as_tensor(y)
        if y.dtype != torch.int64 or y.shape != (n,):
            raise ValueError(f"cg labels must be int64 [N] = [{n}], got {y.dtype} {tuple(y.shape)}")
        k = getattr(self.classifier, "out_channels", None)
        if y.numel() and (int(y.min()) < 0 or (k is not None and int(y.max()) >= k)):
            raise ValueError(f"cg labels must lie in [0, {k if k is not None else 'K'}), got values in "
                             f"[{int(y.min())}, {int(y.max())}]")
        self._y, self._y_max = y, int(y.max()) if y.numel() else -1

    def log_term(self, x, t):
        logits = self.classifier(x, t).float()
        y = self._y.to(logits.device)
        if logits.dim() != 2 or self._y_max >= logits.shape[1]:
            raise ValueError(f"cg classifier must return logits [N, K] with K > every label, got "
                             f"{tuple(logits.shape)} for labels up to {self._y_max}")
        return torch.log_softmax(logits, dim=1).gather(1, y[:, None])[:, 0]


class DiscriminatorGuidance(_GradientGuidance):
    """Discriminator Guidance: discriminator(x_t, t) -> logit [N] or [N, 1] of d_φ, i.e. log(d/(1 − d));
    f = that logit, so ∇f = c_φ (Kim et al. eq. 10)."""

    kind = "dg"

    def __init__(self, discriminator, scale: float, t_range=None, schedule="constant"):
        super().__init__(scale, t_range, schedule)
        if not callable(discriminator):
            raise ValueError("dg guidance needs a discriminator (a module d(x_t, t) -> logit)")
        self.discriminator = discriminator

    def log_term(self, x, t):
        logit = self.discriminator(x, t).float()
        if logit.dim() == 2 and logit.shape[1] == 1:
            logit = logit[:, 0]
        if logit.shape != (x.shape[0],):
            raise ValueError(f"dg discriminator must return a logit [N] or [N, 1], got {tuple(logit.shape)}")
        return logit


class GuidancePlan:
    """The terms of one sampler call, checked and split by use: at most one `ClassifierFree`, any gradient terms.

    `ddpm_mean_shift`: True in DDPM, where classifier guidance moves the mean (w·Σ_t·g) instead of ε.
    """

    def __init__(self, terms: Sequence[Guidance], *, labels: torch.Tensor | None, n: int, prediction: str,
                 ddpm_mean_shift: bool):
        terms = list(terms)
        for term in terms:
            if not isinstance(term, Guidance):
                raise TypeError(f"guidance terms must be ClassifierFree, ClassifierGuidance or "
                                f"DiscriminatorGuidance, got {type(term).__name__}")
        cfg = [g for g in terms if isinstance(g, ClassifierFree)]
        if len(cfg) > 1:
            raise ValueError("at most one classifier-free guidance term per sampler call")
        self.cfg = cfg[0] if cfg else None
        grads = [g for g in terms if isinstance(g, _GradientGuidance)]
        if grads and prediction != "epsilon":
            raise ValueError(f"classifier and discriminator guidance need prediction='epsilon', got {prediction!r}")
        for g in grads:
            if isinstance(g, ClassifierGuidance):
                g.bind(labels, n)
        self.mean_terms = [g for g in grads if ddpm_mean_shift and isinstance(g, ClassifierGuidance)]
        self.eps_terms = [g for g in grads if g not in self.mean_terms]

    def cfg_weight(self, t: int, num_timesteps: int) -> float:
        """w of classifier-free guidance at model timestep t (0 without a cfg term)."""
        return 0.0 if self.cfg is None else self.cfg.weight(t, num_timesteps)


def weighted_gradient(terms: Sequence[_GradientGuidance], x: torch.Tensor, t: torch.Tensor,
                      num_timesteps: int) -> torch.Tensor | None:
    """Σ_k w_k(t)·∇ₓ f_k(x, t) in float32 [N, ...] at x: [N, ...] (one backward pass), or None when every weight
    at t is 0. t: int64 [N] model timesteps, equal across the batch (the samplers' loop)."""
    step_t = int(t[0])
    weighted = [(w, g) for g in terms if (w := g.weight(step_t, num_timesteps)) != 0.0]
    if not weighted:
        return None
    with torch.enable_grad():
        x_in = x.detach().requires_grad_(True)
        total = sum(w * g.log_term(x_in, t).sum() for w, g in weighted)
        (grad,) = torch.autograd.grad(total, x_in)
    if not bool(torch.isfinite(grad).all()):
        raise FloatingPointError(f"guidance gradient is not finite at t={step_t} "
                                 f"({', '.join(g.kind for _, g in weighted)})")
    return grad.float()


@dataclass(frozen=True)
class GuidanceSpec:
    """A guidance term before its models and labels are known (the CLI's --guidance, `generate`'s guidance):
    kind "cfg" | "cg" | "dg", scale w, t_range (t_min, t_max) or None, schedule name."""

    kind: str
    scale: float
    t_range: tuple[int, int] | None = None
    schedule: str = "constant"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"guidance kind must be one of {sorted(KINDS)}, got {self.kind!r}")
        _checked(self.kind, self.scale, self.t_range, self.schedule)

    @classmethod
    def parse(cls, spec: str) -> GuidanceSpec:
        """"KIND=SCALE[,t=LO:HI][,schedule=NAME]" with KIND cfg|cg|dg; a bare number is cfg's scale."""
        head, *options = spec.split(",")
        kind, sep, scale = head.partition("=")
        if not sep:
            kind, scale = "cfg", head
        try:
            value = float(scale)
        except ValueError:
            raise ValueError(f"--guidance {spec!r}: scale {scale!r} is not a number") from None
        t_range, schedule = None, "constant"
        for opt in options:
            key, sep, val = opt.partition("=")
            if key == "t" and sep:
                lo, _, hi = val.partition(":")
                try:
                    t_range = (int(lo), int(hi))
                except ValueError:
                    raise ValueError(f"--guidance {spec!r}: t must be LO:HI model timesteps, got {val!r}") from None
            elif key == "schedule" and sep:
                schedule = val
            else:
                raise ValueError(f"--guidance {spec!r}: unknown option {opt!r} (t=LO:HI, schedule=NAME)")
        try:
            return cls(kind.strip().lower(), value, t_range, schedule)
        except ValueError as err:
            raise ValueError(f"--guidance {spec!r}: {err}") from None

    def build(self, *, labels: torch.Tensor | None = None, null_labels: torch.Tensor | None = None,
              classifier=None, discriminator=None) -> Guidance:
        """The term for one batch: cfg needs null_labels [N] (the unconditional branch's y), cg a classifier
        (targets: labels [N]), dg a discriminator."""
        opts = {"t_range": self.t_range, "schedule": self.schedule}
        if self.kind == "cfg":
            if null_labels is None:
                raise ValueError("cfg guidance needs a model trained with label dropout (a null class)")
            return ClassifierFree(self.scale, {"y": null_labels}, **opts)
        if self.kind == "cg":
            if classifier is None:
                raise ValueError("cg guidance needs a noisy classifier (--classifier CKPT)")
            return ClassifierGuidance(classifier, self.scale, labels=labels, **opts)
        if discriminator is None:
            raise ValueError("dg guidance needs a discriminator (--discriminator CKPT)")
        return DiscriminatorGuidance(discriminator, self.scale, **opts)
