"""Pointing hits and localisation boxes on hand-made maps."""

import numpy as np
import pytest

from simexplain.evaluation.localisation import correct, largest_component_box, localise
from simexplain.evaluation.pointing import in_box, mass_in_box, pointing_hit

# A 56x56 composite with a 14x14 feature grid: 4 px per cell, 7 cells per item.
SIZE = (56, 56)
CELLS = {"top-left": (0, 0, 28, 28), "top-right": (0, 28, 28, 56),
         "bottom-left": (28, 0, 56, 28), "bottom-right": (28, 28, 56, 56)}


def test_pointing_hit_uses_the_maximal_cell():
    grid = np.zeros((14, 14))
    grid[10, 3] = 5.0  # centre (42, 14): bottom-left
    hits = {name: pointing_hit(grid, SIZE, box) for name, box in CELLS.items()}
    assert hits == {"top-left": False, "top-right": False, "bottom-left": True,
                    "bottom-right": False}


def test_pointing_hit_border_cells():
    grid = np.full((14, 14), -1.0)
    grid[6, 7] = 0.5  # centre (26, 30): last row of the top half, first column of the right
    assert pointing_hit(grid, SIZE, CELLS["top-right"])
    assert not pointing_hit(grid, SIZE, CELLS["bottom-right"])
    # an odd grid: the middle cell's centre (28, 28) belongs to the bottom-right item
    odd = np.zeros((7, 7))
    odd[3, 3] = 1
    assert pointing_hit(odd, SIZE, CELLS["bottom-right"])


def test_pointing_ties_are_random_but_seeded():
    flat = np.zeros((14, 14))
    outcomes = [pointing_hit(flat, SIZE, CELLS["top-left"], np.random.default_rng(s))
                for s in range(200)]
    assert 0.1 < np.mean(outcomes) < 0.4  # about chance (25%)
    assert outcomes == [pointing_hit(flat, SIZE, CELLS["top-left"], np.random.default_rng(s))
                        for s in range(200)]


def test_mass_in_box():
    grid = np.zeros((14, 14))
    grid[:7, :7] = 1.0  # top-left item
    grid[7:, 7:] = 3.0
    grid[0, 13] = -100  # negative values do not count
    assert mass_in_box(grid, SIZE, CELLS["top-left"]) == pytest.approx(1 / 4)
    assert mass_in_box(grid, SIZE, CELLS["bottom-right"]) == pytest.approx(3 / 4)
    assert np.isnan(mass_in_box(-np.ones((14, 14)), SIZE, CELLS["top-left"]))
    assert in_box((27.9, 0.0), CELLS["top-left"]) and not in_box((28.0, 0.0), CELLS["top-left"])


def test_largest_component_box():
    mask = np.zeros((20, 20), dtype=bool)
    mask[1:4, 1:4] = True  # 9 pixels
    mask[10:15, 5:12] = True  # 35 pixels: the largest
    mask[10, 12:15] = True  # attached to it
    mask[18, 18] = True
    assert largest_component_box(mask) == (10, 5, 15, 15)
    assert largest_component_box(np.zeros((5, 5), bool)) is None
    # diagonal neighbours are not connected (4-connectivity)
    diag = np.eye(4, dtype=bool)
    assert largest_component_box(diag) in {(i, i, i + 1, i + 1) for i in range(4)}


def test_localise_thresholds_at_a_fraction_of_the_max():
    heat = np.zeros((30, 30))
    heat[5:15, 5:15] = 1.0  # strong square
    heat[20:28, 2:29] = 0.5  # weak wide band, larger
    assert localise(heat, 0.8) == (5, 5, 15, 15)
    assert localise(heat, 0.4) == (20, 2, 28, 29)  # both pass: the larger component wins
    assert localise(-heat, 0.5) is None
    assert correct(heat, 0.8, (5, 5, 15, 15))
    assert correct(heat, 0.8, (5, 5, 15, 19))  # IoU 100/140 > 0.5
    assert not correct(heat, 0.8, (5, 5, 15, 26))  # IoU 100/210 < 0.5
    assert not correct(heat, 0.4, (5, 5, 15, 15))
