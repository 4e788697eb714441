"""Writing explanations to disk: PNG figures and result.json for one pair."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from . import visualize
from .explanation import PairExplanation
from .files import write_json_atomic


def default_points(result: PairExplanation, count: int = 4) -> list[tuple[float, float]]:
    """Pixels of photo a at the centres of its strongest positive cells, spread out: each
    chosen cell is at least a third of the grid away from the others (where possible)."""
    rows, cols = result.a.grid
    centres = result.a.frame.cell_centres(result.a.grid)
    spacing = max(1, min(rows, cols) // 3)
    chosen: list[tuple[int, int]] = []
    for index in torch.argsort(result.overall_a_flat, descending=True).tolist():
        cell = (index // cols, index % cols)
        if all(max(abs(cell[0] - r), abs(cell[1] - c)) >= spacing for r, c in chosen):
            chosen.append(cell)
        if len(chosen) == count:
            break
    return [tuple(float(v) for v in centres[r * cols + c]) for r, c in chosen]


def overall_figure(result: PairExplanation, path: Path, title: str = "") -> None:
    panels = []
    for side, overall in (("a", result.overall_a), ("b", result.overall_b)):
        here = result.a if side == "a" else result.b
        panels.append([
            (visualize.shown(here), f"image {side}"),
            (visualize.overlay_map(result, overall, side, signed=True), "overall (signed)"),
            (visualize.overlay_map(result, overall, side), "overall (positive, paper)"),
        ])
    visualize.save_figure(panels, path, title=title or f"{result.similarity} = {result.score:.4f}")


POINT_COLORS = [(255, 255, 255), (0, 255, 0), (255, 0, 255), (0, 255, 255), (255, 255, 0)]


def points_figure(result: PairExplanation, points: Sequence[tuple[float, float]], path: Path) -> None:
    """One column per point of a (in photo a's pixels): a with the point (top), its map on b
    with the map's maximum marked in the same colour (bottom)."""
    top, bottom = [], []
    photo_a = visualize.shown(result.a)
    for n, point in enumerate(points):
        color = POINT_COLORS[n % len(POINT_COLORS)]
        point_map = result.point_map("a", point)
        peak = result.b.frame.peak(point_map)
        top.append((visualize.mark_point(photo_a, visualize.to_display(result.a, point), color),
                    f"point {n + 1} on a"))
        bottom.append((visualize.mark_point(visualize.overlay_map(result, point_map, "b"),
                                            visualize.to_display(result.b, peak), color),
                       f"point {n + 1}: map on b"))
    visualize.save_figure([top, bottom], path)


def crops_figure(result: PairExplanation, path: Path) -> bool:
    """When the model saw a crop of a photo (a face), each photo with that crop boxed; False
    (nothing written) when both photos were seen whole."""
    if not (result.a.frame.cropped or result.b.frame.cropped):
        return False
    panels = [(visualize.mark_box(visualize.shown(here),
                                  visualize.to_display(here, here.frame.box)),
               f"photo {name}, {'face crop' if here.frame.cropped else 'whole'}")
              for name, here in (("a", result.a), ("b", result.b))]
    visualize.save_figure([panels], path, scale=2.5)
    return True


def write_pair(result: PairExplanation, out: Path, points: Sequence[tuple[float, float]] | None = None,
               extra: dict | None = None) -> dict:
    """Write overall_a.png, overall_b.png, overall.png, points.png (crops.png when the model
    saw face crops) and result.json to `out`. `points` are pixels (row, col) of photo a;
    result.json gives each photo's size, the crop the model saw and the grid's cells in the
    photos' pixels."""
    out.mkdir(parents=True, exist_ok=True)
    points = list(points) if points else default_points(result)
    files = {}
    if crops_figure(result, out / "crops.png"):
        files["crops"] = "crops.png"
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
        "input_a": result.a.to_dict(), "input_b": result.b.to_dict(),
        **(extra or {}),
    }
    write_json_atomic(out / "result.json", summary)
    return summary
