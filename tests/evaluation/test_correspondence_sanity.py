"""PCK on a known affine map; Spearman falls when a toy model is randomised."""

import numpy as np
import pytest
import torch

from simexplain.evaluation import correspondence as co
from simexplain.evaluation import sanity
from simexplain.evaluation.common import spearman
from simexplain.explainer import Explainer
from simexplain.geometry import apply_affine, cell_centres
from simexplain.toy import HeadModel


def test_pck_on_a_known_affine():
    t = np.array([[1.0, 0, 10], [0, 1.0, -4], [0, 0, 1]])  # shift by (10, -4)
    points = np.array([[20.0, 20.0], [30.0, 40.0], [50.0, 50.0]])
    truth = apply_affine(t, points)
    np.testing.assert_allclose(truth, [[30, 16], [40, 36], [60, 46]])
    predicted = truth + np.array([[0, 0], [0, 6], [0, 15]])  # errors 0, 6, 15 px
    assert co.pck(predicted, truth, (100, 100), 0.05).tolist() == [True, False, False]
    assert co.pck(predicted, truth, (100, 100), 0.1).tolist() == [True, True, False]


def test_predict_and_cosine_map():
    grid = np.zeros((4, 4))
    grid[1, 2] = 1
    assert co.predict(grid, (40, 40)).tolist() == [15.0, 25.0]
    feats_a = torch.zeros(2, 2, 3)
    feats_a[1, 0] = torch.tensor([1.0, 0, 0])
    feats_b = torch.rand(3, 3, 3) * 0.1
    feats_b[2, 1] = torch.tensor([5.0, 0, 0])
    sims = co.cosine_map(feats_a, feats_b, (15.0, 5.0), (20, 20))  # centre of cell (1, 0)
    assert np.unravel_index(int(sims.argmax()), (3, 3)) == (2, 1)


def test_query_points_stay_inside():
    t = np.array([[1.0, 0, 20], [0, 1.0, 0], [0, 0, 1]])
    points = co.query_points((4, 4), (40, 40), t, None, np.random.default_rng(0))
    assert len(points) == 8  # rows 3 and 4 of centres map below the border margin
    mapped = apply_affine(t, points)
    assert (mapped >= 5).all() and (mapped <= 35).all()


def toy_explainer(model):
    return Explainer(model, "features", similarity="cosine", transform=lambda im: im)


def test_stages_go_from_the_head_down():
    torch.manual_seed(0)
    model = HeadModel(head="mlp", dim=8, channels=8, depth=3).eval()
    x = torch.rand(1, 3, 32, 32)
    trunk, inside, head = sanity.parametrised_layers(model, "features.2", x)
    assert head == ["features.4", "head.2", "head.4"]
    assert inside == ["features.2"] and trunk == ["features.0"]
    stages = sanity.randomisation_stages(trunk, inside, head)
    assert [label for label, _ in stages] == ["head", "+ explained layer", "+ whole trunk"]
    assert stages[-1][1] == head + inside + trunk
    broken = sanity.randomise(model, ["head.2"], seed=0)
    assert not torch.equal(broken.head[2].weight, model.head[2].weight)
    assert torch.equal(broken.head[4].weight, model.head[4].weight)


def test_spearman_falls_under_randomisation():
    torch.manual_seed(0)
    model = HeadModel(head="gap", dim=16, channels=16, depth=3).eval()
    explainer = toy_explainer(model)
    gen = torch.Generator().manual_seed(1)
    pairs = [(torch.rand(1, 3, 64, 64, generator=gen), torch.rand(1, 3, 64, 64, generator=gen))
             for _ in range(4)]
    trunk, inside, head = sanity.parametrised_layers(model, "features", pairs[0][0])
    stages = sanity.randomisation_stages(trunk, inside, head)
    assert [label for label, _ in stages][0] == "head"
    correlations = []
    for s, (_, names) in enumerate(stages):
        broken = toy_explainer(sanity.randomise(model, names, seed=s))
        correlations.append(np.mean([
            spearman(explainer.explain(a, b).overall_b, broken.explain(a, b).overall_b)
            for a, b in pairs]))
        same = toy_explainer(sanity.randomise(model, [], seed=s))
        assert spearman(explainer.explain(*pairs[0]).overall_b,
                        same.explain(*pairs[0]).overall_b) == pytest.approx(1.0)
    assert correlations[-1] < 0.5


def test_stereo_truth_shifts_columns_by_the_disparity_in_resized_pixels():
    disparity = np.full((100, 200), 20.0)
    disparity[:50, :] = np.inf  # unknown in the top half
    points = np.array([[75.0, 100.0], [10.0, 100.0]])  # at half size: rows 150 and 20 orig.
    truth = co.stereo_truth(points / 2, disparity, (50, 100))
    np.testing.assert_allclose(truth[0], [37.5, 50.0 - 10.0])  # 20 px orig. = 10 px at half size
    assert np.isnan(truth[1, 1])
    found, true = co.stereo_points((5, 10), (50, 100), disparity)
    # the top half (unknown) and the left column (its true point leaves b) are left out
    assert len(found) == len(true) == 3 * 9 and (found[:, 0] >= 25).all()
    np.testing.assert_allclose(true[:, 1], found[:, 1] - 10.0)


def test_points_without_contribution_are_counted_as_no_map_not_wrong():
    torch.manual_seed(0)
    explainer = toy_explainer(HeadModel(head="gmp", bias=False).eval())
    a, b = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    points = cell_centres((0, 0, 32, 32), (8, 8))
    methods = ["point-contribution", "point-match", "cosine"]
    scores = co.Scores(methods)
    co.score_pair(scores, methods, explainer, a, b, points, points, 1, 2)
    u = explainer.explain(a, b).a.contributions
    empty = int((u.norm(dim=1) == 0).sum())
    assert 0 < empty < 64
    # the contribution kind has no map there; the match kinds compare whole features
    assert scores.no_map == {"point-contribution": empty, "point-match": 0, "cosine": 0}
    # a point with no map is a miss
    assert scores.hits["point-contribution"][0.1][0] <= (64 - empty) / 64
