"""Subprocess entry for the kill/resume and DDP tests: a tiny class-conditional, classifier-free hybrid run, or with
--objective siddm a two-player SIDDM run (MLP generator and discriminator, 2-D data, two Adam optimizers).

python run_train.py OUT_DIR [--steps N] [--save-interval S] [--resume] [--kill-at-step K] [--world-size W]
                    [--objective diffusion|siddm]
  --kill-at-step K: SIGKILL this process right after step K (mid-training, no checkpoint at K unless K % S == 0);
  FASTDIFF_TEST_KILL_IN_SAVE=<step> (fastdiff.training.checkpoint) kills it halfway through writing a checkpoint;
  --world-size W > 1: W gloo processes via torch.multiprocessing.spawn on 127.0.0.1:--port;
  --adam-eps: AdamW's ε (the world-size comparison uses 1e-4, see test_distributed.py).
Every run ends with its final checkpoint in OUT_DIR/checkpoints (rank 0).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import trainkit

from fastdiff.diffusion import LossSecondMomentResampler
from fastdiff.training import DiffusionObjective, TrainConfig, Trainer
from fastdiff.training import distributed as D


def siddm_pair():
    """The SIDDM run's initial AdversarialPair (T = 4 MLPs; the seed fixes weights and Fourier frequencies)."""
    from fastdiff.models.siddm import MLPGenerator, MLPSIDDMDiscriminator
    from fastdiff.training.adversarial import AdversarialPair

    torch.manual_seed(0)
    return AdversarialPair(MLPGenerator(2, nz=2, width=16, depth=2, num_steps=4, fourier_sigma=0.5),
                           MLPSIDDMDiscriminator(2, width=16, depth=2, num_steps=4, fourier_sigma=0.5))


def build_siddm(args) -> Trainer:
    """SIDDM at T = 4 on 40 points of 2-D data, two Adam optimizers."""
    from fastdiff.data.dataset import ArrayDataset
    from fastdiff.training.adversarial import SIDDMObjective, few_step_diffusion

    model = siddm_pair()
    objective = SIDDMObjective(few_step_diffusion(4), nz=2, lambda_afd=0.1, lambda_denoise=0.1)
    data = ArrayDataset(x=torch.randn(40, 2, generator=torch.Generator().manual_seed(1)), name="toy")
    optim = {"generator": {"lr": 1e-3, "adam_betas": (0.5, 0.9)}, "discriminator": {"lr": 2e-3}}
    config = TrainConfig(total_steps=args.steps, batch_size=8, lr=1e-3, ema_rates=(0.9,),
                         save_interval=args.save_interval, log_interval=2, keep_checkpoints=2, seed=7,
                         adam_eps=args.adam_eps, player_optim=optim)
    return Trainer(model, objective, data, config, args.out, device="cpu", run_config={"test": "run_train siddm"})


def build(args) -> Trainer:
    """The same model, data and config in every process (the seed fixes the UNet's initial weights)."""
    if args.objective == "siddm":
        return build_siddm(args)
    diffusion = trainkit.make_diffusion(loss="rescaled_mse", var="learned_range", steps=10)
    objective = DiffusionObjective(diffusion, LossSecondMomentResampler(diffusion, history_per_term=2),
                                   num_classes=3, p_uncond=0.25)
    model = trainkit.make_unet(learn_sigma=True, num_classes=objective.model_num_classes, seed=0)
    data = trainkit.make_dataset(40, num_classes=3, seed=1)
    config = TrainConfig(total_steps=args.steps, batch_size=8, lr=2e-3, weight_decay=0.01, ema_rates=(0.9, 0.99),
                         warmup_steps=3, grad_clip=1.0, save_interval=args.save_interval, log_interval=2,
                         keep_checkpoints=2, seed=7, adam_eps=args.adam_eps)
    return Trainer(model, objective, data, config, args.out, device="cpu", run_config={"test": "run_train"})


def run(rank: int, args) -> None:
    torch.set_num_threads(1)
    if args.world_size > 1:
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(args.world_size), MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(args.port), LOCAL_RANK=str(rank))
        D.init_distributed("gloo")
    trainer = build(args)
    if args.world_size > 1:  # the gradients are averaged by torch's DDP: the whole model, or each player
        ddp = torch.nn.parallel.DistributedDataParallel
        wrapped = [trainer._forward_model] if args.objective == "diffusion" else [
            getattr(trainer._forward_model, p.name) for p in trainer.players]
        assert all(isinstance(m, ddp) for m in wrapped), wrapped
        assert not any(k.startswith("module.") for k in trainer.state_dict()["model"])  # checkpoints keep the keys
    if args.kill_at_step is not None:
        step_once = trainer.train_step

        def step_then_maybe_die():
            out = step_once()
            if trainer.step == args.kill_at_step:
                os.kill(os.getpid(), signal.SIGKILL)
            return out
        trainer.train_step = step_then_maybe_die
    trainer.train(resume=args.resume)
    if args.world_size > 1:
        torch.distributed.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--save-interval", type=int, default=4)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--kill-at-step", type=int, default=None)
    p.add_argument("--world-size", type=int, default=1)
    p.add_argument("--port", type=int, default=29511)
    p.add_argument("--adam-eps", type=float, default=1e-8)
    p.add_argument("--objective", choices=("diffusion", "siddm"), default="diffusion")
    args = p.parse_args()
    if args.world_size > 1:
        torch.multiprocessing.spawn(run, args=(args,), nprocs=args.world_size, join=True)
    else:
        run(0, args)


if __name__ == "__main__":
    main()
