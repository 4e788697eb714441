"""Deletion, insertion and ROAD on a synthetic model with a known answer."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

from simexplain.evaluation import faithfulness as fa
from simexplain.explainer import Explainer


def linear_explainer():
    """A 4x4 one-channel image -> 2x2 grid of cell means -> their sum: s(a, b) is linear in
    b's cells (dot product with a 1-d embedding)."""
    model = nn.Sequential(OrderedDict(
        pool=nn.AvgPool2d(2), flat=nn.Flatten(), fc=nn.Linear(4, 1, bias=False))).eval()
    with torch.no_grad():
        model.fc.weight.fill_(1.0)
    return Explainer(model, "pool", similarity="dot", transform=lambda im: im)


def cells_image(values):
    """(1, 1, 4, 4) image whose 2x2 cells are constant with these values (row-major)."""
    grid = torch.tensor(values, dtype=torch.float32).reshape(1, 1, 2, 2)
    return grid.repeat_interleave(2, 2).repeat_interleave(2, 3)


def test_auc_and_steps():
    assert fa.auc([0, 0.5, 1], [1, 0.5, 0]) == pytest.approx(0.5)
    assert fa.auc([0, 1], [1, 1]) == pytest.approx(1.0)
    assert fa.step_counts(49, 16).tolist()[:3] == [0, 3, 6] and fa.step_counts(49, 16)[-1] == 49
    assert fa.step_counts(4, 16).tolist() == [0, 1, 2, 3, 4]


def test_cell_masks_partition_the_image():
    masks = fa.cell_masks((3, 5), (20, 33))
    assert masks.shape == (15, 20, 33)
    assert (masks.sum(0) == 1).all()


def test_order_cells_ties_are_seeded():
    grid = np.array([[1.0, 3.0], [3.0, 0.0]])
    assert fa.order_cells(grid).tolist() == [1, 2, 0, 3]
    orders = {tuple(fa.order_cells(np.zeros(6), np.random.default_rng(s))) for s in range(20)}
    assert len(orders) > 1


def test_deletion_known_answer():
    explainer = linear_explainer()
    a = torch.ones(1, 1, 4, 4)  # e_a = 4
    b = cells_image([4.0, 3.0, 2.0, 1.0])  # s = 4 * (4 + 3 + 2 + 1) = 40; mean fill 2.5
    masks = fa.cell_masks((2, 2), (4, 4))
    counts = fa.step_counts(4, 16)
    base = 40.0
    rng = np.random.default_rng(0)
    cache = {}  # shared by the methods of one pair: identical edits are scored once
    right = fa.curves_for_map(explainer, a, b, np.array([4.0, 3, 2, 1]), counts, masks, rng,
                              base, cache)
    wrong = fa.curves_for_map(explainer, a, b, np.array([1.0, 2, 3, 4]), counts, masks, rng,
                              base, cache)
    # deleting 4, 3, 2, 1 in turn: sums 10, 8.5, 8, 8.5, 10 -> normalised by 10
    np.testing.assert_allclose(right["deletion"], [1, 0.85, 0.8, 0.85, 1], atol=1e-6)
    np.testing.assert_allclose(wrong["deletion"], [1, 1.15, 1.2, 1.15, 1], atol=1e-6)
    fractions = counts / 4
    assert fa.auc(fractions, right["deletion"]) == pytest.approx(0.875)
    assert fa.auc(fractions, wrong["deletion"]) == pytest.approx(1.125)
    # insertion (from a blurred b) rewards the right order too
    assert fa.auc(fractions, right["insertion"]) > fa.auc(fractions, wrong["insertion"])
    for kind in fa.CURVES:
        assert right[kind][0] == pytest.approx(1.0) or kind == "insertion"
        assert right[kind][-1] == pytest.approx(wrong[kind][-1])  # same end point


def test_linear_impute_is_exact_on_a_ramp():
    rows, cols = np.mgrid[0:12, 0:15].astype(float)
    ramp = np.stack([2 * rows + cols, -rows + 0.5 * cols])
    removed = np.zeros((12, 15), dtype=bool)
    removed[3:9, 4:11] = True
    filled = fa.linear_impute(ramp, removed)
    np.testing.assert_allclose(filled, ramp, atol=1e-8)


def test_road_impute_keeps_known_pixels_and_fills_smoothly():
    x = torch.linspace(0, 1, 128).repeat(3, 128, 1)[None]  # horizontal ramp, 3 x 128 x 128
    removed = np.zeros((128, 128), dtype=bool)
    removed[32:64, 64:96] = True
    out = fa.road_impute(x, removed, np.random.default_rng(0))  # imputed on a 64 x 64 grid
    keep = torch.from_numpy(~removed)
    assert torch.equal(out[0][:, keep], x[0][:, keep])
    hole = out[0][:, torch.from_numpy(removed)]
    truth = x[0][:, torch.from_numpy(removed)]
    assert (hole - truth).abs().max() < 0.05
    assert not torch.equal(hole, truth)  # noisy
