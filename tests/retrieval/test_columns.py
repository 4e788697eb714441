"""gallery.arrow and its accessors (`retrieval.columns`): the records written are read back
by row, by slice and many at once; the checks refuse what a folder's build never writes, in
sorted and unsorted order alike."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow
import pyarrow.ipc
import pytest

from simexplain.retrieval import Index, IndexFormatError
from simexplain.retrieval.basics import Skipped
from simexplain.retrieval.columns import PathColumn, open_file, write

ROOT = Path("/data/gallery")


def records(tmp_path: Path, relative: list[str], skipped=()) -> Path:
    file = tmp_path / "gallery.arrow"
    hashes = [f"{i:064x}" if i % 3 else "" for i in range(len(relative))]
    write(file, [str(ROOT / p) for p in relative], hashes, list(skipped), ROOT)
    return file


def test_records_read_back_by_row_slice_and_many(tmp_path):
    relative = [f"b/img_{i:03d}.png" for i in range(300)]
    file = records(tmp_path, relative, [Skipped("/data/gallery/x.txt", "not an image")])
    read = open_file(file, 300, 1, ROOT)
    expected = [str(ROOT / p) for p in relative]
    assert len(read.paths) == 300 and read.paths[7] == expected[7]
    assert read.paths[-1] == expected[-1] and read.paths[10:20:3] == expected[10:20:3]
    assert read.paths.take([299, 0, 5]) == [expected[299], expected[0], expected[5]]
    assert list(read.paths) == expected and read.paths == expected
    assert read.hashes[0] == "" and read.hashes[4] == f"{4:064x}"
    assert [(s.path, s.reason) for s in read.skipped] == [("/data/gallery/x.txt",
                                                           "not an image")]
    with pytest.raises(IndexError):
        read.paths[300]
    # the file is plain Arrow: another reader sees the same columns
    table = pyarrow.ipc.open_file(str(file)).read_all()
    assert table.column("path").to_pylist()[:300] == relative
    assert table.column("sha256").to_pylist()[4] == bytes.fromhex(f"{4:064x}")


@pytest.mark.parametrize("order", ["sorted", "shuffled"])
def test_a_path_twice_is_refused_in_any_order(tmp_path, order):
    relative = [f"img_{i:04d}.png" for i in range(2000)]
    if order == "shuffled":
        relative = list(np.random.default_rng(0).permutation(relative))
    assert len(open_file(records(tmp_path, relative), 2000, 0, ROOT).paths) == 2000
    relative[1500] = relative[3]
    with pytest.raises(IndexFormatError, match="listed twice"):
        open_file(records(tmp_path, relative), 2000, 0, ROOT)


def test_a_loaded_index_saves_its_records_unchanged(tmp_path):
    """Re-saving a loaded index reuses its columns (no Python list on the way)."""
    vectors = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    paths = PathColumn(pyarrow.chunked_array([pyarrow.array(
        [f"c{i % 3}/x{i:02d}.png" for i in range(40)], pyarrow.large_string())]), ROOT)
    index = Index.from_vectors(vectors, paths=paths)
    index.root = ROOT
    index.save(tmp_path / "a")
    loaded = Index.load(tmp_path / "a")
    assert isinstance(loaded.paths, PathColumn) and loaded.paths == list(paths)
    loaded.save(tmp_path / "b")
    assert ((tmp_path / "a" / "gallery.arrow").read_bytes()
            == (tmp_path / "b" / "gallery.arrow").read_bytes())
