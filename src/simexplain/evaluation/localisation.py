"""Weakly supervised localisation, the paper's protocol, on composites with a known box.

Protocol (seeded): the query (side a) is a real item; the gallery image (side b) is a canvas of
four distractors (a 2x2 grid of items with other labels) with the matching item (same class,
another view of the scene, or another photo of the person) pasted over it at a random size
(``SCALE`` of the canvas side) and position (``composites.random_canvas``). Its known box is the
pasted square (for Fashion-MNIST, the tight box of the item's own pixels inside it).

The map of side b is upsampled to the canvas (bilinear, cell-centre aligned), thresholded at a
fraction t of its maximum (t in 0.2 .. 0.8), and the bounding box of the largest connected
component (4-connectivity, ``scipy.ndimage.label``) is the prediction: correct when its IoU
with the known box exceeds 0.5. A map whose maximum is not positive predicts nothing (a miss).
Reported: accuracy per threshold, and the best threshold (chosen on the same samples, as in the
paper, so it is optimistic). ``point-contribution`` (the paper's), ``point-match`` and
``point-match-centred`` are the point-specific maps of each kind queried at the query's centre;
where that point has no contribution (GMP heads) the contribution kind has no map: a miss,
counted as *no map*.
``relative`` is the relative overall map.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from .. import maps as maplib
from . import options
from .common import (bootstrap_ci, cap_notes, new_result, progress,
                     runs_on, sample_seed, start_run, to_tensor, usable_methods, Timer)
from .composites import Box, box_iou, random_canvas
from .pointing import pair_maps
from .report import compare, finish_plot, methods_of, pyplot, style
from .tables import fmt, fmt_plain, markdown_table

NAME = "localisation"
THRESHOLDS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
SCALE = (0.35, 0.6)  # target side as a fraction of the canvas side
IOU = 0.5
OPTIONS = options.LOCALISATION  # its command line: methods, sample counts
_SALT = 2


def largest_component_box(mask: np.ndarray) -> Box | None:
    """Bounding box (top, left, bottom, right) of the largest 4-connected True region."""
    labels, count = ndimage.label(np.asarray(mask, dtype=bool))
    if count == 0:
        return None
    sizes = np.bincount(labels.ravel())[1:]
    biggest = int(np.argmax(sizes)) + 1
    rows, cols = ndimage.find_objects(labels)[biggest - 1]
    return (rows.start, cols.start, rows.stop, cols.stop)


def localise(heat: np.ndarray, threshold: float) -> Box | None:
    """Box of the largest component of {heat >= threshold * max}; None if max <= 0."""
    heat = np.asarray(heat, dtype=np.float64)
    peak = heat.max()
    if not np.isfinite(peak) or peak <= 0:
        return None
    return largest_component_box(heat >= threshold * peak)


def correct(heat: np.ndarray, threshold: float, box: Box, iou: float = IOU) -> bool:
    found = localise(heat, threshold)
    return found is not None and box_iou(found, box) > iou


def run(model: str, methods: Sequence[str] | None = None, samples: int | None = None, seed: int = 0,
        quick: bool = False, show_progress: bool = False) -> dict:
    methods, samples, explainer, setup, source = start_run(
        model, methods, samples, quick, OPTIONS, unlisted_samples=20)
    result = new_result(NAME, model, seed, samples, {
        "query_size": setup.single, "canvas_size": 2 * setup.cell, "target_scale": list(SCALE),
        "thresholds": list(THRESHOLDS), "iou": IOU, "domain": setup.domain,
        "box": "tight box of the item's pixels" if setup.domain == "fmnist" else
               "the pasted square"})
    result["notes"] += cap_notes(setup, methods, samples, quick)
    methods = usable_methods(setup, methods, quick)
    hits = {m: np.full((samples, len(THRESHOLDS)), np.nan) for m in methods}
    no_map = {m: 0 for m in methods}
    with Timer() as timer:
        for i in progress(range(samples), samples, f"localisation {model}", show_progress):
            rng = np.random.default_rng(sample_seed(seed, i, _SALT))
            query, match = source.pair(rng, setup.single, 2 * setup.cell)
            distractors = source.distractors(rng, query.label, 4, setup.cell)
            canvas = random_canvas(match, distractors, rng, SCALE, source.resize)
            a = to_tensor(explainer, query.image, "a")
            b = to_tensor(explainer, canvas.image, "b")
            t, l, bt, r = query.object_box
            centre = ((t + bt) / 2 - 0.5, (l + r) / 2 - 0.5)
            active = [m for m in methods if runs_on(setup, m, i, quick)]
            maps_b = pair_maps(explainer, active, a, b, centre, sample_seed(seed, i, 99))
            size = (canvas.image.height, canvas.image.width)
            box = canvas.target_object_box
            for m, grid_map in maps_b.items():
                if grid_map is None:  # no point map: a miss, counted apart
                    no_map[m] += 1
                    hits[m][i] = False
                    continue
                heat = maplib.upsample(grid_map, size)
                hits[m][i] = [correct(heat, th, box) for th in THRESHOLDS]
    for m in methods:
        per_threshold = [bootstrap_ci(hits[m][:, k], seed=seed) for k in range(len(THRESHOLDS))]
        if not per_threshold[0]["n"]:
            continue
        best = int(np.argmax([c["mean"] for c in per_threshold]))
        result["methods"][m] = {
            "accuracy": per_threshold, "best_threshold": THRESHOLDS[best],
            "best_accuracy": per_threshold[best], "no_map": no_map[m],
        }
        result["per_sample"][m] = {"correct": hits[m].tolist()}
    result["seconds"] = timer.seconds
    return result



# -- report ------------------------------------------------------------------------------------
TITLE = "Weakly supervised localisation"


def protocol_text(s: dict) -> str:
    return (f"Matching item pasted at a random position and size ({s['target_scale'][0]:g}-"
            f"{s['target_scale'][1]:g} of the side) over a 2x2 canvas of distractors. Map "
            "upsampled, thresholded at t x max, bounding box of the largest connected "
            f"component; correct when IoU > {s['iou']:g} with the known box. Accuracy per "
            "threshold; *best* picks the threshold on the same samples (as the paper).")


def results_table(results: list[dict]) -> str:
    th = results[0]["settings"]["thresholds"]
    rows = []
    for r in results:
        for m in methods_of(r):
            f = r["methods"][m]
            rows.append([r["model"], m] + [fmt_plain(c["mean"], 2) for c in f["accuracy"]] +
                        [f"{fmt(f['best_accuracy'])} (t={f['best_threshold']:g})",
                         str(f["best_accuracy"]["n"])])
    return markdown_table(["model", "method"] + [f"t={t:g}" for t in th] + ["best", "n"], rows)


def headline_comparisons(result: dict) -> list:
    ps = result["per_sample"]

    def best_col(m):
        k = result["settings"]["thresholds"].index(result["methods"][m]["best_threshold"])
        return np.asarray(ps[m]["correct"], dtype=np.float64)[:, k]
    return [compare(result, best_col, True, "accuracy at each method's best threshold")]


def plot_results(results: list[dict], img_dir: Path) -> Path:
    """Accuracy against the threshold, one panel per model."""
    n = len(results)
    fig, axes = pyplot().subplots(1, n, figsize=(4.2 * n, 3.4), squeeze=False)
    for col, r in enumerate(results):
        ax = axes[0, col]
        th = r["settings"]["thresholds"]
        for m in methods_of(r):
            ax.plot(th, [c["mean"] for c in r["methods"][m]["accuracy"]], marker="o", ms=3,
                    **style(m))
        ax.set_title(f"{r['model']} (n={r['samples']})", fontsize=9)
        ax.set_xlabel("threshold (fraction of max)")
        ax.set_ylabel("accuracy (IoU > 0.5)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    return finish_plot(fig, axes, img_dir / f"{NAME}.png")
