"""`make demo`, the main job: train a small class-conditional ADM UNet with label dropout on scikit-learn's 8×8
digits (config `digits_cfg`), then sample it through the fused kernels with DDPM-1000, DDPM and DDIM at fewer
respaced steps, and classifier-free guidance w ∈ {0, 1, 3} (Ho & Salimans 2022 eq. 6); score every sample set by
Fréchet distance, precision/recall (in the features of fastdiff's digits classifier, against all 1797 digits) and
class accuracy; write PNG sample grids, a PNG plot of Fréchet distance against steps, and a Markdown table.

Training resumes from out_dir/train when a checkpoint is there, so a second run only samples. Uses the GPU when
there is one.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from fastdiff.app.config import load_config
from fastdiff.errors import check_device, check_int
from fastdiff.app.runs import load_run, make_trainer, save_grid, timed

log = logging.getLogger(__name__)

CONFIG = "digits_cfg"
#: (sampler, steps) whose Fréchet distance is plotted against steps; DDPM-1000 is the reference sampler.
CURVE = (("ddpm", 1000), ("ddpm", 50), ("ddpm", 10), ("ddim", 100), ("ddim", 50), ("ddim", 20), ("ddim", 10),
         ("dpmpp_2m", 10))
GUIDANCE = (0.0, 1.0, 3.0)  # classifier-free guidance weights w, sampled with DDIM-50
QUICK = {"train.total_steps": 150, "train.save_interval": 150, "train.warmup_steps": 20}


_NAMES = {"dpmpp_2m": "DPM-Solver++ 2M (Karras σ)"}


def _label(kind: str, steps: int, w: float | None = None) -> str:
    name = f"{_NAMES.get(kind, kind.upper())}-{steps}"
    return name if w is None else f"{name}, w={w:g}"


def _score(samples: torch.Tensor, labels: torch.Tensor) -> dict:
    from fastdiff.metrics import classifier_accuracy, digits_fd, digits_precision_recall

    precision, recall = digits_precision_recall(samples.cpu())
    return {"fd": digits_fd(samples.cpu()), "precision": precision, "recall": recall,
            "accuracy": classifier_accuracy(samples.cpu(), labels)}


def balanced_subset(y: torch.Tensor, labels: torch.Tensor, seed: int) -> torch.Tensor:
    """Indices into a data set with classes y: [M] whose classes are exactly `labels`: [n] (without replacement,
    seeded)."""
    g = torch.Generator().manual_seed(seed)
    pick = torch.empty_like(labels)
    for c in labels.unique():
        want = labels == c
        pool = torch.nonzero(y == c).flatten()
        if len(pool) < int(want.sum()):
            raise ValueError(f"class {int(c)} has {len(pool)} examples, {int(want.sum())} needed")
        pick[want] = pool[torch.randperm(len(pool), generator=g)[:int(want.sum())]]
    return pick


def _plot(path: Path, rows: list[dict], reference_fd: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    for kind, marker in (("ddpm", "o"), ("ddim", "s"), ("dpmpp_2m", "^")):
        pts = sorted((r["steps"], r["fd"]) for r in rows if r["sampler"] == kind and r["guidance"] == 0.0)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, label=_NAMES.get(kind, kind.upper()))
    ax.axhline(reference_fd, color="gray", ls="--", lw=1, label="real digits (same n)")
    ax.set_xscale("log")
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("Fréchet distance (digits classifier features)")
    ax.set_title("Class-conditional digits, w = 0")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _table(rows: list[dict], reference: dict, train: dict) -> str:
    lines = [f"# fastdiff demo — classifier-free digits ({train['steps']} training steps, "
             f"{train['seconds']:.0f} s on {train['device']})", "",
             f"{reference['n']} samples per row (classes 0–9 in turn), scored against all 1797 digits in the "
             "features of fastdiff's digits classifier. FD: Fréchet distance (lower is better). The last row "
             "scores as many real digits with the same classes (the floor at this n).", "",
             "| sampler | guidance w | FD | precision | recall | class accuracy | time (s) | ms / step |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['guidance']:g} | {r['fd']:.2f} | {r['precision']:.3f} | "
                     f"{r['recall']:.3f} | {r['accuracy']:.3f} | {r['seconds']:.1f} | "
                     f"{1e3 * r['seconds'] / r['steps']:.1f} |")
    lines.append(f"| {reference['n']} real digits (the floor) | — | {reference['fd']:.2f} | {reference['precision']:.3f} | "
                 f"{reference['recall']:.3f} | {reference['accuracy']:.3f} | — | — |")
    fd = {(r["sampler"], r["steps"]): r["fd"] for r in rows if r["guidance"] == 0.0}
    if {("ddim", 50), ("ddpm", 1000), ("ddim", 10), ("ddpm", 10)} <= fd.keys():
        lines += ["", f"DDIM-50 / DDPM-1000 FD: {fd['ddim', 50] / fd['ddpm', 1000]:.2f} (the DDIM paper's claim at "
                      f"small scale: <= 1.5). DDIM-10 FD {fd['ddim', 10]:.2f} vs DDPM-10 {fd['ddpm', 10]:.2f}."]
    if {("ddim", 10), ("dpmpp_2m", 10)} <= fd.keys():
        lines += [f"DPM-Solver++ 2M-10 FD {fd['dpmpp_2m', 10]:.2f} vs DDIM-10 {fd['ddim', 10]:.2f} (the same 10 "
                  f"model evaluations)."]
    return "\n".join(lines) + "\n"


def run_demo(out_dir="demo_out", quick: bool = False, num_samples: int | None = None, seed: int = 0,
             device=None, progress: bool = True, overrides=()) -> dict:
    """Train (or resume) and evaluate the demo model; returns the results written to out_dir/demo_results.json.
    overrides: "section.key=value" strings on top of the digits_cfg config (and of QUICK when quick)."""
    out = Path(out_dir)
    device = check_device("device", device)
    n = (200 if quick else 500) if num_samples is None else check_int("num_samples", num_samples, 2)
    check_int("seed", seed, 0)
    cfg = load_config(CONFIG, [f"{k}={v}" for k, v in QUICK.items()] * quick + list(overrides))
    trainer, dataset = make_trainer(cfg, out / "train", device=device)
    _, train_s = timed(trainer.train, resume=True)
    run = load_run(out / "train", device=device)
    labels = torch.arange(n) % run.num_classes

    # The floor of each score at n samples: n real digits with the samples' labels (a seeded class-balanced
    # subset) against all 1797. A random subset's class mix alone moves FD by ~5 at n = 500.
    pick = balanced_subset(dataset.y, labels, seed)
    reference = {"n": n, **_score(dataset.x[pick], dataset.y[pick])}

    rows = []
    jobs = [(kind, steps, 0.0) for kind, steps in CURVE] + [("ddim", 50, w) for w in GUIDANCE if w > 0]
    for kind, steps, w in jobs:
        name = _label(kind, steps, w if w > 0 else None)
        log.info("sampling %s", name)
        samples, secs = timed(run.sample, n, sampler=kind, steps=steps, guidance=w, labels=labels, seed=seed,
                              progress=progress)
        rows.append({"name": name, "sampler": kind, "steps": steps, "guidance": w, "seconds": secs,
                     **_score(samples, labels)})
        save_grid(samples[:100], out / f"samples_{kind}{steps}_w{w:g}.png")
    rows.sort(key=lambda r: (r["guidance"], r["sampler"], -r["steps"]))
    _plot(out / "fd_vs_steps.png", rows, reference["fd"])
    train = {"steps": run.step, "seconds": train_s, "device": str(device)}
    (out / "demo_results.md").write_text(_table(rows, reference, train))
    results = {"config": CONFIG, "quick": quick, "train": train, "reference": reference, "rows": rows}
    (out / "demo_results.json").write_text(json.dumps(results, indent=1))
    return results


def digits_samplers(out, quick: bool = False, seed: int = 0) -> dict:
    """DDIM vs DDPM vs steps and classifier-free guidance on class-conditional digits (the demo job)."""
    return run_demo(out, quick=quick, seed=seed)
