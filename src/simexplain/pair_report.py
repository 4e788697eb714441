"""Writing explanations to disk: PNG figures and result.json for one pair."""

from __future__ import annotations

from pathlib import Path
from collections.abc import Sequence

import torch
from PIL import Image

from . import visualize
from .errors import NoPointMap, SimexplainError
from .explanation import DEFAULT_POINT_MAP, PairExplanation, point_map_label
from .patterns import DEFAULT_PATTERNS, Pattern
from .files import write_json_atomic
from .sides import SIDES, other_side, pick


def default_points(result: PairExplanation, count: int = 4,
                   side: str = "a") -> list[tuple[float, float]]:
    """Pixels of `side`'s photo at the centres of its strongest positive cells, spread out:
    each chosen cell is at least a third of the grid away from the others (where possible)."""
    here = pick(side, result.a, result.b)
    overall = pick(side, result.overall_a_flat, result.overall_b_flat)
    rows, cols = here.grid
    centres = here.frame.cell_centres(here.grid)
    spacing = max(1, min(rows, cols) // 3)
    chosen: list[tuple[int, int]] = []
    for index in torch.argsort(overall, descending=True).tolist():
        cell = (index // cols, index % cols)
        if all(max(abs(cell[0] - r), abs(cell[1] - c)) >= spacing for r, c in chosen):
            chosen.append(cell)
        if len(chosen) == count:
            break
    return [(float(centres[r * cols + c][0]), float(centres[r * cols + c][1]))
            for r, c in chosen]


Panel = tuple[Image.Image, str]  # an image and its caption
CROP_BOX_COLOR = (0, 255, 255)
# The maps `overall_panels` can draw: name -> (caption, signed); "positive" is the overall map
# in the paper's display form
MAP_PANELS = {"overall": ("overall (signed)", True),
              "positive": ("overall (positive, paper)", False),
              "relative": ("relative (signed)", True)}


def photo_panels(result: PairExplanation, side: str,
                 max_side: int = visualize.DISPLAY_SIDE) -> list[Panel]:
    """The photo of `side`; where the model saw a crop of it (a face), the photo with the crop
    boxed and, beside it, the crop enlarged: what the maps are drawn on."""
    here = pick(side, result.a, result.b)
    whole = visualize.View.whole(here, max_side)
    if not here.frame.cropped:
        return [(whole.photo(), f"image {side}")]
    boxed = visualize.mark_box(whole.photo(), whole.point(here.frame.box), CROP_BOX_COLOR)
    return [(boxed, f"photo {side}, face crop boxed"),
            (visualize.View.seen(here, max_side).photo(), f"face crop {side}, enlarged")]


def overall_panels(result: PairExplanation, maps: Sequence[str] = tuple(MAP_PANELS),
                   max_side: int = visualize.DISPLAY_SIDE) -> list[list[Panel]]:
    """One row per side: its photo (`photo_panels`), then each of `maps` (names of
    MAP_PANELS) drawn where the model saw it (the whole photo, or the crop enlarged)."""
    unknown = [name for name in maps if name not in MAP_PANELS]
    if unknown:
        raise SimexplainError(f"unknown map {unknown[0]!r}; maps: {', '.join(MAP_PANELS)}")
    rows = []
    for side in SIDES:
        view = visualize.View.seen(pick(side, result.a, result.b), max_side)
        grid_maps = {"overall": pick(side, result.overall_a, result.overall_b),
                     "relative": pick(side, result.relative_a, result.relative_b)}
        grid_maps["positive"] = grid_maps["overall"]
        row = photo_panels(result, side, max_side)
        for name in maps:
            caption, signed = MAP_PANELS[name]
            row.append((view.overlay(grid_maps[name], signed=signed), caption))
        rows.append(row)
    return rows


def overall_figure(result: PairExplanation, title: str = "",
                   maps: Sequence[str] = tuple(MAP_PANELS)) -> Image.Image:
    """Per side: the image (and the crop the model saw), the overall map (signed and the
    paper's positive form) and the relative map (signed); `maps` picks among them."""
    return visualize.figure_image(overall_panels(result, maps),
                                  title=title or f"{result.similarity} = {result.score:.4f}")


POINT_COLORS = [(255, 255, 255), (0, 255, 0), (255, 0, 255), (0, 255, 255), (255, 255, 0)]


def points_figure(result: PairExplanation, points: Sequence[tuple[float, float]],
                  kind: str = DEFAULT_POINT_MAP, side: str = "a"
                  ) -> tuple[Image.Image, list[bool]]:
    """One column per point of `side` (in its photo's pixels): that image with the point
    (top), the point's map of `kind` on the other image with the map's maximum marked in the
    same colour (bottom; "no map" where the point carries no contribution). Both are drawn
    where the model saw them (a face crop enlarged). Returns the figure and, per point,
    whether it has a map."""
    there_name = other_side(side)
    here_view = visualize.View.seen(pick(side, result.a, result.b))
    there = pick(there_name, result.a, result.b)
    there_view = visualize.View.seen(there)
    top, bottom, found = [], [], []
    label = point_map_label(kind)
    for n, point in enumerate(points):
        color = POINT_COLORS[n % len(POINT_COLORS)]
        top.append((visualize.mark_point(here_view.photo(), here_view.point(point), color,
                                         shown_side=visualize.panel_side()),
                    f"point {n + 1} on {side}"))
        try:
            point_map = result.point_map(side, point, kind=kind)
        except NoPointMap:
            bottom.append((there_view.photo(), f"point {n + 1}: no map (no contribution)"))
            found.append(False)
            continue
        peak = there.frame.peak(point_map)
        bottom.append((visualize.mark_point(there_view.overlay(point_map),
                                            there_view.point(peak), color,
                                            shown_side=visualize.panel_side()),
                       f"point {n + 1} on {there_name}: {label}"))
        found.append(True)
    return visualize.figure_image([top, bottom]), found


PATTERN_COLORS = [(255, 64, 64), (64, 220, 64), (64, 128, 255), (255, 200, 0), (255, 64, 255),
                  (0, 230, 230), (255, 140, 0), (160, 96, 255)]


def patterns_figure(result: PairExplanation, k: int = DEFAULT_PATTERNS,
                    kind: str = DEFAULT_POINT_MAP) -> tuple[Image.Image, list[Pattern]]:
    """Cross-view patterns (`PairExplanation.patterns`): a and b side by side (where the model
    saw them: a face crop enlarged), each pattern's point in a linked to its point in b by a
    line of its own colour, numbered by strength. Returns the figure and the patterns."""
    found = result.patterns(k, kind=kind)
    view_a, view_b = visualize.View.seen(result.a), visualize.View.seen(result.b)
    links = [(view_a.point(p.point_a), view_b.point(p.point_b)) for p in found]
    canvas = visualize.linked_points(view_a.photo(), view_b.photo(), links, PATTERN_COLORS)
    caption = f"{len(found)} cross-view patterns ({kind} point maps), strongest first"
    return visualize.captioned(canvas, caption), found


def crops_figure(result: PairExplanation) -> Image.Image | None:
    """When the model saw a crop of a photo (a face), each photo with that crop boxed and the
    crop enlarged beside it; None when both photos were seen whole."""
    if not (result.a.frame.cropped or result.b.frame.cropped):
        return None
    panels = [panel for side in SIDES for panel in photo_panels(result, side)]
    return visualize.figure_image([panels], scale=2.5)


def write_pair(result: PairExplanation, out: Path,
               points: Sequence[tuple[float, float]] | None = None,
               extra: dict | None = None, patterns: int = DEFAULT_PATTERNS,
               figures: bool = True) -> dict:
    """Write overall_{a,b}.png, relative_{a,b}.png, overall.png, points.png, patterns.png
    (crops.png when the model saw face crops) and result.json to `out`; with figures=False,
    result.json alone (no figure is computed). `points` are pixels (row, col) of photo a;
    point maps are of the default kind (DEFAULT_POINT_MAP), labelled as such. `patterns`: how
    many cross-view patterns to find and draw (0: none). result.json gives each photo's size,
    the crop the model saw and the grid's cells in the photos' pixels, and the patterns
    (points in the photos' pixels)."""
    out.mkdir(parents=True, exist_ok=True)
    points = list(points) if points else default_points(result)
    if figures:
        files, found, found_patterns = _write_figures(result, out, points, patterns)
    else:
        files, found = {}, [_has_point_map(result, point) for point in points]
        found_patterns = result.patterns(patterns) if patterns > 0 else []
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


def _has_point_map(result: PairExplanation, point: tuple[float, float]) -> bool:
    try:
        result.point_map("a", point, kind=DEFAULT_POINT_MAP)
    except NoPointMap:
        return False
    return True


def _write_figures(result: PairExplanation, out: Path, points: list[tuple[float, float]],
                   patterns: int) -> tuple[dict, list[bool], list[Pattern]]:
    """The figures of `write_pair`: their file names by kind, which points have a map, and
    the cross-view patterns drawn."""
    files = {}
    crops = crops_figure(result)
    if crops is not None:
        crops.save(out / "crops.png")
        files["crops"] = "crops.png"
    for name, side, grid_map in (("overall_a", "a", result.overall_a),
                                 ("overall_b", "b", result.overall_b),
                                 ("relative_a", "a", result.relative_a),
                                 ("relative_b", "b", result.relative_b)):
        visualize.overlay_map(result, grid_map, side, signed=True).save(out / f"{name}.png")
        files[name] = f"{name}.png"
    overall_figure(result).save(out / "overall.png")
    files["overall"] = "overall.png"
    points_image, found = points_figure(result, points)
    points_image.save(out / "points.png")
    files["points"] = "points.png"
    found_patterns: list[Pattern] = []
    if patterns > 0:
        patterns_image, found_patterns = patterns_figure(result, patterns)
        patterns_image.save(out / "patterns.png")
        files["patterns"] = "patterns.png"
    return files, found, found_patterns
