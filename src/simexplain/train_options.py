"""The options of `simexplain train`, defined without importing torch (the command line builds
them before it knows it will train; `training.cli_train` runs them)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .defaults import (DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LR, DEFAULT_SEED,
                       FMNIST_HEADS, SKETCH_EPOCHS, TRAINABLE, VIT_EPOCHS)


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `simexplain train`: dataset, --head, --epochs, --seed, --out, --data, ..."""
    parser.add_argument("dataset", choices=list(TRAINABLE),
                        help="what to train: fmnist (fmnist-gap/gmp/vit: one stream) or "
                             "sketch (fmnist-sketch: two streams, sketch to item)")
    parser.add_argument("--head", choices=list(FMNIST_HEADS), default=None,
                        help="fmnist: the CNN's global pooling, average (gap, the default) or "
                             "max (gmp), or the class-token ViT (vit)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"passes over the training split (default: fmnist "
                             f"{DEFAULT_EPOCHS}, fmnist --head vit {VIT_EPOCHS}, sketch "
                             f"{SKETCH_EPOCHS})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"random seed (default {DEFAULT_SEED})")
    parser.add_argument("--out", type=Path, default=None,
                        help="checkpoint to write (default: the committed weights file "
                             "src/simexplain/zoo/weights/fmnist-<gap|gmp|vit>.pt, or "
                             "fmnist-sketch.pt)")
    parser.add_argument("--data", type=Path, default=None,
                        help="directory with the Fashion-MNIST IDX files (default: the "
                             "data root, then /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"default {DEFAULT_BATCH_SIZE}")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR,
                        help=f"peak learning rate (default {DEFAULT_LR})")
    parser.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda)")
    parser.add_argument("--limit", type=int, default=None,
                        help="train on the first N training images only (quick runs)")
    parser.add_argument("--eval-limit", type=int, default=None,
                        help="evaluate on the first N test images only (quick runs)")
    return parser
