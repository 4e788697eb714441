"""Grid and image geometry (simexplain.geometry), against brute force and known answers."""

import numpy as np
import pytest
import torch
from PIL import Image

from simexplain import geometry


@pytest.mark.parametrize("tokens, expected", [(49, (7, 0)), (50, (7, 1)), (201, (14, 5)),
                                              (57, (7, 8)), (58, None), (0, None)])
def test_square_grid_after_at_most_eight_prefix_tokens(tokens, expected):
    assert geometry.square_grid(tokens) == expected


@pytest.mark.parametrize("tokens, size, expected", [
    (66, (28, 36), ((7, 9), 3)),    # 7x9 + 3, though 66 is also 8x8 + 2
    (66, (32, 32), ((8, 8), 2)),    # a square input: the square grid
    (50, None, ((7, 7), 1)),
    (16, (24, 40), ((3, 5), 1)),    # 3x5 + 1, though 16 is also 4x4
    (15, (40, 24), ((5, 3), 0)),    # portrait
    (58, (28, 28), None),           # no square grid after at most 8 prefix tokens
    (3, (100, 10), None),           # no grid with cells within 2:1
])
def test_token_grid_follows_the_inputs_aspect(tokens, size, expected):
    assert geometry.token_grid(tokens, size) == expected


def test_channels_last_grid_of_a_feature_map_and_of_tokens():
    fmap = torch.randn(1, 5, 3, 4)
    grid = geometry.channels_last_grid(fmap)
    assert grid.shape == (3, 4, 5) and torch.equal(grid[2, 1], fmap[0, :, 2, 1])
    tokens = torch.randn(1, 2 + 9, 6)                  # class + register token, then 3x3 patches
    grid = geometry.channels_last_grid(tokens)
    assert grid.shape == (3, 3, 6) and torch.equal(grid[1, 2], tokens[0, 2 + 1 * 3 + 2])
    tokens = torch.randn(1, 1 + 6, 4)                  # class token, then 2x3 patches
    grid = geometry.channels_last_grid(tokens, ((2, 3), 1))
    assert grid.shape == (2, 3, 4) and torch.equal(grid[1, 0], tokens[0, 1 + 3])
    with pytest.raises(ValueError, match="not a square grid"):
        geometry.channels_last_grid(torch.randn(1, 35, 6))   # 5x5 + 10


def test_cells_tile_the_box():
    box, grid = (10, 20, 40, 80), (3, 4)                 # 30 x 60 pixels: cells of 10 x 15
    boxes = geometry.cell_boxes(box, grid)
    assert boxes[0].tolist() == [10, 20, 20, 35] and boxes[-1].tolist() == [30, 65, 40, 80]
    centres = geometry.cell_centres(box, grid)
    assert centres[0].tolist() == [15, 27.5] and centres[-1].tolist() == [35, 72.5]
    assert geometry.cell_centre(box, grid, (1, 2)) == tuple(centres[1 * 4 + 2])
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sum()
    assert area == 30 * 60


def test_cell_of_point_is_the_cell_whose_box_holds_it():
    box, grid = (5, 0, 33, 50), (4, 7)
    boxes = geometry.cell_boxes(box, grid)
    rng = np.random.default_rng(0)
    for point in rng.uniform((5, 0), (33, 50), size=(200, 2)):
        holding = [i for i, (t, l, b, r) in enumerate(boxes)
                   if t <= point[0] < b and l <= point[1] < r]
        assert geometry.cell_of_point(box, grid, point) == divmod(holding[0], 7)
    assert geometry.cell_of_point(box, grid, (-100, 999)) == (0, 6)   # outside: the nearest


def test_argmax_cell_first_or_a_random_tie():
    grid = np.zeros((3, 3))
    grid[2, 1] = 1
    assert geometry.argmax_cell(grid) == (2, 1)
    assert geometry.argmax_cell(torch.tensor(grid)) == (2, 1)
    flat = np.ones((3, 3))
    assert geometry.argmax_cell(flat) == (0, 0)
    picks = {geometry.argmax_cell(flat, np.random.default_rng(s)) for s in range(30)}
    assert len(picks) > 3                                # ties broken at random


def test_warp_moves_points_where_the_affine_says():
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:64, 0:64] + 0.5
    for _ in range(5):
        t = geometry.random_affine(rng, 64)
        centre = rng.uniform(24, 40, size=2)
        blob = np.exp(-((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2) / 8.0)
        warped = np.asarray(geometry.warp(Image.fromarray((blob * 255).astype(np.uint8)), t, 64),
                            dtype=float)
        found = [(warped * yy).sum() / warped.sum(), (warped * xx).sum() / warped.sum()]
        np.testing.assert_allclose(found, geometry.apply_affine(t, centre[None])[0], atol=0.3)
