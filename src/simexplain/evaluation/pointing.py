"""Pointing game: does the maximum of the gallery image's map land on the item that matches?

Protocol (seeded): the query (side a) is one real item; the gallery image (side b) is a 2x2 grid
of real items (``composites.matching_grid``) of which exactly one, at a random cell, matches the
query: the same Fashion-MNIST class (another item of it), the same photo scene (another view of
it), or the same person (another photo of them). The other three have other labels.

A hit: the feature cell where the overall map of side b is largest has its centre inside the
matching cell (ties between equal maxima are broken at random, seeded). Chance is 25%. Also
reported: the share of the map's positive mass that lies in the matching cell (chance 25%), and
how many maps were flat (all equal, e.g. a Grad-CAM map that its ReLU zeroed everywhere).

``relative`` is the decomposition's relative overall map (METHOD.md, "Relative maps").
``point-contribution``, ``point-match`` and ``point-match-centred`` are the point-specific maps
of each kind for the query's centre (``contribution`` is the paper's: the row of the pairwise
decomposition). Where the query's centre has no contribution (GMP heads) there is no
contribution map: counted as a miss and reported as *no map* (the match kinds have a map there).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
import numpy as np
import torch

from ..geometry import argmax_cell, cell_centres
from . import options
from .common import (bootstrap_ci, cap_notes, is_flat, method_map,
                     new_result, point_map, POINT_METHODS, progress, runs_on,
                     sample_seed, start_run, to_tensor, usable_methods, Timer)
from .composites import Box, matching_grid
from .report import compare, methods_of
from .tables import fmt, markdown_table

if TYPE_CHECKING:
    from ..explainer import Explainer

NAME = "pointing"
OPTIONS = options.POINTING  # its command line: methods, sample counts
_SALT = 1


def in_box(point: Sequence[float], box: Box) -> bool:
    """Is a continuous pixel position (row, col) inside the box [top, bottom) x [left, right)?"""
    return box[0] <= point[0] < box[2] and box[1] <= point[1] < box[3]


def pointing_hit(grid_map: torch.Tensor | np.ndarray, image_size: tuple[int, int], box: Box,
                 rng: np.random.Generator | None = None) -> bool:
    """Does the map's maximal cell (its centre, in pixels) fall inside `box`?"""
    values = np.asarray(grid_map, dtype=np.float64)
    row, col = argmax_cell(values, rng)
    centre = cell_centres((0, 0, *image_size), values.shape)[row * values.shape[1] + col]
    return in_box(centre, box)


def mass_in_box(grid_map: torch.Tensor | np.ndarray, image_size: tuple[int, int],
                box: Box) -> float:
    """Share of the map's positive mass in cells whose centre lies in `box` (nan if none)."""
    values = np.maximum(np.asarray(grid_map, dtype=np.float64), 0).ravel()
    total = values.sum()
    if total <= 0:
        return float("nan")
    centres = cell_centres((0, 0, *image_size), np.asarray(grid_map).shape)
    inside = np.array([in_box(c, box) for c in centres])
    return float(values[inside].sum() / total)


def pair_maps(explainer: Explainer, methods: Sequence[str], a: torch.Tensor, b: torch.Tensor,
              query_point: Sequence[float], seed: int) -> dict:
    """Side-b maps of every method for one pair (one decomposition serves all its forms); a
    point map that does not exist (NoPointMap) is None."""
    out: dict[str, torch.Tensor | None] = {}
    if any(m in methods for m in ("decomposition", "relative", *POINT_METHODS)):
        result = explainer.explain(a, b)
        out["decomposition"] = result.overall_b.float()
        out["relative"] = result.relative_b.float()
        for m in POINT_METHODS:
            if m in methods:
                out[m] = point_map(result, "a", query_point, m)
    for m in methods:
        if m not in out:
            out[m] = method_map(explainer, m, a, b, "b", seed=seed)
    return {m: out[m] for m in methods}


def run(model: str, methods: Sequence[str] | None = None, samples: int | None = None, seed: int = 0,
        quick: bool = False, show_progress: bool = False) -> dict:
    methods, samples, explainer, setup, source = start_run(
        model, methods, samples, quick, OPTIONS, unlisted_samples=20)
    result = new_result(NAME, model, seed, samples, {
        "query_size": setup.single, "grid_size": 2 * setup.cell, "chance": 0.25,
        "domain": setup.domain})
    result["notes"] += cap_notes(setup, methods, samples, quick)
    methods = usable_methods(setup, methods, quick)
    hits: dict[str, list[float]] = {m: [] for m in methods}
    mass: dict[str, list[float]] = {m: [] for m in methods}
    flat = {m: 0 for m in methods}
    no_map = {m: 0 for m in methods}
    with Timer() as timer:
        for i in progress(range(samples), samples, f"pointing {model}", show_progress):
            rng = np.random.default_rng(sample_seed(seed, i, _SALT))
            query, grid = matching_grid(source, rng, setup.single, setup.cell)
            a = to_tensor(explainer, query.image, "a")
            b = to_tensor(explainer, grid.image, "b")
            t, l, bt, r = query.object_box
            centre = ((t + bt) / 2 - 0.5, (l + r) / 2 - 0.5)
            active = [m for m in methods if runs_on(setup, m, i, quick)]
            maps_b = pair_maps(explainer, active, a, b, centre, sample_seed(seed, i, 99))
            size = (grid.image.height, grid.image.width)
            for m in methods:
                if m not in maps_b:
                    hits[m].append(np.nan)
                    mass[m].append(np.nan)
                    continue
                grid_map = maps_b[m]
                if grid_map is None:  # no point map: a miss, counted apart
                    no_map[m] += 1
                    hits[m].append(0.0)
                    mass[m].append(np.nan)
                    continue
                tie_rng = np.random.default_rng(sample_seed(seed, i, 7))
                hits[m].append(float(pointing_hit(grid_map, size, grid.target_box, tie_rng)))
                mass[m].append(mass_in_box(grid_map, size, grid.target_box))
                flat[m] += int(is_flat(grid_map))
    for m in methods:
        result["methods"][m] = {
            "hit_rate": bootstrap_ci(hits[m], seed=seed),
            "mass": bootstrap_ci(mass[m], seed=seed),
            "flat_maps": flat[m],
            "no_map": no_map[m],
        }
        result["per_sample"][m] = {"hit": hits[m], "mass": mass[m]}
    result["seconds"] = timer.seconds
    return result



# -- report ------------------------------------------------------------------------------------
TITLE = "Pointing game"


def protocol_text(settings: dict) -> str:
    return ("Query: one real item; gallery image: a 2x2 grid of real items, exactly one "
            "matching (same class / scene / person) at a random cell. Hit: the map's "
            "maximal cell lies in the matching cell (chance 0.25). *Mass*: share of the "
            "positive map mass in the matching cell (chance 0.25).")


def results_table(results: list[dict]) -> str:
    rows = []
    for r in results:
        for m in methods_of(r):
            f = r["methods"][m]
            rows.append([r["model"], m, fmt(f["hit_rate"]), fmt(f["mass"]),
                         str(f["flat_maps"]), str(f.get("no_map", 0)), str(f["hit_rate"]["n"])])
    return markdown_table(["model", "method", "hit rate", "mass in match", "flat maps", "no map",
                           "n"], rows)


def headline_comparisons(result: dict) -> list:
    ps = result["per_sample"]
    return [compare(result, lambda m: ps[m]["hit"], True, "hit rate")]
