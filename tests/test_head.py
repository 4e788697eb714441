"""Completeness of the decomposition for every supported head, checked against the forward pass."""

import pytest
import torch

from simexplain import Explainer
from simexplain.toy import HEADS, HeadModel, TokenModel, trunk

EXACT_HEADS = [h for h in HEADS if h != "softplus"]  # softplus is no gate: first order
SIMILARITIES = ["cosine", "dot", "euclidean"]


def make(head, normalize=True, seed=0):
    torch.manual_seed(seed)
    return HeadModel(head=head, normalize=normalize).eval()


def images(n=1, seed=1, size=32):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def score(e_a, e_b, similarity):
    """The similarity by torch's own functions (independent of simexplain.similarity)."""
    if similarity == "cosine":
        return torch.nn.functional.cosine_similarity(e_a, e_b, dim=0)
    if similarity == "dot":
        return torch.dot(e_a, e_b)
    return torch.dist(e_a, e_b) ** 2


def relative_gap(total, s):
    return abs(total - s) / max(abs(s), 1e-6)


@pytest.mark.parametrize("head", EXACT_HEADS)
@pytest.mark.parametrize("similarity", SIMILARITIES)
@pytest.mark.parametrize("normalize", [True, False])
def test_completeness_single_pair(head, similarity, normalize):
    model = make(head, normalize)
    explainer = Explainer(model, "features", similarity=similarity)
    a, b = images(seed=1), images(seed=2)
    result = explainer.explain(a, b)
    with torch.no_grad():
        expected = float(score(model(a)[0], model(b)[0], similarity))
    assert result.score == pytest.approx(expected, rel=1e-5, abs=1e-6)
    if similarity == "euclidean":
        total = float(result.overall_a.sum() + result.overall_b.sum())
    else:
        total = float(result.pairwise.sum())
        # each side's overall map sums to the score on its own
        assert relative_gap(float(result.overall_a.sum()), expected) < 1e-4
        assert relative_gap(float(result.overall_b.sum()), expected) < 1e-4
    assert relative_gap(total, expected) < 1e-4
    assert result.residual <= 1e-4 * max(abs(expected), 1e-6)


@pytest.mark.parametrize("head", EXACT_HEADS)
def test_contributions_sum_to_embedding_in_a_batch(head):
    model = make(head)
    explainer = Explainer(model, "features")
    x = images(n=5, seed=3)
    c = explainer.contributions(x)
    with torch.no_grad():
        e = model(x)
    assert c.positions.shape == (5, 64, 8)
    torch.testing.assert_close(c.embedding, e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(c.positions.sum(1), e, rtol=1e-4, atol=1e-5)
    assert float(c.residual.max()) < 1e-4


def test_batch_equals_single():
    model = make("mlp")
    explainer = Explainer(model, "features")
    x = images(n=3, seed=4)
    batch = explainer.contributions(x).positions
    for i in range(3):
        single = explainer.contributions(x[i:i + 1]).positions[0]
        torch.testing.assert_close(batch[i], single, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_two_stream_models_with_different_trunks(similarity):
    torch.manual_seed(0)
    street = HeadModel("gap", channels=16, depth=2).eval()
    aerial = HeadModel("gmp", channels=8, depth=3).eval()
    explainer = Explainer(street, "features", similarity=similarity, model_b=aerial,
                          layer_b="features")
    a, b = images(seed=5, size=32), images(seed=6, size=48)
    result = explainer.explain(a, b)
    assert result.pairwise.shape == (8, 8, 6, 6)
    with torch.no_grad():
        expected = float(score(street(a)[0], aerial(b)[0], similarity))
    assert result.score == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert result.residual <= 1e-4 * max(abs(expected), 1e-6)


def test_transformer_tokens_with_class_token():
    torch.manual_seed(0)
    model = TokenModel().eval()
    explainer = Explainer(model, "tokens", similarity="cosine")
    result = explainer.explain(images(seed=7), images(seed=8))
    assert result.overall_a.shape == (8, 8)
    with torch.no_grad():
        expected = float(score(model(images(seed=7))[0], model(images(seed=8))[0], "cosine"))
    assert result.score == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # the class token's share is reported apart from the grid; together they make the score
    assert result.tokens_a.shape == (1,) and result.token_share_a != 0
    total = float(result.overall_a.sum()) + result.token_share_a
    assert total == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert result.residual <= 1e-4 * abs(expected)


@pytest.mark.parametrize("pool, layer", [("mean", "tokens"), ("cls", "tokens"),
                                         (None, "features")])
def test_read_back_holds_the_worst_residual_and_each_rows_spatial(pool, layer):
    """`Contributions.read_back` (one transfer from the device) against the tensors it reads:
    the worst row's residual, recomputed here from the contributions and the model's
    embedding, and `spatial` per row where there are prefix tokens (all True without)."""
    torch.manual_seed(0)
    model = TokenModel(pool=pool).eval() if pool else make("gap")
    stream = Explainer(model, layer).stream_a
    x = torch.cat([images(seed=1), images(seed=2)])
    for _ in range(2):  # recorded, then known (read back with the known head's check)
        c = stream.contributions(x)
        total = c.positions.double().sum(1)
        if c.tokens is not None:
            total += c.tokens.double().sum(1)
        with torch.no_grad():
            embedding = model(x).double()
        worst = float(((total - embedding).norm(dim=1) / embedding.norm(dim=1)).max())
        assert c.read_back.worst_residual == pytest.approx(worst, rel=1e-3, abs=1e-7)
        expected = [bool(v) for v in c.spatial] if c.tokens is not None else [True, True]
        assert c.read_back.spatial == expected
    if pool is None:  # set by the known head's check (token heads here are recorded: lazy)
        assert c.path.endswith("affine, cached")
    assert c.read_back.spatial == ([False, False] if pool == "cls" else [True, True])


def test_inexact_head_warns_once_and_reports_residual():
    model = make("softplus")
    explainer = Explainer(model, "features", similarity="dot")
    with pytest.warns(UserWarning, match="not exactly decomposable"):
        result = explainer.explain(images(seed=1), images(seed=2))
    assert result.residual > 1e-5
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explainer.explain(images(seed=3), images(seed=4))  # no second warning


def test_custom_functional_normalisation_is_frozen():
    """A head that normalises by hand (x / x.norm()) is still exact: the norm is frozen."""

    class Custom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.features = trunk()
            self.fc = torch.nn.Linear(32, 8)

        def forward(self, x):
            e = self.fc(self.features(x).mean(dim=(2, 3)))
            return e / e.norm(dim=1, keepdim=True)

    torch.manual_seed(0)
    model = Custom().eval()
    result = Explainer(model, "features", similarity="dot").explain(images(seed=1), images(seed=2))
    assert result.residual < 1e-5


def test_chunked_tangents_give_the_same_contributions(monkeypatch):
    import simexplain.adapters as adapters
    model = make("mlp")
    x = images(n=2, seed=9)
    whole = Explainer(model, "features").contributions(x).positions
    monkeypatch.setattr(adapters, "TANGENT_BUDGET", 2 * 32 * 64 * 10)  # ~10 tangents a chunk
    chunked = Explainer(model, "features").contributions(x).positions
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-7)
