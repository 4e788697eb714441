"""Maps over feature grids: point and region weights, where a grid lies in the image it came
from (`Frame`: the file's pixels vs the model input's), upsampling, the paper's display form."""

from __future__ import annotations

from dataclasses import dataclass
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from . import geometry
from .errors import SimexplainError

Box = Sequence[float]  # (top, left, bottom, right) in image pixels
Region = Box | np.ndarray | torch.Tensor  # a box, or a mask of the image's size


Coords = str  # "image": the file's pixels (default); "input": the model input's pixels
COORDS = ("image", "input")


@dataclass(frozen=True)
class Frame:
    """Where a model input lies in the image it came from, and so where its feature grid lies.

    The model saw the part `box` (top, left, bottom, right; bottom/right exclusive) of an image
    of `image_size` (height, width), resized to `input_size`: the whole image, or a face crop.
    The feature grid evenly covers that box. Points are pixel (row, col) indices (pixel i covers
    [i, i+1)); boxes are edges. Image coordinates are the file's pixels, input coordinates the
    model input's; `coords` picks one wherever a point or a region is given or returned.
    """

    image_size: tuple[int, int]
    box: tuple[int, int, int, int]
    input_size: tuple[int, int]

    @classmethod
    def whole(cls, size: tuple[int, int]) -> Frame:
        """The frame of an input that is its own image (a tensor, or an unresized picture)."""
        height, width = (int(v) for v in size)
        return cls((height, width), (0, 0, height, width), (height, width))

    @property
    def cropped(self) -> bool:
        """Does the model see only part of the image (a face crop)?"""
        return tuple(self.box) != (0, 0, *self.image_size)

    def _scale(self) -> tuple[float, float]:
        """Input pixels per image pixel along rows and columns."""
        top, left, bottom, right = self.box
        return self.input_size[0] / (bottom - top), self.input_size[1] / (right - left)

    # -- conversions -----------------------------------------------------------------------------
    def to_input(self, point: Sequence[float]) -> tuple[float, float]:
        """Image pixel (row, col) -> model-input pixel (pixel centres map onto each other)."""
        sy, sx = self._scale()
        return ((float(point[0]) + 0.5 - self.box[0]) * sy - 0.5,
                (float(point[1]) + 0.5 - self.box[1]) * sx - 0.5)

    def to_image(self, point: Sequence[float]) -> tuple[float, float]:
        """Model-input pixel (row, col) -> image pixel: the inverse of `to_input`."""
        sy, sx = self._scale()
        return ((float(point[0]) + 0.5) / sy - 0.5 + self.box[0],
                (float(point[1]) + 0.5) / sx - 0.5 + self.box[1])

    def box_to_input(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """Image box (top, left, bottom, right) -> model-input box (edges map onto edges)."""
        sy, sx = self._scale()
        t, l, b, r = (float(v) for v in box)
        return ((t - self.box[0]) * sy, (l - self.box[1]) * sx,
                (b - self.box[0]) * sy, (r - self.box[1]) * sx)

    def box_to_image(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """Model-input box -> image box: the inverse of `box_to_input`."""
        sy, sx = self._scale()
        t, l, b, r = (float(v) for v in box)
        return (t / sy + self.box[0], l / sx + self.box[1],
                b / sy + self.box[0], r / sx + self.box[1])

    def _in(self, coords: Coords) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        """(size of the picture, the grid's box in it) in the given coordinates."""
        if coords == "image":
            top, left, bottom, right = (int(v) for v in self.box)
            return self.image_size, (top, left, bottom, right)
        if coords == "input":
            return self.input_size, (0, 0, *self.input_size)
        raise SimexplainError(f"coords must be one of {', '.join(COORDS)}, got {coords!r}")

    # -- weights on the grid ---------------------------------------------------------------------
    def point_weights(self, point: Sequence[float], grid: tuple[int, int],
                      coords: Coords = "image") -> torch.Tensor:
        """(H*W,) bilinear weights of a pixel (row, col) on the grid (see `point_weights`)."""
        size, (top, left, bottom, right) = self._in(coords)
        row, col = as_point(point)
        if not (0 <= row <= size[0] and 0 <= col <= size[1]):
            raise SimexplainError(
                f"point ({row:g}, {col:g}) lies outside the image of size {size[0]}x{size[1]}"
                + (" (model-input pixels)" if coords == "input" else ""))
        if not (top <= row <= bottom and left <= col <= right):
            raise SimexplainError(
                f"point ({row:g}, {col:g}) lies outside the part of the image the model saw "
                f"(the crop {[top, left, bottom, right]} of the {size[0]}x{size[1]} image)")
        return point_weights((row - top, col - left), grid, (bottom - top, right - left))

    def region_weights(self, region: Region, grid: tuple[int, int],
                       coords: Coords = "image") -> torch.Tensor:
        """(H*W,) covered fraction of each cell for a box or a mask (see `region_weights`)."""
        size, (top, left, bottom, right) = self._in(coords)
        if isinstance(region, (np.ndarray, torch.Tensor)) and np.ndim(region) == 2:
            mask = np.asarray(region)
            if tuple(mask.shape) != tuple(size):
                raise SimexplainError(
                    f"region mask has shape {tuple(mask.shape)}, expected the image size "
                    f"{size[0]}x{size[1]}" + (" (model input)" if coords == "input" else ""))
            inside = mask[top:bottom, left:right]
            if not np.any(inside) and np.any(mask):
                raise SimexplainError(self._outside(mask.shape, top, left, bottom, right))
            return region_weights(inside, grid, (bottom - top, right - left))
        try:
            t, l, b, r = (float(v) for v in region)
        except (TypeError, ValueError):
            raise SimexplainError(
                "region must be a box (top, left, bottom, right) or a 2-D mask") from None
        if not (b > t and r > l and t < size[0] and l < size[1] and b > 0 and r > 0):
            raise SimexplainError(
                f"region {(t, l, b, r)} is empty or outside the image of size "
                f"{size[0]}x{size[1]}" + (" (model-input pixels)" if coords == "input" else ""))
        if not (t < bottom and b > top and l < right and r > left):
            raise SimexplainError(self._outside(size, top, left, bottom, right, (t, l, b, r)))
        return region_weights((t - top, l - left, b - top, r - left), grid,
                              (bottom - top, right - left))

    @staticmethod
    def _outside(size, top, left, bottom, right, region=None) -> str:
        what = f"region {region}" if region is not None else "the region mask"
        return (f"{what} lies outside the part of the image the model saw (the crop "
                f"{[top, left, bottom, right]} of the {size[0]}x{size[1]} image)")

    # -- the grid in pixels ----------------------------------------------------------------------
    def cell_edges(self, grid: tuple[int, int], coords: Coords = "image"
                   ) -> tuple[np.ndarray, np.ndarray]:
        """(H+1,) row and (W+1,) column coordinates of the grid's cell edges."""
        return geometry.cell_edges(self._in(coords)[1], grid)

    def cell_boxes(self, grid: Sequence[int], coords: Coords = "image") -> np.ndarray:
        """(H*W, 4) box (top, left, bottom, right) of every grid cell, row-major."""
        return geometry.cell_boxes(self._in(coords)[1], grid)

    def cell_centres(self, grid: Sequence[int], coords: Coords = "image") -> np.ndarray:
        """(H*W, 2) continuous (row, col) of every grid cell's centre, row-major."""
        return geometry.cell_centres(self._in(coords)[1], grid)

    def peak(self, grid_map: torch.Tensor, coords: Coords = "image") -> tuple[float, float]:
        """Centre of the map's maximal cell (the maximum of its upsampling too)."""
        return geometry.cell_centre(self._in(coords)[1], tuple(grid_map.shape),
                                    geometry.argmax_cell(grid_map))

    def to_dict(self, grid: tuple[int, int] | None = None) -> dict:
        """JSON-ready: image size, crop box and input size, and the grid's cell boxes, all in
        the image's pixels."""
        out: dict[str, list] = {"image_size": list(self.image_size),
                                "crop": [int(v) for v in self.box],
                                "input_size": list(self.input_size)}
        if grid is not None:
            out["grid"] = list(grid)
            out["cells"] = [[round(float(v), 3) for v in cell]
                            for cell in self.cell_boxes(grid)]
        return out

    def upsample(self, grid_map: torch.Tensor, size: tuple[int, int] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
        """(heat, inside): a grid map upsampled onto the whole image (or onto the image
        resized to `size` (height, width), for display), the crop's part filled and the rest
        0; `inside` marks the crop with 1."""
        height, width = size if size is not None else self.image_size
        sy, sx = height / self.image_size[0], width / self.image_size[1]
        top, bottom = int(round(self.box[0] * sy)), int(round(self.box[2] * sy))
        left, right = int(round(self.box[1] * sx)), int(round(self.box[3] * sx))
        bottom, right = max(bottom, top + 1), max(right, left + 1)
        heat = np.zeros((height, width), dtype=np.float32)
        inside = np.zeros((height, width), dtype=np.float32)
        part = upsample(grid_map, (bottom - top, right - left))
        heat[top:bottom, left:right] = part[:height - top, :width - left]
        inside[top:bottom, left:right] = 1
        return heat, inside


def as_point(point: Sequence[float]) -> tuple[float, float]:
    """(row, col) of a point given as two numbers, else a SimexplainError."""
    try:
        row, col = (float(v) for v in point)
    except (TypeError, ValueError):
        raise SimexplainError(f"a point is (row, col) in pixels, got {point!r}") from None
    return row, col


def point_weights(point: Sequence[float], grid: Sequence[int],
                  image_size: Sequence[int]) -> torch.Tensor:
    """(H*W,) bilinear weights of an image pixel (row, col) on the feature grid.

    Feature coordinates are cell-centre aligned, ((row + 0.5) * H / H_img - 0.5, ...),
    clamped at the edges, as in METHOD.md.
    """
    rows, cols = grid
    height, width = image_size
    row, col = as_point(point)
    if not (0 <= row <= height and 0 <= col <= width):
        raise SimexplainError(
            f"point ({row:g}, {col:g}) lies outside the image of size {height}x{width}")
    fy = min(max((row + 0.5) * rows / height - 0.5, 0.0), rows - 1)
    fx = min(max((col + 0.5) * cols / width - 0.5, 0.0), cols - 1)
    y0, x0 = int(np.floor(fy)), int(np.floor(fx))
    y1, x1 = min(y0 + 1, rows - 1), min(x0 + 1, cols - 1)
    dy, dx = fy - y0, fx - x0
    weights = torch.zeros(rows, cols, dtype=torch.float64)
    weights[y0, x0] += (1 - dy) * (1 - dx)
    weights[y0, x1] += (1 - dy) * dx
    weights[y1, x0] += dy * (1 - dx)
    weights[y1, x1] += dy * dx
    return weights.flatten()


def region_weights(region: Region, grid: tuple[int, int],
                   image_size: tuple[int, int]) -> torch.Tensor:
    """(H*W,) fraction of each feature cell covered by a box or a mask.

    A box is (top, left, bottom, right) in pixels; a mask is an array of the image's size
    (nonzero = inside). An empty region or one outside the image is an error.
    """
    rows, cols = grid
    height, width = image_size
    if isinstance(region, (np.ndarray, torch.Tensor)) and np.ndim(region) == 2:
        mask = torch.as_tensor(np.asarray(region, dtype=np.float64) != 0, dtype=torch.float64)
        if tuple(mask.shape) != (height, width):
            raise SimexplainError(
                f"region mask has shape {tuple(mask.shape)}, expected the image size "
                f"{height}x{width}")
        weights = _cell_average(mask, grid)
    else:
        try:
            top, left, bottom, right = (float(v) for v in region)
        except (TypeError, ValueError):
            raise SimexplainError(
                "region must be a box (top, left, bottom, right) or a 2-D mask") from None
        top, bottom = max(top, 0.0), min(bottom, float(height))
        left, right = max(left, 0.0), min(right, float(width))
        if bottom <= top or right <= left:
            raise SimexplainError(
                f"region {tuple(region)} is empty or outside the image of size {height}x{width}")
        row_cover = _interval_cover(top, bottom, rows, height)
        col_cover = _interval_cover(left, right, cols, width)
        weights = row_cover[:, None] * col_cover[None, :]
    if weights.sum() <= 0:
        raise SimexplainError("region is empty: it covers no pixel of the image")
    return weights.flatten()


def _interval_cover(start: float, stop: float, cells: int, length: int) -> torch.Tensor:
    """Fraction of each of `cells` equal cells over [0, length) covered by [start, stop)."""
    edges = torch.linspace(0, length, cells + 1, dtype=torch.float64)
    overlap = (torch.minimum(edges[1:], torch.tensor(stop, dtype=torch.float64)) -
               torch.maximum(edges[:-1], torch.tensor(start, dtype=torch.float64))).clamp_min(0)
    return overlap / (edges[1:] - edges[:-1])


def _cell_average(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Exact covered fraction of each cell: integrate the mask over fractional cell bounds."""
    rows, cols = grid
    height, width = mask.shape
    row_share = torch.stack([_interval_cover(i, i + 1, rows, height) for i in range(height)])
    col_share = torch.stack([_interval_cover(j, j + 1, cols, width) for j in range(width)])
    # share_ir: fraction of cell row r's height that pixel row i spans
    return row_share.T @ mask @ col_share  # (rows, cols)


def resample(grid_map: torch.Tensor | np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """An (H, W) map of per-cell amounts (a share of a score) on another grid over the same
    image, float64, its total kept: each cell's amount is spread evenly over the cell's area,
    so a box of the new grid holds exactly what `region_weights` gives that box on the old
    one (sum_p w_p m_p). Maps of different grids then add up cell by cell."""
    values = np.asarray(torch.as_tensor(grid_map, dtype=torch.float64).cpu())
    (rows, cols), (new_rows, new_cols) = values.shape, grid

    def spread(old: int, new: int) -> np.ndarray:  # (new, old): old cell's part in each new one
        return np.stack([np.asarray(_interval_cover(r * old / new, (r + 1) * old / new, old, old))
                         for r in range(new)])
    return spread(rows, new_rows) @ values @ spread(cols, new_cols).T


def upsample(grid_map: torch.Tensor, image_size: tuple[int, int]) -> np.ndarray:
    """Bilinear, cell-centre aligned upsampling of an (H, W) map to the image size."""
    tensor = torch.as_tensor(grid_map, dtype=torch.float32)[None, None]
    out = F.interpolate(tensor, size=tuple(image_size), mode="bilinear", align_corners=False)
    return out[0, 0].cpu().numpy()


def display_form(grid_map: torch.Tensor | np.ndarray) -> np.ndarray:
    """The paper's display form: ReLU, then divide by the maximum (all zeros stay zeros)."""
    values = np.maximum(np.asarray(grid_map, dtype=np.float64), 0)
    peak = values.max() if values.size else 0.0
    return values / peak if peak > 0 else values
