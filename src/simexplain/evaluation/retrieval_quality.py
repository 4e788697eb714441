"""Retrieval quality of a model on the Fashion-MNIST test split: Recall@1 and mAP@R.

Each test image queries all the others (itself excluded), as reported in the README for the
zoo's Fashion-MNIST models: `simexplain eval retrieval --model fmnist-gap`.
"""

from __future__ import annotations

import argparse
import json

import torch
from PIL import Image

from .. import datasets
from ..errors import SimexplainError
from ..metrics import map_at_r, recall_at_k


def evaluate(model: str, limit: int | None = None, batch_size: int = 256,
             data: str | None = None, progress: bool = True) -> dict:
    from .. import zoo
    explainer = zoo.load(model)
    images, labels = datasets.fashion_mnist("test", root=data)
    if limit:
        images, labels = images[:limit], labels[:limit]
    batch = torch.stack([explainer.transform_a(Image.fromarray(item)) for item in images])
    embeddings = explainer.embed(batch, batch_size=batch_size)
    targets = torch.as_tensor(labels)
    return {
        "model": model, "split": "test", "images": len(labels),
        "recall_at_1": float(recall_at_k(embeddings, targets, embeddings, targets, k=1,
                                         exclude_self=True)),
        "map_at_r": float(map_at_r(embeddings, targets, embeddings, targets, exclude_self=True)),
    }


def run_cli(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 2:  # 0 and -N sliced the split ([:-3])
        raise SimexplainError(f"--limit must be at least 2, got {args.limit}")
    results = [evaluate(name, args.limit, data=args.data) for name in args.model]
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"{'model':20s} {'images':>7s} {'Recall@1':>9s} {'mAP@R':>7s}")
        for r in results:
            print(f"{r['model']:20s} {r['images']:7d} {r['recall_at_1']:9.4f} {r['map_at_r']:7.4f}")
    return 0
