"""Training the Fashion-MNIST models (`simexplain train fmnist|sketch ...`).

`train_fmnist` trains a `FashionNet` (head gap or gmp) or a `FashionViT` (head vit) with
pytorch-metric-learning's multi-similarity loss and miner on the training split, evaluates
Recall@1 and MAP@R on the test split (each test image queries the rest of the test set), and
writes a checkpoint atomically. `train_sketch` trains the
two-stream sketch-to-item model (`simexplain.zoo.sketch`) on cross-modal pairs and evaluates
sketch-to-item Recall@1. Runs are fully seeded:
the same seed, data and machine give the same weights.
"""

from __future__ import annotations

import argparse
import math
from typing import Any
import random
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .datasets import fashion_mnist
from .defaults import (DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LR,
                       FMNIST_HEADS, SKETCH_EPOCHS, TRAINABLE, VIT_EPOCHS)
from .errors import SimexplainError, first_line
from .files import atomic_path, check_target
from .metrics import hits_at_k, map_at_r, recall_at_k
from .zoo import vit
from .zoo.fmnist import FMNIST_MEAN, FMNIST_STD, FashionNet, float_state, weights_path

# ((train images, labels), (test images, labels)): uint8 (N, H, W) and integer (N,) arrays
Splits = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


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


def normalize_images(images: np.ndarray, mean: float = FMNIST_MEAN,
                     std: float = FMNIST_STD) -> torch.Tensor:
    """uint8 (N, H, W) -> float (N, 1, H, W), normalised like `FMNIST_PREPROCESS` (or by the
    given mean and std)."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    return tensor.sub_(mean).div_(std).unsqueeze(1)


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


def _check_head(head: str) -> None:
    if head not in FMNIST_HEADS:
        raise SimexplainError(f"unknown head {head!r}: use one of {', '.join(FMNIST_HEADS)}")


def build_fmnist_model(head: str, embedding_dim: int = 64) -> torch.nn.Module:
    """A fresh `FashionViT` for head "vit", else a `FashionNet` with that pooling head."""
    _check_head(head)
    if head == vit.HEAD:
        return vit.FashionViT(embedding_dim=embedding_dim)
    return FashionNet(head=head, embedding_dim=embedding_dim)


def default_epochs(dataset: str, head: str = "gap") -> int:
    """Passes over the training split when `--epochs` is not given."""
    if dataset == "sketch":
        return SKETCH_EPOCHS
    return VIT_EPOCHS if head == vit.HEAD else DEFAULT_EPOCHS


def _to_half(model: torch.nn.Module) -> dict:
    """The model's weights rounded to half precision (a small committed file), also loaded
    back into the model, so that what is evaluated next is what is saved."""
    state = {k: (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu())
             for k, v in model.state_dict().items()}
    model.load_state_dict(float_state(state))
    return state


def check_run(out: str | Path, seed: int, lr: float, device: str) -> Path:
    """Refuse (one line) what would fail only after training, or harm a user's file: an `out`
    that is a folder, cannot be written, or is a file other than a checkpoint of ours (one
    holding a "state_dict"); a seed outside 0..2**32-1, a learning rate that is not a positive
    number, a device torch cannot use. Returns `out` as a Path."""
    out = Path(out)
    if out.is_dir():
        raise SimexplainError(f"--out {out} is a folder; name the checkpoint file to write")
    check_target(out)
    if out.exists() or out.is_symlink():
        try:
            ours = "state_dict" in torch.load(out, map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001 - whatever the file is, it is no checkpoint
            ours = False
        if not ours:
            raise SimexplainError(f"--out {out} exists and is not a checkpoint simexplain "
                                  "wrote; refusing to replace it (choose another --out)")
    if not 0 <= seed < 2**32:
        raise SimexplainError(f"--seed must be 0 to 2**32 - 1, got {seed}")
    if not (math.isfinite(lr) and lr > 0):
        raise SimexplainError(f"--lr must be a positive number, got {lr:g}")
    try:
        torch.empty(0, device=device)
    except Exception as exc:  # noqa: BLE001 - an unknown name, or a backend not built or absent
        raise SimexplainError(f"--device {device!r} cannot be used: {first_line(exc)}") \
            from None
    return out


def _save_atomic(obj: dict, out: Path) -> None:
    with atomic_path(out) as tmp:
        torch.save(obj, tmp)


def _splits(data_root, limit: int | None, eval_limit: int | None, given: Splits | None = None
            ) -> Splits:
    """((train images, labels), (test images, labels)), the first `limit` / `eval_limit`, of
    Fashion-MNIST or of the `given` splits."""
    if given is None:
        given = (fashion_mnist("train", data_root), fashion_mnist("test", data_root))
    (train_x, train_y), (test_x, test_y) = given
    return (train_x[:limit], train_y[:limit]), (test_x[:eval_limit], test_y[:eval_limit])


def _fit(models: list[torch.nn.Module], loss_of, n_items: int, epochs: int, batch_size: int,
         lr: float, generator: torch.Generator, name: str, progress: bool) -> None:
    """The training loop shared by the zoo's models: AdamW with a one-cycle schedule over the
    models' parameters, a seeded shuffle per epoch, `loss_of(batch indices)` per step."""
    parameters = [p for model in models for p in model.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=1e-4)
    steps_per_epoch = max(1, n_items // batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.15)
    for epoch in range(epochs):
        for model in models:
            model.train()
        order = torch.randperm(n_items, generator=generator)
        bar = tqdm(range(steps_per_epoch), desc=f"{name} epoch {epoch + 1}/{epochs}",
                   disable=not progress, leave=False)
        running = None
        for step in bar:
            loss = loss_of(order[step * batch_size:(step + 1) * batch_size])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            value = loss.item()
            running = value if running is None else 0.95 * running + 0.05 * value
            bar.set_postfix(loss=f"{running:.3f}")
        bar.close()


def train_fmnist(head: str, epochs: int, seed: int, out: Path, data_root: str | Path | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, lr: float = DEFAULT_LR,
                 embedding_dim: int = 64, augmentation: bool = True,
                 limit: int | None = None, eval_limit: int | None = None,
                 progress: bool = True, device: str = "cpu",
                 splits: Splits | None = None) -> dict:
    """Train `FashionNet(head)` (head "gap" or "gmp") or `FashionViT` (head "vit") on
    Fashion-MNIST and save a checkpoint to `out`; the ViT's weights are stored in half
    precision (and evaluated as stored).

    `limit` / `eval_limit` use only the first images of the train / test split (quick runs,
    tests). `device` may name a GPU ("cuda") for speed; the saved weights are on the CPU.
    `splits` ((train images, labels), (test images, labels), uint8 and int arrays) replaces
    the Fashion-MNIST files, e.g. images altered on purpose (`evaluation.shortcut` plants
    marks in them); `limit` / `eval_limit` then apply to those.
    Returns the saved checkpoint's contents except the weights (head, metrics, ...).
    """
    from pytorch_metric_learning import losses, miners

    _check_head(head)  # before reading the data
    if epochs < 1 or batch_size < 2:
        raise SimexplainError("epochs must be >= 1 and batch size >= 2")
    out = check_run(out, seed, lr, device)
    (train_x, train_y), (test_x, test_y) = _splits(data_root, limit, eval_limit, splits)
    train_images, train_labels = normalize_images(train_x), torch.from_numpy(train_y)
    test_images, test_labels = normalize_images(test_x), torch.from_numpy(test_y)

    started = time.time()
    with _deterministic():
        seed_everything(seed)
        # FashionViT or the CNN, by head: their own attributes (config, channels) are read below
        model: Any = build_fmnist_model(head, embedding_dim).to(device)
        loss_fn = losses.MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5)
        miner = miners.MultiSimilarityMiner(epsilon=0.1)
        generator = torch.Generator().manual_seed(seed)

        def loss_of(index: torch.Tensor) -> torch.Tensor:
            batch, labels = train_images[index], train_labels[index]
            if augmentation:
                batch = augment(batch, generator)
            batch, labels = batch.to(device), labels.to(device)
            embeddings = model(batch)
            return loss_fn(embeddings, labels, miner(embeddings, labels))

        _fit([model], loss_of, len(train_images), epochs, batch_size, lr, generator,
             f"fmnist-{head}", progress)

        model.eval()
        half = head == vit.HEAD
        state = _to_half(model) if half else {
            k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        metrics = evaluate(model, test_images.to(device), test_labels)
    metrics["train_seconds"] = round(time.time() - started, 1)
    metrics["test_images"] = len(test_images)

    shape = model.config if half else {"embedding_dim": embedding_dim,
                                       "width": model.channels // 4}
    info = {
        "head": head,
        **shape,
        "metrics": metrics,
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "augmentation": augmentation,
        "train_images": len(train_images),
        "torch": str(torch.__version__),
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    _save_atomic({"state_dict": state, **info}, out)
    return info


def sketch_retrieval(sketch_model: torch.nn.Module, item_model: torch.nn.Module,
                     sketches: torch.Tensor, items: torch.Tensor, labels: torch.Tensor,
                     per_query: bool = False) -> dict:
    """Sketch-to-item retrieval: sketch i queries all the items. Recall@1 of its own item i
    (`recall_at_1`) and of an item of its class (`class_recall_at_1`); with `per_query`,
    also each query's hits (`hits`, `class_hits`: bool arrays)."""
    queries, gallery = embed(sketch_model, sketches), embed(item_model, items)
    identity = torch.arange(len(items))
    hits = hits_at_k(queries, identity, gallery, identity, k=1)
    class_hits = hits_at_k(queries, labels, gallery, labels, k=1)
    out: dict[str, Any] = {"recall_at_1": float(hits.mean()),
                           "class_recall_at_1": float(class_hits.mean())}
    if per_query:
        out.update(hits=hits, class_hits=class_hits)
    return out


def sketch_tensors(items: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """Normalised sketch inputs (N, 1, H, W) of uint8 items, one random sketch each."""
    from .zoo.sketch import SKETCH_MEAN, SKETCH_STD, sketches
    drawn, _ = sketches(items, rng)
    return normalize_images(drawn, SKETCH_MEAN, SKETCH_STD)


def train_sketch(epochs: int, seed: int, out: Path, data_root: str | Path | None = None,
                 batch_size: int = DEFAULT_BATCH_SIZE, lr: float = DEFAULT_LR,
                 embedding_dim: int = 64, width: int | None = None,
                 limit: int | None = None, eval_limit: int | None = None,
                 progress: bool = True, device: str = "cpu") -> dict:
    """Train the two-stream sketch-to-item model (`simexplain.zoo.sketch`) and save it to `out`.

    Each step draws a new random sketch (edges + random affine) of every item of the batch;
    the loss is pytorch-metric-learning's NT-Xent over cross-modal pairs only (sketches
    against items and items against sketches, `ref_emb`), a sketch's positive being its own
    item and every other item of the batch a negative. Evaluated by sketch-to-item Recall@1 on
    the test split (one seeded sketch per test item). Weights are stored in half precision
    (the committed file stays small). `limit` / `eval_limit` as for `train_fmnist`.
    """
    from pytorch_metric_learning import losses

    from .zoo.sketch import DEFAULT_WIDTH, build_streams, edges, random_transform, draw_sketch
    from .zoo.sketch import SKETCH_MEAN, SKETCH_STD
    width = width or DEFAULT_WIDTH
    if epochs < 1 or batch_size < 2:
        raise SimexplainError("epochs must be >= 1 and batch size >= 2")
    out = check_run(out, seed, lr, device)
    (train_x, _), (test_x, test_y) = _splits(data_root, limit, eval_limit)
    train_items, train_edges = normalize_images(train_x), edges(train_x)
    test_items = normalize_images(test_x)
    test_sketches = sketch_tensors(test_x, np.random.default_rng([seed, 1]))

    started = time.time()
    with _deterministic():
        seed_everything(seed)
        sketch_model, item_model = (m.to(device) for m in build_streams(embedding_dim, width))
        loss_fn = losses.NTXentLoss(temperature=0.1)
        generator = torch.Generator().manual_seed(seed)
        rng = np.random.default_rng([seed, 0])

        def loss_of(index: torch.Tensor) -> torch.Tensor:
            drawn = np.stack([draw_sketch(train_edges[i], random_transform(rng))
                              for i in index.tolist()])
            sketch_batch = normalize_images(drawn, SKETCH_MEAN, SKETCH_STD).to(device)
            items = train_items[index].to(device)
            # two label tensors: pytorch-metric-learning drops the diagonal (the true pairs
            # here) when labels and ref_labels are the same object
            identity = torch.arange(len(index), device=device)
            ref_identity = identity.clone()
            za, zb = sketch_model(sketch_batch), item_model(items)
            return (loss_fn(za, identity, ref_emb=zb, ref_labels=ref_identity) +
                    loss_fn(zb, identity, ref_emb=za, ref_labels=ref_identity)) / 2

        _fit([sketch_model, item_model], loss_of, len(train_items), epochs, batch_size, lr,
             generator, "fmnist-sketch", progress)

        states = [_to_half(m) for m in (sketch_model, item_model)]
        metrics = sketch_retrieval(sketch_model, item_model, test_sketches.to(device),
                                   test_items.to(device), torch.from_numpy(test_y))
    metrics["train_seconds"] = round(time.time() - started, 1)
    metrics["test_images"] = len(test_items)

    info = {
        "model": "fmnist-sketch", "head": "gap", "embedding_dim": embedding_dim, "width": width,
        "metrics": metrics, "seed": seed, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "train_images": len(train_items), "torch": str(torch.__version__),
        "device": str(device), "threads": torch.get_num_threads(),
    }
    _save_atomic({"state_dict": states[0], "state_dict_b": states[1], **info}, out)
    return info


def cli_train(args: argparse.Namespace) -> int:
    """Run `simexplain train fmnist|sketch ...` from parsed arguments; prints the test metrics."""
    if args.dataset not in TRAINABLE:
        raise SimexplainError(f"unknown data set {args.dataset!r}: use one of "
                              f"{', '.join(TRAINABLE)}")
    for name in ("limit", "eval_limit"):
        value = getattr(args, name, None)
        if value is not None and value < 2:
            raise SimexplainError(f"--{name.replace('_', '-')} must be at least 2")
    options = dict(data_root=args.data, batch_size=args.batch_size, lr=args.lr,
                   device=getattr(args, "device", "cpu"), limit=getattr(args, "limit", None),
                   eval_limit=getattr(args, "eval_limit", None))
    if args.dataset == "sketch":
        if args.head is not None:
            raise SimexplainError("--head chooses the fmnist model; sketch has one model")
        from .zoo.sketch import WEIGHTS
        out = args.out if args.out is not None else WEIGHTS
        epochs = default_epochs("sketch") if args.epochs is None else args.epochs
        info = train_sketch(epochs, args.seed, out, **options)
        m = info["metrics"]
        print(f"saved {out}: fmnist-sketch epochs={info['epochs']} seed={info['seed']} "
              f"sketch-to-item Recall@1={m['recall_at_1']:.4f} (own item), "
              f"{m['class_recall_at_1']:.4f} (its class) "
              f"({m['test_images']} test items, {m['train_seconds']}s)")
        return 0
    head = args.head or "gap"
    out = args.out if args.out is not None else weights_path(head)
    epochs = default_epochs("fmnist", head) if args.epochs is None else args.epochs
    info = train_fmnist(head, epochs, args.seed, out, **options)
    m = info["metrics"]
    print(f"saved {out}: head={info['head']} epochs={info['epochs']} seed={info['seed']} "
          f"Recall@1={m['recall_at_1']:.4f} MAP@R={m['map_at_r']:.4f} "
          f"({m['test_images']} test images, {m['train_seconds']}s)")
    return 0


if __name__ == "__main__":
    import sys

    from .train_options import add_train_arguments
    sys.exit(cli_train(add_train_arguments(argparse.ArgumentParser()).parse_args()))
