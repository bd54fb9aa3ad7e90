"""Train fastdiff's digits classifier (the feature extractor of digits_fd / digits_precision_recall) on CPU and
write the shipped weights fastdiff/metrics/weights/digits_classifier.pt.

    python scripts/train_digits_classifier.py [--out PATH] [--epochs 40] [--seed 0]

Deterministic: seeded split (fastdiff.data.digits_split), initialisation, shuffles and augmentation; one
thread by default so the float reductions run in one order.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import torch

from fastdiff.metrics.digits_classifier import WEIGHTS_PATH, DigitsClassifierConfig, train_digits_classifier


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=WEIGHTS_PATH, help="where to write the state dict")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: bitwise reproducible)")
    defaults = DigitsClassifierConfig()
    for f in dataclasses.fields(DigitsClassifierConfig):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(defaults, f.name)),
                       default=getattr(defaults, f.name))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cfg = DigitsClassifierConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DigitsClassifierConfig)})
    start = time.perf_counter()
    model, stats = train_digits_classifier(cfg)
    stats["seconds"] = round(time.perf_counter() - start, 1)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)
    stats["weights"] = str(args.out)
    stats["bytes"] = args.out.stat().st_size
    stats["config"] = dataclasses.asdict(cfg)
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
