"""Training: objectives (L_simple, L_hybrid, L_vlb, class-conditional, classifier-free; ADM's noisy classifier and
Discriminator Guidance's discriminator), the Trainer (AdamW, EMA, AMP with loss scaling, crash-safe checkpoints with
exact resume, DDP) and its checkpoint / distributed helpers."""
from fastdiff import _deprecated
from fastdiff.errors import CheckpointMismatchError, CorruptCheckpointError, TrainingDivergedError
from fastdiff.training.checkpoint import (
    atomic_write_bytes,
    copy_ema_,
    list_checkpoints,
    load_checkpoint,
    load_run_checkpoint,
    newest_valid_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from fastdiff.training.guidance_objectives import (
    DiscriminatorObjective,
    NoisyClassifierObjective,
    cached_samples,
    discriminator_dataset,
)
from fastdiff.training.objectives import (
    BatchDraw,
    DiffusionObjective,
    TrainingObjective,
    check_labels,
    run_objective,
    sample_timesteps,
)
from fastdiff.training.trainer import AMP_MODES, TrainConfig, Trainer

__all__ = [
    "AMP_MODES", "BatchDraw", "CheckpointMismatchError", "CorruptCheckpointError", "DiffusionObjective", "DiscriminatorObjective",
    "NoisyClassifierObjective", "TrainConfig", "Trainer", "TrainingDivergedError", "TrainingObjective",
    "atomic_write_bytes", "cached_samples", "check_labels", "copy_ema_",
    "discriminator_dataset", "list_checkpoints", "load_checkpoint", 
    "load_run_checkpoint", "newest_valid_checkpoint", "prune_checkpoints",
    "run_objective", "sample_timesteps", "save_checkpoint",
]

# Moved to the app layer (they rebuild models from run configs): fastdiff.app.runs.
__getattr__ = _deprecated.moved_names(__name__, {name: "fastdiff.app.runs" for name in
                                                ("load_classifier", "load_discriminator", "build_discriminator")})
