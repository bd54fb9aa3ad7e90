"""`fastdiff repro <experiment> [--quick]`: the seed papers' small-scale experiments on embedded data.

- toy-samplers: DDPM-1000 / DDIM-50 / DDIM-10 on the exact ε of the 25-Gaussian grid (samplers only, no training).
- digits-samplers: DDIM vs DDPM at few steps, and classifier-free guidance (the `make demo` job; Song et al. §5.1:
  DDIM keeps quality at 10-50 steps where respaced DDPM does not).
- hybrid-vs-simple: Improved DDPM §3 — the hybrid objective with learned variance reaches lower bits/dim than
  L_simple with fixed variance for the same training budget (digits_hybrid vs digits_uncond).
- dg-toy, guidance-digits: the guidance experiments (`fastdiff.guidance_repro`).
- siddm-mog: SIDDM vs DDGAN vs DDPM/DDIM at 1-8 steps on the 25-Gaussian grid (`fastdiff.siddm_repro`).
- siddm-digits: 4-step SIDDM (UNet generator and discriminator) vs DDIM-4 / DDPM-4 of an ε-model trained on the same
  data budget, on the 8×8 digits (`fastdiff.siddm_digits`).
--quick shortens every run to check the pipeline; its numbers do not test the claims.
"""
from __future__ import annotations

import json
from pathlib import Path

from fastdiff.config import load_config
from fastdiff.guidance_repro import dg_toy, guidance_digits
from fastdiff.runs import load_run, make_trainer, timed
from fastdiff.siddm_digits import siddm_digits
from fastdiff.siddm_repro import siddm_mog


def toy_samplers(out, quick: bool = False, seed: int = 0) -> dict:
    """The 25-Gaussian grid sampled with its exact ε-model by the fused DDPM / DDIM samplers."""
    from fastdiff.toy_demo import run_demo

    return run_demo(str(out), n=500 if quick else 4000, seed=seed)


def digits_samplers(out, quick: bool = False, seed: int = 0) -> dict:
    """DDIM vs DDPM vs steps and classifier-free guidance on class-conditional digits (the demo job)."""
    from fastdiff.demo import run_demo

    return run_demo(out, quick=quick, seed=seed)


HYBRID_RUNS = {"L_simple, fixed Σ (DDPM)": "digits_uncond", "L_hybrid, learned Σ (Improved DDPM)": "digits_hybrid"}


def hybrid_vs_simple(out, quick: bool = False, seed: int = 0) -> dict:
    """Bits/dim of digits under L_simple (fixed variance) vs the hybrid loss (learned range), same budget."""
    from fastdiff.evaluate import bits_per_dim

    out = Path(out)
    overrides = ["train.total_steps=100", "train.save_interval=100", "train.warmup_steps=10"] if quick else []
    overrides.append(f"train.seed={seed}")
    n = 16 if quick else 256
    rows = []
    for label, name in HYBRID_RUNS.items():
        cfg = load_config(name, overrides)
        trainer, _ = make_trainer(cfg, out / name)
        _, secs = timed(trainer.train, resume=True)
        run = load_run(out / name)
        rows.append({"objective": label, "config": name, "steps": run.step, "train_seconds": secs,
                     **bits_per_dim(run, n)})
    lines = [f"# Improved DDPM: bits/dim on digits (first {n} images, same {rows[0]['steps']}-step budget)", "",
             "| objective | config | bits/dim | ± stderr |", "|---|---|---|---|"]
    lines += [f"| {r['objective']} | {r['config']} | {r['bpd']:.3f} | {r['bpd_stderr']:.3f} |" for r in rows]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"quick": quick, "rows": rows}, indent=1))
    _bar(out / "bpd.png", rows)
    print("\n".join(lines))
    return {"rows": rows}


def _bar(path: Path, rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3), dpi=120)
    ax.bar(range(len(rows)), [r["bpd"] for r in rows], yerr=[r["bpd_stderr"] for r in rows], capsize=4)
    ax.set_xticks(range(len(rows)), [r["objective"] for r in rows], fontsize=7)
    ax.set_ylabel("bits/dim (lower is better)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


EXPERIMENTS = {"toy-samplers": toy_samplers, "digits-samplers": digits_samplers, "hybrid-vs-simple": hybrid_vs_simple,
               "dg-toy": dg_toy, "guidance-digits": guidance_digits, "siddm-mog": siddm_mog,
               "siddm-digits": siddm_digits}
