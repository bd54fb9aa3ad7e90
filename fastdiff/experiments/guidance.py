"""`fastdiff repro dg-toy` and `fastdiff repro guidance-digits`: the guidance papers' small-scale experiments.

- dg-toy (Kim et al. 2023 §4.1): 2-D data, a deliberately wrong score (the exact score of a different mixture),
  a 4-layer 256-unit MLP discriminator trained on diffused real vs diffused generated samples, and samples with
  and without Discriminator Guidance, scored by the Fréchet distance of Gaussian fits and MMD to the data.
- guidance-digits: on classifier-free digits models, classifier-free and noisy-classifier guidance raise the class
  accuracy of samples as the scale grows, and DG (an encoder discriminator trained on real digits vs the model's
  own samples) lowers the Fréchet distance of a model trained a quarter as long.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import torch

from fastdiff.data.toy import GaussianMixture
from fastdiff.diffusion import create_gaussian_diffusion
from fastdiff.samplers import SamplerOptions, generate

log = logging.getLogger(__name__)


def _ring(weights, std: float, name: str) -> GaussianMixture:
    """8 Gaussians on the unit circle."""
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    return GaussianMixture(torch.stack([ang.cos(), ang.sin()], 1), std=std, weights=weights, name=name)


#: The data, and the mixture whose exact score plays the wrong pretrained score: mass skewed 4:1 toward one half
#: of the ring and every mode 60 % wider.
DG_DATA = _ring(None, 0.1, "data: 8-ring")
DG_WRONG = _ring([4, 4, 4, 4, 1, 1, 1, 1], 0.16, "wrong score: skewed, wider ring")


class _ExactRatio(torch.nn.Module):
    """The optimal discriminator's logit log p_data^t − log p_wrong^t (the ceiling of DG)."""

    def __init__(self, alphas_cumprod):
        super().__init__()
        self.ac = torch.as_tensor(alphas_cumprod, dtype=torch.float64)

    def forward(self, x, t):
        ab = self.ac[t]
        return DG_DATA.log_prob(x, ab) - DG_WRONG.log_prob(x, ab)


def train_discriminator(out, real: torch.Tensor, fake: torch.Tensor, spec: dict, diffusion, *, steps: int,
                        batch_size: int, lr: float, seed: int = 0, init=None):
    """Train the discriminator `spec` (fastdiff.app.runs.build_discriminator; stored in the checkpoints, so
    `load_discriminator` and `fastdiff sample --discriminator` rebuild it) with DiscriminatorObjective on diffused
    real vs fake, through the Trainer in out/ (resuming). init(model) may load pretrained parts (the frozen
    classifier) first. Returns the model in eval mode with its EMA weights."""
    from fastdiff.app.runs import build_discriminator, load_discriminator
    from fastdiff.training import DiscriminatorObjective, TrainConfig, Trainer, discriminator_dataset

    torch.manual_seed(seed)
    model = build_discriminator(spec)
    if init is not None:
        init(model)
    cfg = TrainConfig(total_steps=steps, batch_size=batch_size, lr=lr, lr_decay="cosine", warmup_steps=50,
                      ema_rates=(0.995,), grad_clip=1.0, save_interval=steps, log_interval=max(1, steps // 20),
                      seed=seed)
    Trainer(model, DiscriminatorObjective(diffusion), discriminator_dataset(real, fake), cfg, out,
            run_config={"discriminator": spec}).train(resume=True)
    return load_discriminator(out)


def _scatter(path: Path, clouds: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(clouds), figsize=(3.2 * len(clouds), 3.3), dpi=120, sharex=True, sharey=True)
    for ax, (title, x) in zip(axes, clouds.items()):
        ax.scatter(x[:, 0], x[:, 1], s=1.5, alpha=0.4)
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
        ax.set_xlim(-1.8, 1.8)
        ax.set_ylim(-1.8, 1.8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def dg_toy(out, quick: bool = False, seed: int = 0) -> dict:
    """Discriminator Guidance on a 2-D toy: a wrong score corrected by a trained MLP discriminator."""
    from fastdiff.metrics import gaussian_fd, mmd
    from fastdiff.training import cached_samples

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    n_train, n_eval, steps = (4000, 1000, 800) if quick else (20000, 2000, 4000)
    diffusion = create_gaussian_diffusion(steps=1000)
    ac = diffusion.alphas_cumprod
    wrong_eps = DG_WRONG.eps_model(ac)
    g = torch.Generator().manual_seed(seed)
    real = DG_DATA.sample(n_train, generator=g)
    ddpm = SamplerOptions(sampler="ddpm", steps=250, seed=seed, batch_size=4096)
    fake = cached_samples(out / "generated.npz", lambda: generate(wrong_eps, ac, n_train, (2,), ddpm), n_train)
    disc = train_discriminator(out / "discriminator", real, fake, {"kind": "mlp", "kwargs": {}}, diffusion,
                               steps=steps, batch_size=512, lr=1e-3, seed=seed)
    data = DG_DATA.sample(n_eval, generator=g)
    rows, clouds = [], {"data": data}
    for kind, options in (("DDPM-250", ddpm), ("DDIM-50", dataclasses.replace(ddpm, sampler="ddim", steps=50))):
        for label, d in (("wrong score", None), ("+ DG (trained MLP)", disc), ("+ DG (exact ratio)", _ExactRatio(ac))):
            x = generate(wrong_eps, ac, n_eval, (2,), dataclasses.replace(
                options, seed=seed + 1, guidance=[] if d is None else "dg=1"), discriminator=d)
            rows.append({"sampler": kind, "score": label, "fd": gaussian_fd(x, data), "mmd": mmd(x, data)})
            if kind == "DDPM-250":
                clouds[label] = x
    floor = DG_DATA.sample(n_eval, generator=g)
    reference = {"fd": gaussian_fd(floor, data), "mmd": mmd(floor, data)}
    for r in rows:
        base = next(b for b in rows if b["sampler"] == r["sampler"] and b["score"] == "wrong score")
        r["fd_reduction"] = 1 - r["fd"] / base["fd"]
        r["mmd_reduction"] = 1 - r["mmd"] / base["mmd"]
    _scatter(out / "dg_toy.png", clouds)
    lines = [f"# dg-toy: Discriminator Guidance on a 2-D ring ({'quick' if quick else 'full'} run)", "",
             f"Data: {DG_DATA.name}; {DG_WRONG.name}. Discriminator: 4-layer MLP (256 units), {steps} steps on "
             f"{n_train} diffused real vs {n_train} diffused generated samples. {n_eval} samples per row, w_DG = 1.",
             "", "| sampler | score | Fréchet distance | MMD² | FD reduction | MMD reduction |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['sampler']} | {r['score']} | {r['fd']:.4f} | {r['mmd']:.5f} | {r['fd_reduction']:.0%} | "
              f"{r['mmd_reduction']:.0%} |" for r in rows]
    lines.append(f"| — | fresh data samples (floor) | {reference['fd']:.4f} | {reference['mmd']:.5f} | — | — |")
    (out / "dg_toy.md").write_text("\n".join(lines) + "\n")
    results = {"quick": quick, "rows": rows, "reference": reference, "discriminator_steps": steps}
    (out / "dg_toy.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))
    return results


def _train(config: str, out: Path, overrides=()) -> None:
    """Train (or resume) the shipped config `config` into out/."""
    from fastdiff.app.config import load_config
    from fastdiff.app.runs import make_trainer

    trainer, _ = make_trainer(load_config(config, list(overrides)), out)
    trainer.train(resume=True)


def _schedule(total: int) -> list[str]:
    """Overrides for a run of `total` steps (one checkpoint at the end, warmup within the run)."""
    return [f"train.total_steps={total}", f"train.save_interval={total}",
            f"train.warmup_steps={max(1, min(100, total // 5))}"]


def _accuracy_plot(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    for method, marker in (("classifier-free", "o"), ("classifier", "s")):
        pts = [(r["scale"], r["accuracy"]) for r in rows if r["method"] == method]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=f"{method} guidance")
    ax.set_xlabel("guidance scale")
    ax.set_ylabel("classifier accuracy of samples")
    ax.set_ylim(0, 1.02)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def guidance_digits(out, quick: bool = False, seed: int = 0) -> dict:
    """Classifier-free, classifier and discriminator guidance on digits: accuracy vs scale, and DG's FD gain."""
    from fastdiff.data import load_digits
    from fastdiff.metrics import classifier_accuracy, digits_fd
    from fastdiff.app.runs import load_classifier, load_run, save_grid, timed
    from fastdiff.training import cached_samples

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    total = 300 if quick else 1500              # half the demo model's budget: enough for the guidance claims
    n = 200 if quick else 500
    cfg_scales, cg_scales, dg_scales = ((0, 3), (0, 2, 8), (0, 1)) if quick else ((0, 1, 3), (0, 1, 2, 4, 8), (0, 1, 2))
    _train("digits_cfg", out / "model", _schedule(total))
    _train("digits_cfg", out / "model_quarter", _schedule(total // 4))
    _train("digits_classifier", out / "classifier", _schedule(total))
    run, quarter = load_run(out / "model"), load_run(out / "model_quarter")
    classifier = load_classifier(out / "classifier")
    labels = torch.arange(n) % 10
    rows = []

    def score(method: str, scale: float, samples: torch.Tensor, seconds: float) -> None:
        rows.append({"method": method, "scale": scale, "accuracy": classifier_accuracy(samples, labels),
                     "fd": digits_fd(samples), "seconds": seconds})
        save_grid(samples[:100], out / f"samples_{method.split()[0]}_{scale:g}.png")
        log.info("%s guidance %g: %s", method, scale, rows[-1])

    common = dict(sampler="ddim", steps=50, labels=labels, seed=seed)
    for w in cfg_scales:
        score("classifier-free", w, *timed(run.sample, n, guidance=w, **common))
    for s in cg_scales:  # the same network's unconditional branch (null label) steered by the noisy classifier
        score("classifier", s, *timed(run.sample, n, guidance=f"cg={s}" if s else 0, classifier=classifier,
                                      conditional=False, **common))

    # Discriminator Guidance on the quarter-trained model: real digits vs its own samples (class mix of the data).
    digits = load_digits()
    fake = cached_samples(out / "quarter_samples.npz",
                          lambda: quarter.sample(len(digits.x), sampler="ddim", steps=50, labels=digits.y,
                                                 seed=seed + 1), len(digits.x))
    # An ADM encoder from scratch on x_t: on 8x8 digits it beats a head on the noisy classifier's features
    # (FD -35 % vs -10 % at w = 2, each measured once), whose class-trained features keep little of "realism".
    spec = {"kind": "encoder", "kwargs": {"image_size": 8, "in_channels": 1, "model_channels": 32,
                                          "num_res_blocks": 1, "channel_mult": [1, 2], "attention_resolutions": [],
                                          "pool": "adaptive", "use_scale_shift_norm": True, "resblock_updown": True}}
    disc = train_discriminator(out / "discriminator", digits.x, fake, spec, quarter.diffusion,
                               steps=200 if quick else 2000, batch_size=128, lr=2e-3, seed=seed)
    for w in dg_scales:
        score("discriminator (quarter-trained model)", w,
              *timed(quarter.sample, n, guidance=f"dg={w}" if w else 0, discriminator=disc, **common))

    _accuracy_plot(out / "accuracy_vs_scale.png", rows)
    lines = [f"# guidance-digits ({'quick' if quick else 'full'} run)", "",
             f"DDIM-50, {n} samples per row (classes 0–9 in turn). Classifier-free and discriminator rows use the "
             f"class-conditional model (trained {total} steps; DG: {total // 4} steps); classifier guidance steers "
             "its unconditional branch (null label) with the noisy classifier. Accuracy: fastdiff's digits "
             "classifier; FD: Fréchet distance to all 1797 digits in its features.", "",
             "| guidance | scale | class accuracy | FD | time (s) |", "|---|---|---|---|---|"]
    lines += [f"| {r['method']} | {r['scale']:g} | {r['accuracy']:.3f} | {r['fd']:.2f} | {r['seconds']:.1f} |"
              for r in rows]
    dg = [r for r in rows if r["method"].startswith("discriminator")]
    best_cg = max((r for r in rows if r["method"] == "classifier"), key=lambda r: r["accuracy"])
    summary = {"cfg_accuracy": {r["scale"]: r["accuracy"] for r in rows if r["method"] == "classifier-free"},
               "best_cg": {"scale": best_cg["scale"], "accuracy": best_cg["accuracy"]},
               "dg_fd_reduction": {r["scale"]: 1 - r["fd"] / dg[0]["fd"] for r in dg[1:]}}
    lines += ["", f"Best classifier-guidance scale: {best_cg['scale']:g} (accuracy {best_cg['accuracy']:.3f}). "
              "DG FD reduction vs the unguided quarter-trained model: "
              + ", ".join(f"w={w:g}: {v:.0%}" for w, v in summary["dg_fd_reduction"].items()) + "."]
    (out / "guidance_digits.md").write_text("\n".join(lines) + "\n")
    results = {"quick": quick, "rows": rows, **summary}
    (out / "guidance_digits.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))
    return results
