"""Relative overall maps and point-map kinds (METHOD.md, "Relative maps", "Point-map kinds"),
checked against independent computations: autograd on the model's own embeddings, Grad-CAM
computed here by hand, explicit loops with torch's cosine."""

import pytest
import torch
import torch.nn.functional as F

from simexplain import Explainer
from simexplain.errors import NoPointMap, SimexplainError
from simexplain.explanation import POINT_MAP_KINDS
from simexplain.toy import HeadModel


def image(seed, size=32):
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(seed))


def explainer_for(head="gap", similarity="cosine", normalize=True, bias=True):
    torch.manual_seed(0)
    return Explainer(HeadModel(head, normalize=normalize, bias=bias).eval(), "features",
                     similarity=similarity)


@pytest.mark.parametrize("similarity", ["cosine", "dot", "euclidean"])
@pytest.mark.parametrize("head", ["gap", "gmp", "mlp", "flatten"])
def test_relative_maps_sum_to_zero_and_follow_the_closed_form(head, similarity):
    explainer = explainer_for(head, similarity, normalize=similarity == "cosine")
    result = explainer.explain(image(1), image(2))
    for side, other, rel in (("a", "b", result.relative_a), ("b", "a", result.relative_b)):
        here, there = getattr(result, side), getattr(result, other)
        assert rel.shape == here.grid
        assert abs(float(rel.sum())) < 1e-9 * max(1.0, float(rel.abs().sum()))
        # METHOD.md: R[p] = k u_p . (e_other - (e . e_other / |e|^2) e)
        e, f = here.embedding.double(), there.embedding.double()
        k = {"cosine": 1 / float(e.norm() * f.norm()), "dot": 1.0, "euclidean": -1.0}[similarity]
        orthogonal = f - (e @ f) / (e @ e) * e
        expected = k * here.contributions.double() @ orthogonal
        # float32 forward pass: agreement to float32 precision of the map's scale
        torch.testing.assert_close(rel.flatten(), expected, rtol=1e-4,
                                   atol=1e-5 * float(expected.abs().max()))


@pytest.mark.parametrize("head", ["gap", "gmp", "flatten", "mlp"])
def test_relative_map_of_cosine_is_the_first_order_change(head):
    """R_a[p] = u_p . ds/de_a, ds/de_a by autograd on the model's own embeddings."""
    explainer = explainer_for(head, "cosine")
    a, b = image(3), image(4)
    result = explainer.explain(a, b)
    model = explainer.stream_a.model
    with torch.no_grad():
        e_a, e_b = model(a)[0], model(b)[0]
    e_a.requires_grad_(True)
    grad, = torch.autograd.grad(F.cosine_similarity(e_a, e_b, dim=0), e_a)
    u = result.a.contributions.double()
    torch.testing.assert_close(result.relative_a.flatten(), u @ grad.double(),
                               rtol=1e-4, atol=1e-7)


def gradcam_before_relu(model, features, a, b):
    """Grad-CAM on the cosine of the model's embeddings, without its ReLU, by hand."""
    captured = []
    hook = features.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        e_a, e_b = model(a)[0], model(b)[0]
    finally:
        hook.remove()
    s = F.cosine_similarity(e_a, e_b, dim=0)
    grads = torch.autograd.grad(s, captured)
    return [(g.mean(dim=(2, 3), keepdim=True) * f).sum(1)[0].detach()
            for f, g in zip(captured, grads)]


@pytest.mark.parametrize("normalize", [True, False])
def test_relative_map_is_gradcam_before_relu_under_gap(normalize):
    explainer = explainer_for("gap", "cosine", normalize=normalize, bias=False)
    a, b = image(5), image(6)
    result = explainer.explain(a, b)
    model = explainer.stream_a.model
    cam_a, cam_b = gradcam_before_relu(model, model.features, a, b)
    torch.testing.assert_close(result.relative_a.float(), cam_a, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(result.relative_b.float(), cam_b, rtol=1e-4, atol=1e-6)


def test_relative_saliency_method_returns_both_maps():
    explainer = explainer_for("gmp", "cosine")
    a, b = image(7), image(8)
    result = explainer.explain(a, b)
    map_a, map_b = explainer.saliency(a, b, "relative")
    torch.testing.assert_close(map_a, result.relative_a.float())
    torch.testing.assert_close(map_b, result.relative_b.float())


# -- point-map kinds ------------------------------------------------------------------------------
def cosine_by_loops(query, others):
    return torch.tensor([float(F.cosine_similarity(query, v, dim=0)) for v in others],
                        dtype=torch.float64)


@pytest.mark.parametrize("kind", ["match", "match-centred"])
def test_match_kinds_equal_an_independent_cosine(kind):
    result = explainer_for("mlp").explain(image(1), image(2, size=48))  # grids 8x8, 12x12
    u, v = result.a.contributions.double(), result.b.contributions.double()
    if kind == "match-centred":
        u, v = u - u.mean(0), v - v.mean(0)
    # cell (3, 5) of a's 8x8 grid on 32 px: centre pixel (4 * 3 + 1.5, 4 * 5 + 1.5)
    got = result.point_map("a", (13.5, 21.5), kind=kind)
    assert got.shape == (12, 12)
    torch.testing.assert_close(got.flatten(), cosine_by_loops(u[3 * 8 + 5], v))
    # half way between cells (3, 3) and (3, 4): the interpolated contribution
    got = result.point_map("a", (13.5, 15.5), kind=kind)
    torch.testing.assert_close(got.flatten(),
                               cosine_by_loops((u[3 * 8 + 3] + u[3 * 8 + 4]) / 2, v))
    # side b pointing at a; a region of four whole cells is their sum
    got = result.point_map("b", (4 * 2 + 1.5, 4 * 9 + 1.5), kind=kind)
    torch.testing.assert_close(got.flatten(), cosine_by_loops(v[2 * 12 + 9], u))
    got = result.region_map("a", (0, 0, 8, 8), kind=kind)
    torch.testing.assert_close(got.flatten(),
                               cosine_by_loops(u[0] + u[1] + u[8] + u[9], v))


def test_contribution_kind_is_the_pairwise_row():
    result = explainer_for("mlp").explain(image(1), image(2))
    torch.testing.assert_close(result.point_map("a", (13.5, 21.5), kind="contribution"),
                               result.pairwise[3, 5])


def test_unknown_kind_is_an_error():
    result = explainer_for("gap").explain(image(1), image(2))
    with pytest.raises(SimexplainError, match="unknown point-map kind 'best'"):
        result.point_map("a", (3, 3), kind="best")


def test_gmp_point_without_contribution_has_no_contribution_map_but_a_match_map():
    result = explainer_for("gmp", bias=False).explain(image(1), image(2))
    norms = result.a.contributions.norm(dim=1)
    empty, full = int(torch.argmin(norms)), int(torch.argmax(norms))
    assert float(norms[empty]) == 0.0  # no channel's maximum lies there
    rows, cols = result.a.grid
    centre = lambda i: (4 * (i // cols) + 1.5, 4 * (i % cols) + 1.5)  # noqa: E731
    with pytest.raises(NoPointMap, match="no map"):
        result.point_map("a", centre(empty), kind="contribution")
    for kind in POINT_MAP_KINDS:
        assert torch.isfinite(result.point_map("a", centre(full), kind=kind)).all()
    # the match kinds compare whole features as the head maps them: every point has a map
    for kind in ("match", "match-centred"):
        assert torch.isfinite(result.point_map("a", centre(empty), kind=kind)).all()


def _layer_features(model, x):
    """(P, C) the explained layer's output, read by a hook on the model's own forward pass."""
    kept = []
    handle = model.features.register_forward_hook(lambda _m, _i, out: kept.append(out))
    with torch.no_grad():
        model(x)
    handle.remove()
    return kept[0][0].flatten(1).T.double()


@pytest.mark.parametrize("kind", ["match", "match-centred"])
def test_gmp_match_maps_compare_the_heads_map_of_whole_features(kind):
    """Independent computation: W A_p for every position (W: the head's Linear), cosine."""
    explainer = explainer_for("gmp")
    model = explainer.stream_a.model
    x_a, x_b = image(1), image(2, size=48)
    result = explainer.explain(x_a, x_b)
    weight = model.head[2].weight.detach().double()
    f_a = _layer_features(model, explainer.prepare(x_a).tensor) @ weight.T
    f_b = _layer_features(model, explainer.prepare(x_b).tensor) @ weight.T
    if kind == "match-centred":
        f_a, f_b = f_a - f_a.mean(0), f_b - f_b.mean(0)
    close = dict(rtol=1e-5, atol=1e-6)  # the model runs in float32
    got = result.point_map("a", (13.5, 21.5), kind=kind)
    torch.testing.assert_close(got.flatten(), cosine_by_loops(f_a[3 * 8 + 5], f_b), **close)
    got = result.point_map("b", (4 * 2 + 1.5, 4 * 9 + 1.5), kind=kind)
    torch.testing.assert_close(got.flatten(), cosine_by_loops(f_b[2 * 12 + 9], f_a), **close)


def test_class_token_head_gives_every_patch_a_match_map():
    """A class-token head: no patch token carries a contribution of its own, but each has a
    match map (its features as the head maps them)."""
    from simexplain.toy import TokenModel
    torch.manual_seed(0)
    from simexplain.errors import NoSpatialMap
    explainer = Explainer(TokenModel(pool="cls").eval(), "tokens")
    with pytest.warns(NoSpatialMap):  # the overall map has nothing spatial: said, not drawn flat
        result = explainer.explain(torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32))
    assert not result.a.spatial
    assert result.a.projected is not None and result.a.projected.shape[0] == 64
    maps = [result.point_map("a", (4 * r + 1.5, 4 * c + 1.5)) for r, c in ((0, 0), (5, 2))]
    assert all(torch.isfinite(m).all() for m in maps)
    assert not torch.allclose(maps[0], maps[1])  # the map follows the point
