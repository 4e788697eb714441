"""Index folders never cost a user's files, damaged manifests never give wrong hits, gallery
paths resolve the same from any working directory (issue 12, items 1-3)."""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from simexplain.cli import main
from simexplain.errors import SimexplainError
from simexplain.retrieval import (MANIFEST, MARKER, Index, IndexFormatError, RegionQuery,
                                  checkpoint_path)
from simexplain.retrieval.manifest import checksum
from simexplain import toy as toys

SIDE = 32
TOY = ["--model", "simexplain.toy:tiny_cnn", "--layer", "features", "--size", str(SIDE),
       "--quiet"]


def toy_explainer():
    return toys.toy_explainer(dim=8, channels=8, depth=2, size=SIDE)


def make_gallery(folder: Path, count: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    (folder / "sub").mkdir(parents=True)
    for i in range(count):
        array = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / ("sub" if i == 0 else "") / f"img_{i}.png")
    return folder


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def refused(argv: list[str], capsys) -> str:
    """Run the CLI; it must fail with exit 2 and one line on stderr, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def gallery(tmp_path_factory) -> Path:
    return make_gallery(tmp_path_factory.mktemp("safety") / "gallery")


# -- 1. --out never deletes what simexplain did not write ------------------------------------

def test_out_refuses_a_project_folder_with_a_manifest(gallery, tmp_path, capsys):
    project = tmp_path / "project"
    project.mkdir()
    (project / MANIFEST).write_text('{"name": "my project"}')
    (project / "main.py").write_text("print('hello')")
    before = snapshot(project)
    err = refused(["index", "build", str(gallery), *TOY, "--out", str(project)], capsys)
    assert "not an index folder written by simexplain" in err
    assert snapshot(project) == before


def test_out_refuses_the_gallery_folder_itself(gallery, capsys):
    before = snapshot(gallery)
    refused(["index", "build", str(gallery), *TOY, "--out", str(gallery)], capsys)
    assert snapshot(gallery) == before


def test_out_refuses_an_index_folder_holding_a_users_file(gallery, tmp_path, capsys):
    out = tmp_path / "index"
    assert main(["index", "build", str(gallery), *TOY, "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    err = refused(["index", "build", str(gallery), *TOY, "--out", str(out)], capsys)
    assert "notes.txt" in err
    assert snapshot(out) == before


def test_out_replaces_its_own_index_and_fills_an_empty_folder(gallery, tmp_path):
    out = tmp_path / "index"
    out.mkdir()  # an empty folder holds nothing to lose
    assert main(["index", "build", str(gallery), *TOY, "--out", str(out)]) == 0
    assert (out / MARKER).is_file()
    first = (out / MANIFEST).read_text()
    assert main(["index", "build", str(gallery), *TOY, "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # no leftovers
    assert json.loads((out / MANIFEST).read_text())["paths"] == json.loads(first)["paths"]


def test_out_refuses_a_file(gallery, tmp_path, capsys):
    target = tmp_path / "index"
    target.write_text("a file of mine")
    refused(["index", "build", str(gallery), *TOY, "--out", str(target)], capsys)
    assert target.read_text() == "a file of mine"


@pytest.mark.parametrize("restart", [False, True])
def test_a_users_partial_folder_is_never_touched(gallery, tmp_path, restart):
    out = tmp_path / "index"
    mine = tmp_path / "index.partial"  # the name older versions used for checkpoints
    mine.mkdir()
    (mine / "draft.txt").write_text("mine")
    (mine / "state.json").write_text("{}")
    assert main(["index", "build", str(gallery), *TOY, "--out", str(out)]
                + (["--restart"] if restart else [])) == 0
    assert snapshot(mine) == {"draft.txt": b"mine", "state.json": b"{}"}


@pytest.mark.parametrize("restart", [False, True])
def test_a_foreign_folder_at_the_checkpoint_name_is_refused(gallery, tmp_path, capsys,
                                                            restart):
    out = tmp_path / "index"
    odd = checkpoint_path(out)
    odd.mkdir()
    (odd / "state.json").write_text("{}")
    err = refused(["index", "build", str(gallery), *TOY, "--out", str(out)]
                  + (["--restart"] if restart else []), capsys)
    assert "not made by simexplain" in err
    assert snapshot(odd) == {"state.json": b"{}"} and not out.exists()


def test_a_checkpoint_with_a_users_file_is_left_in_place(gallery, tmp_path, monkeypatch):
    out = tmp_path / "index"
    explainer = toy_explainer()
    stream = explainer.stream("b")
    real, calls = stream.embed, []

    def embed(x):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(x)
    with monkeypatch.context() as patch:
        patch.setattr(stream, "embed", embed)
        with pytest.raises(KeyboardInterrupt):
            Index.build(gallery, explainer, batch_size=2, progress=False, out=out)
    checkpoint = checkpoint_path(out)
    (checkpoint / "keep.txt").write_text("mine")
    with pytest.warns(UserWarning, match="keep.txt"):
        Index.build(gallery, explainer, batch_size=2, progress=False, out=out)
    assert sorted(p.name for p in checkpoint.iterdir()) == ["keep.txt", "simexplain-partial"]
    assert len(Index.load(out)) == 6


def test_symlinks_leaving_the_gallery_are_skipped(tmp_path):
    gallery = make_gallery(tmp_path / "gallery", count=3)
    secret = tmp_path / "secret.png"
    Image.fromarray(np.zeros((SIDE, SIDE, 3), np.uint8)).save(secret)
    (gallery / "link.png").symlink_to(secret)
    index = Index.build(gallery, toy_explainer(), progress=False)
    assert len(index) == 3 and [Path(s.path).name for s in index.skipped] == ["link.png"]


# -- 2. the manifest: checksum and schema -----------------------------------------------------

@pytest.fixture(scope="module")
def intact(gallery, tmp_path_factory):
    """A saved index, its manifest bytes, a prepared region query and the intact hits."""
    explainer = toy_explainer()
    path = tmp_path_factory.mktemp("intact") / "index"
    index = Index.build(gallery, explainer, "toy", progress=False, out=path)
    query = torch.randn(1, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(9))
    side = explainer.side(query, "a")
    queries = [RegionQuery.from_side(side), RegionQuery.from_side(side, (0, 0, 16, 20))]
    return explainer, path, (path / MANIFEST).read_bytes(), queries, hits_of(index, queries)


def hits_of(index: Index, queries) -> list:
    return [[(h.index, h.path, round(h.score, 9)) for h in index.search(q, k=len(index))]
            for q in queries]


def outcome(explainer, path: Path, queries, expected) -> str:
    """"refused" or "harmless"; anything else fails the test."""
    try:
        index = Index.load(path, explainer=explainer)
    except SimexplainError as exc:
        assert "\n" not in str(exc)
        return "refused"
    assert hits_of(index, queries) == expected, "a damaged manifest gave different hits"
    return "harmless"


def test_single_byte_flips_are_refused_or_harmless(intact, tmp_path):
    explainer, path, original, queries, expected = intact
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    rng = random.Random(0)
    counts = {"refused": 0, "harmless": 0}
    for _ in range(300):
        data = bytearray(original)
        data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        (copy / MANIFEST).write_bytes(bytes(data))
        counts[outcome(explainer, copy, queries, expected)] += 1
    assert counts["refused"] >= 250  # nearly every flip breaks the JSON or the checksum


def _edit(manifest: dict, key: str, value) -> dict:
    return {**manifest, key: value}


EDITS = {  # targeted edits, each a wrong manifest
    "kind hnsw": lambda m: _edit(m, "kind", "hnsw"),
    "skipped [1]": lambda m: _edit(m, "skipped", [1]),
    "input_size x": lambda m: _edit(m, "input_size", "x"),
    "input_size 0,0": lambda m: _edit(m, "input_size", [0, 0]),
    "input_size 64,64": lambda m: _edit(m, "input_size", [64, 64]),
    "layer 5": lambda m: _edit(m, "layer", 5),
    "swapped paths": lambda m: _edit(m, "paths", [m["paths"][1], m["paths"][0], *m["paths"][2:]]),
    "count": lambda m: _edit(m, "count", m["count"] - 1),
    "dim": lambda m: _edit(m, "dim", 0),
    "similarity": lambda m: _edit(m, "similarity", "cos"),
    "parent path": lambda m: _edit(m, "paths", ["../secret.png", *m["paths"][1:]]),
    "absolute path": lambda m: _edit(m, "paths", ["/etc/passwd", *m["paths"][1:]]),
    "empty path": lambda m: _edit(m, "paths", ["", *m["paths"][1:]]),
    "root relative": lambda m: _edit(m, "gallery_root", "gallery"),
    "params": lambda m: _edit(m, "params", {"nlist": 2}),
    "files": lambda m: _edit(m, "files", {}),
    "extra field": lambda m: _edit(m, "note", "x"),
    "weights": lambda m: _edit(m, "weights_sha256", "abc"),
    "hash list": lambda m: _edit(m, "sha256", m["sha256"][:-1]),
}
SCHEMA_ALLOWS = {"swapped paths", "input_size 64,64"}  # valid manifests (see below)


@pytest.mark.parametrize("name", sorted(EDITS))
@pytest.mark.parametrize("reseal", [False, True])
def test_targeted_edits_are_refused(intact, tmp_path, name, reseal):
    """Without a new checksum every edit is refused; with one (a deliberate forgery) the schema
    refuses every invalid value, and the valid ones are refused elsewhere (the model check) or
    are a different, well-formed index."""
    explainer, path, original, queries, expected = intact
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    manifest = EDITS[name](json.loads(original))
    if reseal:
        manifest["checksum"] = checksum(manifest)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    if reseal and name in SCHEMA_ALLOWS:
        with pytest.raises(SimexplainError) if name == "input_size 64,64" else _nothing():
            Index.load(copy, explainer=explainer)
        return
    with pytest.raises(IndexFormatError, match="index damaged") as caught:
        Index.load(copy, explainer=explainer)
    assert "\n" not in str(caught.value)
    assert ("checksum" in str(caught.value)) == (not reseal)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_cli_search_reports_damage_in_one_line(intact, tmp_path, capsys):
    _, path, original, _, _ = intact
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    (copy / MANIFEST).write_bytes(original.replace(b'"kind": "flat"', b'"kind": "hnsw"'))
    query = tmp_path / "q.png"
    Image.fromarray(np.zeros((SIDE, SIDE, 3), np.uint8)).save(query)
    err = refused(["search", str(copy), str(query), "--model", "simexplain.toy:tiny_cnn",
                   "--layer", "features"], capsys)
    assert "index damaged" in err


def test_a_vectors_only_index_round_trips(tmp_path):
    vectors = np.random.default_rng(0).standard_normal((50, 4))
    index = Index.from_vectors(vectors, similarity="euclidean", kind="ivf")
    index.save(tmp_path / "vectors")
    loaded = Index.load(tmp_path / "vectors")
    assert loaded.info["layer"] is None and loaded.kind == "ivf"
    np.testing.assert_array_equal(loaded.embeddings, index.embeddings)
    assert [Path(p).name for p in loaded.paths] == index.paths  # labels, under a root


def test_a_format_1_index_is_refused_with_how_to_rebuild(intact, tmp_path):
    _, path, original, _, _ = intact
    copy = tmp_path / "old"
    shutil.copytree(path, copy)
    (copy / MARKER).unlink()
    manifest = json.loads(original)
    (copy / MANIFEST).write_text(json.dumps({**manifest, "version": 1}))
    with pytest.raises(IndexFormatError, match="older simexplain.*simexplain index build"):
        Index.load(copy)


# -- 3. gallery paths ------------------------------------------------------------------------

def test_paths_resolve_from_any_working_directory(tmp_path, monkeypatch):
    from simexplain.images import load_image
    from simexplain.web.engine import Engine
    build_dir, other_dir = tmp_path / "project", tmp_path / "elsewhere"
    make_gallery(build_dir / "photos")
    other_dir.mkdir()
    explainer = toy_explainer()
    monkeypatch.chdir(build_dir)
    Index.build("photos", explainer, "toy", progress=False, out="photos.index")
    monkeypatch.chdir(other_dir)
    index = Index.load(build_dir / "photos.index", explainer=explainer)
    expected = sorted(str(p) for p in (build_dir / "photos").rglob("*.png"))
    assert sorted(index.paths) == expected
    hits = index.search(torch.randn(1, 3, SIDE, SIDE), k=2, explain=True)  # reads the files
    assert all(hit.explanation is not None for hit in hits)
    engine = Engine(explainer=explainer, model="toy", index=build_dir / "photos.index",
                    samples=[])
    for i, path in enumerate(index.paths):
        served = np.asarray(engine.images.pixels(f"g{i}"))
        assert np.array_equal(served, np.asarray(load_image(path)))


def test_gallery_and_index_moved_together(tmp_path):
    first = tmp_path / "first"
    make_gallery(first / "photos")
    explainer = toy_explainer()
    Index.build(first / "photos", explainer, "toy", progress=False, out=first / "index")
    moved = tmp_path / "moved"
    shutil.move(str(first), str(moved))
    index = Index.load(moved / "index", explainer=explainer)
    assert all(Path(p).is_file() and str(moved / "photos") in p for p in index.paths)


def test_a_manifest_path_outside_the_gallery_is_refused(intact, tmp_path):
    _, path, original, _, _ = intact
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    secret = tmp_path / "secret.png"
    Image.fromarray(np.zeros((SIDE, SIDE, 3), np.uint8)).save(secret)
    manifest = json.loads(original)
    root = Path(manifest["gallery_root"])
    outside = os.path.relpath(secret, root)
    manifest["paths"][1] = outside
    manifest["checksum"] = checksum(manifest)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="index damaged.*not inside the gallery root"):
        Index.load(copy)
