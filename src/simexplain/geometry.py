"""Grid and image geometry shared by the engine, the methods, the evaluation and the web app.

Conventions: points are continuous (row, col) coordinates where pixel (i, j) covers
[i, i+1) x [j, j+1) (its centre is (i + .5, j + .5)) unless a function says it takes pixel
indices; boxes are (top, left, bottom, right) edges; a grid of H x W cells evenly covers a box;
cells are numbered row-major.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .defaults import MAX_PREFIX_TOKENS


# -- feature grids ------------------------------------------------------------------------------
def square_grid(tokens: int) -> tuple[int, int] | None:
    """(side, prefix) when `tokens` is a square grid of side x side patch tokens after at most
    MAX_PREFIX_TOKENS prefix tokens, else None."""
    side = math.isqrt(tokens)
    prefix = tokens - side * side
    if side == 0 or prefix > MAX_PREFIX_TOKENS:
        return None
    return side, prefix


@functools.lru_cache(maxsize=256)
def token_grid(tokens: int, image_size: tuple[int, int] | None = None
               ) -> tuple[tuple[int, int], int] | None:
    """((rows, cols), prefix): `tokens` read as rows x cols patch tokens after at most
    MAX_PREFIX_TOKENS prefix tokens. A square image (or none given) gives a square grid
    (`square_grid`); another image the grid with its aspect: of the grids that fit, the one
    whose cells (image height / rows by width / cols) are closest to square, then the one
    with the fewest prefix tokens. None when nothing fits (cells within 2:1)."""
    if image_size is None or image_size[0] == image_size[1]:
        square = square_grid(tokens)
        return None if square is None else ((square[0], square[0]), square[1])
    height, width = image_size
    best: tuple[float, int, tuple[int, int]] | None = None
    for prefix in range(min(MAX_PREFIX_TOKENS, tokens - 1) + 1):
        cells = tokens - prefix
        for rows in range(1, cells + 1):
            if cells % rows:
                continue
            cols = cells // rows
            skew = abs(math.log((height / rows) / (width / cols)))
            if skew <= math.log(2) and (best is None or (skew, prefix) < best[:2]):
                best = (skew, prefix, (rows, cols))
    return None if best is None else (best[2], best[1])


def channels_last_grid(layer_output: torch.Tensor,
                       layout: tuple[tuple[int, int], int] | None = None) -> torch.Tensor:
    """One image's layer output, a feature map (1, C, H, W) or tokens (1, N, C), as its grid of
    feature vectors (H, W, C); prefix tokens (class, registers) are left out. `layout`:
    ((rows, cols), prefix) of the tokens (SplitModel.grid); without it, a square grid."""
    if layer_output.dim() == 4:
        return layer_output[0].permute(1, 2, 0)
    layout = layout or token_grid(layer_output.shape[1])
    if layout is None:
        raise ValueError(f"{layer_output.shape[1]} tokens are not a square grid "
                         f"(plus at most {MAX_PREFIX_TOKENS} prefix tokens)")
    (rows, cols), prefix = layout
    return layer_output[0, prefix:].reshape(rows, cols, -1)


# -- cells in pixels ----------------------------------------------------------------------------
def cell_edges(box: Sequence[float], grid: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(H+1,) row and (W+1,) column coordinates of the edges of a grid laid over `box`."""
    top, left, bottom, right = box
    rows, cols = grid
    return (top + np.arange(rows + 1) * (bottom - top) / rows,
            left + np.arange(cols + 1) * (right - left) / cols)


def cell_boxes(box: Sequence[float], grid: Sequence[int]) -> np.ndarray:
    """(H*W, 4) box (top, left, bottom, right) of every cell, row-major."""
    ys, xs = cell_edges(box, grid)
    t, l = np.meshgrid(ys[:-1], xs[:-1], indexing="ij")
    b, r = np.meshgrid(ys[1:], xs[1:], indexing="ij")
    return np.stack([t.ravel(), l.ravel(), b.ravel(), r.ravel()], axis=1)


def cell_centres(box: Sequence[float], grid: Sequence[int]) -> np.ndarray:
    """(H*W, 2) continuous (row, col) of every cell's centre, row-major."""
    boxes = cell_boxes(box, grid)
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], 1)


def cell_centre(box: Sequence[float], grid: Sequence[int], cell: Sequence[int]
                ) -> tuple[float, float]:
    """Continuous (row, col) of one cell's centre (without a box for every cell)."""
    ys, xs = cell_edges(box, grid)
    r, c = cell
    return float((ys[r] + ys[r + 1]) / 2), float((xs[c] + xs[c + 1]) / 2)


def cell_of_point(box: Sequence[float], grid: Sequence[int], point: Sequence[float]
                  ) -> tuple[int, int]:
    """(row, col) of the cell under a continuous point; points outside go to the nearest cell."""
    top, left, bottom, right = box
    rows, cols = int(grid[0]), int(grid[1])
    r = min(max(int((point[0] - top) * rows / (bottom - top)), 0), rows - 1)
    c = min(max(int((point[1] - left) * cols / (right - left)), 0), cols - 1)
    return r, c


def argmax_cell(grid_map: torch.Tensor | np.ndarray, rng: np.random.Generator | None = None
                ) -> tuple[int, int]:
    """(row, col) of a map's maximum; the first in row-major order, or, given `rng`, one of
    the tied maxima uniformly at random."""
    values = np.asarray(torch.as_tensor(grid_map, dtype=torch.float64))
    flat = values.ravel()
    best = np.flatnonzero(flat >= flat.max())
    index = int(best[0]) if rng is None or len(best) == 1 else int(rng.choice(best))
    return divmod(index, values.shape[1])


# -- affine maps between images ----------------------------------------------------------------
def random_affine(rng: np.random.Generator, size: int, max_rotation: float = 15.0,
                  scale: tuple[float, float] = (0.8, 1.25), shift: float = 0.1,
                  flip: bool = True) -> np.ndarray:
    """3x3 matrix T mapping continuous (row, col) of a to b (both size x size), about the
    centre: a rotation within +-max_rotation degrees, a scale, a shift (fraction of the side)
    and, with `flip`, a mirror with probability 1/2."""
    s = float(np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]))))
    theta = math.radians(rng.uniform(-max_rotation, max_rotation))
    mirror = -1.0 if flip and rng.random() < 0.5 else 1.0
    c = size / 2
    ty, tx = rng.uniform(-shift, shift, size=2) * size
    cos, sin = math.cos(theta), math.sin(theta)
    linear = s * np.array([[cos, -sin], [sin, cos]]) @ np.diag([1.0, mirror])
    t = np.eye(3)
    t[:2, :2] = linear
    t[:2, 2] = np.array([c + ty, c + tx]) - linear @ np.array([c, c])
    return t


def warp(image: Image.Image, t: np.ndarray, size: int) -> Image.Image:
    """b = a warped by T (rows/cols), black outside a. PIL maps output (x, y) -> input."""
    inv = np.linalg.inv(t)  # b (row, col) -> a (row, col)
    # PIL works in (x, y) = (col, row): swap the axes of the matrix
    swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    m = swap @ inv @ swap
    coefficients = (m[0, 0], m[0, 1], m[0, 2], m[1, 0], m[1, 1], m[1, 2])
    return image.transform((size, size), Image.Transform.AFFINE, coefficients,
                           resample=Image.Resampling.BILINEAR)


def apply_affine(t: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 2) continuous (row, col) points through the 3x3 matrix T."""
    pts = np.c_[points, np.ones(len(points))]
    return (pts @ t.T)[:, :2]
