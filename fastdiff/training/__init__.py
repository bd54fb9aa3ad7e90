"""Training: objectives (L_simple, L_hybrid, L_vlb, class-conditional, classifier-free), the Trainer (AdamW, EMA,
AMP with loss scaling, crash-safe checkpoints with exact resume, DDP) and its checkpoint / distributed helpers."""
from fastdiff.training.checkpoint import (
    CorruptCheckpointError,
    atomic_write_bytes,
    list_checkpoints,
    load_checkpoint,
    newest_valid_checkpoint,
    prune_checkpoints,
    save_checkpoint,
)
from fastdiff.training.objectives import BatchDraw, DiffusionObjective, sample_timesteps
from fastdiff.training.trainer import AMP_MODES, TrainConfig, Trainer, TrainingDivergedError

__all__ = [
    "AMP_MODES", "BatchDraw", "CorruptCheckpointError", "DiffusionObjective", "TrainConfig", "Trainer",
    "TrainingDivergedError", "atomic_write_bytes", "list_checkpoints", "load_checkpoint", "newest_valid_checkpoint",
    "prune_checkpoints", "sample_timesteps", "save_checkpoint",
]
