"""The index kinds (retrieval.kinds): each builds a FAISS structure whose candidates hold the
brute-force best rows, refuses what it cannot take, and round-trips through its files."""

import numpy as np
import pytest

from simexplain.errors import SimexplainError
from simexplain.retrieval import kinds, manifest


def vectors(count: int = 600, dim: int = 16, seed: int = 0) -> np.ndarray:
    """Unit vectors around 20 centres (embeddings of a gallery cluster by content)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(20, dim))
    rows = (centres[rng.integers(0, 20, count)] + 0.3 * rng.normal(size=(count, dim)))
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("name", list(kinds.KINDS))
def test_candidates_hold_the_brute_force_best(name):
    data = vectors()
    kind = kinds.kind(name)
    params = kinds.with_defaults(name, len(data), None, data.shape[1])
    structure = kind.build(lambda a, b: data[a:b], len(data), data.shape[1], params)
    assert structure.ntotal == len(data)
    queries = vectors(20, seed=1)
    for query in queries:
        fetch = kind.configure(structure, params, 50)
        _, rows = structure.search(query[None], fetch)
        if name == "flat":                   # exact: the best row first
            assert rows[0][0] == int(np.argmax(data @ query))
    # the files: the structures written and read back search the same
    restored = kind.from_structures(kind.structures(structure))
    assert restored.ntotal == len(data)


def test_approximate_kinds_find_most_of_the_best():
    data = vectors(2000)
    queries = vectors(50, seed=2)
    truth = np.argmax(queries @ data.T, axis=1)
    for name in ("ivf", "hnsw", "ivfpq"):
        kind = kinds.kind(name)
        params = kinds.with_defaults(name, len(data), None, data.shape[1])
        structure = kind.build(lambda a, b: data[a:b], len(data), data.shape[1], params)
        found = []
        for query, best in zip(queries, truth):
            _, rows = structure.search(query[None], kind.configure(structure, params, 32))
            found.append(best in rows[0])
        assert np.mean(found) >= 0.8, (name, np.mean(found))


def test_a_small_ivf_gallery_builds_without_a_faiss_warning(capfd):
    """Under 39 vectors the default is one list, which FAISS would warn needs more points."""
    data = vectors(20)
    params = kinds.with_defaults("ivf", len(data), None, data.shape[1])
    assert params["nlist"] == 1
    structure = kinds.kind("ivf").build(lambda a, b: data[a:b], len(data), data.shape[1], params)
    assert structure.ntotal == 20
    assert "WARNING" not in capfd.readouterr().err


def test_defaults_and_refusals():
    assert kinds.list_count(10_000) == 100 and kinds.list_count(100) == 2
    assert kinds.list_count(1) == 1
    assert kinds.with_defaults("flat", 10, None, 8) == {}
    ivf = kinds.with_defaults("ivf", 10_000, {"nprobe": 3}, 8)
    assert ivf == {"nlist": 100, "nprobe": 3}
    with pytest.raises(SimexplainError, match="unknown parameters"):
        kinds.with_defaults("hnsw", 100, {"nlist": 4}, 8)
    with pytest.raises(SimexplainError, match="unknown index kind 'annoy'"):
        kinds.kind("annoy")
    with pytest.raises(SimexplainError, match="shards need --kind ivfpq"):
        kinds.check_shards("ivf", 2)
    kinds.check_shards("ivfpq", 4)
    assert kinds.kind("ivfpq").stored_dim(17) == 20 and kinds.kind("flat").stored_dim(17) == 17


def test_the_manifest_accepts_exactly_these_kinds():
    assert tuple(kinds.KINDS) == manifest.KINDS
