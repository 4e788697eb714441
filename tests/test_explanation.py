"""Point, region and gallery maps derived from the pairwise decomposition."""

import numpy as np
import pytest
import torch

from simexplain import Explainer, SimexplainError
from simexplain.toy import HeadModel
from simexplain.visualize import overlay_map


@pytest.fixture(scope="module")
def explainer():
    torch.manual_seed(0)
    return Explainer(HeadModel("mlp").eval(), "features", similarity="cosine")


def image(seed, size=32):
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def result(explainer):
    return explainer.explain(image(1), image(2, size=48))  # grids 8x8 and 12x12


def test_point_map_at_cell_centre_is_the_pairwise_slice(result):
    # cell (i, j) of an 8x8 grid on a 32 px image: centre at pixel (4i + 1.5, 4j + 1.5)
    for i, j in [(0, 0), (3, 5), (7, 7)]:
        centre = (4 * i + 1.5, 4 * j + 1.5)
        torch.testing.assert_close(result.point_map("a", centre, kind="contribution"),
                                   result.pairwise[i, j])
    # and from side b (12x12 on 48 px): pixel (4k + 1.5, 4l + 1.5)
    torch.testing.assert_close(result.point_map("b", (4 * 2 + 1.5, 4 * 9 + 1.5), kind="contribution"),
                               result.pairwise[:, :, 2, 9])


def test_point_map_interpolates_between_cells(result):
    between = result.point_map("a", (4 * 3 + 1.5, 4 * 3 + 3.5), "contribution")  # half way from (3,3) to (3,4)
    expected = 0.5 * (result.pairwise[3, 3] + result.pairwise[3, 4])
    torch.testing.assert_close(between, expected)


def test_whole_image_region_gives_the_overall_map(result):
    torch.testing.assert_close(result.region_map("a", (0, 0, 32, 32), "contribution"),
                               result.overall_b)
    torch.testing.assert_close(result.region_map("b", (0, 0, 48, 48), "contribution"),
                               result.overall_a)
    assert result.partial_score("a", (0, 0, 32, 32)) == pytest.approx(result.score, rel=1e-5)


def test_region_mask_equals_box(result):
    mask = np.zeros((32, 32))
    mask[6:19, 3:27] = 1
    torch.testing.assert_close(result.region_map("a", mask), result.region_map("a", (6, 3, 19, 27)))


def test_partial_scores_of_a_partition_add_up(result):
    left = result.partial_score("a", (0, 0, 32, 13))
    right = result.partial_score("a", (0, 13, 32, 32))
    assert left + right == pytest.approx(result.score, rel=1e-5)


@pytest.mark.parametrize("box", [(5, 5, 5, 20), (40, 40, 50, 50), (10, 10, 2, 2)])
def test_empty_or_outside_region_is_an_error(result, box):
    with pytest.raises(SimexplainError, match="empty or outside"):
        result.region_map("a", box)


def test_point_outside_image_is_an_error(result):
    with pytest.raises(SimexplainError, match="outside the image"):
        result.point_map("a", (100, 3))


@pytest.mark.parametrize("point", [(1,), (1, 2, 3), "1,2", None, ("a", 1)])
def test_a_point_that_is_not_two_numbers_is_an_error(result, point):
    """Was an IndexError, ValueError or TypeError from inside the map code (three numbers
    were taken as the first two)."""
    with pytest.raises(SimexplainError, match=r"a point is \(row, col\) in pixels, got"):
        result.point_map("a", point)


def test_weights_of_the_wrong_shape_are_an_error(result):
    cells = result.a.grid[0] * result.a.grid[1]
    with pytest.raises(SimexplainError, match=rf"weights must have shape \({cells},\), one for "
                                              "each cell of image a's"):
        result.weighted_map("a", torch.ones(5))  # was torch's "shapes cannot be multiplied"
    whole = result.weighted_map("a", torch.ones(cells, dtype=torch.float64))
    torch.testing.assert_close(whole.reshape(result.overall_b.shape).double(),
                               result.overall_b.double(), rtol=1e-5, atol=1e-7)


def test_gallery_equals_repeated_explain(explainer):
    query = image(1)
    gallery = [image(s) for s in range(10, 15)]
    batched = explainer.explain_gallery(query, gallery, batch_size=2)
    for item, single in zip(gallery, batched):
        expected = explainer.explain(query, item)
        assert single.score == pytest.approx(expected.score, rel=1e-5)
        torch.testing.assert_close(single.pairwise, expected.pairwise, rtol=1e-4, atol=1e-7)


def test_upsample_and_overlay(result):
    heat = result.upsample(result.overall_a, "a")
    assert heat.shape == (32, 32)
    picture = overlay_map(result, result.overall_b, "b", signed=True)
    assert picture.size == (48, 48)
    d = result.to_dict()
    assert d["score"] == result.score and len(d["overall_a"]) == 8


def test_gallery_of_mixed_sizes_keeps_the_order(explainer):
    query = image(1)
    gallery = [image(20, size=32), image(21, size=48), image(22, size=32)]
    batched = explainer.explain_gallery(query, gallery, batch_size=3)
    assert [r.b.grid for r in batched] == [(8, 8), (12, 12), (8, 8)]
    for item, single in zip(gallery, batched):
        assert single.score == pytest.approx(explainer.explain(query, item).score, rel=1e-5)


@pytest.mark.parametrize("similarity", ["cosine", "dot", "euclidean"])
@pytest.mark.parametrize("grid", [(8, 8), (48, 48)])
def test_pairwise_map_against_a_float64_product(similarity, grid):
    """Small maps are float64 products; large ones (over FLOAT32_PAIRWISE multiply-adds, here
    2304 x 2304 x 64) are formed in float32: float64 all the same, within about 1e-7 of each
    entry's size, and their sum the score to float32 precision."""
    from simexplain import explanation
    from simexplain.images import blank_image
    gen = torch.Generator().manual_seed(4)
    n, dim = grid[0] * grid[1], 64
    sides = []
    for _ in range(2):
        u = torch.randn(n, dim, generator=gen) / n + torch.randn(dim, generator=gen) / n
        sides.append(explanation.Side(image=blank_image((32, 32)), grid=grid, contributions=u,
                                      embedding=u.sum(0)))
    pair = explanation.PairExplanation.from_sides(*sides, similarity)
    u, v = (side.contributions.double() for side in sides)
    e_a, e_b = (side.embedding.double() for side in sides)
    expected = {"cosine": u @ v.T / (e_a.norm() * e_b.norm()), "dot": u @ v.T,
                "euclidean": -2 * u @ v.T}[similarity]
    large = n * n * dim > explanation.FLOAT32_PAIRWISE
    assert large == (grid == (48, 48))
    assert pair.pairwise_flat.dtype == torch.float64
    size = float(expected.abs().max())
    gap = float((pair.pairwise_flat - expected).abs().max()) / size
    assert gap < (1e-6 if large else 1e-12), gap
    if similarity != "euclidean":  # its total is the overall maps' (the map is a cross term)
        total = float(pair.pairwise_flat.sum())
        assert total == pytest.approx(pair.total, abs=1e-9 if not large else 1e-6 * abs(pair.total))


def _side(grid, seed, tokens=0, dim=6):
    """A Side of random contributions whose embedding is their sum (an exact head)."""
    from simexplain.explanation import Side
    from simexplain.images import blank_image
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(grid[0] * grid[1], dim, generator=gen)
    t = torch.randn(tokens, dim, generator=gen) if tokens else None
    e = u.sum(0) + (t.sum(0) if tokens else 0)
    return Side(image=blank_image((4 * grid[0], 4 * grid[1])), grid=grid, contributions=u,
                embedding=e, tokens=t)


@pytest.mark.parametrize("similarity", ["cosine", "dot", "euclidean"])
def test_one_to_many_gives_each_pair_its_maps_and_score(similarity):
    """Sides of mixed shapes (three grids, one with a class token, whose 6 + 1 rows are as
    many as a 7x1 grid's) against one query: each result's maps and score from the formulas
    of METHOD.md, written out here pair by pair."""
    from simexplain.explanation import PairExplanation
    query = _side((2, 3), 0, tokens=1)
    others = [_side((2, 3), 1), _side((3, 3), 2), _side((2, 3), 3, tokens=1), _side((2, 3), 4),
              _side((7, 1), 5)]
    results = PairExplanation.one_to_many(query, others, similarity)
    assert [r.b is b for r, b in zip(results, others)] == [True] * 5
    for result, b in zip(results, others):
        u = torch.cat([query.contributions, query.tokens]).double()
        v = b.contributions if b.tokens is None else torch.cat([b.contributions, b.tokens])
        e_a, e_b = query.embedding.double(), b.embedding.double()
        if similarity == "euclidean":
            o_a, o_b = u @ (e_a - e_b), -(v.double() @ (e_a - e_b))
            score = float(((e_a - e_b) ** 2).sum())
        else:
            scale = 1 / (e_a.norm() * e_b.norm()) if similarity == "cosine" else 1.0
            o_a, o_b = (u @ e_b) * scale, (v.double() @ e_a) * scale
            score = float(e_a @ e_b * scale)
        assert result.score == pytest.approx(score, rel=1e-5)
        torch.testing.assert_close(torch.cat([result.overall_a_flat, result.tokens_a]), o_a)
        torch.testing.assert_close(torch.cat([result.overall_b_flat, result.tokens_b]), o_b)
        assert len(result.tokens_b) == (0 if b.tokens is None else 1)
        single = PairExplanation.from_sides(query, b, similarity)
        assert single.score == pytest.approx(result.score, rel=1e-6)


def test_one_to_many_turns_a_large_gallery_into_float64_a_chunk_at_a_time(monkeypatch):
    """Chunks of two sides (a budget of 2 x 6 x 6 values): the same maps and scores."""
    from simexplain import explanation
    query, others = _side((2, 3), 0, tokens=1), [_side((2, 3), 10 + k) for k in range(5)]
    whole = explanation.PairExplanation.one_to_many(query, others, "cosine")
    monkeypatch.setattr(explanation, "ONE_TO_MANY_VALUES", 2 * 6 * 6)
    stacked = []
    real_stack = torch.stack
    monkeypatch.setattr(torch, "stack", lambda ts, *a, **k: stacked.append(len(ts)) or
                        real_stack(ts, *a, **k))
    chunked = explanation.PairExplanation.one_to_many(query, others, "cosine")
    assert stacked == [2, 2, 2, 2]  # each chunk's rows and embeddings; the fifth side alone
    for got, expected in zip(chunked, whole):
        assert got.score == pytest.approx(expected.score, rel=1e-6)
        torch.testing.assert_close(got.overall_b_flat, expected.overall_b_flat)
        torch.testing.assert_close(got.overall_a_flat, expected.overall_a_flat)
