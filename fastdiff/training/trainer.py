"""The training loop: AdamW, EMA, AMP with dynamic loss scaling, gradient clipping, lr warmup, crash-safe
checkpoints with exact resume, JSONL logs, and data parallelism with torch's DistributedDataParallel
(guided-diffusion's TrainLoop, reorganised around a dataclass config).

Determinism: every random quantity of a step is drawn for the GLOBAL batch from one torch.Generator (data order
from a per-epoch seeded permutation, t / ε / label dropout from the objective's draw), and each rank takes its slice,
so a run does not depend on the world size; checkpoints hold every RNG state and the data position, so a resumed
CPU fp32 run continues bit-identically.

Two-player (adversarial) training: an objective with a `players` tuple (e.g. fastdiff.training.adversarial's
SIDDMObjective / DDGANObjective: ("discriminator", "generator")) is trained by alternating updates, in that order,
on every batch: each player has its own AdamW over `objective.player_parameters(model, player)` (hyper-parameters
from TrainConfig, overridden per player by TrainConfig.player_optim), its loss from `objective.losses(model, x, y,
draw, player)`, its own DistributedDataParallel wrapper (gradient averaging), clipping and non-finite check; the
EMA covers `objective.ema_players` (the generator). An objective without `players` is the single player "model"
over every trainable parameter. No gradients are accumulated over micro-batches, so no `no_sync` is needed.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from fastdiff.errors import (
    CheckpointMismatchError,
    TrainingDivergedError,
    check_int,
    check_number,
    state_dict_mismatch,
)
from fastdiff.training import checkpoint as ckpt
from fastdiff.training import distributed as D
from fastdiff.training.objectives import TrainingObjective

logger = logging.getLogger(__name__)

AMP_MODES = ("none", "bf16", "fp16")
PLAYER_OPTIM_KEYS = ("lr", "adam_betas", "adam_eps", "weight_decay")
LR_DECAYS = ("constant", "cosine")
CHECKPOINT_FORMAT = 1


def _check_int(name: str, value, minimum: int) -> None:
    check_int(f"TrainConfig.{name}", value, minimum)


def _check_float(name: str, value, low: float, high: float = math.inf, **open_ends) -> None:
    check_number(f"TrainConfig.{name}", value, low, high, **open_ends)


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run.

    batch_size is the GLOBAL batch (split evenly over ranks); ema_rates: one EMA copy per rate; warmup_steps: lr
    grows linearly from lr/warmup_steps to lr over the first warmup_steps steps; lr_decay: "constant" after warmup,
    or "cosine" from lr to 0 over the remaining steps (Loshchilov & Hutter 2017); grad_clip: max global grad norm or
    None; amp: "none" (fp32), "bf16" (autocast) or "fp16" (autocast + dynamic loss scaling from
    initial_loss_scale, halved on a non-finite step, doubled after loss_scale_growth_interval good steps);
    max_skipped_steps: K, abort after K non-finite steps in a row; save_interval / log_interval in steps;
    keep_checkpoints: how many checkpoints to keep on disk; player_optim: per-player overrides of lr, adam_betas,
    adam_eps and weight_decay for a two-player objective, e.g. {"discriminator": {"lr": 1.25e-4, "adam_betas":
    (0.5, 0.9)}} (DDGAN's Adam settings); players not named use the fields above.
    """

    total_steps: int
    batch_size: int
    lr: float = 1e-4
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    ema_rates: tuple[float, ...] = (0.9999,)
    warmup_steps: int = 0
    lr_decay: str = "constant"
    grad_clip: float | None = None
    amp: str = "none"
    initial_loss_scale: float = 2.0 ** 16
    loss_scale_growth_interval: int = 2000
    max_skipped_steps: int = 10
    save_interval: int = 10_000
    log_interval: int = 100
    keep_checkpoints: int = 3
    seed: int = 0
    player_optim: dict = field(default_factory=dict)

    def __post_init__(self):
        _check_int("total_steps", self.total_steps, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_float("lr", self.lr, 0.0, low_open=True)
        _check_float("weight_decay", self.weight_decay, 0.0)
        if not isinstance(self.adam_betas, (tuple, list)) or len(self.adam_betas) != 2:
            raise ValueError(f"TrainConfig.adam_betas must be a pair (beta1, beta2), got {self.adam_betas!r}")
        self.adam_betas = tuple(self.adam_betas)
        for i, b in enumerate(self.adam_betas):
            _check_float(f"adam_betas[{i}]", b, 0.0, 1.0, high_open=True)
        _check_float("adam_eps", self.adam_eps, 0.0, low_open=True)
        if not isinstance(self.ema_rates, (tuple, list)):
            raise TypeError(f"TrainConfig.ema_rates must be a tuple of floats, got {self.ema_rates!r}")
        self.ema_rates = tuple(float(r) if isinstance(r, int) and not isinstance(r, bool) else r
                               for r in self.ema_rates)
        for i, r in enumerate(self.ema_rates):
            _check_float(f"ema_rates[{i}]", r, 0.0, 1.0, high_open=True)
        if len(set(self.ema_rates)) != len(self.ema_rates):
            raise ValueError(f"TrainConfig.ema_rates must be distinct, got {self.ema_rates}")
        _check_int("warmup_steps", self.warmup_steps, 0)
        if self.lr_decay not in LR_DECAYS:
            raise ValueError(f"TrainConfig.lr_decay must be one of {list(LR_DECAYS)}, got {self.lr_decay!r}")
        if self.grad_clip is not None:
            _check_float("grad_clip", self.grad_clip, 0.0, low_open=True)
        if self.amp not in AMP_MODES:
            raise ValueError(f"TrainConfig.amp must be one of {list(AMP_MODES)}, got {self.amp!r}")
        _check_float("initial_loss_scale", self.initial_loss_scale, 0.0, low_open=True)
        _check_int("loss_scale_growth_interval", self.loss_scale_growth_interval, 1)
        _check_int("max_skipped_steps", self.max_skipped_steps, 1)
        _check_int("save_interval", self.save_interval, 1)
        _check_int("log_interval", self.log_interval, 1)
        _check_int("keep_checkpoints", self.keep_checkpoints, 1)
        _check_int("seed", self.seed, 0)
        self._check_player_optim()

    def _check_player_optim(self) -> None:
        """player_optim: {player name: {key in PLAYER_OPTIM_KEYS: value}}, each value checked as its field."""
        if not isinstance(self.player_optim, dict):
            raise TypeError(f"TrainConfig.player_optim must be a dict {{player: {{field: value}}}}, got "
                            f"{self.player_optim!r}")
        checked = {}
        for player, over in self.player_optim.items():
            where = f"player_optim[{player!r}]"
            if not isinstance(player, str) or not isinstance(over, dict):
                raise TypeError(f"TrainConfig.{where} must map a player name to a dict, got {over!r}")
            unknown = sorted(set(over) - set(PLAYER_OPTIM_KEYS))
            if unknown:
                raise ValueError(f"TrainConfig.{where} has unknown keys {unknown}; allowed: {list(PLAYER_OPTIM_KEYS)}")
            over = dict(over)
            if "lr" in over:
                _check_float(f"{where}.lr", over["lr"], 0.0, low_open=True)
            if "adam_eps" in over:
                _check_float(f"{where}.adam_eps", over["adam_eps"], 0.0, low_open=True)
            if "weight_decay" in over:
                _check_float(f"{where}.weight_decay", over["weight_decay"], 0.0)
            if "adam_betas" in over:
                betas = over["adam_betas"]
                if not isinstance(betas, (tuple, list)) or len(betas) != 2:
                    raise ValueError(f"TrainConfig.{where}.adam_betas must be a pair (beta1, beta2), got {betas!r}")
                for i, b in enumerate(betas):
                    _check_float(f"{where}.adam_betas[{i}]", b, 0.0, 1.0, high_open=True)
                over["adam_betas"] = tuple(betas)
            checked[player] = over
        self.player_optim = checked

    def optim_for(self, player: str) -> dict:
        """AdamW settings {lr, betas, eps, weight_decay} of `player` (the fields, overridden by player_optim)."""
        over = self.player_optim.get(player, {})
        return {"lr": over.get("lr", self.lr), "betas": over.get("adam_betas", self.adam_betas),
                "eps": over.get("adam_eps", self.adam_eps), "weight_decay": over.get("weight_decay", self.weight_decay)}


# ---------------------------------------------------------------------------------------------------- RNG states

def _capture_rng(generator: torch.Generator) -> dict:
    """Every RNG a step can touch, as weights_only-loadable values."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": py_gauss},
        "generator": generator.get_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict, generator: torch.Generator) -> None:
    """Inverse of _capture_rng."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    generator.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------------------------------- trainer

@dataclass
class _Player:
    """One player of the game: its parameters (and their model state-dict names), optimizer, base lr, and whether
    the EMA covers it."""

    name: str
    params: list
    names: list
    optimizer: torch.optim.Optimizer
    lr: float
    ema: bool
    losses: Callable  # (model, x, y, draw) -> (loss, terms, per-sample losses): the objective's, for this player
    report: Callable | None = None  # (draw, per-sample losses): feed a loss-aware timestep sampler


class Trainer:
    """Trains `model` on `dataset` with `objective` under `config`, writing log.jsonl and checkpoints/ in out_dir.

    model: an nn.Module (e.g. fastdiff.models.UNetModel); objective: a TrainingObjective (DiffusionObjective,
    NoisyClassifierObjective, DiscriminatorObjective); dataset: any object with
    `.x` [N, ...] float tensor and `.y` int64 [N] or None (fastdiff.data.ArrayDataset); device: default cuda:
    LOCAL_RANK or CPU; run_config: JSON-serialisable dict stored in every checkpoint (e.g. the CLI's model and
    diffusion settings). Under torchrun call `distributed.init_distributed()` first; gradients are averaged over
    ranks with one all_reduce per step (rank 0's initial weights are broadcast), rank 0 alone writes files, and
    every rank reads the checkpoint on resume (a shared file system). Construction seeds python's, numpy's and
    torch's global RNGs with config.seed (model dropout draws from torch's); the objective's draws come from the
    trainer's own generator.
    """

    def __init__(self, model: torch.nn.Module, objective: TrainingObjective, dataset, config: TrainConfig,
                 out_dir, device=None, run_config: dict | None = None):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if not isinstance(objective, TrainingObjective):
            raise TypeError("objective must be a TrainingObjective (num_classes, draw, losses, update_sampler, "
                            f"state_dict, load_state_dict), e.g. a DiffusionObjective; got {type(objective).__name__}")
        self.config = config
        self.objective = objective
        self.rank, self.world_size = D.get_rank(), D.get_world_size()
        self._check_dataset(dataset)
        self.dataset = dataset
        if config.batch_size % self.world_size:
            raise ValueError(f"TrainConfig.batch_size={config.batch_size} must be divisible by the world size "
                             f"{self.world_size}")
        self.local_batch_size = config.batch_size // self.world_size
        if run_config is not None:
            try:
                json.dumps(run_config)
            except TypeError as e:
                raise TypeError(f"run_config must be JSON-serialisable: {e}") from e
        self.run_config = run_config
        self.out_dir = Path(out_dir)
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.device = torch.device(device) if device is not None else D.default_device()
        self.model = model.to(self.device)
        self.players = self._build_players()
        self._forward_model = self._data_parallel()
        ema_players = [p for p in self.players if p.ema]
        # the EMA'd parameters (every trainable one for a single player; the generator's in a two-player game)
        self._params = [t for p in ema_players for t in p.params]
        self._param_names = [n for p in ema_players for n in p.names]
        self.optimizer = self.players[0].optimizer if len(self.players) == 1 else None
        self.ema = {rate: [p.detach().clone() for p in self._params] for rate in config.ema_rates}
        self.generator = torch.Generator(self.device).manual_seed(config.seed)
        random.seed(config.seed)
        np.random.seed(config.seed)
        torch.manual_seed(config.seed)
        self.step = 0
        self.epoch, self.data_index = 0, 0
        self.loss_scale = float(config.initial_loss_scale) if config.amp == "fp16" else 1.0
        self._good_steps = 0
        self.skipped_in_a_row, self.skipped_total = 0, 0
        self._perm_cache: tuple[int, torch.Tensor] | None = None
        self._bad_checkpoints: list[Path] = []
        self.last_checkpoint: Path | None = None

    # ------------------------------------------------------------------ players

    def _build_players(self) -> list[_Player]:
        """One _Player per objective player (update order), or the single player "model" over every trainable
        parameter when the objective declares none."""
        names = getattr(self.objective, "players", None)
        cfg = self.config
        if names is None:
            if cfg.player_optim:
                raise ValueError(f"TrainConfig.player_optim names players {sorted(cfg.player_optim)} but the "
                                 f"objective {type(self.objective).__name__} has a single player")
            named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
            groups = [("model", named, True)]
        else:
            unknown = sorted(set(cfg.player_optim) - set(names))
            if unknown:
                raise ValueError(f"TrainConfig.player_optim names unknown players {unknown}; the objective's players "
                                 f"are {list(names)}")
            ema = set(getattr(self.objective, "ema_players", names))
            groups = [(name, self.objective.player_parameters(self.model, name), name in ema) for name in names]
        players, seen = [], set()
        for name, named, ema in groups:
            if not named:
                raise ValueError("model has no trainable parameters" if names is None else
                                 f"player {name!r} has no trainable parameters")
            if seen & {id(p) for _, p in named}:
                raise ValueError(f"player {name!r} shares parameters with another player")
            seen |= {id(p) for _, p in named}
            low = sorted({str(p.dtype) for _, p in named if p.dtype != torch.float32})
            if low:
                raise ValueError(f"model parameters must be float32 master weights, found {low}; train with "
                                 "TrainConfig.amp='fp16' or 'bf16' instead of convert_to_fp16()")
            params = [p for _, p in named]
            opt = cfg.optim_for(name)
            players.append(_Player(name, params, [n for n, _ in named], torch.optim.AdamW(params, **opt),
                                   opt["lr"], ema, *self._player_losses(None if names is None else name)))
        return players

    def _player_losses(self, name: str | None) -> tuple[Callable, Callable | None]:
        """(losses, report) of the single player (name None: the objective's losses, and its timestep sampler fed
        with them) or of the two-player objective's `name` (its loss also logged as term loss_<name>)."""
        objective = self.objective
        if name is None:
            return objective.losses, lambda draw, per_sample: objective.update_sampler(draw.t.to(self.device),
                                                                                       per_sample)

        def losses(model, x, y, draw):
            loss, terms, per_sample = objective.losses(model, x, y, draw, name)
            return loss, {**terms, f"loss_{name}": loss.detach().float()}, per_sample
        return losses, None

    def _data_parallel(self) -> torch.nn.Module:
        """What the objective calls: the model itself in one process; under torch.distributed, torch's
        DistributedDataParallel around it, or around each player's sub-module for a two-player objective, so each
        averages its own gradients over ranks in buckets overlapped with the backward pass. DDP broadcasts rank 0's
        weights and buffers when it wraps. A player's sub-module runs frozen (or under no_grad) in the other's
        phase, hence find_unused_parameters there."""
        if not D.is_initialized() or self.world_size == 1:
            return self.model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" and self.device.index is not None else None
        if len(self.players) == 1:
            return DistributedDataParallel(self.model, device_ids=ids)
        view = copy.copy(self.model)  # a second container over the same sub-modules: state-dict keys unchanged
        view._modules = dict(self.model._modules)
        for player in self.players:
            setattr(view, player.name, DistributedDataParallel(getattr(self.model, player.name), device_ids=ids,
                                                                find_unused_parameters=True))
        return view

    # ------------------------------------------------------------------ validation

    def _check_dataset(self, dataset) -> None:
        x, y = getattr(dataset, "x", None), getattr(dataset, "y", "missing")
        if not isinstance(x, torch.Tensor) or x.dim() < 2:
            raise TypeError(f"dataset.x must be a tensor [N, ...], got {type(x).__name__}"
                            + (f" of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else ""))
        if not x.is_floating_point():
            raise TypeError(f"dataset.x must be floating point, got {x.dtype}")
        if isinstance(y, str):
            raise TypeError("dataset must have a .y attribute (int64 [N] labels or None)")
        if y is not None and (not isinstance(y, torch.Tensor) or y.dtype != torch.int64
                              or tuple(y.shape) != (x.shape[0],)):
            raise ValueError(f"dataset.y must be int64 [{x.shape[0]}] or None, got "
                             f"{getattr(y, 'dtype', type(y).__name__)} of shape {tuple(getattr(y, 'shape', ()))}")
        if self.objective.num_classes is not None and y is None:
            raise ValueError(f"the objective is class-conditional (num_classes={self.objective.num_classes}) but "
                             "dataset.y is None")
        if self.config.batch_size > x.shape[0]:
            raise ValueError(f"TrainConfig.batch_size={self.config.batch_size} is larger than the data set "
                             f"({x.shape[0]} samples)")

    # ------------------------------------------------------------------ data

    def _permutation(self, epoch: int) -> torch.Tensor:
        """The sample order of `epoch`: randperm(N) seeded by (seed, epoch), identical on every rank."""
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + epoch)
            self._perm_cache = (epoch, torch.randperm(self.dataset.x.shape[0], generator=g))
        return self._perm_cache[1]

    def next_batch(self):
        """This rank's slice of the next global batch: (x [B/W, ...], y [B/W] or None) on the device. An epoch's
        tail smaller than the batch is dropped; the position (epoch, data_index) advances."""
        B, n = self.config.batch_size, self.dataset.x.shape[0]
        if self.data_index + B > n:
            self.epoch, self.data_index = self.epoch + 1, 0
        idx = self._permutation(self.epoch)[self.data_index:self.data_index + B]
        self.data_index += B
        idx = idx[self.rank * self.local_batch_size:(self.rank + 1) * self.local_batch_size]
        x = self.dataset.x[idx].to(self.device, non_blocking=True)
        y = None
        if self.objective.num_classes is not None:
            y = self.dataset.y[idx].to(self.device, non_blocking=True)
        return x, y

    # ------------------------------------------------------------------ one step

    def lr_at(self, step: int, base_lr: float | None = None) -> float:
        """lr of 0-based `step` for base_lr (default config.lr): linear warmup lr · (step + 1)/warmup_steps, then
        constant or a cosine lr · ½(1 + cos(π·p)) with p = (step − warmup_steps)/(total_steps − warmup_steps)."""
        c = self.config
        lr = c.lr if base_lr is None else base_lr
        if step < c.warmup_steps:
            return lr * (step + 1) / c.warmup_steps
        if c.lr_decay == "constant":
            return lr
        p = (step - c.warmup_steps) / max(1, c.total_steps - c.warmup_steps)
        return lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, p)))

    def _autocast(self):
        if self.config.amp == "none":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def _unscaled_grads(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """Gradients of `params` (already averaged over ranks by DistributedDataParallel in the backward) divided
        by the loss scale; None -> zeros."""
        grads = []
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            grads.append(p.grad)
        if self.loss_scale != 1.0:
            torch._foreach_mul_(grads, 1.0 / self.loss_scale)
        return grads

    @torch.no_grad()
    def _update_ema(self) -> None:
        """θ_ema ← rate · θ_ema + (1 − rate) · θ for every rate."""
        for rate, ema in self.ema.items():
            torch._foreach_mul_(ema, rate)
            torch._foreach_add_(ema, [p.detach() for p in self._params], alpha=1.0 - rate)

    def _on_nonfinite(self, grad_norm) -> None:
        """Skip bookkeeping: count and back off the fp16 loss scale."""
        self.skipped_in_a_row += 1
        self.skipped_total += 1
        old_scale = self.loss_scale
        if self.config.amp == "fp16":
            self.loss_scale *= 0.5
        self._good_steps = 0
        logger.warning("step %d: non-finite gradient (norm %s); step skipped (%d in a row), loss scale %g -> %g",
                       self.step, grad_norm, self.skipped_in_a_row, old_scale, self.loss_scale)

    def train_step(self) -> dict:
        """One optimisation step on the next global batch. Returns {"loss", "terms", "grad_norm", "lr",
        "loss_scale", "skipped"} as tensors/floats (loss and terms are this rank's batch means, not yet reduced). With
        two players the entries are the last player's (the generator's), terms hold every player's terms plus
        "loss_<player>", and "grad_norms" / "lrs" give each player's.

        A step with non-finite gradients (any mode) leaves weights, optimizer state and EMA untouched; it still
        consumes its batch and counts as a step. With two players each player's update is skipped on its own
        non-finite gradients, and the step counts as skipped when any was. Raises TrainingDivergedError after
        max_skipped_steps such steps in a row.
        """
        x, y = self.next_batch()
        draw = self.objective.draw(self.config.batch_size, tuple(x.shape[1:]), self.generator)
        draw = draw.shard(self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size)
        scale_used = self.loss_scale
        info = {"terms": {}, "grad_norms": {}, "lrs": {}}
        skipped, ema_stepped = False, False
        for player in self.players:
            lr = self.lr_at(self.step, player.lr)
            for group in player.optimizer.param_groups:
                group["lr"] = lr
            self.model.zero_grad(set_to_none=True)
            self.model.train()
            with self._autocast():
                loss, terms, per_sample = player.losses(self._forward_model, x, y, draw)
            (loss.float() * scale_used).backward()
            grads = self._unscaled_grads(player.params)
            grad_norm = torch.nn.utils.get_total_norm(grads, norm_type=2.0)
            info.update(loss=loss.detach(), grad_norm=grad_norm.detach(), lr=lr)
            info["terms"].update(terms)
            info["grad_norms"][player.name], info["lrs"][player.name] = grad_norm.detach(), lr
            if not bool(torch.isfinite(grad_norm)):
                self.model.zero_grad(set_to_none=True)
                skipped = True
                continue
            if player.report is not None:
                player.report(draw, per_sample)
            if self.config.grad_clip is not None:
                torch.nn.utils.clip_grads_with_norm_(player.params, self.config.grad_clip, grad_norm)
            player.optimizer.step()
            ema_stepped |= player.ema
        if ema_stepped:
            self._update_ema()
        if skipped:
            self._on_nonfinite(", ".join(f"{k}: {float(v)}" for k, v in info["grad_norms"].items()))
        else:
            self.skipped_in_a_row = 0
            if self.config.amp == "fp16":
                self._good_steps += 1
                if self._good_steps >= self.config.loss_scale_growth_interval:
                    self.loss_scale *= 2.0
                    self._good_steps = 0
        self.step += 1
        if self.skipped_in_a_row >= self.config.max_skipped_steps:
            raise TrainingDivergedError(
                f"{self.skipped_in_a_row} steps in a row (TrainConfig.max_skipped_steps="
                f"{self.config.max_skipped_steps}) had non-finite gradients, the last at step {self.step - 1}; loss "
                f"scale {self.loss_scale:g}, amp={self.config.amp!r}. Lower lr, enable grad_clip or use amp='bf16'.")
        info.update(loss_scale=scale_used, skipped=skipped)
        if len(self.players) == 1:  # one player: its norm and lr are grad_norm and lr
            del info["grad_norms"], info["lrs"]
        return info

    # ------------------------------------------------------------------ loop

    def train(self, resume: bool = False) -> dict:
        """Run until config.total_steps (resuming from the newest valid checkpoint when `resume`), logging every
        log_interval steps to out_dir/log.jsonl and checkpointing every save_interval steps and at the end.

        Returns {"step", "loss", "skipped_total", "samples_per_s", "elapsed_s", "checkpoint"}.
        """
        if resume:
            self.resume()
        cfg = self.config
        main = D.is_main_process()
        if main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=cfg.total_steps, initial=self.step, disable=not main, desc="train")
        start = time.perf_counter()
        window_t, window_steps, first_step = start, 0, self.step
        info = None
        try:
            while self.step < cfg.total_steps:
                info = self.train_step()
                window_steps += 1
                bar.update(1)
                if self.step % cfg.log_interval == 0 or self.step == cfg.total_steps:
                    now = time.perf_counter()
                    record = self._log_record(info, cfg.batch_size * window_steps / max(now - window_t, 1e-9))
                    window_t, window_steps = now, 0
                    bar.set_postfix(loss=f"{record['loss']:.4g}")
                    if main:
                        self._append_log(record)
                if self.step % cfg.save_interval == 0 or self.step == cfg.total_steps:
                    if self.skipped_total >= self.step:  # not one update: the weights are the initial ones
                        raise TrainingDivergedError(
                            f"all {self.step} steps had non-finite gradients, so no weight was ever updated; no "
                            f"checkpoint written. Lower lr, enable grad_clip or use amp='bf16'.")
                    self.save()
        finally:
            bar.close()
        elapsed = time.perf_counter() - start
        done = self.step - first_step
        return {"step": self.step, "loss": None if info is None else float(info["loss"]),
                "skipped_total": self.skipped_total,
                "samples_per_s": cfg.batch_size * done / elapsed if done else 0.0, "elapsed_s": elapsed,
                "checkpoint": None if self.last_checkpoint is None else str(self.last_checkpoint)}

    def _log_record(self, info: dict, samples_per_s: float) -> dict:
        """The JSONL record of the step just taken; loss and terms averaged over ranks (a collective)."""
        names = sorted(info["terms"])
        values = [info["loss"].float().reshape(1)] + [info["terms"][n].reshape(1) for n in names]
        values = torch.cat(values)
        D.all_reduce_mean_([values])
        values = values.tolist()
        record = {"step": self.step, "loss": values[0]}
        record.update({f"term/{n}": v for n, v in zip(names, values[1:])})
        record.update({"grad_norm": float(info["grad_norm"]), "lr": info["lr"], "loss_scale": info["loss_scale"],
                       "samples_per_s": samples_per_s, "skipped": int(info["skipped"]),
                       "skipped_total": self.skipped_total})
        for name, norm in info.get("grad_norms", {}).items():  # two players: each one's (this rank's) norm and lr
            record[f"grad_norm/{name}"] = float(norm)
            record[f"lr/{name}"] = info["lrs"][name]
        return record

    def _append_log(self, record: dict) -> None:
        with open(self.out_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    # ------------------------------------------------------------------ checkpoints

    def state_dict(self) -> dict:
        """Everything a bit-exact resume needs (see the module docstring of fastdiff.training.checkpoint)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": {repr(rate): self.ema_parameters(rate) for rate in self.ema},
            "optimizer": self._optimizer_state(),
            "scaler": {"loss_scale": self.loss_scale, "good_steps": self._good_steps},
            "skipped": {"in_a_row": self.skipped_in_a_row, "total": self.skipped_total},
            "data": {"epoch": self.epoch, "index": self.data_index},
            "rng": _capture_rng(self.generator),
            "objective": self.objective.state_dict(),
            "config": dataclasses.asdict(self.config),
            "run_config": self.run_config,
        }

    def _optimizer_state(self) -> dict:
        """The optimizer's state dict (single player), or {player: state dict} (two players)."""
        if len(self.players) == 1:
            return self.players[0].optimizer.state_dict()
        return {p.name: p.optimizer.state_dict() for p in self.players}

    def _load_optimizer_state(self, state: dict) -> None:
        """Inverse of _optimizer_state; the config's hyper-parameters (per player) win over the checkpoint's."""
        if len(self.players) > 1:
            names = [p.name for p in self.players]
            if not isinstance(state, dict) or set(state) != set(names):
                raise ValueError(f"checkpoint optimizer state has players {sorted(state)}, the objective has "
                                 f"{sorted(names)}")
        for player in self.players:
            player.optimizer.load_state_dict(state if len(self.players) == 1 else state[player.name])
            opt = self.config.optim_for(player.name)
            for group in player.optimizer.param_groups:
                group.update(betas=opt["betas"], eps=opt["eps"], weight_decay=opt["weight_decay"])

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict()` (a loaded checkpoint)."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointMismatchError(f"checkpoint format {state.get('format')!r} is not "
                                               f"{CHECKPOINT_FORMAT}")
        # Everything that can refuse the checkpoint is checked before anything is loaded.
        _check_run_config(state.get("run_config"), self.run_config)
        _check_model_state(state["model"], self.model.state_dict())
        rates = {repr(r) for r in self.ema}
        if set(state["ema"]) != rates:
            raise CheckpointMismatchError(f"checkpoint has EMA rates {sorted(state['ema'])}, config.ema_rates "
                                               f"gives {sorted(rates)}")
        try:
            self.objective.load_state_dict(state["objective"])  # validates the sampler's shapes first
        except ValueError as e:
            raise CheckpointMismatchError(f"checkpoint's training objective does not fit: {e}") from None
        self.model.load_state_dict(state["model"])
        with torch.no_grad():
            for rate, ema in self.ema.items():
                saved = state["ema"][repr(rate)]
                for name, tensor in zip(self._param_names, ema):
                    tensor.copy_(saved[name])
        self._load_optimizer_state(state["optimizer"])
        self.loss_scale = float(state["scaler"]["loss_scale"])
        self._good_steps = int(state["scaler"]["good_steps"])
        self.skipped_in_a_row = int(state["skipped"]["in_a_row"])
        self.skipped_total = int(state["skipped"]["total"])
        self.epoch, self.data_index = int(state["data"]["epoch"]), int(state["data"]["index"])
        _restore_rng(state["rng"], self.generator)
        self.step = int(state["step"])
        ignore = {"total_steps", "save_interval", "log_interval", "keep_checkpoints", "max_skipped_steps"}
        saved_cfg = state.get("config") or {}
        changed = {k: (saved_cfg.get(k), v) for k, v in dataclasses.asdict(self.config).items()
                   if k not in ignore and k in saved_cfg and _plain(saved_cfg[k]) != _plain(v)}
        if changed:
            logger.warning("resuming with changed TrainConfig fields (checkpoint, now): %s", changed)

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (rank 0; other ranks wait) and prune old ones after it is on
        disk. Returns the path on rank 0, None elsewhere."""
        path = None
        if D.is_main_process():
            path = ckpt.save_checkpoint(self.ckpt_dir, self.step, self.state_dict())
            self.last_checkpoint = path
            ckpt.prune_checkpoints(self.ckpt_dir, self.config.keep_checkpoints, protect=self._bad_checkpoints)
        D.barrier()
        return path

    def resume(self) -> Path | None:
        """Load the newest checkpoint in out_dir/checkpoints that verifies; corrupt or truncated newer files are
        reported (logging.warning) and left in place. Returns the path loaded, or None (fresh start)."""
        if D.is_main_process():
            ckpt.remove_stale_temporaries(self.ckpt_dir)
        path, state, bad = ckpt.newest_valid_checkpoint(self.ckpt_dir, map_location="cpu")
        self._bad_checkpoints.extend(bad)
        if path is None:
            logger.info("no valid checkpoint in %s; starting from step 0", self.ckpt_dir)
            return None
        try:
            self.load_state_dict(state)
        except CheckpointMismatchError as e:
            raise CheckpointMismatchError(f"cannot resume from {path}: {e}. Train into a new out_dir, or "
                                               f"resume with the configuration that wrote it.") from None
        self.last_checkpoint = path
        logger.info("resumed from %s at step %d", path, self.step)
        return path

    # ------------------------------------------------------------------ export

    def ema_parameters(self, rate: float) -> dict[str, torch.Tensor]:
        """{parameter name: its EMA tensor} for the EMA at `rate` (one of config.ema_rates); the live tensors."""
        if rate not in self.ema:
            raise ValueError(f"ema_rate must be one of config.ema_rates {list(self.ema)}, got {rate!r}")
        return dict(zip(self._param_names, self.ema[rate]))

    def export_safetensors(self, path, ema_rate: float | None = None) -> Path:
        """Write the model's state dict (parameters replaced by the EMA at `ema_rate` when given) as safetensors,
        atomically, with metadata {"step", "ema_rate"}."""
        from safetensors.torch import save as st_save

        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.model.state_dict().items()}
        if ema_rate is not None:
            for name, tensor in self.ema_parameters(ema_rate).items():
                state[name] = tensor.detach().cpu().contiguous().clone()
        data = st_save(state, metadata={"step": str(self.step), "ema_rate": repr(ema_rate)})
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return ckpt.atomic_write_bytes(path, data)


# Run-config entries a resumed run may change: the [train] table (TrainConfig, compared field by field in
# load_state_dict), sampling defaults, names and paths.
_RESUMABLE_RUN_CONFIG = ("config.train", "config.sample", "config.name", "config.out_dir")


def _flatten(value, prefix: str = "") -> dict:
    """{"a.b.c": leaf} of nested dicts (lists and tuples as plain lists)."""
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: _plain(value)}


def _check_run_config(saved: dict | None, current: dict | None) -> None:
    """CheckpointMismatchError naming every run-config entry (data set, model, diffusion, data shape, ...) in which
    the checkpoint's run differs from this one; nothing is compared when either has none."""
    if saved is None or current is None:
        return
    a, b = _flatten(saved), _flatten(current)
    changed = [k for k in sorted(set(a) | set(b))
               if a.get(k) != b.get(k) and not k.startswith(_RESUMABLE_RUN_CONFIG)]
    if changed:
        shown = "; ".join(f"{k}: {a.get(k, '<absent>')!r} in the checkpoint, {b.get(k, '<absent>')!r} now"
                          for k in changed[:8])
        more = f" (and {len(changed) - 8} more)" if len(changed) > 8 else ""
        raise CheckpointMismatchError(f"the checkpoint was written by a different run: {shown}{more}")


def _check_model_state(saved: dict, own: dict) -> None:
    """CheckpointMismatchError listing missing, unexpected and differently shaped weights (torch's
    load_state_dict would raise after loading part of them)."""
    problems = [f"{label} {items[:4]}{f' (+{len(items) - 4})' if len(items) > 4 else ''}"
                for label, items in zip(("missing", "unexpected", "shape"), state_dict_mismatch(saved, own)) if items]
    if problems:
        raise CheckpointMismatchError("the checkpoint holds another model's weights: " + "; ".join(problems))


def _plain(value):
    """Tuples as lists, for comparing configs after a checkpoint round trip."""
    return list(value) if isinstance(value, tuple) else value
