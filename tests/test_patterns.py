"""Cross-view patterns (`PairExplanation.patterns`) against a brute-force search over every
cell's point map (computed one point at a time with `point_map`, never the matrix)."""

import numpy as np
import pytest
import torch
from PIL import Image

from simexplain import Explainer, zoo
from simexplain.errors import NoPointMap, SimexplainError
from simexplain.explanation import POINT_MAP_KINDS
from simexplain.images import Preprocess
from simexplain.toy import HeadModel


def _brute_force(result, kind, k, spread, coords="image"):
    """Mutual best matches from per-point maps, by D, greedy suppression: the documented rule."""
    centres = {s: side.frame.cell_centres(side.grid, coords) - 0.5
               for s, side in (("a", result.a), ("b", result.b))}
    best_of = {}
    for side in ("a", "b"):
        other = "b" if side == "a" else "a"
        best = []
        for point in centres[side]:
            try:
                grid_map = result.point_map(side, tuple(point), kind=kind, coords=coords)
            except NoPointMap:
                best.append(None)
                continue
            best.append(int(torch.argmax(grid_map.flatten())))
        best_of[side] = best
        assert len(best) == len(centres[side]) and other
    d = result.pairwise_flat.numpy()
    candidates = [(p, q) for p, q in enumerate(best_of["a"])
                  if q is not None and best_of["b"][q] == p and d[p, q] > 0]
    candidates.sort(key=lambda pq: -d[pq])
    cols_a, cols_b = result.a.grid[1], result.b.grid[1]
    chosen = []
    for p, q in candidates:
        pa, qb = np.array(divmod(p, cols_a)), np.array(divmod(q, cols_b))
        if any(np.hypot(*(pa - divmod(cp, cols_a))) < spread or
               np.hypot(*(qb - divmod(cq, cols_b))) < spread for cp, cq in chosen):
            continue
        chosen.append((p, q))
        if len(chosen) == k:
            break
    return [(tuple(centres["a"][p]), tuple(centres["b"][q]), float(d[p, q])) for p, q in chosen]


def _two_stream(head="gap", seed=0):
    torch.manual_seed(seed)
    street = HeadModel(head, dim=8, channels=8, normalize=True)
    aerial = HeadModel(head, dim=8, channels=8, normalize=True)
    return Explainer(street, "features", model_b=aerial, transform=Preprocess(size=(32, 32)))


def _photos(seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)) for _ in range(2)]


@pytest.mark.parametrize("kind", list(POINT_MAP_KINDS))
@pytest.mark.parametrize("spread", [0.0, 1.5])
def test_patterns_equal_brute_force_on_a_toy_two_stream_model(kind, spread):
    result = _two_stream().explain(*_photos())
    found = result.patterns(k=50, kind=kind, spread=spread)
    expected = _brute_force(result, kind, 50, spread)
    assert [(p.point_a, p.point_b) for p in found] == [(a, b) for a, b, _ in expected]
    assert [p.strength for p in found] == pytest.approx([s for _, _, s in expected])
    assert found, "a random pair still has some mutual matches"
    strengths = [p.strength for p in found]
    assert strengths == sorted(strengths, reverse=True) and min(strengths) > 0
    for p in found:  # the kind's own value at the pair, read from a single point map
        grid_map = result.point_map("a", p.point_a, kind=kind)
        assert p.match == pytest.approx(float(grid_map[p.cell_b]))
        assert int(torch.argmax(grid_map.flatten())) == p.cell_b[0] * result.b.grid[1] + p.cell_b[1]


def test_spread_keeps_patterns_apart_and_k_limits_them():
    result = _two_stream(seed=1).explain(*_photos(1))
    spread = result.patterns(k=50, spread=2.0)
    for i, p in enumerate(spread):
        for q in spread[:i]:
            assert np.hypot(*np.subtract(p.cell_a, q.cell_a)) >= 2.0
            assert np.hypot(*np.subtract(p.cell_b, q.cell_b)) >= 2.0
    assert len(result.patterns(k=1)) == 1
    assert [p.to_dict() for p in result.patterns(k=2)] == \
        [p.to_dict() for p in result.patterns(k=50)[:2]]
    with pytest.raises(SimexplainError, match="k must be"):
        result.patterns(k=0)


def test_max_pooling_positions_without_contribution_are_never_patterns():
    result = _two_stream("gmp").explain(*_photos())
    found = result.patterns(k=50, spread=0)
    assert [(p.point_a, p.point_b) for p in found] == \
        [(a, b) for a, b, _ in _brute_force(result, "match-centred", 50, 0)]
    for p in found:
        assert float(result.a.contributions[p.cell_a[0] * result.a.grid[1] + p.cell_a[1]]
                     .norm()) > 0


def test_image_and_input_coordinates_on_a_resized_photo():
    explainer = zoo.load("fmnist-gap")
    big = [Image.fromarray(np.kron(np.asarray(im.convert("L")), np.ones((2, 2), np.uint8)))
           for im in _photos(2)]  # 80x96 photos, the model sees 28x34
    result = explainer.explain(*big)
    image, inputs = result.patterns(5, coords="image"), result.patterns(5, coords="input")
    assert [p.cell_a for p in image] == [p.cell_a for p in inputs]
    for p, q in zip(image, inputs):
        assert result.a.frame.to_image(q.point_a) == pytest.approx(p.point_a)
        assert result.b.frame.to_image(q.point_b) == pytest.approx(p.point_b)
    assert [(p.point_a, p.point_b) for p in inputs] == \
        [(a, b) for a, b, _ in _brute_force(result, "match-centred", 5, 1.5, coords="input")]


def test_a_distance_ranks_patterns_by_closeness():
    """Squared Euclidean: strength is -D (the pair shortens the distance), and the contribution
    kind's best match is the minimum of D."""
    torch.manual_seed(0)
    explainer = Explainer(HeadModel("gap", dim=8, channels=8, normalize=False), "features",
                          similarity="euclidean", transform=Preprocess(size=(32, 32)),
                          model_b=HeadModel("gap", dim=8, channels=8, normalize=False))
    result = explainer.explain(*_photos(3))
    d = result.pairwise_flat.numpy()
    found = result.patterns(k=50, kind="contribution", spread=0)
    assert found
    cols = result.b.grid[1]
    for p in found:
        row = p.cell_a[0] * result.a.grid[1] + p.cell_a[1]
        column = p.cell_b[0] * cols + p.cell_b[1]
        assert p.strength == pytest.approx(-d[row, column]) and p.strength > 0
        assert column == int(np.argmin(d[row])) and row == int(np.argmin(d[:, column]))
    strengths = [p.strength for p in found]
    assert strengths == sorted(strengths, reverse=True)
