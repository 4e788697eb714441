"""Index folders never cost a user's files, damaged manifests never give wrong hits, gallery
paths resolve the same from any working directory (issue 12, items 1-3)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow
import pyarrow.ipc
import pytest
import torch
from PIL import Image

from simexplain.cli import main
from simexplain.errors import SimexplainError
from simexplain.retrieval import (MANIFEST, MARKER, Index, IndexFormatError, RegionQuery,
                                  checkpoint_path)
from simexplain.retrieval.manifest import GALLERY, checksum
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
    assert (json.loads((out / MANIFEST).read_text())["files"][GALLERY]
            == json.loads(first)["files"][GALLERY])


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


def write_flipped(original: bytes, file: Path, count: int, seed: int) -> Iterator[None]:
    """`count` times: `original` with one random byte flipped (seeded), written to `file`."""
    rng = random.Random(seed)
    for _ in range(count):
        data = bytearray(original)
        data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
        file.write_bytes(bytes(data))
        yield


def test_single_byte_flips_are_refused_or_harmless(intact, tmp_path):
    explainer, path, original, queries, expected = intact
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    counts = {"refused": 0, "harmless": 0}
    for _ in write_flipped(original, copy / MANIFEST, 300, seed=0):
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
    "count": lambda m: _edit(m, "count", m["count"] - 1),
    "dim": lambda m: _edit(m, "dim", 0),
    "similarity": lambda m: _edit(m, "similarity", "cos"),
    "paths listed": lambda m: _edit(m, "paths", ["a.png"] * m["count"]),
    "root relative": lambda m: _edit(m, "gallery_root", "gallery"),
    "params": lambda m: _edit(m, "params", {"nlist": 2}),
    "files": lambda m: _edit(m, "files", {}),
    "extra field": lambda m: _edit(m, "note", "x"),
    "weights": lambda m: _edit(m, "weights_sha256", "abc"),
    "skipped count": lambda m: _edit(m, "skipped", m["skipped"] + 1),
}
SCHEMA_ALLOWS = {"input_size 64,64"}  # valid manifests (see below)


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


# -- the per-image records: gallery.arrow ------------------------------------------------------

def _records(folder: Path) -> tuple[list, list, list]:
    """path, sha256 and skipped columns of gallery.arrow as lists (read with pyarrow alone)."""
    table = pyarrow.ipc.open_file(str(folder / GALLERY)).read_all()
    return (table.column("path").to_pylist(), table.column("sha256").to_pylist(),
            table.column("skipped").to_pylist())


def _write_records(folder: Path, paths, hashes, reasons, reseal: bool,
                   table: pyarrow.Table | None = None) -> None:
    """Rewrite gallery.arrow; with `reseal`, also its size and sha256 in a resealed manifest
    (a deliberate forgery that only the checks of the records can catch)."""
    if table is None:
        table = pyarrow.table({"path": pyarrow.array(paths, pyarrow.large_string()),
                               "sha256": pyarrow.array(hashes, pyarrow.binary(32)),
                               "skipped": pyarrow.array(reasons, pyarrow.string())})
    with pyarrow.OSFile(str(folder / GALLERY), "wb") as sink, \
            pyarrow.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    if reseal:
        manifest = json.loads((folder / MANIFEST).read_text())
        data = (folder / GALLERY).read_bytes()
        manifest["files"][GALLERY] = {"bytes": len(data),
                                      "sha256": hashlib.sha256(data).hexdigest()}
        manifest["checksum"] = checksum(manifest)
        (folder / MANIFEST).write_text(json.dumps(manifest))


RECORD_EDITS = {  # (paths, hashes, reasons) -> the edited columns, or a whole table
    "swapped paths": lambda p, h, r: ([p[1], p[0], *p[2:]], h, r),
    "parent path": lambda p, h, r: (["../secret.png", *p[1:]], h, r),
    "absolute path": lambda p, h, r: (["/etc/passwd", *p[1:]], h, r),
    "dot part": lambda p, h, r: (["./" + p[0], *p[1:]], h, r),
    "empty path": lambda p, h, r: (["", *p[1:]], h, r),
    "missing path": lambda p, h, r: ([None, *p[1:]], h, r),
    "backslash": lambda p, h, r: (["..\\x.png", *p[1:]], h, r),
    "path twice": lambda p, h, r: ([p[0], p[0], *p[2:]], h, r),
    "row dropped": lambda p, h, r: (p[1:], h[1:], r[1:]),
    "indexed row skipped": lambda p, h, r: (p, h, ["why", *r[1:]]),
    "extra row": lambda p, h, r: ([*p, "x.png"], [*h, None], [*r, "unreadable"]),
    "hash as text": lambda p, h, r: pyarrow.table({
        "path": pyarrow.array(p, pyarrow.large_string()),
        "sha256": pyarrow.array([x.hex() if x else None for x in h]),
        "skipped": pyarrow.array(r, pyarrow.string())}),
    "extra column": lambda p, h, r: pyarrow.table({
        "path": pyarrow.array(p, pyarrow.large_string()),
        "sha256": pyarrow.array(h, pyarrow.binary(32)),
        "skipped": pyarrow.array(r, pyarrow.string()), "x": pyarrow.array([1] * len(p))}),
}


@pytest.mark.parametrize("name", sorted(RECORD_EDITS))
@pytest.mark.parametrize("reseal", [False, True])
def test_edited_records_are_refused(intact, tmp_path, name, reseal):
    """gallery.arrow edited: refused by its size or sha256 in the manifest, and, when the
    manifest is resealed to match (a forgery), by the checks of the records themselves."""
    explainer, path, _, queries, expected = intact
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    edited = RECORD_EDITS[name](*_records(copy))
    if isinstance(edited, pyarrow.Table):
        _write_records(copy, None, None, None, reseal, table=edited)
    else:
        _write_records(copy, *edited, reseal=reseal)
    if reseal and name == "swapped paths":  # valid records of a different index
        assert [Path(p).name for p in Index.load(copy).paths][:2] == [
            Path(p).name for p in Index.load(path).paths][1::-1]
        return
    with pytest.raises(IndexFormatError, match="index damaged") as caught:
        Index.load(copy, explainer=explainer)
    assert "\n" not in str(caught.value) and GALLERY in str(caught.value)


@pytest.mark.parametrize("verify", [True, False])
def test_a_damaged_arrow_file_is_refused_in_one_line(intact, tmp_path, verify):
    """Truncated, overwritten or byte-flipped: refused, also without the sha256 check
    (verify=False), never a crash or a traceback."""
    explainer, path, _, queries, expected = intact
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    original = (path / GALLERY).read_bytes()
    (copy / GALLERY).write_bytes(original[:len(original) // 2])
    with pytest.raises(IndexFormatError, match="index damaged.*truncated"):
        Index.load(copy, verify=verify)
    (copy / GALLERY).write_bytes(b"\0" * len(original))
    with pytest.raises(IndexFormatError, match="index damaged"):
        Index.load(copy, verify=verify)
    counts = {"refused": 0, "harmless": 0}
    for _ in write_flipped(original, copy / GALLERY, 100, seed=1):
        try:
            index = Index.load(copy, explainer=explainer, verify=verify)
        except SimexplainError as exc:
            assert "\n" not in str(exc)
            counts["refused"] += 1
            continue
        counts["harmless"] += 1
        try:  # every row reads, or says in one line that it cannot (text that is not UTF-8)
            assert len(list(index.paths)) == len(index)
        except SimexplainError as exc:
            assert "\n" not in str(exc) and "index damaged" in str(exc)
    assert counts["refused"] == (100 if verify else counts["refused"])


def test_a_format_2_index_is_read(intact, tmp_path):
    """An index of format 2 (records in the JSON manifest) loads with the same records and
    hits."""
    explainer, path, original, queries, expected = intact
    copy = tmp_path / "v2"
    shutil.copytree(path, copy)
    paths, hashes, reasons = _records(copy)
    manifest = json.loads(original)
    count = manifest["count"]
    files = {k: v for k, v in manifest["files"].items() if k != GALLERY}
    manifest.update(version=2, paths=paths[:count], files=files,
                    sha256=[h.hex() if h else "" for h in hashes[:count]],
                    skipped=[{"path": p, "reason": r} for p, r in zip(paths[count:],
                                                                      reasons[count:])])
    manifest["checksum"] = checksum(manifest)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    (copy / GALLERY).unlink()
    (copy / MARKER).write_text(json.dumps({"format": "simexplain-index", "version": 2,
                                           "owner": manifest["owner"]}) + "\n")
    old = Index.load(copy, explainer=explainer)
    new = Index.load(path, explainer=explainer)
    assert list(old.paths) == list(new.paths) and list(old.hashes) == list(new.hashes)
    assert hits_of(old, queries) == expected
    old.save(copy)  # a format-2 folder is ours to replace: it becomes format 3
    assert json.loads((copy / MANIFEST).read_text())["version"] == 3
    assert list(Index.load(copy).paths) == list(new.paths)


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
    paths, hashes, reasons = _records(copy)
    paths[1] = outside
    _write_records(copy, paths, hashes, reasons, reseal=True)
    with pytest.raises(IndexFormatError, match="index damaged.*not inside the gallery root"):
        Index.load(copy)


# -- issue 26: an index folder from elsewhere is data, never code -----------------------------

class Payload:
    """Pickled into a model file: unpickling it creates the file `flag` (code that ran)."""

    def __init__(self, flag: str):
        self.flag = flag

    def __reduce__(self):
        return open, (self.flag, "w")


def crafted(intact, tmp_path: Path, model: str, extra: bool) -> Path:
    """A copy of a good index whose manifest (checksum recomputed, as anyone can) names
    `model`; with `extra`, the pickled payload lies in the index folder itself."""
    _, path, original, _, _ = intact
    copy = tmp_path / "crafted"
    shutil.copytree(path, copy)
    if extra:
        torch.save(Payload(str(tmp_path / "ran")), copy / "payload.pt")
    manifest = json.loads(original)
    manifest["model"] = model
    manifest["checksum"] = checksum(manifest)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    return copy


def payloads(tmp_path: Path) -> dict[str, tuple[str, bool]]:
    """The crafted models: a pickle in the folder, one outside it, a module:factory whose
    import runs code."""
    flag = tmp_path / "ran"
    outside = tmp_path / "elsewhere.pt"
    torch.save(Payload(str(flag)), outside)
    (tmp_path / "evil_factory.py").write_text(
        f"open({str(flag)!r}, 'w').close()\ndef build():\n    raise SystemExit\n")
    return {"inside": (str(tmp_path / "crafted" / "payload.pt"), True),
            "outside": (str(outside), False), "factory": ("evil_factory:build", False)}


@pytest.mark.parametrize("case", ["inside", "outside", "factory"])
def test_a_crafted_index_runs_no_code(intact, tmp_path, monkeypatch, capsys, case):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    model, extra = payloads(tmp_path)[case]
    copy = crafted(intact, tmp_path, model, extra)
    torch.load(tmp_path / "elsewhere.pt", weights_only=False)  # the payload works: it ran
    (tmp_path / "ran").unlink()
    query = tmp_path / "q.png"
    Image.fromarray(np.zeros((SIDE, SIDE, 3), np.uint8)).save(query)
    err = refused(["search", str(copy), str(query)], capsys)
    assert ("does not list (payload.pt)" in err if extra
            else f"pass --model {model}" in err and "not a zoo model" in err), err
    import uvicorn
    from simexplain.web import create_app
    with pytest.raises(SimexplainError):  # serve --index: the app is never created
        create_app(index=copy, samples=[])
    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: pytest.fail("the server started"))
    refused(["serve", "--index", str(copy)], capsys)
    if extra:
        with pytest.raises(IndexFormatError, match="payload.pt"):
            Index.load(copy)
    else:
        assert Index.load(copy).model_name == model  # data only: nothing named is loaded
    assert not (tmp_path / "ran").exists(), "the crafted index ran code"


def test_a_model_named_on_the_command_line_is_checked_against_the_index(intact, tmp_path,
                                                                         capsys):
    copy = crafted(intact, tmp_path, "/nowhere/model.pt", False)
    query = tmp_path / "q.png"
    Image.fromarray(np.zeros((SIDE, SIDE, 3), np.uint8)).save(query)
    # the index was built with toy_explainer's weights: a toy model with other weights
    # (another seed of the factory) is refused by the fingerprint, in one line
    err = refused(["search", str(copy), str(query), "--model", "simexplain.toy:tiny_cnn",
                   "--layer", "features", "--size", str(SIDE)], capsys)
    assert "does not match" in err


# -- issue 26: ownership needs more than the marker's text ------------------------------------

def test_a_folder_with_only_the_markers_text_is_not_ours(intact, gallery, tmp_path, capsys):
    _, path, _, _, _ = intact
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / MARKER).write_text((path / MARKER).read_text())  # the exact text, owner and all
    (fake / MANIFEST).write_text('{"my": "settings"}')
    (fake / "embeddings.npy").write_bytes(b"my own numbers")
    (fake / "vectors.faiss").write_bytes(b"mine too")
    before = snapshot(fake)
    err = refused(["index", "build", str(gallery), *TOY, "--out", str(fake)], capsys)
    assert "cannot tell its own files" in err
    assert snapshot(fake) == before


def test_only_files_its_manifest_lists_are_removed(gallery, tmp_path, capsys):
    out = tmp_path / "index"
    assert main(["index", "build", str(gallery), *TOY, "--out", str(out)]) == 0
    (out / "vectors-00003.faiss").write_bytes(b"a user's file, named like a shard")
    before = snapshot(out)
    err = refused(["index", "build", str(gallery), *TOY, "--out", str(out)], capsys)
    assert "vectors-00003.faiss" in err and snapshot(out) == before
    owner = json.loads((out / MANIFEST).read_text())["owner"]
    assert json.loads((out / MARKER).read_text())["owner"] == owner


def test_an_index_of_ours_is_replaced_with_a_new_owner(gallery, tmp_path):
    out = tmp_path / "index"
    assert main(["index", "build", str(gallery), *TOY, "--out", str(out)]) == 0
    first = json.loads((out / MANIFEST).read_text())["owner"]
    assert main(["index", "build", str(gallery), *TOY, "--out", str(out)]) == 0
    second = json.loads((out / MANIFEST).read_text())["owner"]
    assert first != second and json.loads((out / MARKER).read_text())["owner"] == second
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


# -- issue 26: leftovers of a killed save are ours, and the next save removes them ------------

def leftover_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".simexplain-" in p.name)


def test_leftovers_of_a_killed_save_are_removed_by_the_next(tmp_path):
    index = Index.from_vectors(np.random.default_rng(0).standard_normal((20, 4)))
    target = tmp_path / "index"
    index.save(target)
    # what a save killed mid-way leaves: a half-written staging folder, and the previous
    # index moved aside; a user's file in one of them stays (with a warning)
    tmp = tmp_path / ".index.simexplain-tmp-abcd1234"
    tmp.mkdir()
    (tmp / "embeddings.npy").write_bytes(b"half")
    old = tmp_path / ".index.simexplain-old-efgh5678"
    shutil.copytree(target, old)
    kept = tmp_path / ".index.simexplain-old-ijkl9012"
    kept.mkdir()
    (kept / "vectors.faiss").write_bytes(b"x")
    (kept / "diary.txt").write_text("mine")
    other = tmp_path / ".other.simexplain-tmp-abcd1234"  # another target's: not this save's
    other.mkdir()
    with pytest.warns(UserWarning, match="diary.txt"):
        index.save(target)
    assert leftover_names(tmp_path) == [kept.name, other.name]
    assert snapshot(kept) == {"diary.txt": b"mine"}
    assert len(Index.load(target)) == 20


KILLED_SAVE = """
import os, signal, sys
import numpy as np
from simexplain import files
from simexplain.retrieval import Index, storage
index = Index.from_vectors(np.random.default_rng(1).standard_normal((30, 4)))
where = sys.argv[2]
def kill(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)
if where == "writing":  # the staging folder half written
    storage._write = kill
else:  # the old index moved aside, the new one in place, the old one not yet removed
    files._remove_files = kill
index.save(sys.argv[1])
"""


@pytest.mark.parametrize("where", ["writing", "swapping"])
def test_a_real_sigkill_mid_save_leaves_nothing_the_next_save_keeps(tmp_path, where):
    import signal
    import subprocess
    import sys
    target = tmp_path / "index"
    Index.from_vectors(np.random.default_rng(0).standard_normal((20, 4))).save(target)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(target), where], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    kind = "tmp" if where == "writing" else "old"
    assert [n.split("-")[-2] for n in leftover_names(tmp_path)] == [kind]
    assert len(Index.load(target)) == (20 if where == "writing" else 30)
    Index.from_vectors(np.random.default_rng(2).standard_normal((10, 4))).save(target)
    assert leftover_names(tmp_path) == [] and len(Index.load(target)) == 10


# -- issue 26: failures while writing an index are one line, exit 2, nothing left behind ------

def test_disk_full_during_an_explain_build(gallery, tmp_path, monkeypatch, capsys):
    import errno
    from simexplain.retrieval import storage
    out = tmp_path / "index"
    real = storage._save_array

    def full(array, file, *args, **kwargs):
        if "explain" in file.name:  # the embeddings went in, the explain cache does not fit
            file.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(array, file, *args, **kwargs)
    with monkeypatch.context() as patch:
        patch.setattr(storage, "_save_array", full)
        err = refused(["index", "build", str(gallery), *TOY, "--out", str(out), "--explain"],
                      capsys)
    assert "No space left on device" in err and str(out) in err
    assert not out.exists() and leftover_names(tmp_path) == []
    assert main(["index", "build", str(gallery), *TOY, "--out", str(out), "--explain"]) == 0
    assert leftover_names(tmp_path) == [] and Index.load(out).explain_cache is not None


@pytest.mark.parametrize("target", [".", "afile/idx", "afile", "readonly/idx"])
def test_unwritable_out_targets_are_refused_before_any_work(gallery, tmp_path, monkeypatch,
                                                            capsys, target):
    import errno
    import tempfile
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("mine")
    (tmp_path / "readonly").mkdir()
    real = tempfile.mkdtemp

    def read_only(*args, dir=None, **kwargs):  # noqa: A002 - mkdtemp's own name
        if dir is not None and Path(dir).name == "readonly":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real(*args, dir=dir, **kwargs)
    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    monkeypatch.setattr(Index, "build", lambda *a, **k: pytest.fail("work started"))
    before = snapshot(tmp_path)
    err = refused(["index", "build", str(gallery), *TOY, "--out", target], capsys)
    assert {".": "working folder", "afile/idx": "is a file", "afile": "not an index folder",
            "readonly/idx": "Read-only file system"}[target] in err
    assert snapshot(tmp_path) == before and leftover_names(tmp_path) == []


def test_ivfpq_on_a_one_image_gallery_says_how_many_it_needs(tmp_path, capsys):
    make_gallery(tmp_path / "one", count=1)
    err = refused(["index", "build", str(tmp_path / "one"), *TOY, "--out",
                   str(tmp_path / "index"), "--kind", "ivfpq"], capsys)
    assert "needs at least 2 images" in err and "has 1" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one"]
    with pytest.raises(SimexplainError, match="needs at least 2 images"):
        Index.from_vectors(np.ones((1, 4)), kind="ivfpq")


def test_search_out_never_overwrites_the_users_files(gallery, tmp_path, capsys):
    index = tmp_path / "index"
    assert main(["index", "build", str(gallery), *TOY, "--out", str(index)]) == 0
    query = tmp_path / "q.png"
    Image.fromarray(np.zeros((SIDE, SIDE, 3), np.uint8)).save(query)
    page = tmp_path / "page"
    page.mkdir()
    for name in ("index.html", "query.png", "results.json"):
        (page / name).write_text(f"my {name}")
    before = snapshot(page)
    search = ["search", *TOY[:-1], str(index), str(query), "-k", "2", "--out"]
    err = refused(search + [str(page)], capsys)
    assert "not written by simexplain" in err and snapshot(page) == before
    ours = tmp_path / "ours"
    assert main(search + [str(ours)]) == 0 and main(search + [str(ours)]) == 0
    assert (ours / "index.html").is_file() and leftover_names(tmp_path) == []
