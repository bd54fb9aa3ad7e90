"""The seed papers' small-scale experiments on embedded data, one module each (`fastdiff repro <name>`):

- toy-samplers (`toy_samplers`): DDPM-1000 / DDIM-50 / DDIM-10 on the exact ε of the 25-Gaussian grid (samplers
  only, no training).
- digits-samplers (`digits_samplers`, also `make demo` / `fastdiff demo`): DDIM vs DDPM at few steps, and
  classifier-free guidance (Song et al. §5.1: DDIM keeps quality at 10-50 steps where respaced DDPM does not).
- samplers-nfe (`samplers_nfe`): Fréchet distance against model evaluations for every sampler of the fused step
  (DDIM, DDPM, LCM, Euler, Euler-a, Heun, DPM-Solver++ 2M / SDE / 2S-a, UniPC) on the demo's digits model.
- hybrid-vs-simple (`hybrid_vs_simple`): Improved DDPM §3, bits/dim of L_hybrid with learned variance vs L_simple.
- dg-toy, guidance-digits (`guidance`): Discriminator Guidance and classifier guidance.
- siddm-mog (`siddm_mog`): SIDDM vs DDGAN vs DDPM/DDIM at 1-8 steps on the 25-Gaussian grid; siddm-mog-seeds
  (`siddm_mog_seeds`): the same at T ∈ {1, 2, 4} for seeds s, s + 1, s + 2 (--seed s), mean ± std.
- siddm-digits (`siddm_digits`): 4-step SIDDM (UNet generator and discriminator) vs DDIM-4 / DDPM-4 of an ε-model
  trained on the same data budget, on the 8×8 digits.

--quick shortens every run to check the pipeline; its numbers do not test the claims. This package is the top
layer: it imports the library and `fastdiff.app`, and nothing imports it but the CLI.
"""
from __future__ import annotations

from fastdiff.experiments.digits_samplers import digits_samplers
from fastdiff.experiments.guidance import dg_toy, guidance_digits
from fastdiff.experiments.hybrid_vs_simple import hybrid_vs_simple
from fastdiff.experiments.samplers_nfe import samplers_nfe
from fastdiff.experiments.siddm_digits import siddm_digits
from fastdiff.experiments.siddm_mog import siddm_mog, siddm_mog_seeds
from fastdiff.experiments.toy_samplers import toy_samplers

EXPERIMENTS = {"toy-samplers": toy_samplers, "digits-samplers": digits_samplers, "hybrid-vs-simple": hybrid_vs_simple,
               "samplers-nfe": samplers_nfe,
               "dg-toy": dg_toy, "guidance-digits": guidance_digits, "siddm-mog": siddm_mog,
               "siddm-mog-seeds": siddm_mog_seeds, "siddm-digits": siddm_digits}
