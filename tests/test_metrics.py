import math

import numpy as np
import pytest
import torch

from simexplain.errors import SimexplainError
from simexplain import metrics
from simexplain.metrics import map_at_r, recall_at_k


def _angles(*degrees):
    """Unit vectors in the plane at the given angles: cosine similarity orders by angle."""
    radians = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return torch.tensor(np.stack([np.cos(radians), np.sin(radians)], axis=1), dtype=torch.float32)


# A gallery spread over the circle; the query sits at 0 degrees, so the ranking is by |angle|.
GALLERY = _angles(10, 20, 30, 40, 50)
QUERY = _angles(0)


def test_recall_at_k_known_answers():
    labels = torch.tensor([1, 0, 0, 1, 0])  # ranked 10, 20, 30, ... degrees from the query
    assert recall_at_k(QUERY, [1], GALLERY, labels, k=1) == 1.0
    assert recall_at_k(QUERY, [0], GALLERY, labels, k=1) == 0.0
    assert recall_at_k(QUERY, [0], GALLERY, labels, k=2) == 1.0


def test_recall_uses_cosine_not_euclidean():
    # A long vector at 40 degrees is nearer in Euclidean terms than a unit vector at 10 degrees
    # would be for the query scaled down; cosine ignores lengths.
    gallery = torch.cat([_angles(10) * 100.0, _angles(40) * 0.01])
    assert recall_at_k(QUERY * 0.01, [1], gallery, [1, 0], k=1) == 1.0


def test_recall_mixed_queries():
    queries = torch.cat([_angles(0), _angles(45), _angles(90)])
    gallery = torch.cat([_angles(2), _angles(47), _angles(85)])  # 85 is 2nd nearest to 45
    gallery_labels = [0, 1, 2]
    assert recall_at_k(queries, [0, 1, 2], gallery, gallery_labels) == 1.0
    assert recall_at_k(queries, [0, 2, 2], gallery, gallery_labels) == pytest.approx(2 / 3)
    assert recall_at_k(queries, [0, 2, 2], gallery, gallery_labels, k=2) == 1.0


def test_exclude_self():
    embeddings = torch.cat([_angles(0), _angles(1), _angles(90), _angles(91)])
    labels = [0, 1, 1, 0]
    # Without excluding itself, every query finds itself first.
    assert recall_at_k(embeddings, labels, embeddings, labels) == 1.0
    # Excluding itself: 0<->1 and 90<->91 are nearest pairs, with different labels.
    assert recall_at_k(embeddings, labels, embeddings, labels, exclude_self=True) == 0.0
    assert recall_at_k(embeddings, labels, embeddings, labels, k=3, exclude_self=True) == 1.0
    with pytest.raises(SimexplainError, match="exclude_self"):
        recall_at_k(embeddings[:3], labels[:3], embeddings, labels, exclude_self=True)


def test_map_at_r_worked_example():
    # Query label 1; gallery ranked 10,20,30,40,50 degrees with relevance 1,0,1,0,1 -> R = 3.
    # Top R = 3 results: relevant at ranks 1 and 3: AP@R = (1/1 + 2/3) / 3 = 5/9.
    labels = [1, 0, 1, 0, 1]
    assert map_at_r(QUERY, [1], GALLERY, labels) == pytest.approx(5 / 9)
    # Relevance 0,1,1,0,0 -> R = 2, top 2: rank 2 relevant: (1/2) / 2 = 1/4.
    assert map_at_r(QUERY, [1], GALLERY, [0, 1, 1, 0, 0]) == pytest.approx(1 / 4)
    # Perfect ranking -> 1; the relevant items all at the end -> 0.
    assert map_at_r(QUERY, [1], GALLERY, [1, 1, 0, 0, 0]) == pytest.approx(1.0)
    assert map_at_r(QUERY, [1], GALLERY, [0, 0, 0, 1, 1]) == pytest.approx(0.0)


def test_map_at_r_differs_from_plain_average_precision():
    # Relevance 1,0,0,1 (R = 2): AP@R only looks at the top 2 -> (1/1) / 2 = 0.5, whereas
    # ordinary average precision would be (1 + 2/4) / 2 = 0.75.
    gallery = _angles(10, 20, 30, 40)
    assert map_at_r(QUERY, ["a"], gallery, ["a", "b", "b", "a"]) == pytest.approx(0.5)


def test_map_at_r_mean_over_queries_and_exclude_self():
    labels = [0, 0, 1, 0]
    # Query 0 (0 deg, R = 2): ranked 12(0), 20(1), 180(0): top 2 -> (1/1) / 2 = 0.5
    embeddings = torch.cat([_angles(0), _angles(12), _angles(20), _angles(180)])
    # Query 1 (12 deg, R = 2): ranked 20(1) [8 deg], 0(0) [12 deg], 180(0): top 2 -> (1/2)/2 = 0.25
    # Query 2 (label 1): R = 0 -> left out of the mean.
    # Query 3 (180 deg): ranked 20(1) [160], 12(0) [168], 0(0) [180]: top 2 -> (1/2)/2 = 0.25
    expected = (0.5 + 0.25 + 0.25) / 3
    assert map_at_r(embeddings, labels, embeddings, labels, exclude_self=True) == pytest.approx(
        expected)


def test_map_at_r_no_matches_is_nan():
    assert math.isnan(map_at_r(QUERY, [7], GALLERY, [0, 1, 2, 3, 4]))


def test_chunking_gives_the_same_answer(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(300, 16, generator=generator)
    gallery = torch.randn(400, 16, generator=generator)
    query_labels = torch.randint(0, 5, (300,), generator=generator)
    gallery_labels = torch.randint(0, 5, (400,), generator=generator)
    queries[:, 0] += query_labels * 2.0
    gallery[:, 0] += gallery_labels * 2.0
    whole = (recall_at_k(queries, query_labels, gallery, gallery_labels, k=5),
             map_at_r(queries, query_labels, gallery, gallery_labels))
    self_whole = map_at_r(gallery, gallery_labels, gallery, gallery_labels, exclude_self=True)
    monkeypatch.setattr(metrics, "_BLOCK_ELEMENTS", 401 * 7)  # chunks of 7 queries
    chunked = (recall_at_k(queries, query_labels, gallery, gallery_labels, k=5),
               map_at_r(queries, query_labels, gallery, gallery_labels))
    assert chunked[0] == whole[0]
    assert chunked[1] == pytest.approx(whole[1], abs=1e-12)
    assert map_at_r(gallery, gallery_labels, gallery, gallery_labels,
                    exclude_self=True) == pytest.approx(self_whole, abs=1e-12)
    assert 0.0 < whole[1] < 1.0


def test_brute_force_agreement():
    """Compare with a direct per-query loop on random data."""
    generator = torch.Generator().manual_seed(1)
    queries = torch.randn(40, 6, generator=generator)
    gallery = torch.randn(60, 6, generator=generator)
    query_labels = torch.randint(0, 3, (40,), generator=generator)
    gallery_labels = torch.randint(0, 3, (60,), generator=generator)
    sim = torch.nn.functional.normalize(queries, dim=1) @ torch.nn.functional.normalize(
        gallery, dim=1).T
    hits, aps = 0, []
    for i in range(40):
        order = sim[i].argsort(descending=True)
        relevant = (gallery_labels[order] == query_labels[i]).tolist()
        hits += any(relevant[:3])
        r = sum(relevant)
        aps.append(sum(sum(relevant[:j + 1]) / (j + 1) for j in range(r) if relevant[j]) / r)
    assert recall_at_k(queries, query_labels, gallery, gallery_labels, k=3) == hits / 40
    assert map_at_r(queries, query_labels, gallery, gallery_labels) == pytest.approx(
        float(np.mean(aps)))


def test_input_checks():
    with pytest.raises(SimexplainError, match="labels"):
        recall_at_k(QUERY, [1, 2], GALLERY, [0] * 5)
    with pytest.raises(SimexplainError, match="differ"):
        recall_at_k(QUERY, [1], torch.zeros(5, 3), [0] * 5)
    with pytest.raises(SimexplainError, match="k must"):
        recall_at_k(QUERY, [1], GALLERY, [0] * 5, k=0)
