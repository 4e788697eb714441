"""Explain-ready index caches (`Index.build(explain=True)`, `index build --explain`): cached hit
explanations equal recomputed ones and sum to the model's own embedding, the cache is
verified on load, checkpointed and resumed, refused for changed files, and works with mixed
input sizes, max-pooling heads (projected features), sharded ivfpq indexes and the CLI."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simexplain.cli import main
from simexplain.explainer import Explainer
from simexplain.retrieval import Index, IndexFormatError, checkpoint_path
from simexplain.retrieval.manifest import CONTRIBUTIONS, MANIFEST, SHAPES, seal
from simexplain.toy import toy_explainer

SIDE = 32
N_IMAGES = 12


def toy(head: str = "gap", keep_aspect: bool = False, seed: int = 0) -> Explainer:
    return toy_explainer(head, size=SIDE, keep_aspect=keep_aspect, seed=seed,
                         model_name=f"toy-{head}", dim=8, channels=8, depth=2)


def save_noise(path: Path, rng: np.random.Generator, width: int = SIDE,
               height: int = SIDE) -> Path:
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)
    return path


def write_gallery(root: Path, mixed: bool = False) -> Path:
    """N_IMAGES random images (mixed: of four aspect ratios), plus a file that is no image."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(N_IMAGES):
        save_noise(root / f"img_{i:02d}.png", rng, SIDE + 16 * (i % 4) if mixed else SIDE)
    (root / "notes.txt").write_text("not an image")
    return root


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    return write_gallery(tmp_path_factory.mktemp("gallery"))


@pytest.fixture(scope="module")
def query(tmp_path_factory) -> Path:
    return save_noise(tmp_path_factory.mktemp("query") / "query.png",
                      np.random.default_rng(1))


def built_with_cache(gallery: Path, explainer: Explainer, tmp_path_factory
                     ) -> tuple[Path, Explainer]:
    """The gallery indexed with --explain in batches of 5: (its folder, the explainer)."""
    out = tmp_path_factory.mktemp("cached") / "index"
    Index.build(gallery, explainer, progress=False, out=out, batch_size=5, explain=True)
    return out, explainer


@pytest.fixture(scope="module")
def cached(gallery, tmp_path_factory) -> tuple[Path, Explainer]:
    return built_with_cache(gallery, toy(), tmp_path_factory)


class Forbidden(Exception):
    pass


def forbid_hit_forwards(monkeypatch, explainer: Explainer) -> None:
    """Make any model pass over gallery images (side b) an error."""
    def refuse(*args, **kwargs):
        raise Forbidden("the model ran on a hit")
    monkeypatch.setattr(explainer, "sides", refuse)


def hits_forbidden(sides):
    """`Explainer.sides` that explains queries (side a) and refuses gallery images (side b)."""
    def guarded(self, images, side="b", *args, **kwargs):
        if side != "a":
            raise Forbidden("the model ran on a hit")
        return sides(self, images, side, *args, **kwargs)
    return guarded


def assert_same_side(cached, computed) -> None:
    assert cached.grid == computed.grid
    torch.testing.assert_close(cached.contributions, computed.contributions,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cached.embedding, computed.embedding, rtol=1e-5, atol=1e-6)
    if computed.projected is None:
        assert cached.projected is None
    else:
        torch.testing.assert_close(cached.projected, computed.projected, rtol=1e-5, atol=1e-6)
    assert cached.frame == computed.frame


def own_embedding(explainer: Explainer, path) -> torch.Tensor:
    """An independent forward pass of the model alone (no decomposition)."""
    return explainer.stream("b").embed(explainer.prepare(path, "b").tensor)[0]


# -- exactness ------------------------------------------------------------------------------------

@pytest.mark.parametrize("head,mixed", [("gap", False), ("gmp", False), ("gap", True)])
def test_cached_hits_equal_recomputed_ones(head, mixed, tmp_path, query, monkeypatch):
    """gmp: a max-pooling head (projected features cached too); mixed: images of four input
    sizes (kept aspect ratio), so four grids in one cache."""
    gallery = write_gallery(tmp_path / "gallery", mixed=mixed)
    explainer = toy(head, keep_aspect=mixed)
    index = Index.build(gallery, explainer, progress=False, out=tmp_path / "index",
                        batch_size=5, explain=True)
    loaded = Index.load(tmp_path / "index", explainer)
    cache = loaded.explain_cache
    assert len(cache) == N_IMAGES and (cache.projected is not None) == (head == "gmp")
    grids = {tuple(row[2:]) for row in cache.shapes}
    assert len(grids) == (4 if mixed else 1)
    region = (0, 0, 16, 16)
    with monkeypatch.context() as patch:
        forbid_hit_forwards(patch, explainer)
        hits = loaded.search(query, k=len(loaded), region=region, explain=True)
    fresh = index.search(query, k=len(loaded), region=region)
    assert [h.index for h in hits] == [h.index for h in fresh]
    # recomputed: the same hits explained by the model, the path without a cache
    sides = list(explainer.sides([h.path for h in hits], "b"))
    for hit, side in zip(hits, sides):
        assert_same_side(hit.explanation.b, side)
        # u_p sum to the model's own embedding of the file (a separate forward pass)
        total = hit.explanation.b.contributions.sum(0)
        torch.testing.assert_close(total, own_embedding(explainer, hit.path),
                                   rtol=1e-4, atol=1e-5)
        assert hit.explanation.residual < 1e-4
    # and the whole pair explanation equals the model's own `explain`
    direct = explainer.explain(query, hits[0].path)
    torch.testing.assert_close(hits[0].explanation.pairwise_flat, direct.pairwise_flat,
                               rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(hits[0].region_map.double(),
                               (loaded.region_vector(query, region).weights.double()
                                @ direct.pairwise_flat.double()).reshape(direct.b.grid),
                               rtol=1e-4, atol=1e-6)


def test_cached_build_embeddings_equal_a_plain_build(gallery, cached):
    path, explainer = cached
    plain = Index.build(gallery, explainer, progress=False, batch_size=5)
    index = Index.load(path, explainer)
    assert index.paths == plain.paths and index.hashes == plain.hashes
    np.testing.assert_allclose(index.embeddings, plain.embeddings, rtol=1e-5, atol=1e-6)
    assert plain.explain_cache is None


def test_an_index_without_cache_recomputes(gallery, query, tmp_path):
    explainer = toy()
    index = Index.build(gallery, explainer, progress=False, out=tmp_path / "plain")
    loaded = Index.load(tmp_path / "plain", explainer)
    assert loaded.explain_cache is None and loaded.cached_side(0) is None
    hits = loaded.search(query, k=3, explain=True)
    assert all(hit.explanation.residual < 1e-4 for hit in hits)
    assert json.loads((tmp_path / "plain" / MANIFEST).read_text()).get("explain") is None
    assert not (tmp_path / "plain" / CONTRIBUTIONS).exists() and len(index) == N_IMAGES


def test_an_explain_index_is_replaced_by_a_plain_build_and_back(gallery, cached, tmp_path):
    target = _copy(cached[0], tmp_path)
    explainer = cached[1]
    Index.build(gallery, explainer, progress=False, out=target)
    assert not (target / CONTRIBUTIONS).exists() and Index.load(target).explain_cache is None
    Index.build(gallery, explainer, progress=False, out=target, explain=True)
    assert len(Index.load(target).explain_cache) == N_IMAGES


def test_sharded_ivfpq_with_cache(gallery, query, tmp_path, monkeypatch):
    explainer = toy()
    Index.build(gallery, explainer, progress=False, out=tmp_path / "pq", kind="ivfpq",
                shards=2, explain=True)
    loaded = Index.load(tmp_path / "pq", explainer)
    assert loaded.kind == "ivfpq" and len(loaded.vectors.shards) == 2
    with monkeypatch.context() as patch:
        forbid_hit_forwards(patch, explainer)
        hits = loaded.search(query, k=4, explain=True)
    for hit, side in zip(hits, explainer.sides([h.path for h in hits], "b")):
        assert_same_side(hit.explanation.b, side)


# -- the files change ---------------------------------------------------------------------------

def test_changed_gallery_file_is_recomputed_with_a_warning(gallery, query, tmp_path):
    copy = tmp_path / "gallery"
    shutil.copytree(gallery, copy)
    explainer = toy()
    Index.build(copy, explainer, progress=False, out=tmp_path / "index", explain=True)
    index = Index.load(tmp_path / "index", explainer)
    row = 3
    save_noise(Path(index.paths[row]), np.random.default_rng(7))
    assert index.cached_side(row) is None  # the cache no longer describes the file
    assert index.cached_side(row + 1) is not None
    with pytest.warns(UserWarning, match="changed since it was indexed"):
        hits = index.search(query, k=len(index), explain=True)
    hit = next(h for h in hits if h.index == row)
    side = hit.explanation.b
    torch.testing.assert_close(side.contributions.sum(0), own_embedding(explainer, hit.path),
                               rtol=1e-4, atol=1e-5)
    stale = torch.from_numpy(index.explain_cache.image(row).positions)
    assert not torch.allclose(side.contributions, stale, atol=1e-3)


def test_another_input_size_is_recomputed(cached, query):
    path, explainer = cached
    index = Index.load(path, explainer)
    index.explain_cache.shapes[0, :2] = (SIDE + 8, SIDE)  # as if indexed at another size
    assert index.cached_side(0) is None and index.cached_side(1) is not None
    hits = index.search(query, k=len(index), explain=True)
    hit = next(h for h in hits if h.index == 0)
    torch.testing.assert_close(hit.explanation.b.contributions.sum(0),
                               own_embedding(explainer, hit.path), rtol=1e-4, atol=1e-5)


def _copy(path: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(path, target)
    return target


def test_corrupted_cache_is_refused_at_load(cached, tmp_path):
    target = _copy(cached[0], tmp_path)
    data = bytearray((target / CONTRIBUTIONS).read_bytes())
    data[-5] ^= 0x40
    (target / CONTRIBUTIONS).write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=f"{CONTRIBUTIONS}.*sha256"):
        Index.load(target)


@pytest.mark.parametrize("name", [CONTRIBUTIONS, SHAPES])
def test_truncated_or_missing_cache_is_refused(cached, tmp_path, name):
    target = _copy(cached[0], tmp_path)
    data = (target / name).read_bytes()
    (target / name).write_bytes(data[:-8])
    with pytest.raises(IndexFormatError, match="truncated"):
        Index.load(target)
    (target / name).unlink()
    with pytest.raises(IndexFormatError, match="missing"):
        Index.load(target)


def _forge(target: Path, edit) -> None:
    """Edit the manifest and re-seal it (a deliberate edit, not damage)."""
    manifest = json.loads((target / MANIFEST).read_text())
    manifest.pop("checksum")
    edit(manifest)
    (target / MANIFEST).write_text(json.dumps(seal(manifest)))


def test_manifest_and_cache_must_agree(cached, tmp_path):
    target = _copy(cached[0], tmp_path)
    _forge(target, lambda m: m.pop("explain"))  # files listed that the schema does not expect
    with pytest.raises(IndexFormatError, match="stored files"):
        Index.load(target)
    target = _copy(cached[0], tmp_path / "b")
    _forge(target, lambda m: m["explain"].update(positions=m["explain"]["positions"] + 1))
    with pytest.raises(IndexFormatError, match=CONTRIBUTIONS):
        Index.load(target)
    target = _copy(cached[0], tmp_path / "c")
    _forge(target, lambda m: m["explain"].update(projected=True))
    with pytest.raises(IndexFormatError, match="stored files"):
        Index.load(target)


def test_forged_grids_and_values_never_give_maps(cached, query, tmp_path):
    """With the sizes kept and verification off, wrong content is still refused: grids that
    do not add up at load, non-finite contributions when a hit reads them."""
    path, explainer = cached
    target = _copy(path, tmp_path)
    shapes = np.load(target / SHAPES)
    shapes[0, 2] += 1
    np.save(target / SHAPES, shapes)
    with pytest.raises(IndexFormatError, match=SHAPES):
        Index.load(target, verify=False)
    shutil.copy(path / SHAPES, target / SHAPES)
    values = np.load(target / CONTRIBUTIONS)
    values[:] = np.nan
    np.save(target / CONTRIBUTIONS, values)
    index = Index.load(target, explainer, verify=False)
    with pytest.raises(IndexFormatError, match="non-finite values"):
        index.search(query, k=2, explain=True)


# -- resumable builds ---------------------------------------------------------------------------

class Interrupt(Exception):
    pass


def _fail_after(monkeypatch, explainer: Explainer, batches: int) -> None:
    real = explainer.contributions
    calls = []

    def contributions(x, side="a"):
        if len(calls) >= batches:
            raise Interrupt("simulated crash")
        calls.append(len(x))
        return real(x, side)
    monkeypatch.setattr(explainer, "contributions", contributions)


def interrupted_then_resumed(gallery: Path, explainer: Explainer, out: Path, monkeypatch):
    """An --explain build of batches of 5 that crashes after two batches (its checkpoint
    kept, no index written), then the same build resumed from the 10 images done: the
    resumed index's explain cache."""
    with monkeypatch.context() as patch:
        _fail_after(patch, explainer, 2)
        with pytest.raises(Interrupt):
            Index.build(gallery, explainer, progress=False, out=out, batch_size=5,
                        checkpoint_every=1, explain=True)
    assert checkpoint_path(out).is_dir() and not out.exists()
    index = Index.build(gallery, explainer, progress=False, out=out, batch_size=5, explain=True)
    assert index.resumed_from == 10
    assert not checkpoint_path(out).exists()
    return Index.load(out, explainer).explain_cache


def test_interrupted_explain_build_resumes_to_the_same_cache(gallery, cached, tmp_path,
                                                             monkeypatch):
    explainer = toy()
    resumed = interrupted_then_resumed(gallery, explainer, tmp_path / "index", monkeypatch)
    fresh = Index.load(cached[0], explainer).explain_cache
    np.testing.assert_array_equal(resumed.shapes, fresh.shapes)
    np.testing.assert_allclose(resumed.positions, fresh.positions, rtol=1e-5, atol=1e-6)


def test_checkpoint_without_cache_is_not_resumed_by_an_explain_build(gallery, tmp_path,
                                                                      monkeypatch):
    out = tmp_path / "index"
    explainer = toy()
    with monkeypatch.context() as patch:
        real = explainer.stream("b").embed
        calls = []

        def embed(x):
            if calls:
                raise Interrupt("simulated crash")
            calls.append(1)
            return real(x)
        patch.setattr(explainer.stream("b"), "embed", embed)
        with pytest.raises(Interrupt):
            Index.build(gallery, explainer, progress=False, out=out, batch_size=5)
    with pytest.warns(UserWarning, match="--explain"):
        index = Index.build(gallery, explainer, progress=False, out=out, batch_size=5,
                            explain=True)
    assert index.resumed_from == 0 and len(index.explain_cache) == N_IMAGES


# -- command line -------------------------------------------------------------------------------

TOY = ["--model", "simexplain.toy:tiny_cnn", "--layer", "features", "--size", "32"]


def test_cli_build_explain_then_search_explain(gallery, query, tmp_path, capsys, monkeypatch):
    cached_out, plain_out = tmp_path / "cached", tmp_path / "plain"
    assert main(["index", "build", str(gallery), *TOY, "--out", str(cached_out), "--explain",
                 "--quiet"]) == 0
    assert "with explain cache" in capsys.readouterr().out
    assert main(["index", "build", str(gallery), *TOY, "--out", str(plain_out), "--quiet"]) == 0
    assert json.loads((cached_out / MANIFEST).read_text())["explain"]["projected"] is False
    pages = {}
    for name, out in (("cached", cached_out), ("plain", plain_out)):
        with monkeypatch.context() as patch:
            if name == "cached":  # the hits come from the cache: the model never sees them
                patch.setattr(Explainer, "sides", hits_forbidden(Explainer.sides))
            assert main(["search", *TOY, str(out), str(query), "--region", "0,0,16,16", "-k", "3",
                         "--explain", "--out", str(tmp_path / f"page-{name}")]) == 0
        pages[name] = json.loads((tmp_path / f"page-{name}" / "results.json").read_text())
    for a, b in zip(pages["cached"]["hits"], pages["plain"]["hits"]):
        assert a["path"] == b["path"] and a["grid"] == b["grid"] and a["input"] == b["input"]
        assert a["residual"] == pytest.approx(b["residual"], abs=1e-6)
    # the maps themselves: the CLI-built cached index against the plain one, via the API
    from simexplain.retrieval import explainer_for_index
    explainer = explainer_for_index(cached_out, argparse.Namespace(
        model="simexplain.toy:tiny_cnn", layer="features", similarity=None, size=32))
    hits = Index.load(cached_out, explainer).search(query, k=3, region=(0, 0, 16, 16),
                                                    explain=True)
    again = Index.load(plain_out, explainer).search(query, k=3, region=(0, 0, 16, 16),
                                                    explain=True)
    for a, b in zip(hits, again):
        torch.testing.assert_close(a.overall_map, b.overall_map, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.region_map, b.region_map, rtol=1e-5, atol=1e-6)

