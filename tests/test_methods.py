"""The paper's theory about Grad-CAM and the decomposition, and the uniform saliency call."""

import pytest
import torch

from simexplain import Explainer, METHODS, SimexplainError
from simexplain.toy import HeadModel


def images(seed):
    return torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def explainer_for(head, normalize, similarity="dot", bias=False):
    torch.manual_seed(0)
    return Explainer(HeadModel(head, normalize=normalize, bias=bias).eval(), "features",
                     similarity=similarity)


def maps(explainer, method):
    return explainer.saliency(images(1), images(2), method)


def test_gap_linear_dot_all_gradcams_equal_the_decomposition():
    explainer = explainer_for("gap", normalize=False)
    dec_a, dec_b = maps(explainer, "decomposition")
    for method in ("gradcam", "gradcam-raw", "rgradcam"):
        m_a, m_b = maps(explainer, method)
        torch.testing.assert_close(m_a, torch.relu(dec_a), rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(m_b, torch.relu(dec_b), rtol=1e-4, atol=1e-6)


def test_with_l2_normalisation_gradcam_differs():
    explainer = explainer_for("gap", normalize=True)
    dec_a, _ = maps(explainer, "decomposition")
    grad_a, _ = maps(explainer, "gradcam")
    assert not torch.allclose(grad_a, torch.relu(dec_a), rtol=1e-2, atol=1e-4)
    # the raw variant drops the normalisation and agrees again (up to the positive scale)
    raw_a, _ = maps(explainer, "gradcam-raw")
    ratio = raw_a[dec_a > 1e-6] / dec_a[dec_a > 1e-6]
    assert float(ratio.std() / ratio.mean()) < 1e-4


@pytest.mark.parametrize("head", ["gmp", "flatten"])
def test_rgradcam_keeps_the_equivalence_gradcam_breaks_it(head):
    explainer = explainer_for(head, normalize=False)
    dec_a, dec_b = maps(explainer, "decomposition")
    r_a, r_b = maps(explainer, "rgradcam")
    torch.testing.assert_close(r_a, torch.relu(dec_a), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(r_b, torch.relu(dec_b), rtol=1e-4, atol=1e-6)
    g_a, _ = maps(explainer, "gradcam")
    assert not torch.allclose(g_a, torch.relu(dec_a), rtol=1e-2, atol=1e-4)


# the attention methods explain transformers: tests/test_attention_baselines.py
CNN_METHODS = sorted(name for name, cls in METHODS.items() if not cls.needs_attention)


@pytest.mark.parametrize("method", CNN_METHODS)
def test_every_method_returns_maps_on_both_grids(method):
    explainer = explainer_for("gap", normalize=True, similarity="cosine", bias=True)
    m_a, m_b = maps(explainer, method)
    assert m_a.shape == (8, 8) and m_b.shape == (8, 8)
    assert torch.isfinite(m_a).all() and torch.isfinite(m_b).all()


def test_occlusion_tracks_the_score_drop():
    """Occluding a cell changes the score by exactly the occlusion map's value."""
    explainer = explainer_for("gap", normalize=True, similarity="cosine", bias=True)
    _, occ_b = explainer.saliency(images(1), images(2), "occlusion")
    b = images(2).clone()
    b[:, :, 0:4, 4:8] = 0  # cell (0, 1) of the 8x8 grid on a 32 px image
    full = explainer.explain(images(1), images(2)).score
    dropped = explainer.explain(images(1), b).score
    assert float(occ_b[0, 1]) == pytest.approx(full - dropped, rel=1e-4, abs=1e-6)


def test_unknown_method_is_a_clear_error():
    explainer = explainer_for("gap", normalize=True)
    with pytest.raises(SimexplainError, match="unknown method 'gradcamm'"):
        maps(explainer, "gradcamm")


def test_registry_properties_match_what_the_maps_do():
    """Declared properties are checked against the maps: unsigned methods never go below 0,
    exact ones sum to the model's own score."""
    explainer = explainer_for("gap", normalize=True, similarity="cosine", bias=True)
    with torch.no_grad():
        score = float(torch.nn.functional.cosine_similarity(
            explainer.stream_a.model(images(1)), explainer.stream_a.model(images(2))))
    for name in CNN_METHODS:
        cls = METHODS[name]
        m_a, m_b = maps(explainer, name)
        if not cls.signed:
            assert float(m_a.min()) >= 0 and float(m_b.min()) >= 0, name
        if cls.exact:
            assert float(m_a.sum()) == pytest.approx(score, abs=1e-4), name


def test_methods_share_one_prepared_pair_and_occlusion_embeds_each_image_once(monkeypatch):
    from simexplain.methods import PreparedPair, get_method
    explainer = explainer_for("gap", normalize=True, similarity="cosine", bias=True)
    pair = PreparedPair.of(explainer, images(1), images(2))
    calls = []
    original = explainer.stream_a.embed
    monkeypatch.setattr(explainer.stream_a, "embed", lambda x: calls.append(len(x)) or original(x))
    occ_a, occ_b = get_method("occlusion").attribute(explainer, pair)
    # two single-image embeddings (a and b), then 64 occluded images per side in batches of 32
    assert sorted(calls) == [1, 1, 32, 32, 32, 32]
    # the same maps as from unprepared images, and a one-sided call computes one side only
    again_a, again_b = explainer.saliency(images(1), images(2), "occlusion")
    torch.testing.assert_close(occ_a, again_a)
    torch.testing.assert_close(occ_b, again_b)
    only_a, none_b = get_method("occlusion").attribute(explainer, images(1), images(2), sides="a")
    torch.testing.assert_close(only_a, occ_a)
    assert none_b is None
    # gradients are computed once for Grad-CAM and RGrad-CAM on one pair
    get_method("gradcam").attribute(explainer, pair)
    cached = dict(pair.cache)
    get_method("rgradcam").attribute(explainer, pair)
    assert pair.cache.keys() == cached.keys()


def test_a_missing_b_is_a_clear_error():
    # b may be left out only when a is a PreparedPair (it was a TypeError from deep inside)
    from simexplain.methods import PreparedPair, get_method
    explainer = explainer_for("gap", normalize=True)
    with pytest.raises(SimexplainError, match="b: an image is needed"):
        PreparedPair.of(explainer, images(1))
    with pytest.raises(SimexplainError, match="b: an image is needed"):
        get_method("decomposition").attribute(explainer, images(1))
    pair = PreparedPair.of(explainer, images(1), images(2))
    assert PreparedPair.of(explainer, pair) is pair
