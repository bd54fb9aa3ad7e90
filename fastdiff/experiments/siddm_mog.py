"""`fastdiff repro siddm-mog`: SIDDM's Mixture-of-Gaussians experiment (Xu et al. 2023 §5.1, Fig. 3 / Table 1).

Data: 25 equal Gaussians centred at (5i, 5j), i, j ∈ {−2, …, 2}, standard deviation 0.5 (a tenth of the spacing).
Every model trains on the data as it is: the few-step VP schedule ends at ᾱ_T = 4.3e-5, so x_T of even the outer
modes (|x_0| ≤ 10) is N(0, I) to 0.07 in mean. At T = 4 the last step's noise (σ ≈ 0.7) leaves the modes apart, so
x_1 nearly fixes x_0's mode but not its place in it (std 0.44 of the mode's 0.5 given x_1): the generator must draw
that from z, or the modes come out narrow.

Rows, for every T ∈ {1, 2, 4, 8} denoising steps: DDPM-T and DDIM-T (η = 0) respaced from one 1000-step ε-model
(MLPDenoiser, L_simple) trained on the same data budget (steps × batch) as each adversarial model; DDGAN (joint
discriminator, R1); SIDDM (R1 too); SIDDM with λ_AFD = 0 (the marginal GAN alone). Columns: 2-D Fréchet distance of
Gaussian fits, MMD² (RBF mixture, on x / 12.5), MMD² at the mode scale (`mode_mmd`), modes covered of 25, the share
of samples within 3σ of their nearest centre, the modes' weight TV and the covered modes' spread ratios, mean and
worst (fastdiff.metrics.toy2d). Writes siddm_mog.md, results.json and siddm_mog.png (sample clouds at T = 4 and every
SIDDM T). `siddm_mog_seeds` (`fastdiff repro siddm-mog-seeds`) runs T ∈ {1, 2, 4} at three seeds and tabulates
mean ± std.

Measured (full run, seed 0, one torch thread on a 2-core AMD EPYC, about 25 min for all 13 models with another run
beside it), modes / mean spread at T = 1, 2, 4, 8: SIDDM 21 / 1.00, 25 / 0.77, 25 / 0.85, 25 / 0.86 (FD 2.91, 0.79,
0.38, 0.12); DDGAN 23 / 0.93, 21 / 0.99, 25 / 0.93, 25 / 0.89 (FD 3.94, 0.16, 0.21, 0.35); SIDDM λ_AFD = 0 20, 18,
25, 25; DDIM-4 FD 7.45, DDPM-4 14.09; fresh data: FD 0.061, spread 1.00. Three seeds: README.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fastdiff.data.dataset import ArrayDataset
from fastdiff.data.toy import GaussianMixture, grid25

log = logging.getLogger(__name__)

MOG_SPACING = 5.0
MOG_STD = 0.5
MMD_SCALE = 12.5  # MMD's RBF bandwidths (0.02-1) span the mode width to the extent of x / 12.5
STEPS_T = (1, 2, 4, 8)
QUICK_STEPS_T = (4,)


def mog25(scale: float = 1.0) -> GaussianMixture:
    """The 25-Gaussian grid of siddm-mog: centres 5·(i, j), std 0.5, everything times `scale`."""
    return grid25(spacing=MOG_SPACING, std=MOG_STD, scale=scale)


@dataclass
class MogConfig:
    """Hyper-parameters of siddm-mog (the same for every T and every adversarial row).

    n_train: training points; n_eval: samples per row; steps / batch_size: every model's budget (the ε-model gets
    the same steps × batch); width / depth: MLP sizes (generator depth, discriminator d_depth; the ε-model uses width
    and depth); nz: latent size; lr_g / lr_d, betas: Adam (DDGAN's (0.5, 0.9)); ema: the generator's EMA rate
    (ε-model too); fourier_sigma_g / fourier_sigma_d: σ of the generator's / discriminators' random Fourier features
    (fastdiff.models.siddm); lambda_afd (lambda_afd_t2 at T = 2), lambda_denoise: SIDDM's weights; r1_gamma: the
    R1 weight of every adversarial row's discriminator (DDGAN's, and SIDDM's); lr_eps: the ε-model's peak lr
    (cosine decay).
    """

    n_train: int = 25_000
    n_eval: int = 2_500
    steps: int = 8_000
    batch_size: int = 256
    width: int = 128
    depth: int = 3
    d_depth: int = 3
    nz: int = 4
    lr_g: float = 1e-3
    lr_d: float = 1e-3
    betas: tuple = (0.5, 0.9)
    ema: float = 0.99
    # Fourier features: without them the discriminator stays at chance (d_real ≈ d_fake ≈ log 2; alone it cannot tell
    # the grid from a 3×-blurred grid in 1500 steps) and every adversarial row smears over the grid (≈ 29 % within 3σ,
    # what a uniform smear scores). σ ≈ 1/(2.5 · spacing) for D and 1/(1.7 · spacing) for G; σ_D = 0.3 lost modes
    # (T = 1 / 2 / 4: 11 / 18 / 24). λ_AFD was tuned at T = 4 (0.005-0.016 alike). The AFD terms sum squared errors in
    # data units, so λ_AFD and λ_denoise scale with 1 / data scale². Why R1 and the generator's z in the Fourier
    # features: README, "Few-step adversarial denoising".
    fourier_sigma_g: float = 0.2
    fourier_sigma_d: float = 0.12
    lambda_afd: float = 0.016
    # λ_AFD at T = 2: the last step's cross-entropy weight (1 − β_1)/β_1 is 0.087 there (T = 4: 1.1). Seeds 0-2:
    # 0.016 kept 21 / 14 / 23 modes (weight TV 0.45 in a seed-0 probe); 0.05: 23 / 24 / 23 (TV 0.33-0.42, spread
    # 0.87-0.91); 0.16: 25 / 25 / 25 (TV 0.10-0.17) with modes a little narrow (spread 0.75-0.81). At T = 1 the term
    # is inert ((1 − β_1)/β_1 = 4e-5).
    lambda_afd_t2: float = 0.16
    lambda_denoise: float = 0.02
    r1_gamma: float = 0.05
    lr_eps: float = 1e-3


FULL = MogConfig()
#: --quick: T = 4 only, 1500 steps on 5000 points (about a CPU minute).
QUICK = dataclasses.replace(FULL, n_train=5_000, n_eval=1_000, steps=1_500)


def _train_config(cfg: MogConfig, seed: int, steps: int, lr: float, **kw):
    from fastdiff.training import TrainConfig

    return TrainConfig(total_steps=steps, batch_size=cfg.batch_size, lr=lr, ema_rates=(cfg.ema,),
                       save_interval=steps, log_interval=max(1, steps // 20), keep_checkpoints=1, seed=seed, **kw)


def _ema_model(trainer) -> torch.nn.Module:
    """The trainer's model with its EMA weights, in eval mode."""
    params = dict(trainer.model.named_parameters())
    with torch.no_grad():
        for name, value in trainer.ema_parameters(trainer.config.ema_rates[0]).items():
            params[name].copy_(value)
    return trainer.model.eval()


def train_adversarial(kind: str, T: int, data: ArrayDataset, cfg: MogConfig, out: Path, seed: int = 0):
    """Train one few-step model, kind ∈ {"siddm", "siddm-no-afd", "ddgan"}, through the Trainer (resuming in out).
    Returns (the EMA generator in eval mode, its few-step diffusion, seconds)."""
    from fastdiff.models.siddm import MLPDDGANDiscriminator, MLPGenerator, MLPSIDDMDiscriminator
    from fastdiff.training import Trainer
    from fastdiff.training.adversarial import AdversarialPair, DDGANObjective, SIDDMObjective, few_step_diffusion

    diffusion = few_step_diffusion(T)
    torch.manual_seed(seed)
    gen = MLPGenerator(2, nz=cfg.nz, width=cfg.width, depth=cfg.depth, num_steps=T,
                       fourier_sigma=cfg.fourier_sigma_g)
    d_kw = {"width": cfg.width, "depth": cfg.d_depth, "num_steps": T, "fourier_sigma": cfg.fourier_sigma_d}
    if kind == "ddgan":
        disc = MLPDDGANDiscriminator(2, **d_kw)
        objective = DDGANObjective(diffusion, nz=cfg.nz, r1_gamma=cfg.r1_gamma)
    else:
        disc = MLPSIDDMDiscriminator(2, **d_kw)
        lambda_afd = (cfg.lambda_afd_t2 if T == 2 else cfg.lambda_afd) if kind == "siddm" else 0.0
        objective = SIDDMObjective(diffusion, nz=cfg.nz, lambda_afd=lambda_afd,
                                   lambda_denoise=cfg.lambda_denoise, r1_gamma=cfg.r1_gamma)
    optim = {"generator": {"lr": cfg.lr_g, "adam_betas": cfg.betas},
             "discriminator": {"lr": cfg.lr_d, "adam_betas": cfg.betas}}
    trainer = Trainer(AdversarialPair(gen, disc), objective, data, _train_config(cfg, seed, cfg.steps, cfg.lr_g,
                                                                                  player_optim=optim), out,
                      device="cpu")
    start = time.perf_counter()
    trainer.train(resume=True)
    return _ema_model(trainer).generator, diffusion, time.perf_counter() - start


def train_eps_model(data: ArrayDataset, cfg: MogConfig, out: Path, seed: int = 0):
    """The ε-model baseline: MLPDenoiser on the 1000-step linear schedule, L_simple, the same steps × batch.
    Returns (EMA model in eval mode, its diffusion, seconds)."""
    from fastdiff.diffusion import create_gaussian_diffusion
    from fastdiff.models import MLPDenoiser
    from fastdiff.training import DiffusionObjective, Trainer

    diffusion = create_gaussian_diffusion(steps=1000)
    torch.manual_seed(seed)
    model = MLPDenoiser(2, width=cfg.width, depth=cfg.depth)
    trainer = Trainer(model, DiffusionObjective(diffusion), data,
                      _train_config(cfg, seed, cfg.steps, cfg.lr_eps, lr_decay="cosine", warmup_steps=100), out,
                      device="cpu")
    start = time.perf_counter()
    trainer.train(resume=True)
    return _ema_model(trainer), diffusion, time.perf_counter() - start


def score(samples: torch.Tensor, reference: torch.Tensor, mixture: GaussianMixture) -> dict:
    """FD, MMD² (on x / MMD_SCALE), MMD² at the mode scale (`mode_mmd`), modes covered, the within-3σ share, the
    modes' weight TV and the covered modes' spread ratios (mean, worst; fastdiff.metrics.toy2d) of samples: [N, 2]
    against reference: [M, 2]."""
    from fastdiff.metrics import gaussian_fd, mmd, mode_mmd, mode_stats

    finite = torch.isfinite(samples).all(1)
    stats = mode_stats(samples, mixture)
    x = samples[finite]
    return {"fd": gaussian_fd(x, reference), "mmd": mmd(x / MMD_SCALE, reference / MMD_SCALE),
            "mmd_mode": mode_mmd(x, reference, mixture), "modes": stats.modes_covered,
            "within_3sigma": stats.high_quality_share, "weight_tv": stats.weight_tv,
            "spread_mean": stats.mean_spread, "spread_worst": stats.worst_spread, "nonfinite": stats.nonfinite}


def _scatter(path: Path, clouds: dict, lim: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = -(-len(clouds) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 3.1 * rows), dpi=110, squeeze=False)
    for ax in axes.flat[len(clouds):]:
        ax.axis("off")
    for ax, (title, x) in zip(axes.flat, clouds.items()):
        ax.scatter(x[:, 0], x[:, 1], s=0.8, alpha=0.35)
        ax.set_title(title, fontsize=9)
        ax.set_aspect("equal")
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _row(method: str, T, r: dict) -> str:
    """One Markdown row of the siddm-mog table."""
    return (f"| {method} | {T} | {r['fd']:.4f} | {r['mmd']:.5f} | {r['mmd_mode']:.5f} | {r['modes']} | "
            f"{r['within_3sigma']:.1%} | {r['weight_tv']:.2f} | {r['spread_mean']:.2f} | {r['spread_worst']:.2f} |")


def siddm_mog(out, quick: bool = False, seed: int = 0, steps_t=None, config: MogConfig | None = None) -> dict:
    """SIDDM vs DDGAN vs DDPM/DDIM of an ε-model on the 25-Gaussian grid at 1, 2, 4 and 8 denoising steps.

    steps_t: the T values (default STEPS_T, QUICK_STEPS_T with quick); config: MogConfig (default FULL, or QUICK)."""
    from fastdiff.samplers import SamplerOptions, generate
    from fastdiff.training.adversarial import sample_few_step

    cfg = config or (QUICK if quick else FULL)
    steps_t = tuple(steps_t or (QUICK_STEPS_T if quick else STEPS_T))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    original = mog25()
    g = torch.Generator().manual_seed(seed)
    data = ArrayDataset(x=original.sample(cfg.n_train, generator=g), name="mog25")
    reference = original.sample(cfg.n_eval, generator=g)
    start = time.perf_counter()
    rows, clouds, timings = [], {"data": reference}, {}

    def add(method: str, T: int, x: torch.Tensor, train_s: float, sample_s: float) -> None:
        x = x.float()
        rows.append({"method": method, "T": T, **score(x, reference, original), "train_s": train_s,
                     "sample_s": sample_s})
        log.info("%s", rows[-1])
        if T == 4 or method == "SIDDM":
            clouds[f"{method}-{T}" if method.startswith(("DDPM", "DDIM")) else f"{method} (T={T})"] = x

    jobs = [("eps", None)] + [(kind, T) for T in steps_t for kind in ("ddgan", "siddm", "siddm-no-afd")]
    bar = tqdm(jobs, desc="siddm-mog")
    names = {"ddgan": "DDGAN", "siddm": "SIDDM", "siddm-no-afd": "SIDDM λ_AFD=0"}
    for kind, T in bar:
        bar.set_postfix_str(kind if T is None else f"{kind} T={T}")
        if kind == "eps":
            eps, diffusion, secs = train_eps_model(data, cfg, out / "eps_model", seed)
            timings["eps_model"] = secs
            for T_ in steps_t:
                for sampler in ("ddpm", "ddim"):
                    t0 = time.perf_counter()
                    x = generate(eps, diffusion.alphas_cumprod, cfg.n_eval, (2,), SamplerOptions(
                        sampler=sampler, steps=T_, seed=seed + 1, batch_size=cfg.n_eval))
                    add(f"{sampler.upper()}", T_, x, secs, time.perf_counter() - t0)
            continue
        gen, diffusion, secs = train_adversarial(kind, T, data, cfg, out / f"{kind}_T{T}", seed)
        timings[f"{kind}_T{T}"] = secs
        t0 = time.perf_counter()
        x = sample_few_step(gen, diffusion, (cfg.n_eval, 2), nz=cfg.nz, seed=seed + 1)
        add(names[kind], T, x, secs, time.perf_counter() - t0)
    floor = score(original.sample(cfg.n_eval, generator=g), reference, original)
    wall = time.perf_counter() - start
    _scatter(out / "siddm_mog.png", clouds, lim=MOG_SPACING * 2.6)
    order = ["DDPM", "DDIM", "DDGAN", "SIDDM λ_AFD=0", "SIDDM"]
    rows.sort(key=lambda r: (order.index(r["method"]), r["T"]))
    lines = [f"# siddm-mog: 25 Gaussians at (5i, 5j), std {MOG_STD} ({'quick' if quick else 'full'} run)", "",
             f"{cfg.n_eval} samples per row against {cfg.n_eval} data samples. Every model: {cfg.steps} steps × "
             f"batch {cfg.batch_size} on {cfg.n_train} points (seed {seed}); MLP width {cfg.width}, Fourier σ "
             f"{cfg.fourier_sigma_g:g} (G) / {cfg.fourier_sigma_d:g} (D). DDPM/DDIM: one 1000-step ε-model respaced "
             f"to T steps. SIDDM: λ_AFD = {cfg.lambda_afd:g} ({cfg.lambda_afd_t2:g} at T = 2), λ_denoise = "
             f"{cfg.lambda_denoise:g}; DDGAN and SIDDM: "
             f"R1 γ = {cfg.r1_gamma:g}. Wall time {wall / 60:.1f} min on {torch.get_num_threads()} thread(s).", "",
             "Spread: each covered mode's sample std over the data's (1 = as wide as the data; mean over the modes, "
             "and the worst). Weight TV: total variation between the modes' sample shares and 1/25 (0 = balanced). "
             "MMD² (mode): one RBF kernel of the mode width (0.5).", "",
             "| method | T | Fréchet distance | MMD² | MMD² (mode) | modes (of 25) | within 3σ | weight TV | "
             "spread mean | spread worst |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(r["method"], r["T"], r) for r in rows]
    lines.append(_row("fresh data samples (floor)", "—", floor))
    (out / "siddm_mog.md").write_text("\n".join(lines) + "\n")
    results = {"quick": quick, "seed": seed, "config": dataclasses.asdict(cfg), "rows": rows, "floor": floor,
               "train_seconds": timings, "wall_seconds": wall, "threads": torch.get_num_threads()}
    (out / "results.json").write_text(json.dumps(results, indent=1))
    print("\n".join(lines))
    return results


SEED_STUDY_T = (1, 2, 4)
#: the metrics of the seed table: (results key, header, format)
_SEED_COLUMNS = (("fd", "Fréchet distance", "{:.3f}"), ("mmd_mode", "MMD² (mode)", "{:.4f}"),
                 ("modes", "modes (of 25)", "{:.1f}"), ("within_3sigma", "within 3σ %", "{:.1f}"),
                 ("weight_tv", "weight TV", "{:.2f}"),
                 ("spread_mean", "spread mean", "{:.2f}"), ("spread_worst", "spread worst", "{:.2f}"))


def seed_table(results: list[dict]) -> str:
    """A Markdown table of mean ± std (sample std over the runs) of every (method, T) row of `results`, a list of
    siddm_mog return values (one per seed)."""
    import statistics

    order = ["DDPM", "DDIM", "DDGAN", "SIDDM λ_AFD=0", "SIDDM"]
    cells: dict = {}
    for res in results:
        for r in res["rows"]:
            cells.setdefault((r["method"], r["T"]), []).append(r)
    seeds = ", ".join(str(res["seed"]) for res in results)
    lines = [f"Mean ± std over seeds {seeds}.", "",
             "| method | T | " + " | ".join(h for _, h, _ in _SEED_COLUMNS) + " |",
             "|---|---|" + "---|" * len(_SEED_COLUMNS)]
    for (method, T), rs in sorted(cells.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1])):
        row = []
        for key, _, fmt in _SEED_COLUMNS:
            v = [r[key] * (100 if key == "within_3sigma" else 1) for r in rs]
            spread = " ± " + fmt.format(statistics.stdev(v)) if len(v) > 1 else ""
            row.append(fmt.format(statistics.fmean(v)) + spread)
        lines.append(f"| {method} | {T} | " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def siddm_mog_seeds(out, quick: bool = False, seed: int = 0, config: MogConfig | None = None) -> list[dict]:
    """The siddm-mog seed study: `siddm_mog` at seeds seed, seed + 1, seed + 2 for T ∈ SEED_STUDY_T (QUICK_STEPS_T
    with quick), each in out/seed<s> (a finished or interrupted seed resumes from its checkpoints); writes seeds.md
    (mean ± std, `seed_table`) and seeds.json. Returns the three results."""
    out = Path(out)
    steps_t = QUICK_STEPS_T if quick else SEED_STUDY_T
    results = [siddm_mog(out / f"seed{s}", quick=quick, seed=s, steps_t=steps_t, config=config)
               for s in range(seed, seed + 3)]
    table = seed_table(results)
    (out / "seeds.md").write_text(f"# siddm-mog seed study ({'quick' if quick else 'full'} run)\n\n" + table)
    (out / "seeds.json").write_text(json.dumps(results, indent=1))
    print(table)
    return results
