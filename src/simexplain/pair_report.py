"""Writing explanations to disk: PNG figures and result.json for one pair."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from . import visualize
from .explanation import PairExplanation
from .files import write_json_atomic


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
    panels = []
    for side, overall in (("a", result.overall_a), ("b", result.overall_b)):
        panels.append([
            (result.image(side), f"image {side}"),
            (visualize.overlay_map(result, overall, side, signed=True), "overall (signed)"),
            (visualize.overlay_map(result, overall, side, signed=False), "overall (positive, paper)"),
        ])
    visualize.save_figure(panels, path, title=title or f"{result.similarity} = {result.score:.4f}")


POINT_COLORS = [(255, 255, 255), (0, 255, 0), (255, 0, 255), (0, 255, 255), (255, 255, 0)]


def points_figure(result: PairExplanation, points: Sequence[tuple[float, float]], path: Path) -> None:
    """One column per point of a: a with the point (top), its map on b with the map's
    maximum marked in the same colour (bottom)."""
    top, bottom = [], []
    for n, point in enumerate(points):
        color = POINT_COLORS[n % len(POINT_COLORS)]
        point_map = result.point_map("a", point)
        peak = argmax_pixel(point_map, result.b.image_size)
        top.append((visualize.mark_point(result.image("a"), point, color), f"point {n + 1} on a"))
        bottom.append((visualize.mark_point(visualize.overlay_map(result, point_map, "b"), peak, color),
                       f"point {n + 1}: map on b"))
    visualize.save_figure([top, bottom], path)


def write_pair(result: PairExplanation, out: Path, points: Sequence[tuple[float, float]] | None = None,
               extra: dict | None = None) -> dict:
    """Write overall_a.png, overall_b.png, overall.png, points.png and result.json to `out`."""
    out.mkdir(parents=True, exist_ok=True)
    points = list(points) if points else default_points(result)
    files = {}
    for side, overall in (("a", result.overall_a), ("b", result.overall_b)):
        name = f"overall_{side}.png"
        visualize.overlay_map(result, overall, side, signed=True).save(out / name)
        files[f"overall_{side}"] = name
    overall_figure(result, out / "overall.png")
    files["overall"] = "overall.png"
    points_figure(result, points, out / "points.png")
    files["points"] = "points.png"
    summary = {
        "score": result.score, "similarity": result.similarity.name, "residual": result.residual,
        "grid_a": list(result.a.grid), "grid_b": list(result.b.grid),
        "points_a": [list(map(float, p)) for p in points], "files": files,
        **(extra or {}),
    }
    write_json_atomic(out / "result.json", summary)
    return summary
