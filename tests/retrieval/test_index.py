"""Interactive retrieval: the index, region search (exact against brute force), persistence,
bad input, resumable builds, atomic saves, and the `index build` / `search` command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow.ipc
import pytest
import torch
from PIL import Image

from simexplain import maps
from simexplain.retrieval import storage
from simexplain.retrieval.manifest import GALLERY
from simexplain.cli import main
from simexplain.errors import SimexplainError
from simexplain.retrieval import (EMBEDDINGS, MANIFEST, VECTORS, Index, IndexFormatError,
                                  IndexMismatchError, checkpoint_path)
from simexplain import toy as toys

SIMILARITIES = ("cosine", "dot", "euclidean")
N_IMAGES = 14
SIDE = 32
REGIONS = [(0, 0, 16, 16), (5, 3, 30, 20)]


def toy_explainer(similarity: str = "cosine", seed: int = 0, name: str | None = None):
    return toys.toy_explainer(similarity=similarity, seed=seed, size=SIDE,
                              model_name=name or f"toy-{similarity}", dim=8, channels=8, depth=2,
                              normalize=similarity == "cosine")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    """14 small images (one in a sub-folder), a text file and an empty .png."""
    root = tmp_path_factory.mktemp("gallery")
    rng = np.random.default_rng(0)
    (root / "sub").mkdir()
    for i in range(N_IMAGES):
        folder = root / "sub" if i == 0 else root
        array = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / f"img_{i:02d}.png")
    (root / "notes.txt").write_text("not an image")
    (root / "empty.png").write_bytes(b"")
    return root


@pytest.fixture(scope="module")
def query(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("query") / "query.png"
    array = np.random.default_rng(1).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path


@pytest.fixture(scope="module")
def built(gallery, tmp_path_factory) -> dict:
    """One saved index per similarity."""
    out = {}
    for similarity in SIMILARITIES:
        path = tmp_path_factory.mktemp("index") / f"index-{similarity}"
        explainer = toy_explainer(similarity)
        index = Index.build(gallery, explainer, explainer.model_name, batch_size=5,
                            progress=False, out=path)
        out[similarity] = (index, path, explainer)
    return out


def brute_force(explanations, region):
    """Ranking and scores from full pairwise decompositions (query = side a)."""
    scores = np.asarray([result.partial_score("a", region) if region is not None else result.score
                         for result in explanations])
    keys = scores if explanations[0].similarity == "euclidean" else -scores
    return np.argsort(keys, kind="stable"), scores


# -- exactness ------------------------------------------------------------------------------------

@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_search_equals_brute_force(built, query, similarity):
    index, _, explainer = built[similarity]
    h, w = SIDE, SIDE
    mask = np.zeros((h, w), dtype=bool)
    mask[4:20, 10:30] = True
    explanations = explainer.explain_gallery(query, index.paths)
    for result in explanations:
        assert result.residual < 1e-4  # the decomposition is exact for this head
    full = brute_force(explanations, None)[1]
    for region in [None, *REGIONS, mask]:
        hits = index.search(query, k=len(index), region=region)
        order, scores = brute_force(explanations, region)
        assert [hit.index for hit in hits] == list(order), (similarity, region)
        assert [hit.rank for hit in hits] == list(range(1, len(index) + 1))
        np.testing.assert_allclose([hit.score for hit in hits], scores[order],
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose([hit.full_score for hit in hits], full[order],
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("similarity", SIMILARITIES)
def test_explained_hits_carry_region_and_overall_maps(built, query, similarity):
    index, _, _ = built[similarity]
    region = REGIONS[1]
    hits = index.search(query, k=3, region=region, explain=True)
    for hit in hits:
        result = hit.explanation
        assert result is not None and result.residual < 1e-4
        assert hit.score == pytest.approx(result.partial_score("a", region), rel=1e-5, abs=1e-6)
        assert hit.full_score == pytest.approx(result.score, rel=1e-5, abs=1e-6)
        # the region's row of the pairwise map, from the full P x Q decomposition
        weights = maps.region_weights(region, result.a.grid, result.a.image_size)
        torch.testing.assert_close(hit.region_map,
                                   (weights @ result.pairwise_flat).reshape(result.b.grid))
        assert hit.overall_map.shape == result.b.grid
    plain = index.search(query, k=2, explain=True)
    assert plain[0].region_map is None and plain[0].overall_map is not None


def test_region_vector_and_search_vector(built, query):
    index, _, _ = built["cosine"]
    prepared = index.region_vector(query, REGIONS[0])
    assert prepared.vector.shape == (index.dim,)
    via_vector = index.search_vector(prepared.vector, 5, prepared.embedding)
    via_search = index.search(query, k=5, region=REGIONS[0])
    assert [h.index for h in via_vector] == [h.index for h in via_search]
    # the whole-image region is the whole query vector (up to float error)
    whole = index.region_vector(query, (0, 0, SIDE, SIDE))
    torch.testing.assert_close(whole.vector, prepared.embedding, rtol=1e-5, atol=1e-6)


def test_bad_arguments_of_the_index_api(built, query):
    """Each was an exception from inside numpy, FAISS or a list (a negative row silently
    read the last file; NaN embeddings made an index)."""
    index, _, _ = built["cosine"]
    with pytest.raises(SimexplainError, match="k must be a whole number >= 1, got 2.5"):
        index.search(query, k=2.5)
    with pytest.raises(SimexplainError, match="a query vector is an array of numbers, got str"):
        index.search_vector("abc")
    for row in (-1, len(index)):
        with pytest.raises(SimexplainError, match=f"row {row} is not in the index"):
            index.gallery_image(row)
    for embeddings, match in [
            (np.zeros(4, np.float32), r"an \(N, D\) array with N, D >= 1, got shape \(4,\)"),
            (np.zeros((0, 4), np.float32), r"got shape \(0, 4\)"),
            (np.zeros((3, 0), np.float32), r"got shape \(3, 0\)"),
            (np.full((3, 4), np.nan, np.float32), "NaN or infinite")]:
        with pytest.raises(SimexplainError, match=match):
            Index.from_vectors(embeddings)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_agree_on_a_small_gallery(built, query, kind, tmp_path):
    index, _, explainer = built["dot"]
    other = Index(index.embeddings, index.paths, index.info, kind=kind, hashes=index.hashes)
    other.save(tmp_path / kind)
    loaded = Index.load(tmp_path / kind, explainer=explainer)
    assert loaded.kind == kind
    want = [h.index for h in index.search(query, k=5, region=REGIONS[0])]
    assert [h.index for h in loaded.search(query, k=5, region=REGIONS[0])] == want


# -- persistence ------------------------------------------------------------------------------------

def test_build_save_load_roundtrip(built, gallery, query):
    index, path, explainer = built["cosine"]
    assert len(index) == N_IMAGES
    assert not checkpoint_path(path).exists()
    manifest = json.loads((path / MANIFEST).read_text())
    for key in ("version", "model", "layer", "similarity", "dim", "input_size", "count",
                "kind", "files", "skipped", "weights_sha256"):
        assert key in manifest
    assert "paths" not in manifest and "sha256" not in manifest  # per-image: gallery.arrow
    assert manifest["count"] == N_IMAGES and manifest["input_size"] == [SIDE, SIDE]
    assert manifest["model"] == "toy-cosine" and manifest["layer"] == "features"
    assert set(manifest["files"]) == {EMBEDDINGS, GALLERY, VECTORS}
    loaded = Index.load(path, explainer=explainer)
    np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
    assert list(loaded.paths) == index.paths and list(loaded.hashes) == index.hashes
    # the records are read from the Arrow file independently of simexplain
    table = pyarrow.ipc.open_file(str(path / GALLERY)).read_all()
    root = Path(manifest["gallery_root"])
    assert [str(root / p) for p in table.column("path").to_pylist()[:N_IMAGES]] == index.paths
    assert [h.hex() for h in table.column("sha256").to_pylist()[:N_IMAGES]] == index.hashes
    assert table.column("skipped").to_pylist()[N_IMAGES:] == [s.reason for s in index.skipped]
    assert [s.path for s in loaded.skipped] == [s.path for s in index.skipped]
    assert ([h.index for h in loaded.search(query, k=5, region=REGIONS[0])]
            == [h.index for h in index.search(query, k=5, region=REGIONS[0])])
    assert np.load(path / EMBEDDINGS).dtype == np.float32


def test_gallery_with_non_images_is_indexed_and_reports_skips(built):
    index, path, _ = built["dot"]
    skipped = {Path(s.path).name: s.reason for s in index.skipped}
    assert set(skipped) == {"notes.txt", "empty.png"}
    assert all(skipped.values())
    assert any(Path(p).parent.name == "sub" for p in index.paths)  # recursive
    assert len(Index.load(path)) == N_IMAGES


def test_load_without_explainer_searches_vectors_only(built, query):
    _, path, _ = built["dot"]
    index = Index.load(path)
    assert len(index.search_vector(np.ones(index.dim), 3)) == 3
    with pytest.raises(SimexplainError, match="no query model"):
        index.search(query)


# -- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("region", [(0, 0, 0, 10), (10, 10, 5, 20)])
def test_empty_region_is_refused(built, query, region):
    with pytest.raises(SimexplainError, match="empty"):
        built["cosine"][0].search(query, region=region)


def test_region_outside_the_image_is_refused(built, query):
    with pytest.raises(SimexplainError, match="outside"):
        built["cosine"][0].search(query, region=(40, 40, 60, 60))


def test_empty_mask_is_refused(built, query):
    with pytest.raises(SimexplainError, match="empty"):
        built["cosine"][0].search(query, region=np.zeros((SIDE, SIDE), bool))


@pytest.mark.parametrize("other", [
    dict(similarity="dot", name="toy-cosine"),       # another similarity
    dict(similarity="cosine", name="another-model"),  # another model name
    dict(similarity="cosine", seed=1, name="toy-cosine"),  # same name, other weights
])
def test_query_model_mismatch_is_refused(built, other):
    _, path, _ = built["cosine"]
    explainer = toy_explainer(other["similarity"], other.get("seed", 0), other["name"])
    with pytest.raises(IndexMismatchError, match="does not match"):
        Index.load(path, explainer=explainer)
    index = Index.load(path)
    with pytest.raises(IndexMismatchError):
        index.attach(explainer)


def test_query_vector_of_wrong_size_is_refused(built):
    with pytest.raises(IndexMismatchError, match="8-d"):
        built["dot"][0].search_vector(np.ones(5))


def test_missing_index_is_reported(tmp_path):
    with pytest.raises(IndexFormatError, match="index not found"):
        Index.load(tmp_path / "nothing")
    (tmp_path / "folder").mkdir()
    with pytest.raises(IndexFormatError, match=MANIFEST):
        Index.load(tmp_path / "folder")


def _copy_index(path: Path, tmp_path: Path) -> Path:
    import shutil
    target = tmp_path / "copy"
    shutil.copytree(path, target)
    return target


@pytest.mark.parametrize("name", [EMBEDDINGS, VECTORS])
def test_missing_file_is_reported(built, tmp_path, name):
    path = _copy_index(built["dot"][1], tmp_path)
    (path / name).unlink()
    with pytest.raises(IndexFormatError, match=name):
        Index.load(path)


def test_truncated_embeddings_are_reported(built, tmp_path):
    path = _copy_index(built["dot"][1], tmp_path)
    data = (path / EMBEDDINGS).read_bytes()
    (path / EMBEDDINGS).write_bytes(data[:-17])
    with pytest.raises(IndexFormatError, match=rf"{EMBEDDINGS}.*truncated"):
        Index.load(path)


@pytest.mark.parametrize("name", [EMBEDDINGS, VECTORS])
def test_corrupted_file_is_reported(built, tmp_path, name):
    path = _copy_index(built["dot"][1], tmp_path)
    data = bytearray((path / name).read_bytes())
    data[-3] ^= 0xFF
    (path / name).write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match=rf"{name}.*corrupted"):
        Index.load(path)


def test_corrupted_manifest_is_reported(built, tmp_path):
    path = _copy_index(built["dot"][1], tmp_path)
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(IndexFormatError, match=MANIFEST):
        Index.load(path)


def test_empty_or_unreadable_gallery_is_an_error(tmp_path):
    explainer = toy_explainer()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SimexplainError, match="no files"):
        Index.build(tmp_path / "empty", explainer, progress=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_bytes(b"\x00" * 10)
    with pytest.raises(SimexplainError, match="no readable image"):
        Index.build(tmp_path / "junk", explainer, progress=False)
    with pytest.raises(SimexplainError, match="not found"):
        Index.build(tmp_path / "missing", explainer, progress=False)


# -- resumable builds ---------------------------------------------------------------------------------

class Interrupt(Exception):
    pass


def _count_embeds(monkeypatch, explainer, fail_after: int | None = None) -> list:
    stream = explainer.stream("b")
    real = stream.embed
    calls = []

    def embed(x):
        if fail_after is not None and len(calls) >= fail_after:
            raise Interrupt("simulated crash")
        calls.append(len(x))
        return real(x)
    monkeypatch.setattr(stream, "embed", embed)
    return calls


def _crash_build(monkeypatch, gallery, explainer, name: str, out, fail_after: int,
                 **options) -> None:
    """A build into `out` that dies (Interrupt) after `fail_after` batches of 4, leaving its
    checkpoint behind; the embedding is patched only for this build."""
    with monkeypatch.context() as patch:
        _count_embeds(patch, explainer, fail_after=fail_after)
        with pytest.raises(Interrupt):
            Index.build(gallery, explainer, name, batch_size=4, progress=False, out=out,
                        **options)


@pytest.mark.parametrize("fail_after", [2, 3])  # the 4th batch holds an unreadable file
def test_interrupted_build_resumes(gallery, built, tmp_path, monkeypatch, fail_after):
    out = tmp_path / "index"
    explainer = toy_explainer("cosine")
    _crash_build(monkeypatch, gallery, explainer, "toy-cosine", out, fail_after,
                 checkpoint_every=100)
    assert checkpoint_path(out).is_dir() and not out.exists()
    calls = _count_embeds(monkeypatch, explainer)
    index = Index.build(gallery, explainer, "toy-cosine", batch_size=4, progress=False, out=out)
    done = 4 * fail_after
    assert index.resumed_from == done
    total_files = N_IMAGES + 2
    assert 0 < sum(calls) <= total_files - done  # only the files after the checkpoint
    assert not checkpoint_path(out).exists()
    fresh = built["cosine"][0]
    assert index.paths == fresh.paths
    np.testing.assert_allclose(index.embeddings, fresh.embeddings, rtol=1e-5, atol=1e-6)
    assert sorted(s.path for s in index.skipped) == sorted(s.path for s in fresh.skipped)
    assert len(Index.load(out, explainer=explainer)) == N_IMAGES


def test_checkpoint_of_another_model_is_ignored(gallery, tmp_path, monkeypatch):
    out = tmp_path / "index"
    first = toy_explainer("cosine")
    _crash_build(monkeypatch, gallery, first, "toy-cosine", out, 1)
    assert checkpoint_path(out).is_dir()
    other = toy_explainer("dot")
    with pytest.warns(UserWarning, match="another model"):
        index = Index.build(gallery, other, "toy-dot", batch_size=4, progress=False, out=out)
    assert index.resumed_from == 0 and len(index) == N_IMAGES


def test_damaged_checkpoint_is_ignored(gallery, tmp_path, monkeypatch):
    out = tmp_path / "index"
    explainer = toy_explainer("cosine")
    _crash_build(monkeypatch, gallery, explainer, "toy-cosine", out, 2, checkpoint_every=1)
    shards = sorted(checkpoint_path(out).glob("shard-*.npz"))
    assert len(shards) == 2  # one per finished batch
    shards[0].write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable build checkpoint"):
        index = Index.build(gallery, explainer, "toy-cosine", batch_size=4, progress=False,
                            out=out)
    assert index.resumed_from == 0 and len(index) == N_IMAGES
    assert not checkpoint_path(out).exists()


def test_resume_false_starts_over(gallery, tmp_path, monkeypatch):
    out = tmp_path / "index"
    explainer = toy_explainer("cosine")
    _crash_build(monkeypatch, gallery, explainer, "toy-cosine", out, 1)
    index = Index.build(gallery, explainer, "toy-cosine", batch_size=4, progress=False, out=out,
                        resume=False)
    assert index.resumed_from == 0


# -- atomic save --------------------------------------------------------------------------------------

def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_failed_save_leaves_the_old_index_intact(built, tmp_path, monkeypatch):
    import faiss
    index, _, explainer = built["dot"]
    target = tmp_path / "index"
    index.save(target)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    other = Index(index.embeddings[:5], index.paths[:5], index.info)

    def broken_write(vectors, name):
        Path(name).write_bytes(b"partial")
        raise OSError("disk full")
    with monkeypatch.context() as patch:
        patch.setattr(faiss, "write_index", broken_write)
        with pytest.raises(SimexplainError, match="cannot write the index .*disk full"):
            other.save(target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert _leftovers(tmp_path) == []
    assert len(Index.load(target, explainer=explainer)) == N_IMAGES

    # a failure while swapping the folders puts the old index back
    real_rename = os.rename

    def rename(src, dst):
        if Path(dst) == target and ".simexplain-tmp-" in Path(src).name:
            raise OSError("rename failed")
        return real_rename(src, dst)
    with monkeypatch.context() as patch:
        patch.setattr(storage.os, "rename", rename)
        with pytest.raises(SimexplainError, match="rename failed"):
            other.save(target)
    assert len(Index.load(target)) == N_IMAGES
    assert _leftovers(tmp_path) == []
    other.save(target)  # and a good save replaces it
    assert len(Index.load(target)) == 5
    assert _leftovers(tmp_path) == []


def test_save_refuses_to_replace_a_foreign_folder(built, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "keep.jpg").write_bytes(b"x")
    with pytest.raises(SimexplainError, match="not an index folder written by simexplain"):
        built["dot"][0].save(tmp_path / "photos")
    assert (tmp_path / "photos" / "keep.jpg").exists()


# -- command line -------------------------------------------------------------------------------------

TOY = ["--model", "simexplain.toy:tiny_cnn", "--layer", "features", "--size", "32"]


@pytest.fixture(scope="module")
def cli_index(gallery, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "index"
    assert main(["index", "build", str(gallery), *TOY, "--out", str(out), "--batch-size", "6",
                 "--quiet"]) == 0
    return out


def test_cli_index_build_reports_counts(cli_index, capsys, gallery, tmp_path):
    out = tmp_path / "again"
    assert main(["index", "build", str(gallery), *TOY, "--out", str(out), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert f"indexed {N_IMAGES} images" in text and "skipped 2" in text
    assert "notes.txt" in text and "empty.png" in text
    assert json.loads((cli_index / MANIFEST).read_text())["model"] == "simexplain.toy:tiny_cnn"


def test_cli_search_json(cli_index, query, capsys):
    assert main(["search", *TOY, str(cli_index), str(query), "--region", "0,0,16,16", "-k", "3",
                 "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [hit["rank"] for hit in result["hits"]] == [1, 2, 3]
    assert all({"path", "score", "rank"} <= set(hit) for hit in result["hits"])
    assert result["region"] == [0, 0, 16, 16] and result["similarity"] == "cosine"
    scores = [hit["score"] for hit in result["hits"]]
    assert scores == sorted(scores, reverse=True)


def test_cli_search_page_with_explanations(cli_index, query, tmp_path, capsys):
    out = tmp_path / "page"
    assert main(["search", *TOY, str(cli_index), str(query), "--region", "2,2,20,30", "-k", "2",
                 "--explain", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    page = (out / "index.html").read_text()
    for name in ("query.png", "hit_001.png", "hit_001_overall.png", "hit_001_region.png",
                 "hit_002_region.png"):
        assert (out / name).is_file() and name in page
    assert json.loads((out / "results.json").read_text())["hits"][0]["rank"] == 1


def test_cli_search_refuses_another_model(cli_index, query, capsys):
    code = main(["search", str(cli_index), str(query), "--model", "simexplain.toy:tiny_cnn",
                 "--layer", "features", "--similarity", "dot"])
    assert code == 2
    assert "does not match" in capsys.readouterr().err


def test_cli_search_missing_index(tmp_path, query, capsys):
    assert main(["search", str(tmp_path / "none"), str(query)]) == 2
    assert "index not found" in capsys.readouterr().err


def test_cli_search_bad_region_argument(cli_index, query):
    with pytest.raises(SystemExit):
        main(["search", str(cli_index), str(query), "--region", "1,2,3"])


# -- many queries in one `simexplain search` ------------------------------------------------------

@pytest.fixture(scope="module")
def query_folder(tmp_path_factory) -> Path:
    """Three query images (named out of order), a text file and a subfolder that are no queries."""
    folder = tmp_path_factory.mktemp("queries")
    rng = np.random.default_rng(7)
    for name in ("c.png", "a.png", "b.jpg"):
        array = rng.integers(0, 256, (SIDE, SIDE + 6, 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / name)
    (folder / "readme.txt").write_text("not a query")
    (folder / "nested").mkdir()
    Image.fromarray(np.zeros((SIDE, SIDE, 3), np.uint8)).save(folder / "nested" / "skip.png")
    return folder


def direct_hits(index_path: Path, query: Path, k: int, region=None) -> list[dict]:
    """The hits of `Index.search` called in Python with the CLI index's model (TOY)."""
    from simexplain.zoo import resolve
    index = Index.load(index_path, explainer=resolve("simexplain.toy:tiny_cnn", "features",
                                                     None, 32))
    return [hit.to_dict() for hit in index.search(str(query), k, region=region)]


def assert_same_hits(got: list[dict], expected: list[dict]) -> None:
    """The same hits (rows, paths, ranks, stale marks), scores to float32 rounding: queries
    explained in a batch go through the model's forward pass together, which rounds
    differently from one at a time (about 1e-8 here)."""
    keys = ("rank", "index", "path", "stale")
    assert [{k: h[k] for k in keys} for h in got] == [{k: h[k] for k in keys} for h in expected]
    for a, b in zip(got, expected):
        assert a["score"] == pytest.approx(b["score"], rel=1e-6, abs=1e-7)
        assert a["full_score"] == pytest.approx(b["full_score"], rel=1e-6, abs=1e-7)


def test_cli_search_many_queries_equal_single_searches(cli_index, query, query_folder, tmp_path,
                                                       capsys):
    listing = tmp_path / "queries.txt"
    listing.write_text(f"# two queries\n{query}\n\n{query_folder / 'b.jpg'}\n")
    assert main(["search", *TOY, str(cli_index), str(query), str(query_folder), "--queries-from",
                 str(listing), "--region", "2,3,20,25", "-k", "4", "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    # files, then the folder's images sorted by name (no text file, no subfolder), then the list
    expected = [query, *(query_folder / n for n in ("a.png", "b.jpg", "c.png")), query,
                query_folder / "b.jpg"]
    assert [Path(r["query"]) for r in results] == expected
    for result, path in zip(results, expected):
        assert result["region"] == [2, 3, 20, 25]
        assert_same_hits(result["hits"], direct_hits(cli_index, path, 4, (2, 3, 20, 25)))
    assert results[0]["hits"] != results[1]["hits"]  # the queries differ: a real comparison


def test_cli_search_many_queries_text_is_grouped_and_one_query_unchanged(cli_index, query,
                                                                         query_folder, capsys):
    assert main(["search", *TOY, str(cli_index), str(query), "-k", "2"]) == 0
    single = capsys.readouterr().out
    hits = direct_hits(cli_index, query, 2)
    assert single.splitlines() == [
        "2 hits for the query image (cosine of the whole images, descending):",
        *(f"{h['rank']:4d}  {h['score']: .6f}  {h['path']}" for h in hits)]
    assert main(["search", *TOY, str(cli_index), str(query), str(query_folder / "a.png"),
                 "-k", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:4] == [f"query 1/2: {query}", *single.splitlines()]
    assert lines[4:6] == ["", f"query 2/2: {query_folder / 'a.png'}"]
    assert len(lines) == 9


def test_cli_search_many_queries_write_one_page_each(cli_index, query, query_folder, tmp_path,
                                                     capsys):
    out = tmp_path / "pages"
    assert main(["search", *TOY, str(cli_index), str(query), str(query_folder / "c.png"), "-k", "2",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for folder in ("001-query", "002-c"):
        assert (out / folder / "index.html").is_file()
        assert f"wrote {out / folder / 'index.html'}" in printed
    assert json.loads((out / "002-c" / "results.json").read_text())["query"] == \
        str(query_folder / "c.png")


@pytest.mark.parametrize("case", ["missing", "empty folder", "unreadable", "too large",
                                  "list names missing", "missing list", "no query"])
def test_cli_search_bad_queries_fail_before_any_work(case, cli_index, query, tmp_path, capsys,
                                                     monkeypatch):
    import simexplain.images
    if case == "too large":  # the query's header says more pixels than the limit
        monkeypatch.setattr(simexplain.images, "MAX_PIXELS", SIDE * SIDE - 1)
    missing = tmp_path / "nowhere.png"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    (tmp_path / "empty").mkdir()
    listing = tmp_path / "list.txt"
    listing.write_text(f"{query}\nnowhere.png\n")  # relative: next to the list
    arguments, named = {
        "missing": ([str(query), str(missing)], str(missing)),
        "empty folder": ([str(tmp_path / "empty")], f"{tmp_path / 'empty'} holds no images"),
        "unreadable": ([str(query), str(broken)], f"{broken}: not a readable image"),
        "too large": ([str(query)], f"{query}: {SIDE}x{SIDE} pixels exceeds the limit"),
        "list names missing": (["--queries-from", str(listing)], str(missing)),
        "missing list": (["--queries-from", str(tmp_path / "none.txt")],
                         f"cannot read the query list {tmp_path / 'none.txt'}"),
        "no query": ([], "give a query image"),
    }[case]
    out = tmp_path / "out"
    # a model that does not match the index: the query check must come first to be seen
    assert main(["search", str(cli_index), *arguments, "--out", str(out), "--model",
                 "no-such-model"]) == 2
    assert named in capsys.readouterr().err
    assert not out.exists()


def cut_short(source: Path, target: Path) -> Path:
    """`target`: the first half of the image file `source` (its header whole, pixels missing)."""
    data = source.read_bytes()
    target.write_bytes(data[:len(data) // 2])
    return target


@pytest.mark.parametrize("name", ["a.png", "b.jpg"])
def test_cli_search_a_query_cut_short_fails_naming_it_and_writes_nothing(
        name, cli_index, query, query_folder, tmp_path, capsys):
    from simexplain.images import check_image_file
    cut = cut_short(query_folder / name, tmp_path / f"cut-{name}")
    assert check_image_file(cut) == Image.open(query_folder / name).size  # its header is whole
    out = tmp_path / "out"
    assert main(["search", *TOY, str(cli_index), str(query), str(cut),
                 str(query_folder / "c.png"), "-k", "2", "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1, captured.err
    assert f"{cut}: cannot decode image" in captured.err
    assert captured.out == "" and not out.exists()


def test_cli_search_decodes_each_query_once(cli_index, query, query_folder, monkeypatch, capsys):
    import simexplain.images
    decoded = []
    decode = simexplain.images.decode_image

    def counted(source, name="image"):
        decoded.append(name)
        return decode(source, name)
    monkeypatch.setattr(simexplain.images, "decode_image", counted)
    queries = [str(query), *(str(query_folder / n) for n in ("a.png", "b.jpg", "c.png"))]
    assert main(["search", *TOY, str(cli_index), *queries, "-k", "2", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 4
    assert sorted(decoded) == sorted(queries)  # the early check decoded none of them


def test_an_index_is_not_written_inside_its_gallery(gallery, capsys):
    """It was: the next build of that folder then took the index's files for gallery images
    (listed as skipped) and an index was written into a folder it reads."""
    before = sorted(p.name for p in gallery.iterdir())
    assert main(["index", "build", str(gallery), "--model", "simexplain.toy:tiny_cnn",
                 "--layer", "features", "--size", "32", "--out", str(gallery / "idx"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lies inside the gallery folder" in err
    assert sorted(p.name for p in gallery.iterdir()) == before


def test_links_to_nothing_in_a_gallery_are_reported_as_skipped(tmp_path, capsys):
    """A broken link and a loop of links were left out without a word."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / name)
    (folder / "broken.png").symlink_to(tmp_path / "gone.png")
    (folder / "loop1.png").symlink_to(folder / "loop2.png")
    (folder / "loop2.png").symlink_to(folder / "loop1.png")
    (folder / "bad.png").write_text("not an image")
    assert main(["index", "build", str(folder), "--model", "simexplain.toy:tiny_cnn",
                 "--layer", "features", "--size", "32", "--out", str(tmp_path / "idx"),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "indexed 2 images" in printed and "skipped 4" in printed
    for name in ("broken.png", "loop1.png", "loop2.png"):
        assert f"skipped {folder / name}: not found: a link to nothing" in printed
    bad = str(folder / "bad.png")
    assert printed.count(bad) == 1  # the path once, not again at the start of the reason
    assert len(Index.load(tmp_path / "idx").skipped) == 4


def test_file_names_that_are_not_utf8(tmp_path, capsys):
    """A gallery file so named made the build fail with a UnicodeEncodeError when it saved
    the index (after embedding everything); as a query it broke `search --out`'s page."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(0)
    odd = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not UTF-8
    for name in ("a.png", odd):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / name)
    model = ["--model", "simexplain.toy:tiny_cnn", "--layer", "features", "--size", "32"]
    assert main(["index", "build", str(folder), *model, "--out", str(tmp_path / "idx"),
                 "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "indexed 1 images" in printed and "caf\ufffd.png: the file name is not valid UTF-8" \
        in printed
    index = Index.load(tmp_path / "idx")
    assert [Path(p).name for p in index.paths] == ["a.png"]
    assert [Path(s.path).name for s in index.skipped] == ["caf\ufffd.png"]
    assert main(["search", str(tmp_path / "idx"), str(folder / odd), *model, "--out",
                 str(tmp_path / "results")]) == 0
    assert b"caf\xe9.png" in (tmp_path / "results" / "index.html").read_bytes()
