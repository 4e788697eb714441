"""Large galleries: index builds on a local Ray instance (the same index as the single-process
build, resumable across engines, the CLI), and the compressed, sharded "ivfpq" index (recall
against exact search, re-scored scores equal to brute-force scores, region queries, the
manifest, save/load and damage checks)."""

from __future__ import annotations

import functools
import json
import os

import numpy as np
import pytest
import ray
import torch
from PIL import Image

from simexplain.cli import main
from simexplain.errors import SimexplainError
from simexplain.explainer import Explainer
from simexplain.images import Preprocess
from simexplain.retrieval import (
    EMBEDDINGS,
    MANIFEST,
    Index,
    IndexFormatError,
    check_replaceable,
    checkpoint_path,
)
from simexplain.toy import HeadModel
from simexplain import toy as toys

SIDE = 32
N_IMAGES = 12
TOY = ["--model", "simexplain.toy:tiny_cnn", "--layer", "features", "--size", "32"]


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray instance for the whole module (starting Ray takes seconds)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
    yield
    if started:
        ray.shutdown()


def toy_explainer(similarity: str = "euclidean") -> Explainer:
    return toys.toy_explainer(similarity=similarity, size=SIDE, dim=8, channels=8, depth=2,
                              normalize=similarity == "cosine")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    root = tmp_path_factory.mktemp("gallery")
    rng = np.random.default_rng(3)
    for i in range(N_IMAGES):
        array = rng.integers(0, 256, (SIDE + i, SIDE, 3), dtype=np.uint8)
        Image.fromarray(array).save(root / f"img_{i:02d}.png")
    (root / "broken.png").write_bytes(b"not a png")
    return root


def _same_index(a: Index, b: Index) -> None:
    assert a.paths == b.paths and a.hashes == b.hashes
    assert [s.path for s in a.skipped] == [s.path for s in b.skipped]
    np.testing.assert_allclose(a.embeddings, b.embeddings, rtol=1e-6, atol=1e-6)


# -- builds on Ray --------------------------------------------------------------------------------

def test_ray_build_equals_the_local_build(gallery, tmp_path):
    explainer = toy_explainer()
    local = Index.build(gallery, explainer, "toy", batch_size=5, progress=False,
                        out=tmp_path / "local")
    # a factory: each Ray worker builds its own model (same seed, same weights)
    factory = functools.partial(toy_explainer, "euclidean")
    distributed = Index.build(gallery, factory, "toy", batch_size=5, progress=False,
                              out=tmp_path / "ray", engine="ray", ray={"workers": 2})
    _same_index(local, distributed)
    assert len(distributed) == N_IMAGES and "broken.png" in distributed.skipped[0].path
    # the same manifest (all but the time of creation, the owner id, and so the checksum)
    manifests = [json.loads((tmp_path / name / MANIFEST).read_text()) for name in ("local", "ray")]
    for m in manifests:
        del m["created"], m["checksum"], m["gallery_root_from_index"], m["owner"]
    assert manifests[0] == manifests[1]
    loaded = Index.load(tmp_path / "ray", explainer=explainer)
    query = np.asarray(local.embeddings[3], np.float64)
    for q_e in ((query,), (0.4 * query, query)):  # whole query, and a region-like vector
        hits = [[(h.index, h.score) for h in index.search_vector(q_e[0], 5, *q_e[1:])]
                for index in (local, loaded)]
        assert hits[0] == hits[1]


def gmp_explainer() -> Explainer:
    """A max-pooling head (projected features) keeping the aspect ratio (grids differ)."""
    torch.manual_seed(0)
    model = HeadModel("gmp", dim=8, channels=8, depth=2).eval()
    return Explainer(model, "features", transform=Preprocess(size=(SIDE, SIDE),
                                                             keep_aspect=True),
                     model_name="toy-gmp")


def test_ray_explain_build_equals_the_local_one(gallery, tmp_path):
    """The workers return each image's contributions: the same explain cache as a local
    build, projected features and different grids included."""
    local = Index.build(gallery, gmp_explainer(), batch_size=5, progress=False,
                        out=tmp_path / "local", explain=True)
    distributed = Index.build(gallery, gmp_explainer, batch_size=5, progress=False,
                              out=tmp_path / "ray", engine="ray", ray={"workers": 2},
                              explain=True)
    _same_index(local, distributed)
    ours, theirs = local.explain_cache, Index.load(tmp_path / "ray").explain_cache
    assert len({tuple(row) for row in theirs.shapes}) > 1 and theirs.projected is not None
    np.testing.assert_array_equal(ours.shapes, theirs.shapes)
    np.testing.assert_allclose(ours.positions, theirs.positions, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.projected, theirs.projected, rtol=1e-5, atol=1e-6)


def vit_explainer(layer: str) -> Explainer:
    """A class-token transformer with two register tokens (three prefix tokens)."""
    return Explainer(toys.tiny_vit(registers=2), layer, model_name="tiny-vit",
                     transform=Preprocess(size=(28, 28)))


@pytest.mark.parametrize("layer", ["blocks.0", "blocks.1"])
@pytest.mark.filterwarnings("ignore::simexplain.errors.NoSpatialMap")  # blocks.1, as meant
def test_ray_explain_build_keeps_the_prefix_tokens(gallery, tmp_path, layer):
    """The workers return each image's prefix tokens' contributions and spatial flag too
    (blocks.1, the last block, reads only the class token: no spatial map)."""
    local = Index.build(gallery, vit_explainer(layer), batch_size=5, progress=False,
                        out=tmp_path / "local", explain=True)
    distributed = Index.build(gallery, functools.partial(vit_explainer, layer), batch_size=5,
                              progress=False, out=tmp_path / "ray", engine="ray",
                              ray={"workers": 2}, explain=True)
    _same_index(local, distributed)
    ours, theirs = local.explain_cache, Index.load(tmp_path / "ray").explain_cache
    assert theirs.tokens.shape == (N_IMAGES, 3, local.dim)
    np.testing.assert_allclose(ours.positions, theirs.positions, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours.tokens, theirs.tokens, rtol=1e-5, atol=1e-6)
    assert theirs.spatial.tolist() == ours.spatial.tolist() == [layer == "blocks.0"] * N_IMAGES


class Interrupt(Exception):
    pass


def test_cli_on_ray_resumes_a_local_checkpoint(gallery, tmp_path, monkeypatch, capsys):
    """A single-process build is interrupted; `index build --engine ray` (here also a
    sharded ivfpq index) continues from its checkpoint and ends with the same index."""
    from simexplain.zoo import resolve
    out = tmp_path / "index"
    explainer = resolve("simexplain.toy:tiny_cnn", "features", None, 32)
    stream = explainer.stream("b")
    real, calls = stream.embed, []

    def embed(x):
        if len(calls) >= 2:
            raise Interrupt("simulated crash")
        calls.append(len(x))
        return real(x)
    with monkeypatch.context() as patch:
        patch.setattr(stream, "embed", embed)
        with pytest.raises(Interrupt):
            Index.build(gallery, explainer, "simexplain.toy:tiny_cnn", batch_size=4,
                        progress=False, out=out)
    assert checkpoint_path(out).is_dir()
    assert main(["index", "build", str(gallery), *TOY, "--out", str(out), "--quiet",
                 "--batch-size", "4", "--engine", "ray", "--ray-workers", "1",
                 "--kind", "ivfpq", "--shards", "2"]) == 0
    captured = capsys.readouterr()
    assert "resuming from" in captured.err and f"indexed {N_IMAGES} images" in captured.out
    assert not checkpoint_path(out).exists()
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["kind"] == "ivfpq" and manifest["params"]["shards"] == 2
    assert sorted(p.name for p in out.glob("vectors-*.faiss")) == [
        "vectors-00000.faiss", "vectors-00001.faiss"]
    sharded = Index.load(out, explainer=explainer)
    flat = Index.build(gallery, explainer, "simexplain.toy:tiny_cnn", batch_size=4,
                       progress=False)
    _same_index(sharded, flat)
    query = gallery / "img_03.png"  # region queries work unchanged on the compressed index
    for region in (None, (0, 0, 16, 16)):
        assert ([(h.index, h.score, h.full_score) for h in sharded.search(query, 5, region)]
                == [(h.index, h.score, h.full_score) for h in flat.search(query, 5, region)])


def test_bad_engine_options_are_refused(gallery, tmp_path):
    explainer = toy_explainer()
    with pytest.raises(SimexplainError, match="workers must be >= 1"):
        Index.build(gallery, explainer, "toy", progress=False, engine="ray",
                    ray={"workers": 0})
    with pytest.raises(SimexplainError, match="unknown build engine"):
        Index.build(gallery, explainer, "toy", progress=False, engine="spark")
    with pytest.raises(SimexplainError, match="shards need --kind ivfpq"):
        Index.build(gallery, explainer, "toy", progress=False, shards=2)


# -- the compressed, sharded index ----------------------------------------------------------------

def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, dim))
    rows = centres[rng.integers(0, 40, n)] + 0.6 * rng.standard_normal((n, dim))
    return rows.astype(np.float32)


def brute_force(similarity: str, vector: np.ndarray, gallery: np.ndarray,
                e_a: np.ndarray | None = None) -> np.ndarray:
    """Exact scores, written out here (float64): whole-query similarity, or s_R of q_R."""
    g = gallery.astype(np.float64)
    if similarity == "cosine":
        norms = np.linalg.norm(g, axis=1) * np.linalg.norm(vector if e_a is None else e_a)
        return (g @ vector) / norms
    if similarity == "dot":
        return g @ vector
    if e_a is None:
        return ((g - vector) ** 2).sum(1)
    return vector @ e_a - g @ vector  # s_R = q_R . (e_a - e_b)


@pytest.mark.parametrize("similarity", ["cosine", "dot", "euclidean"])
def test_ivfpq_recall_and_exact_rescoring(similarity):
    gallery = clustered(3000, 16)
    index = Index.from_vectors(gallery, similarity=similarity, kind="ivfpq",
                               params={"shards": 3, "candidates": 64})
    assert index.vectors.code_bytes <= 64 and len(index.vectors.shards) == 3
    rng = np.random.default_rng(1)
    recalls = []
    for q in rng.choice(len(gallery), 10, replace=False):
        e_a = gallery[q].astype(np.float64) + 0.3 * rng.standard_normal(16)
        q_r = rng.uniform(0.2, 0.8) * e_a + 0.2 * rng.standard_normal(16)
        for vector, embedding in ((e_a, None), (q_r, e_a)):
            exact = brute_force(similarity, vector, gallery, embedding)
            order = np.argsort(exact if similarity == "euclidean" else -exact, kind="stable")
            hits = index.search_vector(vector, 10, embedding)
            for hit in hits:  # every reported score is the exact one
                assert hit.score == pytest.approx(exact[hit.index], rel=1e-9, abs=1e-9)
            recalls.append(len({h.index for h in hits} & set(order[:10].tolist())) / 10)
    assert np.mean(recalls) >= 0.9, np.mean(recalls)


def test_ivfpq_save_load_and_damage(tmp_path):
    gallery = clustered(3000, 16, seed=2)
    index = Index.from_vectors(gallery, similarity="cosine", kind="ivfpq", params={"shards": 4})
    index.save(tmp_path / "idx")
    names = sorted(os.listdir(tmp_path / "idx"))
    assert names == sorted(["simexplain-index", MANIFEST, EMBEDDINGS, "gallery.arrow"]
                           + [f"vectors-{i:05d}.faiss" for i in range(4)])
    check_replaceable(tmp_path / "idx")  # shard files are ours: the folder may be replaced
    loaded = Index.load(tmp_path / "idx")
    assert isinstance(loaded.embeddings, np.memmap) and loaded.params == index.params
    vector = gallery[7].astype(np.float64)
    assert ([(h.index, h.score) for h in loaded.search_vector(vector, 5)]
            == [(h.index, h.score) for h in index.search_vector(vector, 5)])
    index.save(tmp_path / "idx")  # replacing an index of ours works
    (tmp_path / "idx" / "vectors-00002.faiss").write_bytes(b"garbage")
    with pytest.raises(IndexFormatError, match="vectors-00002.faiss"):
        Index.load(tmp_path / "idx")
    (tmp_path / "idx" / "vectors-00002.faiss").unlink()
    with pytest.raises(IndexFormatError, match="missing"):
        Index.load(tmp_path / "idx")


def test_ivfpq_bad_parameters_are_refused():
    gallery = clustered(100, 8)
    with pytest.raises(SimexplainError, match="shards must be between"):
        Index.from_vectors(gallery, kind="ivfpq", params={"shards": 101})
    with pytest.raises(SimexplainError, match="unknown parameters"):
        Index.from_vectors(gallery, kind="flat", params={"shards": 2})


@pytest.mark.parametrize("count, candidates", [(1000, 256), (10_000_000, 256),
                                               (10_000_001, 512), (30_000_000, 512),
                                               (100_000_000, 1024), (10 ** 9, 2560)])
def test_rescored_candidates_grow_as_the_square_root_past_10m(count, candidates):
    """256 up to 10M vectors, then 256 x ceil(sqrt(N / 10M)) (recall@10 at a fixed 256 fell
    from 0.965 at 10M to 0.94 at 30M in benchmarks/bench_serve.py; 512 gave 0.98 there)."""
    from simexplain.retrieval.compressed import default_params
    assert default_params(count, 128, 1, 4096)["candidates"] == candidates
