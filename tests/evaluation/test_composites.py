"""Composites put real items where their boxes say."""

import numpy as np
import pytest
from PIL import Image

from simexplain.errors import SimexplainError
from simexplain.evaluation.composites import (
    Item, box_iou, canvas_with_target, foreground_box, grid2x2, item_source, matching_grid,
    random_canvas)


def solid(value, size=10, label="x"):
    return Item(Image.new("RGB", (size, size), (value, value, value)), label, f"solid{value}")


def test_grid2x2_boxes_hold_their_items():
    items = [solid(v, label=str(i)) for i, v in enumerate((10, 80, 160, 240))]
    grid = grid2x2(items, target=2)
    pixels = np.asarray(grid.image)[..., 0]
    assert grid.image.size == (20, 20)
    assert grid.boxes == [(0, 0, 10, 10), (0, 10, 10, 20), (10, 0, 20, 10), (10, 10, 20, 20)]
    for (t, l, b, r), value in zip(grid.boxes, (10, 80, 160, 240)):
        assert (pixels[t:b, l:r] == value).all()
    assert grid.target_box == (10, 0, 20, 10)
    assert grid.labels == ["0", "1", "2", "3"]


def test_grid2x2_object_boxes_are_offset():
    item = Item(Image.new("RGB", (10, 10)), "a", "a", box=(2, 3, 7, 9))
    grid = grid2x2([item] * 4, target=3)
    assert grid.target_object_box == (12, 13, 17, 19)


def test_grid2x2_rejects_wrong_items():
    with pytest.raises(SimexplainError):
        grid2x2([solid(1)] * 3)
    with pytest.raises(SimexplainError):
        grid2x2([solid(1), solid(2), solid(3), solid(4, size=12)])


def test_canvas_with_target_box():
    distractors = [solid(v) for v in (10, 20, 30, 40)]
    target = solid(200, size=7)
    canvas = canvas_with_target(target, distractors, (5, 9))
    pixels = np.asarray(canvas.image)[..., 0]
    assert canvas.target_box == (5, 9, 12, 16)
    assert (pixels[5:12, 9:16] == 200).all()
    assert (pixels == 200).sum() == 49  # nowhere else
    with pytest.raises(SimexplainError):
        canvas_with_target(target, distractors, (15, 0))


def test_random_canvas_stays_inside():
    rng = np.random.default_rng(0)
    distractors = [solid(v) for v in (10, 20, 30, 40)]

    def resize(item, size):
        return Item(item.image.resize((size, size)), item.label, item.name)
    for _ in range(20):
        canvas = random_canvas(solid(250, size=16), distractors, rng, (0.3, 0.6), resize)
        t, l, b, r = canvas.target_box
        assert 0 <= t < b <= 20 and 0 <= l < r <= 20
        assert 6 <= b - t <= 12
        assert (np.asarray(canvas.image)[t:b, l:r, 0] == 250).all()


def test_box_iou_and_foreground_box():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (0, 5, 10, 15)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 2, 2), (5, 5, 6, 6)) == 0.0
    gray = np.zeros((8, 8))
    gray[2:5, 3:7] = 200
    assert foreground_box(gray) == (2, 3, 5, 7)
    assert foreground_box(np.zeros((4, 4))) is None


def _source(domain):
    return item_source(domain)


def test_fmnist_matching_grid_has_one_match():
    source = _source("fmnist")
    rng = np.random.default_rng(1)
    for _ in range(10):
        query, grid = matching_grid(source, rng, 28, 28)
        assert grid.image.size == (56, 56)
        matches = [i for i, lab in enumerate(grid.labels) if lab == query.label]
        assert matches == [grid.target]
        t, l, b, r = grid.target_object_box
        tt, ll, bb, rr = grid.target_box
        assert tt <= t < b <= bb and ll <= l < r <= rr


def test_photo_items_are_views_with_shared_labels():
    source = _source("photos")
    rng = np.random.default_rng(2)
    query, match = source.pair(rng, 64, 32)
    assert query.label == match.label
    assert query.image.size == (64, 64) and match.image.size == (32, 32)
    others = source.distractors(rng, query.label, 3, 32)
    assert len({o.label for o in others}) == 3 and query.label not in {o.label for o in others}
