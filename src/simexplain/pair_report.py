"""Writing explanations to disk: PNG figures and result.json for one pair."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence

import torch

from . import visualize
from .errors import NoPointMap
from .explanation import DEFAULT_POINT_MAP, PairExplanation, point_map_label
from .patterns import DEFAULT_PATTERNS, Pattern
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
    return [(float(centres[r * cols + c][0]), float(centres[r * cols + c][1]))
            for r, c in chosen]


def overall_figure(result: PairExplanation, path: Path, title: str = "") -> None:
    """Per side: the image, the overall map (signed and the paper's positive form) and the
    relative map (signed)."""
    panels = []
    for side, overall, relative in (("a", result.overall_a, result.relative_a),
                                    ("b", result.overall_b, result.relative_b)):
        here = result.a if side == "a" else result.b
        panels.append([
            (visualize.shown(here), f"image {side}"),
            (visualize.overlay_map(result, overall, side, signed=True), "overall (signed)"),
            (visualize.overlay_map(result, overall, side), "overall (positive, paper)"),
            (visualize.overlay_map(result, relative, side, signed=True), "relative (signed)"),
        ])
    visualize.save_figure(panels, path, title=title or f"{result.similarity} = {result.score:.4f}")


POINT_COLORS = [(255, 255, 255), (0, 255, 0), (255, 0, 255), (0, 255, 255), (255, 255, 0)]


def points_figure(result: PairExplanation, points: Sequence[tuple[float, float]], path: Path,
                  kind: str = DEFAULT_POINT_MAP) -> list[bool]:
    """One column per point of a (in photo a's pixels): a with the point (top), its map of
    `kind` on b with the map's maximum marked in the same colour (bottom; "no map" where the
    point carries no contribution). Returns, per point, whether it has a map."""
    top, bottom, found = [], [], []
    label = point_map_label(kind)
    photo_a = visualize.shown(result.a)
    for n, point in enumerate(points):
        color = POINT_COLORS[n % len(POINT_COLORS)]
        top.append((visualize.mark_point(photo_a, visualize.to_display(result.a, point), color),
                    f"point {n + 1} on a"))
        try:
            point_map = result.point_map("a", point, kind=kind)
        except NoPointMap:
            bottom.append((visualize.shown(result.b), f"point {n + 1}: no map (no contribution)"))
            found.append(False)
            continue
        peak = result.b.frame.peak(point_map)
        bottom.append((visualize.mark_point(visualize.overlay_map(result, point_map, "b"),
                                            visualize.to_display(result.b, peak), color),
                       f"point {n + 1}: {label}"))
        found.append(True)
    visualize.save_figure([top, bottom], path)
    return found


PATTERN_COLORS = [(255, 64, 64), (64, 220, 64), (64, 128, 255), (255, 200, 0), (255, 64, 255),
                  (0, 230, 230), (255, 140, 0), (160, 96, 255)]


def patterns_figure(result: PairExplanation, path: Path, k: int = DEFAULT_PATTERNS,
                    kind: str = DEFAULT_POINT_MAP) -> list[Pattern]:
    """Cross-view patterns (`PairExplanation.patterns`): a and b side by side, each pattern's
    point in a linked to its point in b by a line of its own colour, numbered by strength.
    Returns the patterns drawn."""
    found = result.patterns(k, kind=kind)
    links = [(visualize.to_display(result.a, p.point_a), visualize.to_display(result.b, p.point_b))
             for p in found]
    canvas = visualize.linked_points(visualize.shown(result.a), visualize.shown(result.b),
                                     links, PATTERN_COLORS)
    caption = f"{len(found)} cross-view patterns ({kind} point maps), strongest first"
    visualize.captioned(canvas, caption).save(path)
    return found


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


def write_pair(result: PairExplanation, out: Path,
               points: Sequence[tuple[float, float]] | None = None,
               extra: dict | None = None, patterns: int = DEFAULT_PATTERNS) -> dict:
    """Write overall_{a,b}.png, relative_{a,b}.png, overall.png, points.png, patterns.png
    (crops.png when the model saw face crops) and result.json to `out`. `points` are pixels
    (row, col) of photo a; point maps are of the default kind (DEFAULT_POINT_MAP), labelled as
    such. `patterns`: how many cross-view patterns to find and draw (0: none). result.json
    gives each photo's size, the crop the model saw and the grid's cells in the photos' pixels,
    and the patterns (points in the photos' pixels)."""
    out.mkdir(parents=True, exist_ok=True)
    points = list(points) if points else default_points(result)
    files = {}
    if crops_figure(result, out / "crops.png"):
        files["crops"] = "crops.png"
    for name, side, grid_map in (("overall_a", "a", result.overall_a),
                                 ("overall_b", "b", result.overall_b),
                                 ("relative_a", "a", result.relative_a),
                                 ("relative_b", "b", result.relative_b)):
        visualize.overlay_map(result, grid_map, side, signed=True).save(out / f"{name}.png")
        files[name] = f"{name}.png"
    overall_figure(result, out / "overall.png")
    files["overall"] = "overall.png"
    found = points_figure(result, points, out / "points.png")
    files["points"] = "points.png"
    found_patterns = []
    if patterns > 0:
        found_patterns = patterns_figure(result, out / "patterns.png", patterns)
        files["patterns"] = "patterns.png"
    summary = {
        **result.to_dict(),  # score, similarity, residual, grids, inputs, overall and relative
        "points_a": [list(map(float, p)) for p in points],
        "point_map_kind": DEFAULT_POINT_MAP,
        "point_map_label": point_map_label(DEFAULT_POINT_MAP),
        "points_without_map": [n for n, ok in enumerate(found) if not ok],
        "patterns": [p.to_dict() for p in found_patterns], "files": files,
        **(extra or {}),
    }
    write_json_atomic(out / "result.json", summary)
    return summary
