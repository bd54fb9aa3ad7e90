"""The `fastdiff` command line: train | sample | eval | bench | repro | demo.

    fastdiff train --config configs/digits_cfg.toml [--out DIR] [--resume] [train.lr=1e-4 ...]
    fastdiff sample --ckpt DIR_OR_FILE --sampler ddim --steps 50 --eta 0 --guidance cfg=3 --num-samples 100 --out DIR
        [--guidance cg=2 --classifier RUN] [--guidance dg=1,t=0:600 --discriminator RUN] [--unconditional]
    fastdiff sample --openai-ckpt 64x64_diffusion.pt --flags "--image_size 64 --class_cond True ..."
        [--openai-classifier 64x64_classifier.pt --classifier-flags "..." --guidance cg=1]
    fastdiff eval --ckpt DIR_OR_FILE [--num-samples N] [--bpd]
    fastdiff bench [--quick]
    fastdiff repro toy-samplers | digits-samplers | samplers-nfe | hybrid-vs-simple | dg-toy | guidance-digits
        | siddm-mog | siddm-mog-seeds | siddm-digits [--quick] [--seed S]
    fastdiff demo [--out demo_out] [--quick]

Under torchrun, `train` runs data parallel and `sample` splits the sample chunks over the ranks.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from fastdiff.errors import USER_ERRORS, check_device

log = logging.getLogger("fastdiff")

TRACEBACK_ENV = "FASTDIFF_TRACEBACK"  # =1: user errors keep their traceback too


def _count(minimum: int = 1):
    """argparse type: an int >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an int, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def _nonnegative(text: str) -> float:
    """argparse type: a finite float >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _device(text: str):
    """argparse type: a device this machine has."""
    try:
        return str(check_device("device", text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix("device=").removeprefix("device ")) from None


# ----------------------------------------------------------------------------------------------- train


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model from a run config",
                       description="Train the model of a TOML run config (configs/*.toml or a shipped name such "
                                   "as digits_cfg); checkpoints and log.jsonl go to --out.")
    p.add_argument("--config", required=True, help="TOML file, or the name of a shipped config")
    p.add_argument("--out", default=None, help="run directory (default: runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out")
    p.add_argument("--device", type=_device, default=None,
                   help="cpu, cuda, cuda:1 (default: cuda:LOCAL_RANK if available)")
    p.add_argument("overrides", nargs="*", help="section.key=value (TOML values), e.g. train.lr=1e-4")
    p.set_defaults(func=_run_train)


def _run_train(args) -> int:
    from fastdiff.app.config import load_config
    from fastdiff.app.runs import finish_distributed, make_trainer
    from fastdiff.training import distributed as D

    cfg = load_config(args.config, args.overrides)
    out = Path(args.out or cfg.out_dir or Path("runs") / cfg.name)
    D.init_distributed()
    try:
        trainer, _ = make_trainer(cfg, out, device=args.device)
        summary = trainer.train(resume=args.resume)
        if D.get_rank() == 0:
            print(json.dumps(summary, indent=1, default=str))
    finally:
        finish_distributed()
    return 0


# ----------------------------------------------------------------------------------------------- sample


def _add_sample(sub) -> None:
    from fastdiff.samplers.generate import SAMPLER_KINDS, SIGMA_SCHEDULES

    p = sub.add_parser("sample", help="sample a trained model with the fused samplers",
                       description="Draw samples from a checkpoint (file or run directory) and write PNG grids "
                                   "and samples.npz (x in [-1, 1], labels).")
    p.add_argument("--ckpt", default=None, help="checkpoint file or run directory (or --openai-ckpt)")
    p.add_argument("--openai-ckpt", default=None,
                   help="a guided-diffusion / improved-diffusion .pt state dict (with --flags)")
    p.add_argument("--flags", default="", help="the checkpoint's MODEL_FLAGS, e.g. \"--image_size 64 --class_cond True\"")
    p.add_argument("--openai-variant", choices=("guided", "improved"), default="guided",
                   help="which repository's flags and defaults --flags follows (default: %(default)s)")
    p.add_argument("--openai-classifier", default=None,
                   help="a guided-diffusion noisy-classifier .pt (for --guidance cg=S), with --classifier-flags")
    p.add_argument("--classifier-flags", default="", help="the classifier's CLASSIFIER_FLAGS")
    p.add_argument("--sampler", choices=SAMPLER_KINDS, default=None,
                   help="ddpm / ddim / lcm on respaced timesteps, or a σ-space solver (classifier-free guidance only)")
    p.add_argument("--schedule", choices=SIGMA_SCHEDULES, default="karras",
                   help="σ schedule of the σ-space solvers (default: %(default)s)")
    p.add_argument("--steps", type=_count(), default=None, help="sampling steps")
    p.add_argument("--eta", type=_nonnegative, default=None, help="DDIM η (0: deterministic)")
    p.add_argument("--guidance", action="append", default=None, metavar="KIND=SCALE[,t=LO:HI][,schedule=S]",
                   help="repeatable: cfg=W (classifier-free; a bare number means cfg), cg=S (noisy classifier, needs "
                        "--classifier), dg=W (Discriminator Guidance, needs --discriminator); t=LO:HI limits a term "
                        "to model timesteps LO..HI, schedule=constant|increasing|decreasing")
    p.add_argument("--classifier", default=None, help="noisy-classifier run directory or checkpoint (for cg)")
    p.add_argument("--discriminator", default=None, help="discriminator run directory or checkpoint (for dg)")
    p.add_argument("--unconditional", action="store_true",
                   help="feed the model the null class (unconditional branch); labels only steer cg")
    p.add_argument("--num-samples", type=_count(), default=None)
    p.add_argument("--batch-size", type=_count(), default=None)
    p.add_argument("--seed", type=_count(0), default=0)
    p.add_argument("--ema", default="best", help="EMA rate to sample ('best': the slowest; 'none': raw weights)")
    p.add_argument("--out", default="samples")
    p.add_argument("--device", type=_device, default=None)
    p.set_defaults(func=_run_sample)


def _load(args):
    import torch

    from fastdiff.app.runs import load_openai_run, load_run

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if getattr(args, "openai_ckpt", None) is not None:
        if args.ckpt is not None:
            raise ValueError("pass either --ckpt (a fastdiff run) or --openai-ckpt, not both")
        return load_openai_run(args.openai_ckpt, args.flags, variant=args.openai_variant, device=device)
    if args.ckpt is None:
        raise ValueError("--ckpt (or --openai-ckpt) is required")
    return load_run(args.ckpt, ema_rate=None if args.ema == "none" else args.ema, device=device)


def _run_sample(args) -> int:
    import numpy as np
    import torch

    from fastdiff.app.runs import finish_distributed, gather_chunks, save_grid
    from fastdiff.samplers.generate import guidance_specs
    from fastdiff.training import distributed as D

    D.init_distributed()
    run = _load(args)
    s = run.cfg.sample
    pick = lambda v, d: d if v is None else v  # noqa: E731
    n = pick(args.num_samples, s.num_samples)
    guidance = guidance_specs(s.guidance if args.guidance is None else args.guidance)  # errors before loading
    classifier, discriminator = _guidance_models(args, run, guidance)
    classes = run.num_classes or getattr(classifier, "out_channels", None)
    labels = torch.arange(n) % classes if classes else None
    x = run.sample(n, sampler=pick(args.sampler, s.sampler), steps=pick(args.steps, s.steps),
                   eta=pick(args.eta, s.eta), guidance=guidance, labels=labels, seed=args.seed,
                   batch_size=pick(args.batch_size, s.batch_size), rank=D.get_rank(),
                   world_size=D.get_world_size(), progress=True,
                   conditional=not args.unconditional and run.num_classes is not None,
                   classifier=classifier, discriminator=discriminator, schedule=args.schedule)
    x = gather_chunks(x, n, pick(args.batch_size, s.batch_size))
    if D.get_rank() == 0:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "samples.npz", x=x.cpu().numpy(), labels=None if labels is None else labels.numpy())
        if len(run.data_shape) == 3:
            save_grid(x[:100], out / "samples.png")
        else:
            _scatter(x.cpu(), out / "samples.png")
        print(f"wrote {n} samples to {out}/samples.npz and {out}/samples.png")
    finish_distributed()
    return 0


def _guidance_models(args, run, guidance):
    """(classifier, discriminator) that the guidance terms need, loaded on the run's device; clear errors for a
    missing one (or one given without its term)."""
    from fastdiff.app.runs import load_classifier, load_discriminator

    kinds = {g.kind for g in guidance}
    device = next(run.model.parameters()).device
    openai_cls = getattr(args, "openai_classifier", None)
    if openai_cls is not None and args.classifier is not None:
        raise ValueError("pass either --classifier (a fastdiff run) or --openai-classifier, not both")
    cls_flag = "--openai-classifier" if openai_cls is not None else "--classifier"
    for kind, flag, value in (("cg", cls_flag, args.classifier or openai_cls),
                              ("dg", "--discriminator", args.discriminator)):
        if (kind in kinds) != (value is not None):
            raise ValueError(f"--guidance {kind}=... needs {flag}, and {flag} needs --guidance {kind}=...")
    if openai_cls is not None:
        from fastdiff.adapters import openai

        classifier = openai.load_classifier(openai_cls, args.classifier_flags, device=device)[0]
    else:
        classifier = load_classifier(args.classifier, device=device) if args.classifier else None
    discriminator = load_discriminator(args.discriminator, device=device) if args.discriminator else None
    return classifier, discriminator


def _scatter(x, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=120)
    ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.5)
    ax.set_aspect("equal")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- eval


def _add_eval(sub) -> None:
    from fastdiff.samplers.generate import SAMPLER_KINDS

    p = sub.add_parser("eval", help="score a trained model (FD, precision/recall, accuracy, bits/dim)")
    p.add_argument("--ckpt", required=True)
    p.add_argument("--num-samples", type=_count(2), default=500, help="at least 2 (a Fréchet distance needs a "
                                                                        "covariance)")
    p.add_argument("--sampler", choices=SAMPLER_KINDS, default="ddim")
    p.add_argument("--steps", type=_count(), default=50)
    p.add_argument("--guidance", type=_nonnegative, default=0.0)
    p.add_argument("--bpd", action="store_true", help="also bits/dim of the data (calc_bpd_loop; slow: T steps)")
    p.add_argument("--seed", type=_count(0), default=0)
    p.add_argument("--ema", default="best")
    p.add_argument("--device", type=_device, default=None)
    p.set_defaults(func=_run_eval)


def _run_eval(args) -> int:
    from fastdiff.app.evaluate import evaluate

    run = _load(args)
    print(json.dumps(evaluate(run, num_samples=args.num_samples, sampler=args.sampler, steps=args.steps,
                              guidance=args.guidance, seed=args.seed, bpd=args.bpd), indent=1))
    return 0


# ----------------------------------------------------------------------------------------------- bench / repro / demo


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="time every fused op against its reference on this machine")
    p.add_argument("--quick", action="store_true", help="smaller shapes")
    p.add_argument("--device", type=_device, default=None)
    p.set_defaults(func=_run_bench)


def _run_bench(args) -> int:
    from fastdiff.app.evaluate import bench_ops

    print(bench_ops(device=args.device, quick=args.quick))
    return 0


def _add_repro(sub) -> None:
    from fastdiff.experiments import EXPERIMENTS

    p = sub.add_parser("repro", help="reproduce a seed paper's small-scale experiment",
                       description="Experiments: " + "; ".join(f"{k}: {v.__doc__.splitlines()[0]}"
                                                               for k, v in EXPERIMENTS.items()))
    p.add_argument("experiment", choices=sorted(EXPERIMENTS))
    p.add_argument("--quick", action="store_true", help="a short run that checks the pipeline, not the claim")
    p.add_argument("--out", default=None, help="output folder (default: repro_out/<experiment>)")
    p.add_argument("--seed", type=_count(0), default=0)
    p.set_defaults(func=_run_repro)


def _run_repro(args) -> int:
    from fastdiff.experiments import EXPERIMENTS

    out = args.out or str(Path("repro_out") / args.experiment)
    EXPERIMENTS[args.experiment](out, quick=args.quick, seed=args.seed)
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the main job: train classifier-free digits, sample with every sampler",
                       description="Train a class-conditional ADM UNet with label dropout on the 8x8 digits, then "
                                   "sample it with DDPM-1000, DDPM/DDIM at fewer steps and classifier-free "
                                   "guidance w = 0, 1, 3 through the fused kernels; write PNG grids, "
                                   "fd_vs_steps.png and demo_results.md.")
    p.add_argument("--out", default="demo_out", help="output folder (default: %(default)s)")
    p.add_argument("--quick", action="store_true", help="150 training steps and 200 samples (a smoke run)")
    p.add_argument("--num-samples", type=_count(2), default=None, help="per sampler (default: 500; 200 with --quick)")
    p.add_argument("--seed", type=_count(0), default=0)
    p.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from fastdiff.experiments.digits_samplers import run_demo

    run_demo(args.out, quick=args.quick, num_samples=args.num_samples, seed=args.seed)
    print((Path(args.out) / "demo_results.md").read_text())
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (the usage is one --help away)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser with every sub-command."""
    parser = _Parser(prog="fastdiff", description="fastdiff: fused kernels for diffusion models")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_train, _add_sample, _add_eval, _add_bench, _add_repro, _add_demo):
        add(sub)
    return parser


def main(argv=None) -> int:
    """Entry point of the `fastdiff` script; argv defaults to sys.argv[1:]. Returns the exit status."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as e:  # --help (0) or a bad option (2, its one-line message already printed)
        return e.code
    try:
        return args.func(args)
    except USER_ERRORS as e:  # a bad option, file or machine: one line, no traceback (fastdiff.errors)
        if os.environ.get(TRACEBACK_ENV) == "1":
            raise
        print(f"fastdiff {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fastdiff {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
