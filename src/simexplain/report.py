"""Writing explanations to disk: PNG figures and result.json for one pair."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import visualize
from .errors import NoPointMap
from .explanation import DEFAULT_POINT_MAP, PairExplanation, point_map_label
from .files import write_text_atomic


def default_points(result: PairExplanation, count: int = 4) -> list[tuple[float, float]]:
    """Pixels of image a at the centres of its strongest positive cells, spread out: each
    chosen cell is at least a third of the grid away from the others (where possible)."""
    rows, cols = result.a.grid
    height, width = result.a.image_size
    spacing = max(1, min(rows, cols) // 3)
    chosen: list[tuple[int, int]] = []
    for index in torch.argsort(result.overall_a_flat, descending=True).tolist():
        cell = (index // cols, index % cols)
        if all(max(abs(cell[0] - r), abs(cell[1] - c)) >= spacing for r, c in chosen):
            chosen.append(cell)
        if len(chosen) == count:
            break
    return [((r + 0.5) * height / rows, (c + 0.5) * width / cols) for r, c in chosen]


def argmax_pixel(grid_map: torch.Tensor, image_size: tuple[int, int]) -> tuple[float, float]:
    """Image pixel at the centre of the map's maximal cell."""
    rows, cols = grid_map.shape
    index = int(torch.argmax(grid_map))
    return ((index // cols + 0.5) * image_size[0] / rows, (index % cols + 0.5) * image_size[1] / cols)


def overall_figure(result: PairExplanation, path: Path, title: str = "") -> None:
    """Per side: the image, the overall map (signed and the paper's positive form) and the
    relative map (signed)."""
    panels = []
    for side in ("a", "b"):
        overall = result.overall_a if side == "a" else result.overall_b
        relative = result.relative_a if side == "a" else result.relative_b
        panels.append([
            (result.image(side), f"image {side}"),
            (result.overlay(overall, side, signed=True), "overall (signed)"),
            (result.overlay(overall, side, signed=False), "overall (positive, paper)"),
            (result.overlay(relative, side, signed=True), "relative (signed)"),
        ])
    visualize.save_figure(panels, path, title=title or f"{result.similarity} = {result.score:.4f}")


POINT_COLORS = [(255, 255, 255), (0, 255, 0), (255, 0, 255), (0, 255, 255), (255, 255, 0)]


def points_figure(result: PairExplanation, points: Sequence[tuple[float, float]], path: Path,
                  kind: str = DEFAULT_POINT_MAP) -> list[bool]:
    """One column per point of a: a with the point (top), its map of `kind` on b with the
    map's maximum marked in the same colour (bottom; "no map" where the point carries no
    contribution). Returns, per point, whether it has a map."""
    top, bottom, found = [], [], []
    label = point_map_label(kind)
    for n, point in enumerate(points):
        color = POINT_COLORS[n % len(POINT_COLORS)]
        top.append((visualize.mark_point(result.image("a"), point, color), f"point {n + 1} on a"))
        try:
            point_map = result.point_map("a", point, kind=kind)
        except NoPointMap:
            bottom.append((result.image("b"), f"point {n + 1}: no map (no contribution)"))
            found.append(False)
            continue
        peak = argmax_pixel(point_map, result.b.image_size)
        bottom.append((visualize.mark_point(result.overlay(point_map, "b"), peak, color),
                       f"point {n + 1}: {label}"))
        found.append(True)
    visualize.save_figure([top, bottom], path)
    return found


def write_pair(result: PairExplanation, out: Path, points: Sequence[tuple[float, float]] | None = None,
               extra: dict | None = None) -> dict:
    """Write overall_{a,b}.png, relative_{a,b}.png, overall.png, points.png and result.json
    to `out`. Point maps are of the default kind (DEFAULT_POINT_MAP), labelled as such."""
    out.mkdir(parents=True, exist_ok=True)
    points = list(points) if points else default_points(result)
    files = {}
    for name, side, grid_map in (("overall_a", "a", result.overall_a),
                                 ("overall_b", "b", result.overall_b),
                                 ("relative_a", "a", result.relative_a),
                                 ("relative_b", "b", result.relative_b)):
        result.overlay(grid_map, side, signed=True).save(out / f"{name}.png")
        files[name] = f"{name}.png"
    overall_figure(result, out / "overall.png")
    files["overall"] = "overall.png"
    found = points_figure(result, points, out / "points.png")
    files["points"] = "points.png"
    summary = {
        **result.to_dict(),  # score, similarity, residual, grids, overall and relative maps
        "points_a": [list(map(float, p)) for p in points],
        "point_map_kind": DEFAULT_POINT_MAP,
        "point_map_label": point_map_label(DEFAULT_POINT_MAP),
        "points_without_map": [n for n, ok in enumerate(found) if not ok], "files": files,
        **(extra or {}),
    }
    write_json_atomic(out / "result.json", summary)
    return summary


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON through a temporary file and a rename: never a half-written file."""
    write_text_atomic(path, json.dumps(data, indent=2, default=_json_default))


def _json_default(value):
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return np.asarray(value).tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
