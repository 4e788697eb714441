"""Interactive retrieval on Fashion-MNIST: does searching with a region of the query retrieve
what the region shows?

Protocol (seeded, from the Fashion-MNIST test split):

* queries: two-item composites, 28 x 56 pixels: the left item of class A, the right item of a
  class B != A, side by side;
* gallery: single items of the test split, disjoint from every item used in a query;
* global search: the whole composite's embedding, ranked by the model's similarity; its target
  is class A (the composite also shows B, so global search mixes the two);
* region search: the left half, box (0, 0, s, s) in the composite's model-input pixels, ranked
  by the exact partial similarity s_R (see `simexplain.retrieval`); target class A. The right
  half (target B) is reported as well.

Metrics per model: Recall@1 (is the first hit of the target class) and MAP@R with R = number of
gallery items of the target class (Musgrave et al. 2020); queries with R = 0 are left out.

Input sizes: an item is shown to a model at `s` x `s` pixels, a composite at `s` x `2s`
(bilinear resizing). Fashion-MNIST models use s = 28 (their native size: 7 x 7 grid per item,
7 x 14 per composite). EfficientNet-Lite0 (stride 32) sees the gray items replicated to RGB at
s = 128: a 4 x 4 grid per item and 4 x 8 per composite, so the left half is exactly 4 grid
columns; 224 (the ImageNet size) is ~3x slower on CPU for similar figures.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
import argparse
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .. import maps, regions
from .. import similarity as similarities
from ..errors import SimexplainError
from ..metrics import average_precision_at_r
from .options import INTERACTIVE

if TYPE_CHECKING:
    from ..explainer import Explainer

ITEM = 28
# Pixels per item side for each model (others: the side of their own preprocessing).
ITEM_SIZES = {"fmnist-gap": 28, "fmnist-gmp": 28, "efficientnet-lite0": 128}


@dataclass
class Composites:
    """Queries (composites) and gallery drawn from one labelled image set."""

    queries: np.ndarray  # (Q, 28, 56) uint8
    left_labels: np.ndarray  # (Q,) class A
    right_labels: np.ndarray  # (Q,) class B
    left_index: np.ndarray  # (Q,) rows of the source set
    right_index: np.ndarray  # (Q,)
    gallery: np.ndarray  # (G, 28, 28) uint8
    gallery_labels: np.ndarray  # (G,)
    gallery_index: np.ndarray  # (G,)


def make_composites(images: np.ndarray, labels: np.ndarray, n_queries: int, n_gallery: int,
                    seed: int = 0) -> Composites:
    """Draw `n_queries` composites [class A | class B != A] and a disjoint gallery of single
    items, reproducibly from `seed`."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise SimexplainError(f"expected (N, H, W) images with N labels, got {images.shape} and "
                              f"{labels.shape}")
    if n_queries < 1 or n_gallery < 1:
        raise SimexplainError("need at least one query and one gallery item")
    if len(np.unique(labels)) < 2:
        raise SimexplainError("composites need at least two classes")
    if 2 * n_queries + n_gallery > len(images):
        raise SimexplainError(f"{n_queries} queries (2 items each) and {n_gallery} gallery items "
                              f"need {2 * n_queries + n_gallery} images, the split has "
                              f"{len(images)}")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    used = np.zeros(len(images), dtype=bool)
    lefts = order[:n_queries]
    used[lefts] = True
    rights = []
    cursor = n_queries  # next position in `order` to consider for a right item
    pending: list[int] = []  # items passed over (same class as the left), still unused
    for left in lefts:
        choice = next((p for p in pending if labels[p] != labels[left]), None)
        if choice is not None:
            pending.remove(choice)
        else:
            while cursor < len(order):
                candidate = int(order[cursor])
                cursor += 1
                if labels[candidate] != labels[left]:
                    choice = candidate
                    break
                pending.append(candidate)
        if choice is None:
            raise SimexplainError("not enough images of other classes to pair every query")
        rights.append(choice)
        used[choice] = True
    right_index = np.asarray(rights, dtype=np.int64)
    free = np.asarray([i for i in order if not used[i]], dtype=np.int64)
    if len(free) < n_gallery:
        raise SimexplainError(f"only {len(free)} images are left for a gallery of {n_gallery}")
    gallery = free[:n_gallery]
    queries = np.concatenate([images[lefts], images[right_index]], axis=2)
    return Composites(queries=queries, left_labels=labels[lefts],
                      right_labels=labels[right_index], left_index=lefts,
                      right_index=right_index, gallery=images[gallery],
                      gallery_labels=labels[gallery], gallery_index=gallery)


def ranking_metrics(scores: np.ndarray, target_labels: np.ndarray, gallery_labels: np.ndarray,
                    similarity: str | similarities.Similarity) -> dict:
    """Recall@1 and MAP@R of (Q, G) scores for the given targets (queries with R = 0 left out)."""
    order = similarities.get(similarity).best_first(np.asarray(scores))
    relevant = gallery_labels[order] == np.asarray(target_labels)[:, None]  # (Q, G) best first
    r = (gallery_labels[None, :] == np.asarray(target_labels)[:, None]).sum(1)
    keep = r > 0
    if not keep.any():
        return {"recall@1": math.nan, "map@r": math.nan, "queries": 0}
    relevant, r = relevant[keep], r[keep]
    average = average_precision_at_r(torch.from_numpy(relevant), torch.from_numpy(r)).numpy()
    from .common import bootstrap_ci
    return {"recall@1": float(relevant[:, 0].mean()), "map@r": float(average.mean()),
            "queries": int(keep.sum()),
            "recall@1_ci": bootstrap_ci(relevant[:, 0]), "map@r_ci": bootstrap_ci(average)}


def _to_tensor(items: np.ndarray, transform) -> torch.Tensor:
    return torch.stack([transform(Image.fromarray(item)) for item in items])


def evaluate_model(explainer: Explainer, data: Composites, item_size: int | None = None,
                   batch_size: int = 64) -> dict:
    """Global vs region search figures of one model (an Explainer whose transform is a
    `Preprocess`) on prepared composites."""
    from ..explainer import Explainer
    base: Any = explainer.transform_b  # a Preprocess, checked below by what it has
    if not hasattr(base, "size") or not hasattr(base, "resize"):
        raise SimexplainError("the interactive benchmark needs a model with a Preprocess "
                              "transform (it sets the input size of items and composites)")
    side = int(item_size or base.size[0])
    query_transform = replace(base, size=(side, 2 * side))
    gallery_transform = replace(base, size=(side, side))
    stream = explainer.stream_b
    ev = Explainer(stream.model, stream.layer_name, similarity=explainer.similarity,
                   transform=query_transform, transform_b=gallery_transform)
    similarity = ev.similarity
    started = time.perf_counter()
    gallery = ev.embed(_to_tensor(data.gallery, gallery_transform), "b", batch_size)
    gallery = gallery.detach().double().cpu()
    embed_s = time.perf_counter() - started

    started = time.perf_counter()
    left_box, right_box = (0, 0, side, side), (0, side, side, 2 * side)
    embeddings, left, right, residual, grid = [], [], [], 0.0, None
    for start in range(0, len(data.queries), batch_size):
        batch = _to_tensor(data.queries[start:start + batch_size], query_transform)
        c = ev.contributions(batch, "a")
        grid = c.grid
        u = c.positions.detach().double().cpu()  # (B, P, D)
        w_left = maps.region_weights(left_box, c.grid, (side, 2 * side))
        w_right = maps.region_weights(right_box, c.grid, (side, 2 * side))
        left.append(regions.region_vector(w_left, u))
        right.append(regions.region_vector(w_right, u))
        embeddings.append(c.embedding.detach().double().cpu())
        residual = max(residual, float(c.residual.max()))
    e_a, q_left, q_right = torch.cat(embeddings), torch.cat(left), torch.cat(right)
    decompose_s = time.perf_counter() - started

    labels = data.gallery_labels
    global_scores = similarities.scores(e_a, gallery, similarity)
    left_scores = similarities.scores(q_left, gallery, similarity, e_a)
    right_scores = similarities.scores(q_right, gallery, similarity, e_a)
    assert grid is not None  # there is at least one batch of queries
    return {
        "similarity": similarity.name,
        "layer": stream.layer_name,
        "item_size": [side, side], "query_size": [side, 2 * side],
        "grid": list(grid), "gallery_grid": list(ev.stream_b.grid(
            _to_tensor(data.gallery[:1], gallery_transform))[0]),
        "max_residual": residual,
        "global": ranking_metrics(global_scores, data.left_labels, labels, similarity),
        "region": ranking_metrics(left_scores, data.left_labels, labels, similarity),
        "region_right": ranking_metrics(right_scores, data.right_labels, labels, similarity),
        "global_target_b": ranking_metrics(global_scores, data.right_labels, labels, similarity),
        "seconds": {"gallery": round(embed_s, 2), "queries": round(decompose_s, 2)},
    }


def run_interactive(models: Sequence[str] = INTERACTIVE.models, n_queries: int | None = None,
                    n_gallery: int | None = None, seed: int = 0, quick: bool = False,
                    batch_size: int = 64, data_root: str | Path | None = None,
                    item_sizes: dict | None = None) -> dict:
    """The benchmark for zoo models by name; models that cannot be loaded (not in the zoo,
    weights missing) are listed under "skipped" with the reason."""
    from .. import zoo
    from ..datasets import fashion_mnist
    if n_queries is None:  # not `or`: 0 queries is an error, not the default
        n_queries = INTERACTIVE.quick_queries if quick else INTERACTIVE.queries
    if n_gallery is None:
        n_gallery = INTERACTIVE.quick_gallery if quick else INTERACTIVE.gallery
    images, labels = fashion_mnist("test", data_root)
    data = make_composites(images, labels, n_queries, n_gallery, seed)
    sizes = {**ITEM_SIZES, **(item_sizes or {})}
    results: dict = {
        "benchmark": "interactive-retrieval", "dataset": "fashion-mnist test split",
        "seed": seed, "queries": n_queries, "gallery": n_gallery, "quick": quick,
        "protocol": "queries: [class A | class B] composites 28x56; gallery: disjoint single "
                    "items; global: whole composite, target A; region: left half (0,0,s,s), "
                    "target A, ranked by the partial similarity s_R; region_right: right half, "
                    "target B",
        "models": {}, "skipped": {},
    }
    for name in models:
        if name not in zoo.list():
            results["skipped"][name] = "not in the model zoo"
            continue
        try:
            explainer = zoo.load(name)
        except SimexplainError as exc:
            results["skipped"][name] = str(exc)
            continue
        started = time.perf_counter()
        figures = evaluate_model(explainer, data, sizes.get(name), batch_size)
        figures["seconds"]["total"] = round(time.perf_counter() - started, 2)
        results["models"][name] = figures
    return results


def markdown_table(results: dict) -> str:
    lines = [
        f"Interactive retrieval, Fashion-MNIST test split: {results['queries']} composite "
        f"queries, {results['gallery']} gallery items, seed {results['seed']}.",
        "",
        "Each figure: mean [95% bootstrap CI over queries].",
        "",
        "| model | input (item / composite) | grid | global R@1 | region R@1 | global MAP@R | "
        "region MAP@R | right-half R@1 |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(figures: dict, key: str) -> str:
        ci = figures.get(f"{key}_ci")
        text = f"{figures[key]:.3f}"
        return f"{text} [{ci['lo']:.3f}, {ci['hi']:.3f}]" if ci else text

    for name, m in results["models"].items():
        lines.append(
            f"| {name} | {m['item_size'][0]}x{m['item_size'][1]} / "
            f"{m['query_size'][0]}x{m['query_size'][1]} | {m['grid'][0]}x{m['grid'][1]} | "
            f"{cell(m['global'], 'recall@1')} | {cell(m['region'], 'recall@1')} | "
            f"{cell(m['global'], 'map@r')} | {cell(m['region'], 'map@r')} | "
            f"{cell(m['region_right'], 'recall@1')} |")
    for name, reason in results["skipped"].items():
        lines.append(f"\nskipped {name}: {reason}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# command line: `simexplain eval interactive`


def run_cli(args: argparse.Namespace) -> int:
    from .commands import check_run_options
    check_run_options(args)
    results = run_interactive(models=args.model or INTERACTIVE.models, n_queries=args.queries,
                              n_gallery=args.gallery, seed=args.seed, quick=args.quick,
                              batch_size=args.batch_size, data_root=args.data)
    table = markdown_table(results)
    if args.out:
        from ..files import write_json_atomic
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "interactive.json", results)
        (out / "interactive.md").write_text(table)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(table, end="")
        if args.out:
            print(f"wrote {Path(args.out) / 'interactive.json'} and interactive.md")
    if not results["models"]:
        raise SimexplainError("no model could be evaluated: " + "; ".join(
            f"{k}: {v}" for k, v in results["skipped"].items()))
    return 0
