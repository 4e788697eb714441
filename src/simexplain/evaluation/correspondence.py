"""Correspondence: does the point-specific map of a point of a peak where that point went in b?

Pairs with known geometry (seeded):

* photos and faces: a is a real image (a view of a scikit-image photo, or a face crop); b is a
  random affine copy of it: scale 0.8-1.25, rotation within +-15 degrees (faces +-10), shift
  within 10% of the side, mirrored half of the time. The affine map T (a pixels -> b pixels) is
  known exactly.
* Fashion-MNIST: the same item is placed in two different 2x2 composites (other distractors, of
  other classes) at two different cells: T is the translation between the cells.

Query points: centres of a's feature cells (inside the item's own pixels for Fashion-MNIST)
whose image under T lies inside b, at least half a cell from its border; at most
``MAX_POINTS`` per pair, drawn at random. Prediction: the centre of the cell where the map over
b is largest (ties at random: a flat map, e.g. a GMP point map at a position that is no
channel's maximum, which is all zeros, points nowhere in particular). PCK@alpha: the share
of points predicted within alpha x (b's larger side) of the truth, alpha = 0.05 and 0.1;
confidence intervals resample whole pairs.

Real photos with ground truth: scikit-image's rectified stereo pair ``stereo_motorcycle``
(left, right, disparity) for models that take photos: a is the left view, b the right view,
both resized to ``corr`` pixels on the longer side (the aspect kept); query points are all
cell centres of a with a known disparity whose true point (row, col - disparity) lies in b at
least half a cell from its border. One pair: its confidence intervals resample points.

A map that does not exist (a contribution map at a point with no contribution: ``NoPointMap``) is
counted as a miss in PCK and reported separately as *no map*; a flat map is counted apart too.
Ties are broken at random, a fresh draw for every point.

Methods (the Grad-CAM family has no point maps):

* ``point-contribution``, ``point-match``, ``point-match-centred``: the point-specific map of
  each kind (``PairExplanation.point_map(kind=...)``, METHOD.md "Point-map kinds");
* ``cosine``: raw feature matching at the explained layer: cosine between the (bilinearly
  interpolated) feature vector at the point and every feature vector of b;
* ``random``: a uniform random map.
"""

from __future__ import annotations


from collections.abc import Sequence
from typing import TYPE_CHECKING, Any
import numpy as np
from numpy.typing import ArrayLike
import torch
import torch.nn.functional as F
from PIL import Image

from .. import maps as maplib
from ..geometry import (apply_affine, argmax_cell, cell_centres, channels_last_grid,
                        random_affine, warp)
from . import options
from .common import (bootstrap_ci, is_flat, new_result, point_map,
                     POINT_METHODS, progress, sample_seed, start_run, to_tensor, Timer)
from .composites import FMNIST_FOREGROUND, grid2x2, random_view
from .report import compare, methods_of
from .tables import fmt, markdown_table

if TYPE_CHECKING:
    from ..explainer import Explainer
    from ..explanation import PairExplanation
    from ..adapters import SplitModel
    from .common import ModelSetup

NAME = "correspondence"
ALPHAS = (0.05, 0.1)
MAX_POINTS = 16
OPTIONS = options.CORRESPONDENCE  # its command line: methods, sample counts
_SALT = 4


def pck(predicted: np.ndarray, truth: np.ndarray, image_size: tuple[int, ...],
        alpha: float) -> np.ndarray:
    """Per point: is the prediction within alpha * max(image side) of the truth?"""
    distance = np.linalg.norm(np.asarray(predicted, float) - np.asarray(truth, float), axis=1)
    return distance <= alpha * max(image_size)


def predict(grid_map: torch.Tensor | np.ndarray, image_size: tuple[int, ...],
            rng: np.random.Generator | None = None) -> np.ndarray:
    """The centre (continuous row, col) of the map's maximal cell."""
    values = np.asarray(grid_map, dtype=np.float64)
    row, col = argmax_cell(values, rng)
    return cell_centres((0, 0, *image_size), values.shape)[row * values.shape[1] + col]


# -- pairs -------------------------------------------------------------------------------------
def affine_pair(source: Any, rng: np.random.Generator, size: int, max_rotation: float
                ) -> tuple[Image.Image, Image.Image, np.ndarray, np.ndarray | None]:
    """(a image, b image, T, item mask over a or None)."""
    if source.domain == "photos":
        label = str(rng.choice(source.labels()))
        name = str(rng.choice(source.by_label[label]))
        image = random_view(source.photos[name], rng, size, area=(0.6, 1.0), flip=False)
    else:
        label = str(rng.choice(source.labels()))
        image = source.view(int(rng.choice(source.by_label[label])), rng, size).image
    t = random_affine(rng, size, max_rotation=max_rotation)
    return image, warp(image, t, size), t, None


def fmnist_pair(source: Any, rng: np.random.Generator, size: int
                ) -> tuple[Image.Image, Image.Image, np.ndarray, np.ndarray | None]:
    """The same item in two 2x2 composites at different cells: (a, b, T, item mask over a)."""
    cell = size // 2
    item = source.item(int(rng.integers(len(source.targets))), cell)
    cells = rng.choice(4, size=2, replace=False)
    grids = []
    for c in cells:
        others = source.distractors(rng, item.label, 3, cell)
        grids.append(grid2x2(others[:c] + [item] + others[c:], int(c)))
    (ta, la, _, _), (tb, lb, _, _) = grids[0].target_box, grids[1].target_box
    t = np.eye(3)
    t[:2, 2] = [tb - ta, lb - la]
    mask = np.zeros((size, size), dtype=bool)
    mask[ta:ta + cell, la:la + cell] = np.asarray(item.image.convert("L")) > FMNIST_FOREGROUND
    return grids[0].image, grids[1].image, t, mask


def query_points(grid: tuple[int, int], size: tuple[int, ...], t: np.ndarray,
                 mask: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Cell centres of a (inside `mask` if given) whose image lies well inside b."""
    centres = cell_centres((0, 0, *size), grid)
    cell = max(size[0] / grid[0], size[1] / grid[1])
    mapped = apply_affine(t, centres)
    margin = cell / 2
    ok = ((mapped[:, 0] >= margin) & (mapped[:, 0] <= size[0] - margin) &
          (mapped[:, 1] >= margin) & (mapped[:, 1] <= size[1] - margin))
    if mask is not None:
        inside = mask[np.clip(centres[:, 0].astype(int), 0, size[0] - 1),
                      np.clip(centres[:, 1].astype(int), 0, size[1] - 1)]
        ok &= inside
    chosen = np.flatnonzero(ok)
    if len(chosen) > MAX_POINTS:
        chosen = np.sort(rng.choice(chosen, size=MAX_POINTS, replace=False))
    return centres[chosen]


def layer_features(stream: SplitModel, x: torch.Tensor) -> torch.Tensor:
    """(H, W, C) output of the explained layer for one image."""
    with stream.capture(requires_grad=False) as captured:
        stream.embed(x)
    return channels_last_grid(captured[0].detach())


def cosine_map(feats_a: torch.Tensor, feats_b: torch.Tensor, point: Sequence[float],
               image_size: tuple[int, ...]) -> torch.Tensor:
    """Cosine between a's interpolated feature at a pixel and every feature vector of b."""
    grid_a = tuple(feats_a.shape[:2])
    weights = maplib.point_weights(point, grid_a, image_size).to(feats_a.dtype)
    query = weights @ feats_a.reshape(-1, feats_a.shape[2])
    sims = F.cosine_similarity(feats_b.reshape(-1, feats_b.shape[2]), query[None], dim=1)
    return sims.reshape(feats_b.shape[:2])


def stereo_pair(side: int) -> tuple[Image.Image, Image.Image, np.ndarray]:
    """(left, right, disparity map) of scikit-image's motorcycle, resized to `side` pixels on
    the longer side; the disparity stays in original pixels (see stereo_truth)."""
    import skimage.data
    left, right, disparity = skimage.data.stereo_motorcycle()
    height, width = disparity.shape
    scale = side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))  # PIL: (w, h)
    return (Image.fromarray(left).resize(size, Image.Resampling.BILINEAR),
            Image.fromarray(right).resize(size, Image.Resampling.BILINEAR), disparity)


def stereo_truth(points: np.ndarray, disparity: np.ndarray, image_size: tuple[int, ...]
                 ) -> np.ndarray:
    """True (row, col) in the right view of continuous (row, col) points of the left view
    (both at `image_size`): same row, col minus the disparity at the nearest original pixel;
    NaN where the disparity is unknown."""
    height, width = disparity.shape
    sy, sx = image_size[0] / height, image_size[1] / width
    rows = np.clip((points[:, 0] / sy).astype(int), 0, height - 1)
    cols = np.clip((points[:, 1] / sx).astype(int), 0, width - 1)
    d = disparity[rows, cols].astype(np.float64)
    d[~np.isfinite(d)] = np.nan
    return np.stack([points[:, 0], points[:, 1] - d * sx], axis=1)


def stereo_points(grid: tuple[int, int], image_size: tuple[int, ...], disparity: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(query points, their true points): every cell centre of a with a known disparity whose
    true point lies in b at least half a cell from its border."""
    centres = cell_centres((0, 0, *image_size), grid)
    truth = stereo_truth(centres, disparity, image_size)
    margin = max(image_size[0] / grid[0], image_size[1] / grid[1]) / 2
    ok = (np.isfinite(truth).all(1) & (truth[:, 1] >= margin) &
          (truth[:, 1] <= image_size[1] - margin))
    return centres[ok], truth[ok]


class Scores:
    """Per-pair hits, errors and map states of every method."""

    def __init__(self, methods: Sequence[str]):
        self.hits: dict[str, dict[float, list[float]]] = {m: {a: [] for a in ALPHAS}
                                                          for m in methods}
        self.errors: dict[str, list[float]] = {m: [] for m in methods}
        self.flat = {m: 0 for m in methods}
        self.no_map = {m: 0 for m in methods}
        self.per_point: dict[str, dict[float, list[float]]] = {m: {a: [] for a in ALPHAS}
                                                               for m in methods}


def score_pair(scores: Scores, methods: Sequence[str], explainer: Explainer, a: torch.Tensor,
               b: torch.Tensor, points: np.ndarray, truth: np.ndarray, tie_seed: int,
               random_seed: int) -> PairExplanation | None:
    """Predict the point of b for every point of a by every method; add the outcome. Returns
    the pair's decomposition when a point-map method needed it (else None)."""
    (gb, _) = explainer.stream_b.grid(b)
    size_a, size_b = tuple(a.shape[2:]), tuple(b.shape[2:])
    explained = explainer.explain(a, b) if any(m in POINT_METHODS for m in methods) else None
    feats = ((layer_features(explainer.stream_a, a), layer_features(explainer.stream_b, b))
             if "cosine" in methods else None)
    random_rng = torch.Generator().manual_seed(random_seed % 2 ** 63)
    for m in methods:
        tie_rng = np.random.default_rng(tie_seed)  # one stream per pair: a new draw per point
        predicted: list[Any] = []
        found: list[bool] = []
        for p in points:
            pixel = (p[0] - 0.5, p[1] - 0.5)  # point_map's pixel-index convention
            if m in POINT_METHODS:
                assert explained is not None  # computed when a point method is asked for
                grid_map = point_map(explained, "a", pixel, m)
            elif m == "cosine":
                assert feats is not None  # computed when cosine is asked for
                grid_map = cosine_map(feats[0], feats[1], pixel, size_a)
            else:
                grid_map = torch.rand(gb, generator=random_rng)
            if grid_map is None:
                scores.no_map[m] += 1
                predicted.append((np.nan, np.nan))
                found.append(False)
                continue
            scores.flat[m] += int(is_flat(grid_map))
            predicted.append(predict(grid_map, size_b, tie_rng))
            found.append(True)
        predicted_at = np.array(predicted, dtype=np.float64).reshape(-1, 2)
        found_at = np.array(found, dtype=bool)
        for alpha in ALPHAS:
            hit = pck(predicted_at, truth, size_b, alpha) & found_at if len(points) else np.zeros(0)
            scores.hits[m][alpha].append(float(hit.mean()) if len(points) else np.nan)
            scores.per_point[m][alpha] += hit.astype(float).tolist()
        dist = np.linalg.norm(predicted_at - truth, axis=1)[found_at] / max(size_b)
        scores.errors[m].append(float(dist.mean()) if found_at.any() else np.nan)
    return explained


def summarise(result: dict, scores: Scores, methods: Sequence[str], weights: ArrayLike | None,
              seed: int) -> None:
    for m in methods:
        result["methods"][m] = {f"pck@{alpha:g}": bootstrap_ci(scores.hits[m][alpha], weights,
                                                               seed=seed) for alpha in ALPHAS}
        result["methods"][m]["mean_error"] = bootstrap_ci(scores.errors[m], weights, seed=seed)
        result["methods"][m]["flat_maps"] = scores.flat[m]
        result["methods"][m]["no_map"] = scores.no_map[m]
        result["per_sample"][m] = {f"pck@{alpha:g}": scores.hits[m][alpha] for alpha in ALPHAS}


def run(model: str, methods: Sequence[str] | None = None, samples: int | None = None, seed: int = 0,
        quick: bool = False, show_progress: bool = False) -> dict:
    methods, samples, explainer, setup, source = start_run(
        model, methods, samples, quick, OPTIONS, unlisted_samples=10)
    size = setup.corr
    rotation = 10.0 if setup.domain == "faces" else 15.0
    result = new_result(NAME, model, seed, samples, {
        "image_size": size, "alphas": list(ALPHAS), "max_points": MAX_POINTS,
        "geometry": "same item in two 2x2 composites (translation)" if setup.domain == "fmnist"
                    else f"affine: scale 0.8-1.25, rotation +-{rotation:g} deg, shift 10%, "
                         "mirror p=0.5",
        "domain": setup.domain})
    scores = Scores(methods)
    counts = []
    gb: tuple[int, ...] = ()
    with Timer() as timer:
        for i in progress(range(samples), samples, f"correspondence {model}", show_progress):
            rng = np.random.default_rng(sample_seed(seed, i, _SALT))
            if setup.domain == "fmnist":
                img_a, img_b, t, mask = fmnist_pair(source, rng, size)
            else:
                img_a, img_b, t, mask = affine_pair(source, rng, size, rotation)
            a = to_tensor(explainer, img_a, "a")
            b = to_tensor(explainer, img_b, "b")
            (ga, _), (gb, _) = explainer.stream_a.grid(a), explainer.stream_b.grid(b)
            points = query_points(ga, tuple(a.shape[2:]), t, mask, rng)
            counts.append(len(points))
            truth = apply_affine(t, points) if len(points) else np.zeros((0, 2))
            score_pair(scores, methods, explainer, a, b, points, truth,
                       sample_seed(seed, i, 7), sample_seed(seed, i, 99))
    weights = np.array(counts, dtype=float)
    summarise(result, scores, methods, weights, seed)
    result["per_sample"]["points"] = counts
    result["points"] = int(weights.sum())
    result["grid"] = [int(v) for v in gb] if samples else []
    result["seconds"] = timer.seconds
    if setup.domain == "photos":
        result["stereo"] = run_stereo(explainer, setup, methods, seed)
    elif setup.domain == "faces":
        result["stereo"] = {"skipped": "the stereo photos show no face: a face model has "
                                       "nothing to compare there"}
    else:
        result["stereo"] = {"skipped": "Fashion-MNIST models see 28-px grayscale clothing "
                                       "items; a street photo is outside their input domain"}
    return result


def run_stereo(explainer: Explainer, setup: ModelSetup, methods: Sequence[str], seed: int
               ) -> dict:
    """Correspondence on the motorcycle stereo pair with its true disparity."""
    with Timer() as timer:
        left, right, disparity = stereo_pair(setup.corr)
        a = to_tensor(explainer, left, "a")
        b = to_tensor(explainer, right, "b")
        (ga, _) = explainer.stream_a.grid(a)
        points, truth = stereo_points(ga, tuple(a.shape[2:]), disparity)
        scores = Scores(methods)
        score_pair(scores, methods, explainer, a, b, points, truth, sample_seed(seed, 0, 8),
                   sample_seed(seed, 0, 98))
    out = {"image_size": [int(v) for v in a.shape[2:]], "grid": [int(v) for v in ga],
           "points": len(points), "methods": {}, "seconds": timer.seconds}
    for m in methods:
        out["methods"][m] = {f"pck@{alpha:g}": bootstrap_ci(scores.per_point[m][alpha],
                                                            seed=seed) for alpha in ALPHAS}
        out["methods"][m]["no_map"] = scores.no_map[m]
        out["methods"][m]["flat_maps"] = scores.flat[m]
    out["per_point"] = {m: {f"pck@{alpha:g}": scores.per_point[m][alpha] for alpha in ALPHAS}
                        for m in methods}
    return out


# -- report ------------------------------------------------------------------------------------
TITLE = "Correspondence (point-specific maps)"


def protocol_text(settings: dict) -> str:
    return ("Pairs with known geometry (Fashion-MNIST: the same item at two cells of two "
            "composites; photos and faces: a random affine copy). Prediction: argmax of "
            "the map over b for a query point of a. PCK at 0.05 and 0.1 of b's side; mean "
            "error as a fraction of the side (lower is better). Grad-CAM-type methods have "
            "no point maps; *cosine* is raw feature matching at the explained layer.")


def results_table(results: list[dict]) -> str:
    return pck_table(results) + stereo_table(results)


def pck_table(results: list[dict]) -> str:
    """PCK, mean error and map states of every method, model by model."""
    rows = []
    for r in results:
        for m in methods_of(r):
            f = r["methods"][m]
            rows.append([r["model"], m, fmt(f["pck@0.05"]), fmt(f["pck@0.1"]),
                         fmt(f["mean_error"]), str(f.get("flat_maps", "n/a")),
                         str(f.get("no_map", 0)), f"{r['samples']} / {r['points']}",
                         "x".join(str(v) for v in r.get("grid", []))])
    return markdown_table(["model", "method", "PCK@0.05", "PCK@0.1", "mean error", "flat maps",
                           "no map", "pairs / points", "grid of b"], rows)


def stereo_table(results: list[dict]) -> str:
    """Correspondence on the real stereo pair (scikit-image's motorcycle, true disparity)."""
    rows, skipped = [], []
    for r in results:
        stereo = r.get("stereo") or {}
        if "skipped" in stereo:
            skipped.append(f"- {r['model']}: not run ({stereo['skipped']}).")
            continue
        for m in methods_of(stereo):
            f = stereo["methods"][m]
            rows.append([r["model"], m, fmt(f["pck@0.05"]), fmt(f["pck@0.1"]),
                         str(f["flat_maps"]), str(f["no_map"]), str(stereo["points"]),
                         "x".join(str(v) for v in stereo["image_size"]),
                         "x".join(str(v) for v in stereo["grid"])])
    if not rows and not skipped:
        return ""
    text = ("\n\n**Real photos with ground truth**: scikit-image's rectified stereo pair "
            "`stereo_motorcycle` (left view = a, right view = b, resized with the aspect kept); "
            "query points: every cell centre of a with a known disparity whose true point "
            "(same row, column minus the disparity) lies in b; one pair, so the intervals "
            "resample points.")
    if rows:
        text += "\n\n" + markdown_table(["model", "method", "PCK@0.05", "PCK@0.1", "flat maps",
                                   "no map", "points", "image", "grid"], rows)
    if skipped:
        text += "\n\n" + "\n".join(skipped)
    return text



def headline_comparisons(result: dict) -> list:
    ps = result["per_sample"]
    return [compare(result, lambda m: ps[m]["pck@0.1"], True, "PCK@0.1",
                    weights=ps["points"], methods=methods_of(result))]
