"""`fastdiff eval` and `fastdiff bench`: score a trained run with the metrics that fit its data, and time every
fused op against its plain-PyTorch reference on this machine."""
from __future__ import annotations

import torch

from fastdiff.app import config as C
from fastdiff.errors import check_int
from fastdiff.app.runs import LoadedRun, timed

TOYS = ("grid25", "ring8")


def sample_scores(run: LoadedRun, samples: torch.Tensor, labels: torch.Tensor | None) -> dict:
    """The metrics of run's data set for samples: digits -> FD, precision/recall (digits classifier features) and
    class accuracy; 2-D mixtures -> modes covered, share within 3σ, FD of Gaussian fits, MMD²; other 2-D data ->
    FD of Gaussian fits and MMD² against the data; other images -> {} (no feature network for them)."""
    from fastdiff import metrics as M

    name, x = run.cfg.data.name, samples.detach().float().cpu()
    if name == "digits":
        precision, recall = M.digits_precision_recall(x)
        out = {"fd": M.digits_fd(x), "precision": precision, "recall": recall}
        if labels is not None:
            out["accuracy"] = M.classifier_accuracy(x, labels)
        return out
    if x.dim() == 2 and x.shape[1] == 2:
        data = C.build_dataset(run.cfg).x
        ref = data[torch.randperm(len(data), generator=torch.Generator().manual_seed(0))[:len(x)]]
        out = {"gaussian_fd": M.gaussian_fd(x, ref), "mmd2": M.mmd(x, ref)}
        if name in TOYS:
            from fastdiff import data as D
            out.update(M.mode_stats(x, getattr(D, name)()).to_dict())
        return out
    return {}


def evaluate(run: LoadedRun, num_samples: int = 500, sampler: str = "ddim", steps: int = 50,
             guidance: float = 0.0, seed: int = 0, bpd: bool = False, bpd_samples: int = 256) -> dict:
    """Sample `num_samples` and score them (sample_scores); with bpd, also the bits/dim of the first
    `bpd_samples` data points (Improved DDPM eqs. 4-7; T model calls per batch). num_samples >= 2 (a Fréchet
    distance needs a covariance)."""
    check_int("num_samples", num_samples, 2)
    check_int("bpd_samples", bpd_samples, 1)
    labels = torch.arange(num_samples) % run.num_classes if run.num_classes else None
    samples, secs = timed(run.sample, num_samples, sampler=sampler, steps=steps, guidance=guidance, labels=labels,
                          seed=seed, progress=True)
    out = {"step": run.step, "sampler": sampler, "steps": steps, "guidance": guidance, "num_samples": num_samples,
           "seconds": secs, **sample_scores(run, samples, labels)}
    if bpd:
        out.update(bits_per_dim(run, bpd_samples))
    return out


def bits_per_dim(run: LoadedRun, n: int) -> dict:
    """Bits/dim of the first n points of the run's data set (with their labels for a conditional model)."""
    from fastdiff.metrics import bits_per_dim as bpd

    data = C.build_dataset(run.cfg)
    device = next(run.model.parameters()).device
    x = data.x[:n].to(device)
    y = data.y[:n].to(device) if run.num_classes else None
    kwargs = (lambda idx: {"y": y[idx]}) if y is not None else None
    res = bpd(run.diffusion, run.model, x, model_kwargs_fn=kwargs)
    return {"bpd": res["bpd"], "bpd_stderr": res["stderr"], "bpd_n": res["n"]}


def bench_ops(device=None, quick: bool = False) -> str:
    """A Markdown table: median time of each fused op (the `auto` backend) and of its reference on `device`."""
    from torch.utils import benchmark as tb

    from fastdiff import ops
    from fastdiff.diffusion import get_named_beta_schedule

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    n, c, s = (2, 4, 32) if quick else (8, 3, 128)
    g = torch.Generator(device=device).manual_seed(0)
    rnd = lambda *shape: torch.randn(shape, generator=g, device=device)  # noqa: E731
    x, eps, eps_u = rnd(n, c, s, s), rnd(n, c, s, s), rnd(n, c, s, s)
    coefs = ops.step_table(get_named_beta_schedule("linear", 1000), device=device)
    t = torch.randint(1, 1000, (n,), generator=g, device=device)
    h, w, b, sc, sh = rnd(n, 64, s // 4, s // 4), rnd(64), rnd(64), rnd(n, 64), rnd(n, 64)
    qkv = rnd(1 if quick else 4, 3 * 4 * 64, 256)
    cases = {
        "ddim_step (η=1, CFG, noise)": lambda be: ops.ddim_step(x, eps, coefs, t, eta=1.0, model_output_uncond=eps_u,
                                                               guidance_scale=3.0, seed=1, offset=0, backend=be),
        "ddpm_step (fixed large)": lambda be: ops.ddpm_step(x, eps, coefs, t, var_type="fixed_large", seed=1,
                                                           backend=be),
        "q_sample": lambda be: ops.q_sample(x, eps, coefs, t, backend=be),
        "adagn (+SiLU)": lambda be: ops.adagn(h, w, b, 32, 1e-5, sc, sh, act="silu", backend=be),
        "qkv_attention": lambda be: ops.qkv_attention(qkv, 4, backend=be),
    }
    lines = [f"fastdiff bench on {device} (torch.utils.benchmark medians)", "",
             "| op | reference | fused (auto) | speed-up |", "|---|---|---|---|"]
    for name, fn in cases.items():
        times = {}
        for be in ("reference", "auto"):
            with torch.no_grad():
                m = tb.Timer("fn(be)", globals={"fn": fn, "be": be}).blocked_autorange(min_run_time=0.3)
            times[be] = m.median
        lines.append(f"| {name} | {times['reference'] * 1e3:.3f} ms | {times['auto'] * 1e3:.3f} ms | "
                     f"{times['reference'] / times['auto']:.1f}x |")
    return "\n".join(lines)
