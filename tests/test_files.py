"""Atomic writes: a failure mid-write leaves the old file intact and no temporary behind; output
folders are written whole, only where nothing of the user's is lost (issue 26)."""

import errno
import json
import os
from pathlib import Path

import pytest

from simexplain.errors import SimexplainError
from simexplain.files import (OUTPUT_MARKER, atomic_path, check_target, output_folder,
                              write_text_atomic)


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "result.json"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_write_replaces_and_creates_folders(tmp_path):
    target = tmp_path / "new" / "page.html"
    write_text_atomic(target, "one")
    write_text_atomic(target, "two")
    assert target.read_text() == "two"
    assert oct(target.stat().st_mode & 0o777) == "0o644"


# -- output folders (issue 26): written whole, only into a folder that is absent, empty or ours

def write_output(target: Path, files: dict[str, str]) -> None:
    with output_folder(target) as staged:
        for name, text in files.items():
            (staged / name).parent.mkdir(parents=True, exist_ok=True)
            (staged / name).write_text(text)


def contents(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_an_output_of_ours_is_replaced_whole(tmp_path):
    target = tmp_path / "out"
    write_output(target, {"result.json": "1", "old.png": "x", "001-q/index.html": "a"})
    marker = json.loads((target / OUTPUT_MARKER).read_text())
    assert set(marker["files"]) == {"result.json", "old.png", "001-q/index.html"}
    write_output(target, {"result.json": "2"})
    assert set(contents(target)) == {"result.json", OUTPUT_MARKER}  # old.png went with it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left


@pytest.mark.parametrize("marker", [None, "copied", "forged"])
def test_a_users_files_named_like_outputs_are_never_touched(tmp_path, marker):
    target = tmp_path / "mine"
    if marker == "copied":  # a marker of ours copied next to the user's own files
        write_output(tmp_path / "ours", {"result.json": "ours"})
        target.mkdir()
        (target / OUTPUT_MARKER).write_bytes((tmp_path / "ours" / OUTPUT_MARKER).read_bytes())
    target.mkdir(exist_ok=True)
    if marker == "forged":  # the marker's shape, listing nothing
        (target / OUTPUT_MARKER).write_text(json.dumps(
            {"format": "simexplain-output", "id": "0" * 32, "files": {}}))
    for name in ("result.json", "overall.png", "index.html", "query.png"):
        (target / name).write_text(f"my {name}")
    before = contents(target)
    with pytest.raises(SimexplainError, match="refusing") as error:
        write_output(target, {"result.json": "new"})
    assert "\n" not in str(error.value)
    assert contents(target) == before
    assert sorted(p.name for p in tmp_path.iterdir() if ".simexplain-" in p.name) == []


@pytest.mark.parametrize("change", ["added", "edited"])
def test_an_output_of_ours_the_user_changed_is_refused(tmp_path, change):
    target = tmp_path / "out"
    write_output(target, {"result.json": "1", "overall.png": "x"})
    if change == "added":
        (target / "notes.txt").write_text("mine")
    else:
        (target / "overall.png").write_text("edited by me")
    before = contents(target)
    with pytest.raises(SimexplainError, match="notes.txt" if change == "added"
                       else "overall.png"):
        write_output(target, {"result.json": "2"})
    assert contents(target) == before


def test_a_failed_write_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out"
    write_output(target, {"result.json": "1"})
    before = contents(target)
    with pytest.raises(SimexplainError, match="cannot write .*No space left on device"):
        with output_folder(target) as staged:
            (staged / "half.png").write_text("half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    with pytest.raises(KeyboardInterrupt):
        with output_folder(target) as staged:
            (staged / "half.png").write_text("half")
            raise KeyboardInterrupt
    assert contents(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_leftovers_of_a_killed_write_are_removed(tmp_path):
    target = tmp_path / "out"
    killed = tmp_path / ".out.simexplain-tmp-k1ll3d00"  # as mkdtemp names the staging folder
    (killed / "001-q").mkdir(parents=True)
    (killed / "001-q" / "hit_001.png").write_bytes(b"half")
    write_output(target, {"result.json": "1"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_targets_no_folder_can_be_made_at(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("mine")
    for target, why in ((".", "working folder"), ("..", "working folder"),
                        ("afile/out", "afile is a file")):
        with pytest.raises(SimexplainError, match=why):
            check_target(target)
    with pytest.raises(SimexplainError, match="not a folder"):
        write_output(tmp_path / "afile", {"result.json": "1"})
    assert (tmp_path / "afile").read_text() == "mine"


def test_no_folder_is_written_inside_an_index_or_an_output_of_ours(tmp_path):
    """A folder written into an index made it unopenable (it holds exactly its own files), one
    written into an output folder made that output one simexplain refuses to replace."""
    from simexplain.files import INDEX_MARKER
    index = tmp_path / "index"
    index.mkdir()
    (index / INDEX_MARKER).write_text("{}")
    write_output(tmp_path / "out", {"result.json": "1"})
    for target, holder, what in ((index / "sub", index, "an index"),
                                 (index / "a" / "b", index, "an index"),
                                 (tmp_path / "out" / "inner", tmp_path / "out",
                                  "an output folder")):
        with pytest.raises(SimexplainError, match=f"lies inside {holder}, {what} simexplain "
                                                  "wrote"):
            check_target(target)
        assert not target.exists()
    assert check_target(tmp_path / "beside") == tmp_path / "beside"
