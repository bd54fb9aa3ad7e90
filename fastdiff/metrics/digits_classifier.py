"""A small CNN classifier of the 8×8 digits: the feature extractor of fastdiff's digits metrics.

Architecture: conv3×3(1→16) ReLU, conv3×3(16→32) ReLU, max-pool 2 (→ 4×4), conv3×3(32→32) ReLU, flatten 512,
linear 512→64 (the *features*, taken before their ReLU), ReLU, dropout, linear 64→10 (the logits); 47.5k
parameters, 190 KB of float32 weights. Inputs are [N, 1, S, S] in [-1, 1] with S = 8, 16 or 32; 16 and 32 are
average-pooled back to 8×8 first.

`train_digits_classifier` trains it deterministically (seeded init, shuffles and ±1-pixel shift
augmentation) on the train part of `fastdiff.data.digits_split(SPLIT_TEST_FRACTION, SPLIT_SEED)`;
scripts/train_digits_classifier.py runs it and writes the shipped weights to weights/digits_classifier.pt,
which `load_digits_classifier()` loads.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

WEIGHTS_PATH = Path(__file__).resolve().parent / "weights" / "digits_classifier.pt"
SPLIT_TEST_FRACTION = 0.2
SPLIT_SEED = 0
INPUT_SIZES = (8, 16, 32)


def pool_to_8x8(x: torch.Tensor) -> torch.Tensor:
    """x: [N, 1, S, S] with S in (8, 16, 32) -> [N, 1, 8, 8] by S/8 × S/8 average pooling."""
    if x.dim() != 4 or x.shape[1] != 1 or x.shape[2] != x.shape[3] or x.shape[2] not in INPUT_SIZES:
        raise ValueError(f"digit images must have shape [N, 1, S, S] with S in {INPUT_SIZES}, "
                         f"got {tuple(x.shape)}")
    s = x.shape[2]
    return x if s == 8 else F.avg_pool2d(x, kernel_size=s // 8)


class DigitsClassifier(nn.Module):
    """The CNN of the module docstring. features(x): [N, 64]; logits(x) = forward(x): [N, 10]."""

    feature_dim = 64
    num_classes = 10

    def __init__(self, dropout: float = 0.25) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.conv3 = nn.Conv2d(32, 32, 3, padding=1)
        self.fc = nn.Linear(32 * 4 * 4, self.feature_dim)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.feature_dim, self.num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features [N, 64] (pre-activation) of x: [N, 1, S, S] in [-1, 1]."""
        h = pool_to_8x8(x.float())
        h = F.relu(self.conv2(F.relu(self.conv1(h))))
        h = F.relu(self.conv3(F.max_pool2d(h, 2)))
        return self.fc(h.flatten(1))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits [N, 10] of x: [N, 1, S, S]."""
        return self.head(self.dropout(F.relu(self.features(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """= logits(x)."""
        return self.logits(x)


@dataclass
class DigitsClassifierConfig:
    """Training settings of `train_digits_classifier` (defaults: the shipped weights)."""

    epochs: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    dropout: float = 0.25
    max_shift: int = 1          # random translation of ±max_shift pixels (zero = background −1 padding)
    seed: int = 0
    split_seed: int = SPLIT_SEED
    test_fraction: float = SPLIT_TEST_FRACTION


def random_shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image of x: [N, 1, H, W] by a random (dy, dx) in [−max_shift, max_shift]², filling −1."""
    if max_shift == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, value=-1.0)
    off = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    rows = (off[:, 0, None] + torch.arange(h))[:, :, None]                 # [N, H, 1]
    cols = (off[:, 1, None] + torch.arange(w))[:, None, :]                 # [N, 1, W]
    return padded[torch.arange(n)[:, None, None], 0, rows, cols][:, None]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Share of x: [N, 1, S, S] whose argmax logit equals y: [N] (model in eval mode)."""
    was_training = model.training
    model.eval()
    pred = torch.cat([model.logits(b).argmax(1) for b in x.split(batch_size)])
    model.train(was_training)
    return float((pred == y.to(pred.device)).double().mean())


def train_digits_classifier(cfg: DigitsClassifierConfig | None = None) -> tuple[DigitsClassifier, dict]:
    """Train the classifier with Adam + cross-entropy on the seeded train split of the 8×8 digits.

    Returns (model in eval mode, {"train_accuracy", "test_accuracy", "n_train", "n_test"}). Deterministic for a
    given config on a given machine: every random draw comes from generators seeded by cfg.seed.
    """
    from fastdiff.data import digits_split, load_digits

    cfg = cfg or DigitsClassifierConfig()
    data = load_digits(8)
    train_idx, test_idx = digits_split(cfg.test_fraction, cfg.split_seed)
    x_tr, y_tr = data.x[train_idx], data.y[train_idx]
    g = torch.Generator().manual_seed(cfg.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)                    # init and dropout masks
        model = DigitsClassifier(cfg.dropout)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
        model.train()
        for epoch in range(cfg.epochs):
            for b in torch.randperm(x_tr.shape[0], generator=g).split(cfg.batch_size):
                loss = F.cross_entropy(model(random_shift(x_tr[b], cfg.max_shift, g)), y_tr[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            sched.step()
            logger.debug("epoch %d loss %.4f", epoch, loss.item())
    model.eval()
    stats = {"train_accuracy": accuracy(model, x_tr, y_tr),
             "test_accuracy": accuracy(model, data.x[test_idx], data.y[test_idx]),
             "n_train": int(train_idx.numel()), "n_test": int(test_idx.numel())}
    return model, stats


@functools.cache
def _load_cached(path: str, device: str) -> DigitsClassifier:
    """The classifier with the state dict at `path`, on `device`, eval mode, gradients off."""
    model = DigitsClassifier()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.to(device).eval().requires_grad_(False)


def load_digits_classifier(device: torch.device | str = "cpu", path: str | Path | None = None) -> DigitsClassifier:
    """The shipped (or `path`'s) classifier on `device`, in eval mode with gradients off; cached per
    (path, device), so treat it as read-only. FileNotFoundError when the weights file is missing."""
    path = Path(path) if path is not None else WEIGHTS_PATH
    if not path.is_file():
        raise FileNotFoundError(f"digits classifier weights {str(path)!r} not found; create them with "
                                f"`python scripts/train_digits_classifier.py` (they ship as package data "
                                f"fastdiff/metrics/weights/digits_classifier.pt)")
    return _load_cached(str(path.resolve()), str(torch.device(device)))
