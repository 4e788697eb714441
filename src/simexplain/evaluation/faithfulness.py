"""Pair-aware deletion and insertion: does removing what a map ranks first change the score?

Protocol (seeded): pairs (a, b) of real items with the same label (two Fashion-MNIST items of a
class, two views of a photo, two photos of a person); image a stays fixed, image b is edited one
feature cell (its pixels) at a time, in the order of b's map (largest first, ties at random),
and the model's own similarity s(a, b_k) is measured after each step. Curves are normalised by
the pair's original score s(a, b) and their area is taken over the fraction of cells edited
(trapezoid rule, 0..1):

* deletion: edited cells take the image's mean value (per channel) -- lower AUC is better;
* insertion: start from b blurred (Gaussian, sigma = side / 12) and put back the original
  cells -- higher AUC is better;
* ROAD (Rong et al. 2022, "remove and debias"): deletion where removed pixels are filled by
  noisy linear imputation from their neighbours (each removed pixel the weighted mean of its 8
  neighbours, 1/6 sides and 1/12 corners, solved as one sparse linear system, plus Gaussian
  noise of 0.01 x the image's std), so the shape of the removed region does not give itself
  away -- lower AUC is better. Large images are imputed on a grid of at most 64 x 64 blocks
  (only blocks that hold no removed pixel count as known), then upsampled.

Every method's map is used in the same form, its positive part (``common.positive_form``:
Grad-CAM's maps are ReLU'd by definition, so signed maps are too), and cells tied at 0 are
ordered by the same random permutation for every method.

Pairs whose original score is not positive are left out (counted in the notes).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
import numpy as np
from numpy.typing import ArrayLike
import torch
import torch.nn.functional as F
from scipy import ndimage, sparse
from scipy.sparse.linalg import splu

from . import options
from .common import (bootstrap_ci, cap_notes, method_map, new_result, positive_form,
                     progress, runs_on, sample_seed, score, start_run, to_tensor, usable_methods,
                     Timer)
from .report import compare, finish_plot, methods_of, pyplot, style
from .tables import fmt, markdown_table

if TYPE_CHECKING:
    from ..explainer import Explainer

NAME = "faithfulness"
CURVES = ("deletion", "insertion", "road")
BETTER = {"deletion": "lower", "insertion": "higher", "road": "lower"}
OPTIONS = options.FAITHFULNESS  # its command line: methods, sample counts
# b is a single item here (7x7 or 3x3 cells at 28 or 160 px): occlusion is cheap enough
OCCLUSION_CAPS = {"fmnist-gap": None, "fmnist-gmp": None, "fmnist-vit": None, "facenet": None}
MAX_STEPS = {"fmnist": 16, "photos": 8, "faces": 9}
ROAD_NOISE = 0.01
ROAD_MAX_SIDE = 64
_SALT = 3


# -- cells and orders --------------------------------------------------------------------------
def cell_masks(grid: tuple[int, int], image_size: tuple[int, ...]) -> np.ndarray:
    """(P, H, W) bool: the pixels of each feature cell (equal cells, rounded edges)."""
    rows, cols = grid
    height, width = image_size
    r_edges = np.round(np.linspace(0, height, rows + 1)).astype(int)
    c_edges = np.round(np.linspace(0, width, cols + 1)).astype(int)
    masks = np.zeros((rows * cols, height, width), dtype=bool)
    for i in range(rows):
        for j in range(cols):
            masks[i * cols + j, r_edges[i]:r_edges[i + 1], c_edges[j]:c_edges[j + 1]] = True
    return masks


def order_cells(grid_map: torch.Tensor | np.ndarray,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """Cell indices by decreasing map value; ties in a random (seeded) order."""
    values = np.asarray(grid_map, dtype=np.float64).ravel()
    jitter = (rng.permutation(len(values)) if rng is not None else np.arange(len(values)))
    # lexsort: last key is primary -> by value descending, then by the random key
    return np.lexsort((jitter, -values))


def step_counts(cells: int, max_steps: int) -> np.ndarray:
    """Numbers of edited cells at each point of a curve: 0 .. cells in <= max_steps steps."""
    steps = min(cells, max_steps)
    return np.unique(np.round(np.linspace(0, cells, steps + 1)).astype(int))


def auc(fractions: ArrayLike, values: ArrayLike) -> float:
    """Area under a curve by the trapezoid rule."""
    x = np.asarray(fractions, dtype=np.float64)
    y = np.asarray(values, dtype=np.float64)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


# -- edits -------------------------------------------------------------------------------------
def blurred(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Gaussian blur of a (1, C, H, W) tensor (reflecting edges)."""
    array = x[0].cpu().numpy()
    out = np.stack([ndimage.gaussian_filter(c, sigma, mode="reflect") for c in array])
    return torch.from_numpy(out)[None].to(x)


def linear_impute(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Fill removed pixels of a (C, H, W) image: each is the weighted mean of its 8 neighbours
    (1/6 sides, 1/12 corners, renormalised at borders), known pixels fixed; exact sparse solve."""
    c, height, width = image.shape
    removed = np.asarray(removed, dtype=bool)
    unknown = np.flatnonzero(removed.ravel())
    if len(unknown) == 0:
        return image.copy()
    index = -np.ones(height * width, dtype=np.int64)
    index[unknown] = np.arange(len(unknown))
    flat = image.reshape(c, -1)
    rows_u, cols_u = np.divmod(unknown, width)
    offsets = [(-1, 0, 1 / 6), (1, 0, 1 / 6), (0, -1, 1 / 6), (0, 1, 1 / 6),
               (-1, -1, 1 / 12), (-1, 1, 1 / 12), (1, -1, 1 / 12), (1, 1, 1 / 12)]
    weight_sum = np.zeros(len(unknown))
    entries_r, entries_c, entries_v = [], [], []
    rhs = np.zeros((len(unknown), c))
    for dr, dc, w in offsets:
        rr, cc = rows_u + dr, cols_u + dc
        ok = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
        weight_sum[ok] += w
        neighbour = rr[ok] * width + cc[ok]
        is_unknown = removed.ravel()[neighbour]
        src = np.flatnonzero(ok)
        entries_r.append(src[is_unknown])
        entries_c.append(index[neighbour[is_unknown]])
        entries_v.append(np.full(is_unknown.sum(), -w))
        rhs[src[~is_unknown]] += w * flat[:, neighbour[~is_unknown]].T
    n = len(unknown)
    matrix = sparse.csc_matrix(
        (np.concatenate([weight_sum] + entries_v),
         (np.concatenate([np.arange(n)] + entries_r), np.concatenate([np.arange(n)] + entries_c))),
        shape=(n, n))
    if not (~removed).any():  # nothing known: the system is singular; use the mean
        return np.broadcast_to(flat.mean(1)[:, None, None], image.shape).copy()
    try:
        solution = splu(matrix).solve(rhs)
    except RuntimeError:  # a removed region with no known neighbour at all: its own mean
        solution = np.broadcast_to(flat[:, ~removed.ravel()].mean(1), rhs.shape).copy()
    out = flat.copy()
    out[:, unknown] = solution.T
    return out.reshape(image.shape)


def road_impute(x: torch.Tensor, removed: np.ndarray, rng: np.random.Generator,
                noise: float = ROAD_NOISE, max_side: int = ROAD_MAX_SIDE) -> torch.Tensor:
    """ROAD's noisy linear imputation of the removed pixels of a (1, C, H, W) tensor."""
    image = x[0].detach().cpu().double()
    height, width = image.shape[1:]
    factor = int(np.ceil(max(height, width) / max_side))
    removed_t = torch.as_tensor(np.asarray(removed, dtype=np.float64))[None, None]
    if factor > 1:
        coarse = F.avg_pool2d(image[None] * (1 - removed_t), factor, ceil_mode=True)
        known_share = F.avg_pool2d(1 - removed_t, factor, ceil_mode=True)
        coarse_removed = F.max_pool2d(removed_t, factor, ceil_mode=True)[0, 0] > 0
        coarse = coarse / known_share.clamp_min(1e-12)
        filled = linear_impute(coarse[0].numpy(), coarse_removed.numpy())
        up = F.interpolate(torch.from_numpy(filled)[None], size=(height, width),
                           mode="bilinear", align_corners=False)[0]
    else:
        up = torch.from_numpy(linear_impute(image.numpy(), np.asarray(removed, dtype=bool)))
    keep = ~torch.as_tensor(np.asarray(removed, dtype=bool))
    std = float(image[:, keep].std()) if keep.any() else float(image.std())
    jitter = torch.from_numpy(rng.normal(0, noise * max(std, 1e-6), size=image.shape))
    out = torch.where(keep[None], image, up + jitter)
    return out[None].to(x)


def edited_batches(x: torch.Tensor, order: np.ndarray, masks: np.ndarray, counts: np.ndarray,
                   kind: str, rng: np.random.Generator) -> torch.Tensor:
    """(len(counts), C, H, W): b after editing the first counts[k] cells of `order`."""
    ordered = torch.from_numpy(masks[order])  # (P, H, W), most relevant first
    cumulative = torch.cat([torch.zeros((1,) + ordered.shape[1:], dtype=torch.bool),
                            ordered.cumsum(0) > 0])  # [n] = union of the first n cells
    edited = cumulative[torch.as_tensor(counts)].to(x.device)[:, None]  # (K, 1, H, W)
    if kind == "deletion":
        fill = x.mean(dim=(2, 3), keepdim=True)
        return torch.where(edited, fill, x)
    if kind == "insertion":
        fill = blurred(x, max(x.shape[2:]) / 12)
        return torch.where(edited, x, fill)
    out = [road_impute(x, e[0].cpu().numpy(), rng)[0] if n else x[0]
           for n, e in zip(counts, edited)]
    return torch.stack(out)


def curves_for_map(explainer: Explainer, a: torch.Tensor, b: torch.Tensor,
                   grid_map: torch.Tensor | np.ndarray,
                   counts: np.ndarray, masks: np.ndarray, rng: np.random.Generator,
                   base: float, cache: dict) -> dict:
    """{kind: normalised scores at each count} for one map; identical edits are cached."""
    order = order_cells(grid_map, rng)
    out = {}
    for kind in CURVES:
        batch = edited_batches(b, order, masks, counts, kind, np.random.default_rng(rng.integers(
            2 ** 32)))
        scores = np.empty(len(counts))
        todo = []
        for k, n in enumerate(counts):
            key = (kind, tuple(sorted(order[:n].tolist()))) if kind != "road" or n in (
                0, len(order)) else None
            if key is not None and key in cache:
                scores[k] = cache[key]
            else:
                todo.append((k, key))
        if todo:
            if "e_a" not in cache:
                cache["e_a"] = explainer.stream_a.embed(a)[0]
            values = score(explainer, a, batch[[k for k, _ in todo]], cache["e_a"]).numpy()
            for (k, key), v in zip(todo, values):
                scores[k] = v
                if key is not None:
                    cache[key] = float(v)
        out[kind] = scores / base
    return out


def run(model: str, methods: Sequence[str] | None = None, samples: int | None = None, seed: int = 0,
        quick: bool = False, show_progress: bool = False) -> dict:
    methods, samples, explainer, setup, source = start_run(
        model, methods, samples, quick, OPTIONS, unlisted_samples=10)
    max_steps = MAX_STEPS[setup.domain] if not quick else min(MAX_STEPS[setup.domain], 8)
    result = new_result(NAME, model, seed, samples, {
        "image_size": setup.single, "max_steps": max_steps, "deletion_fill": "image mean",
        "insertion_start": "Gaussian blur, sigma = side/12", "road_noise": ROAD_NOISE,
        "domain": setup.domain})
    caps = OCCLUSION_CAPS
    result["notes"] += cap_notes(setup, methods, samples, quick, caps)
    methods = usable_methods(setup, methods, quick, caps)
    aucs: dict[str, dict[str, list[float]]] = {m: {k: [] for k in CURVES} for m in methods}
    curves: dict[str, dict[str, list[list[float]]]] = {m: {k: [] for k in CURVES}
                                                        for m in methods}
    fractions = None
    skipped = 0
    with Timer() as timer:
        for i in progress(range(samples), samples, f"faithfulness {model}", show_progress):
            rng = np.random.default_rng(sample_seed(seed, i, _SALT))
            item_a, item_b = source.pair(rng, setup.single)
            a = to_tensor(explainer, item_a.image, "a")
            b = to_tensor(explainer, item_b.image, "b")
            base = float(score(explainer, a, b)[0])
            if not base > 0:
                skipped += 1
                for m in methods:
                    for k in CURVES:
                        aucs[m][k].append(np.nan)
                continue
            (rows, cols), _ = explainer.stream_b.grid(b)
            masks = cell_masks((rows, cols), tuple(b.shape[2:]))
            counts = step_counts(rows * cols, max_steps)
            fractions = counts / (rows * cols)
            cache: dict = {}
            for m in methods:
                if not runs_on(setup, m, i, quick, caps):
                    for k in CURVES:
                        aucs[m][k].append(np.nan)
                    continue
                grid_map = positive_form(method_map(explainer, m, a, b, "b",
                                                    seed=sample_seed(seed, i, 99)))
                order_rng = np.random.default_rng(sample_seed(seed, i, 5))
                found = curves_for_map(explainer, a, b, grid_map, counts, masks, order_rng, base,
                                       cache)
                for k in CURVES:
                    aucs[m][k].append(auc(fractions, found[k]))
                    curves[m][k].append(found[k].tolist())
    if skipped:
        result["notes"].append(f"{skipped} pair(s) with a non-positive score left out")
    for m in methods:
        result["methods"][m] = {f"{k}_auc": bootstrap_ci(aucs[m][k], seed=seed) for k in CURVES}
        result["per_sample"][m] = {f"{k}_auc": aucs[m][k] for k in CURVES}
        result["methods"][m]["curves"] = {
            k: np.mean(curves[m][k], axis=0).tolist() if curves[m][k] else [] for k in CURVES}
    result["fractions"] = fractions.tolist() if fractions is not None else []
    result["seconds"] = timer.seconds
    return result



# -- report ------------------------------------------------------------------------------------
TITLE = "Faithfulness: deletion, insertion, ROAD"
PANEL_TITLES = {"deletion": "deletion (lower AUC better)",
                "insertion": "insertion (higher better)", "road": "ROAD deletion (lower better)"}


def protocol_text(settings: dict) -> str:
    return ("Image b edited cell by cell in the order of its map, image a fixed; the "
            "model's score normalised by the original score; AUC over the fraction of cells "
            "edited. Deletion (mean fill) and ROAD (noisy linear imputation): lower is "
            "better; insertion (from a blurred image): higher is better.")


def results_table(results: list[dict]) -> str:
    rows = []
    for r in results:
        for m in methods_of(r):
            f = r["methods"][m]
            rows.append([r["model"], m, fmt(f["deletion_auc"]), fmt(f["insertion_auc"]),
                         fmt(f["road_auc"]), str(f["deletion_auc"]["n"])])
    return markdown_table(["model", "method", "deletion AUC (lower)", "insertion AUC (higher)",
                           "ROAD AUC (lower)", "n"], rows)


def headline_comparisons(result: dict) -> list:
    ps = result["per_sample"]
    return [compare(result, lambda m, k=kind: ps[m][f"{k}_auc"], BETTER[kind] == "higher",
                    f"{kind} AUC") for kind in CURVES]


def plot_results(results: list[dict], img_dir: Path) -> Path:
    """The three curves of every method, one row of panels per model."""
    n = len(results)
    fig, axes = pyplot().subplots(n, 3, figsize=(12, 3.2 * n), squeeze=False)
    for row, r in enumerate(results):
        x = r["fractions"]
        for col, kind in enumerate(CURVES):
            ax = axes[row, col]
            for m in methods_of(r):
                y = r["methods"][m]["curves"][kind]
                if y:
                    ax.plot(x, y, **style(m))
            ax.set_title(f"{r['model']}: {PANEL_TITLES[kind]}", fontsize=9)
            ax.set_xlabel("fraction of cells edited")
            ax.set_ylabel("score / original score")
            ax.grid(alpha=0.3)
    return finish_plot(fig, axes, img_dir / f"{NAME}.png")
