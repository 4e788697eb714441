"""Maps over feature grids: point and region weights, upsampling, the paper's display form."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

from .errors import SimexplainError

Box = Sequence[float]  # (top, left, bottom, right) in image pixels
Region = Union[Box, np.ndarray, torch.Tensor]  # a box, or a mask of the image's size


def point_weights(point: Sequence[float], grid: tuple[int, int],
                  image_size: tuple[int, int]) -> torch.Tensor:
    """(H*W,) bilinear weights of an image pixel (row, col) on the feature grid.

    Feature coordinates are cell-centre aligned, ((row + 0.5) * H / H_img - 0.5, ...),
    clamped at the edges, as in METHOD.md.
    """
    rows, cols = grid
    height, width = image_size
    row, col = float(point[0]), float(point[1])
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
    overlap = (torch.minimum(edges[1:], torch.tensor(stop)) -
               torch.maximum(edges[:-1], torch.tensor(start))).clamp_min(0)
    return overlap / (edges[1:] - edges[:-1])


def _cell_average(mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Exact covered fraction of each cell: integrate the mask over fractional cell bounds."""
    rows, cols = grid
    height, width = mask.shape
    row_share = torch.stack([_interval_cover(i, i + 1, rows, height) for i in range(height)])
    col_share = torch.stack([_interval_cover(j, j + 1, cols, width) for j in range(width)])
    # share_ir: fraction of cell row r's height that pixel row i spans
    return row_share.T @ mask @ col_share  # (rows, cols)


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
