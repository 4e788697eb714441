"""Training the Fashion-MNIST models (`simexplain train fmnist ...`).

`train_fmnist` trains a `FashionNet` with pytorch-metric-learning's multi-similarity loss and
miner on the training split, evaluates Recall@1 and MAP@R on the test split (each test image
queries the rest of the test set), and writes a checkpoint atomically. Runs are fully seeded:
the same seed, data and machine give the same weights.
"""

from __future__ import annotations

import argparse
import random
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .datasets import fashion_mnist
from .errors import SimexplainError
from .files import atomic_path
from .evaluation.metrics import map_at_r, recall_at_k
from .zoo.fmnist import FMNIST_MEAN, FMNIST_STD, HEADS, FashionNet, weights_path

DEFAULT_EPOCHS = 8
DEFAULT_SEED = 0
DEFAULT_BATCH_SIZE = 128
DEFAULT_LR = 2e-3


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def _deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def normalize_images(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) -> float (N, 1, H, W), normalised like `FMNIST_PREPROCESS`."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return tensor.sub_(FMNIST_MEAN).div_(FMNIST_STD).unsqueeze(1)


def augment(batch: torch.Tensor, generator: torch.Generator, shift: int = 2) -> torch.Tensor:
    """Random horizontal flips and shifts of up to `shift` pixels (background-padded)."""
    n, _, h, w = batch.shape
    flip = torch.rand(n, generator=generator) < 0.5
    batch = torch.where(flip[:, None, None, None], batch.flip(-1), batch)
    if shift <= 0:
        return batch
    background = -FMNIST_MEAN / FMNIST_STD  # a black pixel after normalisation
    padded = torch.nn.functional.pad(batch, (shift,) * 4, value=background)
    offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=generator)
    rows = (torch.arange(h)[None, :] + offsets[:, :1])            # (n, h)
    cols = (torch.arange(w)[None, :] + offsets[:, 1:])            # (n, w)
    index = torch.arange(n)[:, None, None]
    return padded[:, 0][index, rows[:, :, None], cols[:, None, :]].unsqueeze(1)


@torch.no_grad()
def embed(model: torch.nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    return torch.cat([model(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Recall@1 and MAP@R with every image querying all the others."""
    embeddings = embed(model, images)
    return {
        "recall_at_1": recall_at_k(embeddings, labels, embeddings, labels, k=1,
                                   exclude_self=True),
        "map_at_r": map_at_r(embeddings, labels, embeddings, labels, exclude_self=True),
    }


def _save_atomic(obj: dict, out: Path) -> None:
    with atomic_path(out) as tmp:
        torch.save(obj, tmp)


def train_fmnist(head: str, epochs: int, seed: int, out: Path, data_root=None,
                 batch_size: int = DEFAULT_BATCH_SIZE, lr: float = DEFAULT_LR,
                 embedding_dim: int = 64, augmentation: bool = True,
                 limit: int | None = None, eval_limit: int | None = None,
                 progress: bool = True, device: str = "cpu") -> dict:
    """Train `FashionNet(head)` on Fashion-MNIST and save a checkpoint to `out`.

    `limit` / `eval_limit` use only the first images of the train / test split (quick runs,
    tests). `device` may name a GPU ("cuda") for speed; the saved weights are on the CPU.
    Returns the saved checkpoint's contents except the weights (head, metrics, ...).
    """
    from pytorch_metric_learning import losses, miners

    if head not in HEADS:
        raise SimexplainError(f"unknown head {head!r}: use one of {', '.join(HEADS)}")
    if epochs < 1 or batch_size < 2:
        raise SimexplainError("epochs must be >= 1 and batch size >= 2")
    out = Path(out)
    train_x, train_y = fashion_mnist("train", data_root)
    test_x, test_y = fashion_mnist("test", data_root)
    if limit is not None:
        train_x, train_y = train_x[:limit], train_y[:limit]
    if eval_limit is not None:
        test_x, test_y = test_x[:eval_limit], test_y[:eval_limit]
    train_images, train_labels = normalize_images(train_x), torch.from_numpy(train_y)
    test_images, test_labels = normalize_images(test_x), torch.from_numpy(test_y)

    started = time.time()
    with _deterministic():
        seed_everything(seed)
        model = FashionNet(head=head, embedding_dim=embedding_dim).to(device)
        loss_fn = losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5)
        miner = miners.MultiSimilarityMiner(epsilon=0.1)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
        steps_per_epoch = max(1, len(train_images) // batch_size)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
        generator = torch.Generator().manual_seed(seed)

        for epoch in range(epochs):
            model.train()
            order = torch.randperm(len(train_images), generator=generator)
            bar = tqdm(range(steps_per_epoch), desc=f"fmnist-{head} epoch {epoch + 1}/{epochs}",
                       disable=not progress, leave=False)
            running = None
            for step in bar:
                index = order[step * batch_size:(step + 1) * batch_size]
                batch, labels = train_images[index], train_labels[index]
                if augmentation:
                    batch = augment(batch, generator)
                batch, labels = batch.to(device), labels.to(device)
                embeddings = model(batch)
                loss = loss_fn(embeddings, labels, miner(embeddings, labels))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                value = loss.item()
                running = value if running is None else 0.95 * running + 0.05 * value
                bar.set_postfix(loss=f"{running:.3f}")
            bar.close()

        model.eval()
        metrics = evaluate(model, test_images.to(device), test_labels)
    metrics["train_seconds"] = round(time.time() - started, 1)
    metrics["test_images"] = len(test_images)

    info = {
        "head": head,
        "embedding_dim": embedding_dim,
        "width": model.channels // 4,
        "metrics": metrics,
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "augmentation": augmentation,
        "train_images": len(train_images),
        "torch": str(torch.__version__),
        "device": str(device),
    }
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    _save_atomic({"state_dict": state, **info}, out)
    return info


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of `simexplain train`: dataset, --head, --epochs, --seed, --out, --data, ..."""
    parser.add_argument("dataset", choices=["fmnist"], help="data set to train on")
    parser.add_argument("--head", choices=list(HEADS), default="gap",
                        help="global pooling of the head: average (gap) or max (gmp)")
    parser.add_argument("--epochs", type=int, default=DEFAULT_EPOCHS,
                        help=f"passes over the training split (default {DEFAULT_EPOCHS})")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED,
                        help=f"random seed (default {DEFAULT_SEED})")
    parser.add_argument("--out", type=Path, default=None,
                        help="checkpoint to write (default: the committed weights file "
                             "src/simexplain/zoo/weights/fmnist-<head>.pt)")
    parser.add_argument("--data", type=Path, default=None,
                        help="directory with the Fashion-MNIST IDX files (default: the "
                             "data root, then /usr/share/datasets/fashion-mnist)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help=f"default {DEFAULT_BATCH_SIZE}")
    parser.add_argument("--lr", type=float, default=DEFAULT_LR,
                        help=f"peak learning rate (default {DEFAULT_LR})")
    parser.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda)")
    return parser


def cli_train(args: argparse.Namespace) -> int:
    """Run `simexplain train fmnist ...` from parsed arguments; prints the test metrics."""
    if args.dataset != "fmnist":
        raise SimexplainError(f"unknown data set {args.dataset!r}: only 'fmnist' is supported")
    out = args.out if args.out is not None else weights_path(args.head)
    info = train_fmnist(args.head, args.epochs, args.seed, out, data_root=args.data,
                        batch_size=args.batch_size, lr=args.lr,
                        device=getattr(args, "device", "cpu"))
    m = info["metrics"]
    print(f"saved {out}: head={info['head']} epochs={info['epochs']} seed={info['seed']} "
          f"Recall@1={m['recall_at_1']:.4f} MAP@R={m['map_at_r']:.4f} "
          f"({m['test_images']} test images, {m['train_seconds']}s)")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(cli_train(add_train_arguments(argparse.ArgumentParser()).parse_args()))
