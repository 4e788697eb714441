"""What a live view receives when the pointer moves: point and region maps of a pair as
JSON-ready answers (the map on the feature grid, its strongest cells, the pointed cell).

Shared by the web API (`simexplain.web.api`) and the notebook widget
(`simexplain.notebook.widget`), so that both draw the same numbers; nothing here imports a
web or notebook framework.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from collections.abc import Sequence

import numpy as np
import torch

from . import geometry, maps
from .errors import NoPointMap, SimexplainError
from .sides import other_side, pick
from .explanation import PairExplanation, Side
from .regions import DEFAULT_POINT_MAP, point_map_label

TOP_MATCHES = 3  # the matches ringed (numbered) on a point or region map


@dataclass
class GridMap:
    """A map over one image's feature grid, and where that grid lies in the image."""

    side: str  # "a" or "b": the image the map is drawn on
    values: torch.Tensor | None  # (H, W); None for a point map that does not exist
    frame: maps.Frame  # where the grid lies in that photo (its size, the crop the model saw)
    kind: str | None = None  # the point-map kind (point and region maps)
    no_map: str | None = None  # why there is no map (the point carries no contribution)

    def require_values(self) -> torch.Tensor:
        """The values of a map that exists (NoPointMap, with its reason, for one that does not)."""
        if self.values is None:
            raise NoPointMap(self.no_map or "no map")
        return self.values


def side_of(pair: PairExplanation, side: str) -> Side:
    return pick(side, pair.a, pair.b)


def check_box(box: Sequence[float]) -> tuple[float, float, float, float]:
    """A box (top, left, bottom, right) as 4 finite floats, not empty; else a clear error."""
    try:
        values = tuple(float(v) for v in box)
    except (TypeError, ValueError):
        values = ()
    if len(values) != 4 or not all(np.isfinite(values)):
        raise SimexplainError("a box is [top, left, bottom, right] in pixels (4 finite numbers)")
    top, left, bottom, right = values
    if bottom <= top or right <= left:
        raise SimexplainError(f"the box {list(values)} is empty (bottom must exceed top and "
                              "right exceed left)")
    return values


def point_grid_map(pair: PairExplanation, side: str, where: Any,
                   region: bool = False,
                   kind: str = DEFAULT_POINT_MAP) -> GridMap:
    """The point (or region) map of `kind` on the other image; where the point carries
    nothing to compare, a GridMap that says so instead of a flat map. `where`: a point
    (row, col), or with `region` a box or a mask."""
    other = other_side(side)
    frame = side_of(pair, other).frame
    try:
        values = pair.region_map(side, where, kind) if region else \
            pair.point_map(side, where, kind)
    except NoPointMap as exc:
        return GridMap(other, None, frame, kind, no_map=str(exc))
    return GridMap(other, values, frame, kind)


# -- as JSON -----------------------------------------------------------------------------------
def grid_list(values: torch.Tensor) -> list[list[float]]:
    """A (H, W) map as nested lists of floats, 6 significant digits (small JSON)."""
    array = np.asarray(values.detach().double().cpu().numpy(), dtype=np.float64)
    return [[float(f"{v:.6g}") for v in row] for row in array.tolist()]


def peak(grid_map: torch.Tensor, frame: maps.Frame) -> dict:
    """The maximum of a map (also the maximum of its bilinear upsampling, which lies at a cell
    centre), in pixels of the photo the map is drawn on."""
    grid_map = grid_map.double()
    r, c = geometry.argmax_cell(grid_map)
    row, col = frame.peak(grid_map)
    return {"row": row, "col": col, "cell": [r, c], "value": float(grid_map[r, c])}


def top_cells(grid_map: torch.Tensor, frame: maps.Frame, k: int = TOP_MATCHES) -> list[dict]:
    """The k largest cells of a map, largest first, at their centres in the photo's pixels."""
    values = grid_map.double().flatten()
    centres = frame.cell_centres(tuple(grid_map.shape))
    order = torch.argsort(values, descending=True)[:k].tolist()
    cols = grid_map.shape[1]
    return [{"row": float(centres[i][0]), "col": float(centres[i][1]),
             "cell": list(divmod(i, cols)), "value": float(values[i])} for i in order]


def query_cell(frame: maps.Frame, grid: Sequence[int], point: Sequence[float]) -> list[float]:
    """[top, left, bottom, right] in pixels of the grid cell under a pointed pixel."""
    r, c = geometry.cell_of_point(frame.box, grid, point)
    return [float(v) for v in frame.cell_boxes(tuple(grid))[r * int(grid[1]) + c]]


def map_json(result: GridMap, top: bool = False) -> dict:
    """A point or region map; with its kind and label, or the explicit "no map" answer; `top`:
    with its few strongest cells (the pair view rings them; gallery thumbnails ring only the
    maximum, so a pointer move over many results skips them)."""
    out: dict[str, Any] = {"side": result.side}
    if result.kind is not None:
        out.update(kind=result.kind, label=point_map_label(result.kind),
                   no_map=result.no_map is not None)
    if result.no_map is not None:
        return {**out, "grid": None, "map": None, "argmax": None, "top": None,
                "message": result.no_map}
    values = result.require_values()
    return {**out, "grid": list(values.shape), "map": grid_list(values),
            "argmax": peak(values, result.frame),
            "top": top_cells(values, result.frame) if top else None}


def point_answer(pair: PairExplanation, side: str, point: Sequence[float],
                 kind: str = DEFAULT_POINT_MAP) -> dict:
    """The point map of pixel (row, col) of `side` (photo pixels) on the other image, its
    strongest cells, and the pointed cell's box (the view outlines it)."""
    row, col = (float(v) for v in point)
    if not (np.isfinite(row) and np.isfinite(col)):
        raise SimexplainError(f"a point is (row, col) in pixels (2 finite numbers), got "
                              f"{(row, col)}")
    result = point_grid_map(pair, side, (row, col), kind=kind)
    pointed = side_of(pair, side)
    return {**map_json(result, top=True),
            "query_cell": query_cell(pointed.frame, pointed.grid, (row, col))}


def region_answer(pair: PairExplanation, side: str, box: Sequence[float],
                  kind: str = DEFAULT_POINT_MAP) -> dict:
    """The region map of a box (top, left, bottom, right) of `side` on the other image, its
    strongest cells, and the box's partial score s_R."""
    box = check_box(box)
    result = point_grid_map(pair, side, box, region=True, kind=kind)
    return {**map_json(result, top=True), "partial_score": pair.partial_score(side, box)}
