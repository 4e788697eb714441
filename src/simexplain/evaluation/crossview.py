"""Cross-view correspondence on the two-stream sketch model: PCK of point maps across streams.

Pairs with known geometry (seeded): a Fashion-MNIST test item (b, stream B) and its edge sketch
(a, stream A), the item's edges moved by a random affine map T (`zoo.sketch`: rotation within
+-15 degrees, scale 0.85-1.15, shift within 8% of the side; T maps item pixels to sketch
pixels), so the true point in b of any point of a is T^-1 of it. Query points: cell centres of
a lying on the item (its foreground moved by T) whose true point lies in b at least half a cell
from the border; at most ``correspondence.MAX_POINTS`` per pair. Prediction, PCK@0.05/0.1 (of
b's side), mean error, ties, *no map* and the cluster bootstrap are those of the
correspondence benchmark (``simexplain.evaluation.correspondence``), which this module calls.

Methods: the point maps of each kind (``point-contribution``, ``point-match``,
``point-match-centred``), ``cosine`` (raw feature matching across the two streams: the
cosine between stream A's feature at the point and each of stream B's features at the
explained layers; the streams share no channels, so this is what matching without the
decomposition gives) and ``random``.

Cross-view patterns (the same pairs): the top ``PATTERNS`` of `PairExplanation.patterns`
(default kind) scored like query points: PCK of each pattern's point in b against the true
point of its point in a; pairs resampled whole.

Retrieval quality of the model (the same run): sketch-to-item Recall@1 on the Fashion-MNIST
test split, one seeded sketch per item querying all items: of its own item, and of an item of
its class, with bootstrap CIs over queries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
import numpy as np
import torch

from .. import datasets
from . import correspondence, options
from ..errors import SimexplainError
from ..geometry import apply_affine
from .common import (bootstrap_ci, load_model, new_result, progress,
                     resolve_methods, sample_seed, to_tensor, Timer)
from .composites import FMNIST_FOREGROUND
from .tables import fmt, markdown_table

if TYPE_CHECKING:
    from ..explainer import Explainer
    from ..patterns import Pattern

NAME = "crossview"
TITLE = "Cross-view correspondence (two-stream sketch-to-item model)"
OPTIONS = options.CROSSVIEW  # its command line: methods, sample counts, its own models
PATTERNS = 5  # cross-view patterns per pair (PairExplanation.patterns), scored like points
ALPHAS = correspondence.ALPHAS
RETRIEVAL_ITEMS = 10000  # the whole test split
QUICK_RETRIEVAL_ITEMS = 1000
_SALT = 15


def sketch_pair(items: np.ndarray, index: int, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(sketch, item, T, item mask over the sketch) of test item `index`: uint8 arrays."""
    from ..zoo import sketch
    item = items[index]
    t = sketch.random_transform(rng, item.shape[0])
    drawn = sketch.draw_sketch(sketch.edges(item[None])[0], t)
    # the item's own pixels, moved like the sketch: query points lie on the item
    moved = sketch.draw_sketch(item, t)
    return drawn, item, t, moved > FMNIST_FOREGROUND


def retrieval(explainer: Explainer, items: np.ndarray, labels: np.ndarray, seed: int) -> dict:
    """Sketch-to-item Recall@1 (own item, its class) with bootstrap CIs over queries."""
    from ..training import normalize_images, sketch_retrieval, sketch_tensors
    sketches = sketch_tensors(items, np.random.default_rng([seed, _SALT]))
    found = sketch_retrieval(explainer.stream_a.model, explainer.stream_b.model,
                             sketches.to(explainer.stream_a.device),
                             normalize_images(items).to(explainer.stream_b.device),
                             torch.from_numpy(labels), per_query=True)
    return {"items": len(items),
            "recall_at_1": bootstrap_ci(found["hits"].astype(float), seed=seed),
            "class_recall_at_1": bootstrap_ci(found["class_hits"].astype(float), seed=seed)}


def run(model: str, methods: Sequence[str] | None = None, samples: int | None = None, seed: int = 0,
        quick: bool = False, show_progress: bool = False) -> dict:
    from ..zoo import sketch
    if model not in OPTIONS.models:
        raise SimexplainError(f"the crossview benchmark needs a two-stream sketch model "
                              f"({', '.join(OPTIONS.models)}), not {model!r}")
    methods = resolve_methods(methods, OPTIONS.allowed)
    samples = samples or OPTIONS.samples(model, quick)
    explainer, setup = load_model(model)
    items, labels = datasets.fashion_mnist("test")
    result = new_result(NAME, model, seed, samples, {
        "image_size": setup.corr, "alphas": list(ALPHAS),
        "max_points": correspondence.MAX_POINTS,
        "geometry": f"a random affine map: rotation +-{sketch.MAX_ROTATION:g} "
                    f"deg, scale {sketch.SCALE[0]:g}-{sketch.SCALE[1]:g}, shift "
                    f"{sketch.SHIFT:.0%}", "domain": setup.domain})
    scores = correspondence.Scores(methods)
    counts, pattern_hits = [], []
    gb: tuple[int, ...] = ()
    with Timer() as timer:
        for i in progress(range(samples), samples, f"crossview {model}", show_progress):
            rng = np.random.default_rng(sample_seed(seed, i, _SALT))
            drawn, item, t, mask = sketch_pair(items, int(rng.integers(len(items))), rng)
            a = to_tensor(explainer, _image(drawn), "a")
            b = to_tensor(explainer, _image(item), "b")
            (ga, _), (gb, _) = explainer.stream_a.grid(a), explainer.stream_b.grid(b)
            back = np.linalg.inv(t)  # sketch pixels -> item pixels: the truth
            points = correspondence.query_points(ga, tuple(a.shape[2:]), back, mask, rng)
            counts.append(len(points))
            truth = apply_affine(back, points) if len(points) else np.zeros((0, 2))
            explained = correspondence.score_pair(
                scores, methods, explainer, a, b, points, truth, sample_seed(seed, i, 7),
                sample_seed(seed, i, 99)) or explainer.explain(a, b)
            found = explained.patterns(PATTERNS, coords="input")
            pattern_hits.append(pattern_pck(found, back, tuple(b.shape[2:])))
        weights = np.array(counts, dtype=float)
        correspondence.summarise(result, scores, methods, weights, seed)
        found_counts = np.array([len(h[ALPHAS[0]]) for h in pattern_hits], dtype=float)
        result["patterns"] = {"k": PATTERNS, "found": int(found_counts.sum())}
        for alpha in ALPHAS:
            per_pair = [float(np.mean(h[alpha])) if h[alpha] else np.nan for h in pattern_hits]
            result["patterns"][f"pck@{alpha:g}"] = bootstrap_ci(per_pair, found_counts, seed=seed)
            result["per_sample"][f"patterns pck@{alpha:g}"] = per_pair
        limit = QUICK_RETRIEVAL_ITEMS if quick else RETRIEVAL_ITEMS
        result["retrieval"] = retrieval(explainer, items[:limit], labels[:limit], seed)
    result["per_sample"]["points"] = counts
    result["points"] = int(weights.sum())
    result["grid"] = [int(v) for v in gb] if samples else []
    result["seconds"] = timer.seconds
    return result


def pattern_pck(found: Sequence[Pattern], back: np.ndarray, size: tuple[int, ...]) -> dict:
    """Per alpha, for each cross-view pattern: does its point in b lie within alpha x b's side
    of the true point of its point in a? (Pattern points are pixel indices: +0.5 gives the
    continuous coordinates of the geometry.)"""
    if not found:
        return {alpha: [] for alpha in ALPHAS}
    points_a = np.array([p.point_a for p in found]) + 0.5
    points_b = np.array([p.point_b for p in found]) + 0.5
    truth = apply_affine(back, points_a)
    return {alpha: correspondence.pck(points_b, truth, size, alpha).tolist() for alpha in ALPHAS}


def _image(pixels: np.ndarray):
    from PIL import Image
    return Image.fromarray(pixels).convert("RGB")


# -- report ------------------------------------------------------------------------------------
def protocol_text(settings: dict) -> str:
    return ("Two streams with their own weights: a is an edge sketch of a Fashion-MNIST test "
            f"item ({settings['geometry']}; the map is recorded), b the grey item; the truth "
            "for a point of the sketch is the inverse map of it. Prediction: argmax of the map "
            "over b for a query point of a (on the item). PCK at 0.05 and 0.1 of b's side; mean "
            "error as a fraction of the side (lower is better). *cosine* is raw feature "
            "matching across the two streams at the explained layers. Retrieval: each test "
            "item's sketch queries all test items (Recall@1 of its own item, and of an item of "
            "its class).")


def results_table(results: list[dict]) -> str:
    rows = [[r["model"], str(r["retrieval"]["items"]), fmt(r["retrieval"]["recall_at_1"]),
             fmt(r["retrieval"]["class_recall_at_1"])] for r in results if "retrieval" in r]
    patterns = [[r["model"], str(r["patterns"]["k"]), str(r["patterns"]["found"]),
                 fmt(r["patterns"]["pck@0.05"]), fmt(r["patterns"]["pck@0.1"])]
                for r in results if "patterns" in r]
    return (correspondence.pck_table(results) +
            "\n\nCross-view patterns (`PairExplanation.patterns(k)`, default kind): is each "
            "pattern's point in b the true point of its point in a?\n\n" +
            markdown_table(["model", "k per pair", "patterns found", "PCK@0.05", "PCK@0.1"],
                           patterns) +
            "\n\nSketch-to-item retrieval:\n\n" +
            markdown_table(["model", "test items", "Recall@1 (own item)",
                            "Recall@1 (class)"], rows))


def headline_comparisons(result: dict) -> list:
    return correspondence.headline_comparisons(result)


def brief_lines(results: list[dict]) -> list[str]:
    return [f"- Cross-view retrieval, {r['model']}: sketch-to-item Recall@1 "
            f"{fmt(r['retrieval']['recall_at_1'])} (own item of {r['retrieval']['items']}), "
            f"{fmt(r['retrieval']['class_recall_at_1'])} (its class)."
            for r in results if "retrieval" in r]
