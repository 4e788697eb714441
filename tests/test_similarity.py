"""Similarity objects against independent computations (torch's own functions, explicit sums),
region vectors and weighted maps against the full pairwise map, and a user's own similarity
end to end (explanation and index search against brute force)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from simexplain import Explainer, SimexplainError, maps, regions
from simexplain import similarity as similarities
from simexplain.images import Preprocess
from simexplain.similarity import Dot, Similarity
from simexplain.toy import HeadModel

NAMES = ("cosine", "dot", "euclidean")


def reference(e_a: torch.Tensor, e_b: torch.Tensor, name: str) -> float:
    """The similarity by torch's own functions."""
    if name == "cosine":
        return float(torch.nn.functional.cosine_similarity(e_a, e_b, dim=0))
    if name == "dot":
        return float(torch.dot(e_a, e_b))
    return float(torch.dist(e_a, e_b) ** 2)


def contributions(seed: int, positions: int = 6, dim: int = 5) -> torch.Tensor:
    return torch.randn(positions, dim, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


@pytest.mark.parametrize("name", NAMES)
def test_scores_and_decomposition_against_explicit_sums(name):
    sim = similarities.get(name)
    u, v = contributions(0), contributions(1, positions=4)
    e_a, e_b = u.sum(0), v.sum(0)
    s = reference(e_a, e_b, name)
    assert float(sim.score(e_a, e_b)) == pytest.approx(s, rel=1e-12)
    d = sim.pairwise(u, v, e_a, e_b)
    o_a, o_b = sim.overall(u, v, e_a, e_b)
    assert d.shape == (6, 4) and o_a.shape == (6,) and o_b.shape == (4,)
    # entry by entry, as METHOD.md writes them
    p, q = 2, 3
    dot_pq = float(u[p] @ v[q])
    expected = {"dot": dot_pq, "cosine": dot_pq / float(e_a.norm() * e_b.norm()),
                "euclidean": -2 * dot_pq}[name]
    assert float(d[p, q]) == pytest.approx(expected, rel=1e-12)
    assert float(sim.total(d, o_a, o_b)) == pytest.approx(s, rel=1e-10)
    if name == "euclidean":
        assert float(o_a[p]) == pytest.approx(float(u[p] @ (e_a - e_b)), rel=1e-12)
    else:  # each side sums to the score on its own
        assert float(o_a.sum()) == pytest.approx(s, rel=1e-10)
        assert float(o_b.sum()) == pytest.approx(s, rel=1e-10)


@pytest.mark.parametrize("name", NAMES)
def test_all_pairs_and_partial_scores(name):
    sim = similarities.get(name)
    rng = np.random.default_rng(0)
    queries, gallery = rng.standard_normal((3, 5)), rng.standard_normal((7, 5))
    got = similarities.scores(queries, gallery, name)
    want = [[reference(torch.from_numpy(a), torch.from_numpy(b), name) for b in gallery]
            for a in queries]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert similarities.scores(queries[0], gallery, name).shape == (7,)
    # a region's partial similarity is sum_p w_p O_a[p] for every gallery row
    u = contributions(2)
    weights = torch.tensor([0.0, 0.5, 1.0, 1.0, 0.25, 0.0], dtype=torch.float64)
    q = regions.region_vector(weights, u)
    torch.testing.assert_close(q, (weights[:, None] * u).sum(0))
    partial = similarities.scores(q, gallery, name, query_embeddings=u.sum(0))
    for g, value in zip(gallery, partial):
        v = torch.from_numpy(g)[None]  # one position carrying the whole embedding
        o_a, _ = sim.overall(u, v, u.sum(0), v.sum(0))
        assert value == pytest.approx(float(weights @ o_a), rel=1e-10, abs=1e-12)
    with pytest.raises(SimexplainError, match="query_embeddings"):
        similarities.scores(q, gallery, name, query_embeddings=np.ones(3))


@pytest.mark.parametrize("name", NAMES)
def test_index_vectors_rank_like_the_scores(name):
    """The inner product of stored and query vectors orders the gallery as the exact scores
    do, for whole queries and for region vectors."""
    sim = similarities.get(name)
    rng = np.random.default_rng(1)
    gallery = rng.standard_normal((40, 6)).astype(np.float32)
    stored = sim.index_vectors(gallery).astype(np.float64)
    u = rng.standard_normal((5, 6))
    e_a = u.sum(0)
    for vector, region in ((e_a, False), (u[:2].sum(0), True)):
        inner = stored @ sim.index_query(vector, region)
        exact = similarities.scores(vector, gallery, name, e_a if region else None)
        np.testing.assert_array_equal(np.argsort(-inner, kind="stable"),
                                      sim.best_first(exact))
    # best first: ascending for the distance, descending for the others
    ranked = sim.best_first(np.array([0.2, 0.9, -1.0]))
    assert list(ranked) == ([2, 0, 1] if name == "euclidean" else [1, 0, 2])


def test_registry_names_and_errors():
    assert similarities.names()[:3] == NAMES
    cosine = similarities.get("cosine")
    assert similarities.get(cosine) is cosine
    assert cosine == "cosine" and str(cosine) == "cosine" and cosine != similarities.get("dot")
    assert cosine.without_normalisation() == "dot" and cosine.closeness(1.0) == 1.0
    assert similarities.get("euclidean").closeness(torch.tensor(2.0)) == -2.0
    with pytest.raises(SimexplainError, match="unknown similarity 'cos'"):
        similarities.get("cos")
    with pytest.raises(SimexplainError, match="index vectors"):
        Similarity().index_vectors(np.ones((1, 2)))


def test_weighted_maps_equal_rows_of_the_pairwise_map():
    torch.manual_seed(0)
    explainer = Explainer(HeadModel("gap", dim=8, channels=8).eval(), "features",
                          similarity="cosine", transform=Preprocess(size=(32, 48)))
    images = torch.randn(2, 1, 3, 32, 48, generator=torch.Generator().manual_seed(3))
    pair = explainer.explain(images[0], images[1])
    box = (4, 6, 20, 40)
    for side, d in (("a", pair.pairwise_flat), ("b", pair.pairwise_flat.T)):
        here = pair.a if side == "a" else pair.b
        other = pair.b if side == "a" else pair.a
        weights = maps.region_weights(box, here.grid, here.image_size)
        torch.testing.assert_close(pair.region_map(side, box, kind="contribution"),
                                   (weights @ d).reshape(other.grid))
        point = maps.point_weights((10.3, 17.8), here.grid, here.image_size)
        torch.testing.assert_close(pair.point_map(side, (10.3, 17.8), kind="contribution"),
                                   (point @ d).reshape(other.grid))


class HalfDot(Similarity):
    """A user's similarity: half the dot product (written as the README describes)."""

    name = "half-dot"

    def score(self, e_a, e_b):
        return 0.5 * (e_a * e_b).sum(-1)

    def pairwise(self, u, v, e_a, e_b):
        return 0.5 * (u @ v.transpose(-1, -2))

    def overall(self, u, v, e_a, e_b):
        return 0.5 * (u * e_b[..., None, :]).sum(-1), 0.5 * (v * e_a[..., None, :]).sum(-1)

    def scores(self, queries, gallery):
        return 0.5 * queries @ gallery.T

    def partial_scores(self, vectors, query_embeddings, gallery):
        return 0.5 * vectors @ gallery.T

    def index_vectors(self, embeddings):
        return Dot().index_vectors(embeddings)

    def index_query(self, vector, region):
        return Dot().index_query(vector, region)


def test_a_users_similarity_explains_and_searches(tmp_path):
    torch.manual_seed(0)
    model = HeadModel("gap", dim=8, channels=8, normalize=False).eval()
    explainer = Explainer(model, "features", similarity=HalfDot(),
                          transform=Preprocess(size=(32, 32)))
    generator = torch.Generator().manual_seed(5)
    images = [torch.randn(1, 3, 32, 32, generator=generator) for _ in range(9)]
    pair = explainer.explain(images[0], images[1])
    with torch.no_grad():
        expected = 0.5 * float(torch.dot(model(images[0])[0], model(images[1])[0]))
    assert pair.score == pytest.approx(expected, rel=1e-5)
    assert pair.residual < 1e-5 * abs(expected) + 1e-7
    assert json.loads(json.dumps(pair.to_dict()))["similarity"] == "half-dot"

    from simexplain.retrieval import Index
    gallery = images[1:]
    index = Index.from_vectors(explainer.embed(torch.cat(gallery), "b"),
                               similarity=HalfDot())
    index.explainer = explainer
    region = (0, 0, 16, 32)
    pairs = [explainer.explain(images[0], g) for g in gallery]
    for box in (None, region):
        scores = np.array([p.partial_score("a", box) if box else p.score for p in pairs])
        hits = index.search(images[0], k=len(gallery), region=box)
        assert [h.index for h in hits] == list(np.argsort(-scores, kind="stable"))
        np.testing.assert_allclose([h.score for h in hits], np.sort(scores)[::-1], rtol=1e-5)
