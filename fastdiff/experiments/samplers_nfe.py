"""`fastdiff repro samplers-nfe`: Fréchet distance against the number of model evaluations (NFE) for every
sampler of the one fused step, on the demo's class-conditional digits model (`digits_samplers`' config and
training, resumed from out_dir/train).

The claim it checks (DPM-Solver++ (Lu et al. 2022b) Table 1, UniPC (Zhao et al. 2023) Table 1, Karras et al. 2022
Fig. 2): at ≤ 10 evaluations the multistep solvers (UniPC, DPM-Solver++ 2M) are well below DDIM, and ancestral
Euler is worse than DPM-Solver++ 2M. Heun-type samplers spend two evaluations per step: their step count is
chosen so the NFE does not exceed the target, and the table reports the NFE actually spent (counted by wrapping
the model).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from fastdiff.app.config import load_config
from fastdiff.app.runs import load_run, make_trainer, save_grid, timed
from fastdiff.errors import check_device, check_int
from fastdiff.experiments.digits_samplers import CONFIG, QUICK, _score, balanced_subset
from fastdiff.samplers.generate import SAMPLER_KINDS

log = logging.getLogger(__name__)

NFES = (5, 8, 10, 15, 20, 50)
QUICK_NFES = (5, 10)
SAMPLERS = tuple(s for s in SAMPLER_KINDS if s != "ddpm") + ("ddpm",)
TWO_EVALS = ("heun", "dpmpp_2s_ancestral")  # two model evaluations per step except the last


def steps_for_nfe(sampler: str, nfe: int) -> int:
    """Sampler steps whose model evaluations stay within `nfe`: 2S − 1 ≤ nfe for Heun-type samplers."""
    return max(1, (nfe + 1) // 2) if sampler in TWO_EVALS else nfe


class _Counted(torch.nn.Module):
    """The model, counting its forward calls (one per evaluation of the batch)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.model(*args, **kwargs)


def _plot(path: Path, rows: list[dict], reference_fd: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for sampler in SAMPLERS:
        pts = sorted((r["nfe"], r["fd"]) for r in rows if r["sampler"] == sampler)
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=sampler)
    ax.axhline(reference_fd, color="gray", ls="--", lw=1, label="real digits (same n)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("model evaluations (NFE)")
    ax.set_ylabel("Fréchet distance (digits classifier features)")
    ax.set_title("Samplers on the demo's digits model, w = 0")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _table(rows: list[dict], nfes, reference: dict) -> str:
    fd = {(r["sampler"], r["target_nfe"]): r for r in rows}
    lines = [f"# Fréchet distance against model evaluations — digits, {reference['n']} samples per cell", "",
             "Cells: FD (NFE actually spent when it differs from the column). Real digits at the same n: "
             f"FD {reference['fd']:.2f}.", "",
             "| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
             "|---|" + "---|" * len(nfes)]
    for sampler in SAMPLERS:
        cells = []
        for n in nfes:
            r = fd.get((sampler, n))
            cells.append("—" if r is None else f"{r['fd']:.2f}" + ("" if r["nfe"] == n else f" ({r['nfe']})"))
        lines.append(f"| {sampler} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def samplers_nfe(out, quick: bool = False, seed: int = 0, device=None, progress: bool = False,
                 num_samples: int | None = None, overrides=()) -> dict:
    """Train (or resume) the demo model, sample it with every sampler at each NFE, write samplers_nfe.{md,json,png}
    and one sample grid per sampler at 10 evaluations. overrides: "section.key=value" config strings."""
    out = Path(out)
    device = check_device("device", device)
    cfg = load_config(CONFIG, [f"{k}={v}" for k, v in QUICK.items()] * quick + list(overrides))
    trainer, dataset = make_trainer(cfg, out / "train", device=device)
    trainer.train(resume=True)
    run = load_run(out / "train", device=device)
    n = (100 if quick else 500) if num_samples is None else check_int("num_samples", num_samples, 2)
    nfes = QUICK_NFES if quick else NFES
    labels = torch.arange(n) % run.num_classes
    pick = balanced_subset(dataset.y, labels, seed)
    reference = {"n": n, **_score(dataset.x[pick], dataset.y[pick])}
    counted = _Counted(run.model)
    run.model = counted
    rows = []
    for sampler in SAMPLERS:
        for nfe in nfes:
            steps = steps_for_nfe(sampler, nfe)
            if steps > run.diffusion.num_timesteps:
                continue
            counted.calls = 0
            samples, secs = timed(run.sample, n, sampler=sampler, steps=steps, labels=labels, seed=seed,
                                  batch_size=n, progress=progress)
            rows.append({"sampler": sampler, "target_nfe": nfe, "steps": steps, "nfe": counted.calls,
                         "seconds": secs, **_score(samples, labels)})
            log.info("%s NFE %d: FD %.2f", sampler, counted.calls, rows[-1]["fd"])
            if nfe == 10:
                save_grid(samples[:100], out / f"samples_{sampler}_nfe10.png")
    _plot(out / "samplers_nfe.png", rows, reference["fd"])
    (out / "samplers_nfe.md").write_text(_table(rows, nfes, reference))
    results = {"config": CONFIG, "quick": quick, "reference": reference, "rows": rows}
    (out / "samplers_nfe.json").write_text(json.dumps(results, indent=1))
    return results
