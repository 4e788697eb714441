"""Explain-ready index caches of class-token transformers (`index build --explain` on a model
explained at a layer with prefix tokens: class token, registers): the prefix tokens' rows are
cached (explain-tokens.npy, with each image's `Side.spatial` in explain-spatial.npy), so that
hits explained from the cache equal hits explained from the images, token shares included,
and their grid and token rows sum to the model's own embedding. The tokens survive resumed
builds and sharded ivfpq indexes, damaged or mismatched files are refused naming the file,
and indexes without token rows (CNNs, indexes written before) load as before."""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import pytest
import torch

from simexplain.cli import main
from simexplain.errors import NoSpatialMap
from simexplain.explainer import Explainer
from simexplain.images import Preprocess
from simexplain.retrieval import Index, IndexFormatError
from simexplain.retrieval.basics import file_sha256
from simexplain.retrieval.manifest import (CONTRIBUTIONS, MANIFEST, PROJECTED, SHAPES, SPATIAL,
                                           TOKENS)
from simexplain.toy import tiny_vit
from retrieval import test_explain_cache as plain
from retrieval.test_explain_cache import (N_IMAGES, _copy, _forge, built_with_cache,
                                           forbid_hit_forwards, hits_forbidden,
                                           interrupted_then_resumed, save_noise, toy)
from test_frozen import TorchViT

# the plain cache's gallery and query images (module-scoped: made again for this module)
gallery, query = plain.gallery, plain.query

VIT_SIDE = 28  # a 7x7 patch grid for tiny_vit


def vit(registers: int = 2, layer: str = "blocks.0", keep_aspect: bool = False) -> Explainer:
    """tiny_vit with a class token and `registers` register tokens, explained one block
    before the end (blocks.0) or at the last block (blocks.1: only the class token is read)."""
    return Explainer(tiny_vit(registers=registers), layer, model_name=f"tiny-vit-{registers}",
                     transform=Preprocess(size=(VIT_SIDE, VIT_SIDE), keep_aspect=keep_aspect))


def torch_vit() -> Explainer:
    """torch's own nn.TransformerEncoderLayer blocks (fused fast path), 16x16 inputs, a 4x4
    grid after a class token, explained one block before the end."""
    torch.manual_seed(3)
    return Explainer(TorchViT().eval(), "blocks.1", model_name="torch-vit",
                     transform=Preprocess(size=(16, 16)))


MODELS = {"registers": (vit, 3), "class token": (torch_vit, 1),
          "last block": (lambda: vit(0, "blocks.1"), 1)}


@pytest.fixture(scope="module")
def cached(gallery, tmp_path_factory) -> tuple[Path, Explainer]:
    return built_with_cache(gallery, vit(), tmp_path_factory)


def own_embedding(explainer: Explainer, path) -> torch.Tensor:
    """An independent forward pass of the model alone (no decomposition)."""
    return explainer.stream("b").embed(explainer.prepare(path, "b").tensor)[0]


def assert_same_side(cached, computed) -> None:
    """A side from the cache against one computed from the image (float32 precision)."""
    assert cached.grid == computed.grid and cached.frame == computed.frame
    assert cached.spatial == computed.spatial
    for name in ("contributions", "embedding", "tokens", "projected"):
        if getattr(computed, name) is None:
            assert getattr(cached, name) is None, name
        else:
            torch.testing.assert_close(getattr(cached, name), getattr(computed, name),
                                       rtol=1e-5, atol=1e-6)


def assert_same_hit(hit, query, explainer: Explainer) -> None:
    """The hit's explanation (from the cache) equals the model's own `explain` of the pair,
    token shares included, and its rows sum to the model's own embedding of the file."""
    pair = hit.explanation
    direct = explainer.explain(query, hit.path)
    assert pair.score == pytest.approx(direct.score, abs=1e-5)
    torch.testing.assert_close(pair.pairwise_flat, direct.pairwise_flat, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(pair.tokens_b, direct.tokens_b, rtol=1e-4, atol=1e-6)
    assert pair.token_share_b == pytest.approx(direct.token_share_b, abs=1e-5)
    assert float(pair.overall_b.sum()) + pair.token_share_b == pytest.approx(pair.score,
                                                                             abs=1e-5)
    side = pair.b
    total = side.contributions.sum(0) + side.tokens.sum(0)
    torch.testing.assert_close(total, own_embedding(explainer, hit.path), rtol=1e-4, atol=1e-5)


# -- exactness ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODELS))
def test_class_token_hits_from_the_cache_equal_computed_ones(name, gallery, query, tmp_path,
                                                             monkeypatch):
    make, prefix = MODELS[name]
    explainer = make()
    # at the last block the build says, once, that the maps have no spatial content
    with pytest.warns(NoSpatialMap) if name == "last block" else nullcontext():
        Index.build(gallery, explainer, progress=False, out=tmp_path / "index", batch_size=5,
                    explain=True)
    loaded = Index.load(tmp_path / "index", explainer)
    cache = loaded.explain_cache
    assert cache.tokens.shape == (N_IMAGES, prefix, loaded.dim)
    assert isinstance(cache.tokens, np.memmap)  # read a hit at a time, not loaded whole
    with monkeypatch.context() as patch:
        forbid_hit_forwards(patch, explainer)
        hits = loaded.search(query, k=len(loaded), region=(0, 0, 12, 12), explain=True)
    computed = list(explainer.sides([h.path for h in hits], "b"))
    for hit, side in zip(hits, computed):
        assert_same_side(hit.explanation.b, side)
        assert_same_hit(hit, query, explainer)
    # one block before the end the grid carries the image; at the last block only the class
    # token is read (no spatial map), and the cache says so as the model does
    assert {h.explanation.b.spatial for h in hits} == {name != "last block"}
    assert all(abs(h.explanation.token_share_b) > 1e-4 for h in hits)


def test_manifest_lists_the_token_files(cached):
    path, explainer = cached
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["explain"] == {"positions": N_IMAGES * 49, "projected": False, "tokens": 3}
    for name in (TOKENS, SPATIAL):
        assert manifest["files"][name]["bytes"] == (path / name).stat().st_size
    assert np.load(path / SPATIAL).tolist() == [True] * N_IMAGES
    index = Index.load(path, explainer)
    for row in range(len(index)):
        side = index.cached_side(row)
        torch.testing.assert_close(side.tokens, torch.from_numpy(np.load(path / TOKENS)[row]))


def test_sharded_ivfpq_keeps_the_tokens(gallery, query, tmp_path, monkeypatch):
    explainer = vit()
    Index.build(gallery, explainer, progress=False, out=tmp_path / "pq", kind="ivfpq",
                shards=2, explain=True)
    loaded = Index.load(tmp_path / "pq", explainer)
    assert len(loaded.vectors.shards) == 2 and loaded.explain_cache.token_count == 3
    with monkeypatch.context() as patch:
        forbid_hit_forwards(patch, explainer)
        hits = loaded.search(query, k=4, explain=True)
    for hit, side in zip(hits, explainer.sides([h.path for h in hits], "b")):
        assert_same_side(hit.explanation.b, side)


def test_interrupted_build_resumes_with_the_tokens(gallery, cached, tmp_path, monkeypatch):
    explainer = vit()
    resumed = interrupted_then_resumed(gallery, explainer, tmp_path / "index", monkeypatch)
    fresh = Index.load(cached[0], explainer).explain_cache
    np.testing.assert_allclose(resumed.tokens, fresh.tokens, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(resumed.spatial, fresh.spatial)
    np.testing.assert_allclose(resumed.positions, fresh.positions, rtol=1e-5, atol=1e-6)


def test_inputs_of_other_aspect_ratios_have_token_grids_of_their_own(tmp_path, query,
                                                                      monkeypatch):
    """A transformer fed images at their aspect ratio: 7x7 and 7x9 patch grids after the same
    3 prefix tokens (7x9 + 3 tokens is also 8x8 + 2: the input's aspect tells them apart),
    cached and explained from the cache as from the images."""
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    rng = np.random.default_rng(0)
    for i, width in enumerate((28, 28, 36, 36)):
        save_noise(gallery / f"{i}.png", rng, width, height=VIT_SIDE)
    explainer = vit(keep_aspect=True)
    Index.build(gallery, explainer, progress=False, out=tmp_path / "index", batch_size=2,
                explain=True)
    loaded = Index.load(tmp_path / "index", explainer)
    assert loaded.explain_cache.tokens.shape[1] == 3
    assert sorted(tuple(int(v) for v in row[2:]) for row in loaded.explain_cache.shapes) == \
        [(7, 7), (7, 7), (7, 9), (7, 9)]
    with monkeypatch.context() as patch:
        forbid_hit_forwards(patch, explainer)
        hits = loaded.search(query, k=len(loaded), explain=True)
    computed = list(explainer.sides([h.path for h in hits], "b"))
    for hit, side in zip(hits, computed):
        assert_same_side(hit.explanation.b, side)
        assert_same_hit(hit, query, explainer)


# -- damaged or mismatched token files ----------------------------------------------------------

@pytest.mark.parametrize("name", [TOKENS, SPATIAL])
def test_damaged_token_files_are_refused(cached, tmp_path, name):
    target = _copy(cached[0], tmp_path)
    data = bytearray((target / name).read_bytes())
    data[-1] ^= 0x01
    (target / name).write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=f"{name}.*sha256"):
        Index.load(target)
    (target / name).write_bytes(bytes(data[:-4]))
    with pytest.raises(IndexFormatError, match=f"{name}.*truncated"):
        Index.load(target)
    (target / name).unlink()
    with pytest.raises(IndexFormatError, match=f"{name}.*missing"):
        Index.load(target)


@pytest.mark.parametrize("name,array", [
    (TOKENS, lambda a: a[:, :2]),  # another number of tokens
    (TOKENS, lambda a: a[:-1]),  # another number of images
    (TOKENS, lambda a: a.astype(np.float64)),
    (TOKENS, lambda a: a.reshape(len(a), -1)),
    (SPATIAL, lambda a: a.astype(np.int8)),
    (SPATIAL, lambda a: a[:-1]),
])
def test_token_files_that_do_not_fit_are_refused(cached, tmp_path, name, array):
    """A file replaced and listed in the manifest with its new size and sha256 (so that only
    its content can tell): its shape and type are checked too."""
    target = _copy(cached[0], tmp_path)
    np.save(target / name, array(np.load(target / name)))
    listed = {"bytes": (target / name).stat().st_size, "sha256": file_sha256(target / name)}
    _forge(target, lambda m: m["files"].update({name: listed}))
    with pytest.raises(IndexFormatError, match=f"index damaged: .*{name}: expected"):
        Index.load(target)


def test_non_finite_tokens_never_give_maps(cached, query, tmp_path):
    path, explainer = cached
    target = _copy(path, tmp_path)
    values = np.load(target / TOKENS)
    values[:, 0] = np.inf
    np.save(target / TOKENS, values)
    index = Index.load(target, explainer, verify=False)
    with pytest.raises(IndexFormatError, match=f"{TOKENS}: non-finite values"):
        index.search(query, k=2, explain=True)


def test_manifest_and_token_files_must_agree(cached, tmp_path):
    target = _copy(cached[0], tmp_path)
    _forge(target, lambda m: m["explain"].pop("tokens"))  # files listed the entry does not name
    with pytest.raises(IndexFormatError, match="stored files"):
        Index.load(target)
    for count in (0, True, "3", 10 ** 6):
        target = _copy(cached[0], tmp_path / str(count))
        _forge(target, lambda m: m["explain"].update(tokens=count))  # noqa: B023
        with pytest.raises(IndexFormatError, match="explain cache entry is malformed"):
            Index.load(target)
    target = _copy(cached[0], tmp_path / "two")
    _forge(target, lambda m: m["explain"].update(tokens=2))
    with pytest.raises(IndexFormatError, match=TOKENS):
        Index.load(target)


def test_cli_names_the_damaged_file_in_one_line(cached, query, tmp_path, capsys):
    target = _copy(cached[0], tmp_path)
    (target / TOKENS).write_bytes((target / TOKENS).read_bytes()[:-4])
    assert main(["search", "--model", "simexplain.toy:tiny_vit", "--layer", "blocks.0",
                 "--size", str(VIT_SIDE), str(target), str(query), "--explain"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and TOKENS in err and "Traceback" not in err


# -- indexes without token rows -----------------------------------------------------------------

OLD_FILES = {CONTRIBUTIONS, SHAPES}


def test_an_index_without_token_rows_is_written_and_read_as_before(gallery, query, tmp_path):
    """A CNN's explain index is in the format written before token rows were cached (no
    "tokens" field, no token files), and such an index loads and explains its hits."""
    explainer = toy("gmp")
    Index.build(gallery, explainer, progress=False, out=tmp_path / "index", explain=True)
    manifest = json.loads((tmp_path / "index" / MANIFEST).read_text())
    assert manifest["explain"].keys() == {"positions", "projected"}
    assert {n for n in manifest["files"] if n.startswith("explain-")} == OLD_FILES | {PROJECTED}
    assert not (tmp_path / "index" / TOKENS).exists()
    loaded = Index.load(tmp_path / "index", explainer)
    assert loaded.explain_cache.tokens is None and loaded.explain_cache.spatial is None
    hit = loaded.search(query, k=1, explain=True)[0]
    assert hit.explanation.b.tokens is None and hit.explanation.b.spatial
    assert hit.explanation.token_share_b == 0.0


def test_a_token_index_replaced_by_a_plain_build_leaves_no_token_files(cached, gallery,
                                                                       tmp_path):
    target = _copy(cached[0], tmp_path)
    Index.build(gallery, toy(), progress=False, out=target, explain=True)
    assert not (target / TOKENS).exists() and not (target / SPATIAL).exists()
    assert Index.load(target).explain_cache.tokens is None


# -- command line -------------------------------------------------------------------------------

VIT = ["--model", "simexplain.toy:tiny_vit", "--layer", "blocks.0", "--size", str(VIT_SIDE)]


def test_cli_build_explain_then_search_explain(gallery, query, tmp_path, capsys, monkeypatch):
    cached_out, plain_out = tmp_path / "cached", tmp_path / "plain"
    assert main(["index", "build", str(gallery), *VIT, "--out", str(cached_out), "--explain",
                 "--quiet"]) == 0
    assert "with explain cache" in capsys.readouterr().out
    assert main(["index", "build", str(gallery), *VIT, "--out", str(plain_out), "--quiet"]) == 0
    assert json.loads((cached_out / MANIFEST).read_text())["explain"]["tokens"] == 1
    pages = {}
    for name, out in (("cached", cached_out), ("plain", plain_out)):
        with monkeypatch.context() as patch:
            if name == "cached":  # the hits come from the cache: the model never sees them
                patch.setattr(Explainer, "sides", hits_forbidden(Explainer.sides))
            assert main(["search", *VIT, str(out), str(query), "-k", "3", "--explain",
                         "--out", str(tmp_path / f"page-{name}")]) == 0
        pages[name] = json.loads((tmp_path / f"page-{name}" / "results.json").read_text())
    from simexplain.zoo import resolve
    explainer = resolve("simexplain.toy:tiny_vit", "blocks.0", None, VIT_SIDE)
    for a, b in zip(pages["cached"]["hits"], pages["plain"]["hits"]):
        assert a["path"] == b["path"] and a["grid"] == b["grid"]
        assert a["score"] == pytest.approx(b["score"], abs=1e-6)
        assert a["residual"] == pytest.approx(b["residual"], abs=1e-6)
        # the prefix tokens' share of the pair's score, as the model's own explain gives it
        direct = explainer.explain(query, a["path"])
        assert a["token_share"] == pytest.approx(direct.token_share_b, abs=1e-5)
        assert b["token_share"] == pytest.approx(direct.token_share_b, abs=1e-5)
        assert a["spatial"] is b["spatial"] is True
    with monkeypatch.context() as patch:
        forbid_hit_forwards(patch, explainer)
        hits = Index.load(cached_out, explainer).search(query, k=3, explain=True)
    for hit in hits:
        assert_same_hit(hit, query, explainer)
