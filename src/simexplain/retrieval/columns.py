"""The per-image records of an index in columns: gallery paths (relative to the gallery root),
sha256 and skipped files, stored in gallery.arrow (format 3 index folders) and read back
memory-mapped, so an index of 10^7 images holds no Python list of 10^7 strings.

The file is an Arrow IPC file with three columns, `path` (large_string), `sha256`
(fixed_size_binary(32), null: unknown) and `skipped` (string: why a file was skipped, null
for an indexed one). Rows [0, count) are the indexed images in gallery order; the rows
after them are the skipped files. An uncompressed Arrow file is read without decoding: the
arrays point into the mapped file, and only the pages a lookup touches are read.

`Index` reads its records through three accessors that behave like the lists they replace:
`PathColumn` (absolute paths by row), `HashColumn` (hex sha256 or "" by row) and the list of
`Skipped`. Everything in the file is checked when it is opened (types, row counts, every path
a relative path inside the gallery root, no path twice), vectorised; a file that is not a
valid Arrow file of that schema is refused as "index damaged".
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from ..errors import SimexplainError, first_line
from .basics import Skipped, require
from .manifest import _relative, damaged

BATCH_ROWS = 1 << 20  # rows a record batch (the file's chunks)
MAX_PATH = 4096


def require_pyarrow() -> Any:  # the pyarrow module
    return require("pyarrow", "compute", install="index folders keep their per-image records "
                                                 "in an Arrow file: pip install pyarrow")


def schema() -> Any:
    pa = require_pyarrow()
    return pa.schema([("path", pa.large_string()), ("sha256", pa.binary(32)),
                      ("skipped", pa.string())])


class _Column(Sequence[str]):
    """A read-only column of strings by row (len, int and slice indexing, equality with any
    sequence): what `PathColumn` and `HashColumn` share. Subclasses give `_row`."""

    values: Any  # the pyarrow array the rows come from

    def __len__(self) -> int:
        return len(self.values)

    @overload
    def __getitem__(self, row: int) -> str: ...

    @overload
    def __getitem__(self, row: slice) -> list[str]: ...

    def __getitem__(self, row: int | slice) -> str | list[str]:
        if isinstance(row, slice):
            start, stop, step = row.indices(len(self))
            return [self[i] for i in range(start, stop, step)]
        if not -len(self) <= row < len(self):
            raise IndexError(f"row {row} of {len(self)}")
        return self._row(row)

    def _row(self, row: int) -> str:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Sequence) or isinstance(other, str):
            return NotImplemented
        return len(self) == len(other) and all(a == b for a, b in zip(self, other))

    __hash__ = None  # type: ignore[assignment]  # a mutable-looking sequence, like a list


class PathColumn(_Column):
    """Absolute gallery paths by row, read from a column of paths relative to `root`."""

    def __init__(self, relative: Any, root: str | Path):
        self.relative = self.values = relative  # a pyarrow (chunked) large_string array
        self.root = Path(root)
        self._prefix = os.path.join(str(self.root), "")

    def _row(self, row: int) -> str:
        try:
            return self._prefix + self.relative[row].as_py()
        except UnicodeDecodeError:
            raise _not_text(f"row {row}") from None

    def take(self, rows: Sequence[int]) -> list[str]:
        """The paths of many rows at once (one vectorised gather)."""
        pa = require_pyarrow()
        picked = self.relative.take(pa.array(rows, pa.int64())).to_pylist()
        return [self._prefix + p for p in picked]

    def __iter__(self) -> Iterator[str]:
        for start in range(0, len(self), 1 << 16):
            try:
                block = self.relative.slice(start, 1 << 16).to_pylist()
            except UnicodeDecodeError:
                raise _not_text(f"rows {start} to {start + (1 << 16) - 1}") from None
            for rel in block:
                yield self._prefix + rel


def _not_text(rows: str) -> SimexplainError:
    # the one property of every path the load leaves to the read (the sha256 check of
    # `Index.load(verify=True)` refuses such a file before)
    return SimexplainError(f"index damaged: gallery.arrow: a path of {rows} is not UTF-8 "
                           "text; rebuild the index")


class HashColumn(_Column):
    """Each image's sha256 as hex by row ("" where unknown), from a fixed_size_binary column."""

    def __init__(self, digests: Any):
        self.digests = self.values = digests

    def _row(self, row: int) -> str:
        value = self.digests[row].as_py()
        return "" if value is None else value.hex()


def relative_column(paths: Sequence[str], root: Path) -> Any:
    """Gallery paths relative to `root` as an Arrow column (reused as they are when `paths`
    were read under that very root)."""
    pa = require_pyarrow()
    if isinstance(paths, PathColumn) and paths.root == root:
        return paths.relative
    from .manifest import relative_paths
    return pa.array(relative_paths(list(paths), root), pa.large_string())


def hash_column(hashes: Sequence[str]) -> Any:
    pa = require_pyarrow()
    if isinstance(hashes, HashColumn):
        return hashes.digests
    return pa.array([bytes.fromhex(h) if h else None for h in hashes], pa.binary(32))


def write(file: Path, paths: Sequence[str], hashes: Sequence[str],
          skipped: Sequence[Skipped], root: Path) -> None:
    """Write gallery.arrow: the indexed images' paths (relative to `root`) and sha256, then
    the skipped files."""
    pa = require_pyarrow()
    relative = relative_column(paths, root)
    digests = hash_column(hashes)
    count = len(relative)
    if len(digests) != count:
        raise SimexplainError(f"{len(digests)} hashes for {count} paths")
    table = pa.table({"path": relative, "sha256": digests,
                      "skipped": pa.nulls(count, pa.string())}, schema=schema())
    if skipped:
        table = pa.concat_tables([table, pa.table({
            "path": pa.array([s.path for s in skipped], pa.large_string()),
            "sha256": pa.nulls(len(skipped), pa.binary(32)),
            "skipped": pa.array([s.reason for s in skipped], pa.string())},
            schema=schema())])
    with pa.OSFile(str(file), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=BATCH_ROWS)


class Records:
    """The per-image records of an index: `paths`, `hashes` and `skipped`."""

    def __init__(self, paths: PathColumn, hashes: HashColumn, skipped: list[Skipped]):
        self.paths, self.hashes, self.skipped = paths, hashes, skipped


def open_file(file: Path, count: int, skipped: int, root: Path) -> Records:
    """gallery.arrow, memory-mapped and checked (IndexFormatError "index damaged" otherwise)."""
    pa = require_pyarrow()
    try:
        with open(file, "rb") as handle:
            mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        table = pa.ipc.open_file(pa.BufferReader(pa.py_buffer(mapped))).read_all()
        # buffer sizes here; every value in `_check`: a damaged file must fail on load, not
        # in a lookup
        table.validate()
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise damaged(file, "not a readable Arrow file "
                            f"({first_line(exc, 80, empty='unreadable')})") from None
    records = _check(table, file, count, skipped, root, mapped)
    # the checks read every page; the process keeps none of them (they stay in the page
    # cache, and a lookup maps back only the page it needs)
    if hasattr(mapped, "madvise") and hasattr(mmap, "MADV_DONTNEED"):
        mapped.madvise(mmap.MADV_DONTNEED)
    return records


def from_lists(paths: list, hashes: list, skipped: list[dict], root: Path) -> Records:
    """The records of a format-2 manifest (already checked by `manifest.parse`)."""
    pa = require_pyarrow()
    return Records(PathColumn(pa.chunked_array([pa.array(paths, pa.large_string())]), root),
                   HashColumn(hash_column(hashes)),
                   [Skipped(s["path"], s["reason"]) for s in skipped])


def _unique(paths: Any) -> bool:
    """No path twice: at once for paths in strictly increasing order (a folder's build lists
    its files sorted), else by counting distinct values (a hash table of every path)."""
    pc = require_pyarrow().compute
    count = len(paths)
    if count < 2 or pc.all(pc.less(paths.slice(0, count - 1), paths.slice(1))).as_py():
        return True
    return pc.count_distinct(paths).as_py() == count


def _inside(chunk: Any, offsets: np.ndarray, mapped: mmap.mmap) -> bool:
    """Every (non-empty) path of an Arrow chunk lying in `mapped` is a relative POSIX path
    without empty, "." or ".." parts, backslashes or NUL bytes: no NUL or backslash (memchr
    over the mapped bytes), no path starting or ending with "/", and no "/" followed by "/"
    or "." (numpy over the chunk's bytes; a pair across two paths would need one of them to
    end with "/"); the few paths with "/." or starting or ending with "." (hidden files,
    "name.") are checked one by one."""
    buffer = chunk.buffers()[2]
    if offsets[0] < 0 or offsets[-1] > buffer.size:
        return False
    base = buffer.address - require_pyarrow().py_buffer(mapped).address
    low, high = base + int(offsets[0]), base + int(offsets[-1])
    if mapped.find(b"\x00", low, high) >= 0 or mapped.find(b"\\", low, high) >= 0:
        return False
    data = np.frombuffer(buffer, np.uint8)
    first, last = data[offsets[:-1]], data[offsets[1:] - 1]
    if (first == ord("/")).any() or (last == ord("/")).any():
        return False
    text = data[int(offsets[0]):int(offsets[-1])]
    slashes = np.flatnonzero(text == ord("/"))
    after = text[slashes + 1]  # within the text: no path ends with "/"
    if (after == ord("/")).any():
        return False
    rows = np.searchsorted(offsets, slashes[after == ord(".")] + offsets[0], side="right") - 1
    dotted = np.union1d(rows, np.flatnonzero((first == ord(".")) | (last == ord("."))))
    return all(_relative(chunk[int(i)].as_py()) for i in dotted)


def _check(table: Any, file: Path, count: int, skipped: int, root: Path,
           mapped: mmap.mmap) -> Records:
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise damaged(file, what)

    need(table.schema.equals(schema()), "its columns are not path, sha256 and skipped of the "
                                        "expected types")
    try:  # the small columns in full (the paths' offsets are checked with the paths)
        table.select(["sha256", "skipped"]).validate(full=True)
    except require_pyarrow().ArrowException as exc:
        need(False, f"not a valid Arrow table ({first_line(exc, 80)})")
    need(table.num_rows == count + skipped, f"{table.num_rows} rows, the manifest says "
                                            f"{count} images and {skipped} skipped files")
    paths = table.column("path").slice(0, count)
    hashes = table.column("sha256").slice(0, count)
    need(paths.null_count == 0, "an image has no path")
    for chunk in paths.chunks:  # a chunk at a time: temporaries of one record batch
        try:
            offsets = np.frombuffer(chunk.buffers()[1], np.int64, len(chunk) + 1,
                                    chunk.offset * 8)
        except ValueError:
            raise damaged(file, "the paths' offsets are cut short") from None
        lengths = np.diff(offsets)
        need(len(chunk) == 0 or (lengths.min() >= 1 and lengths.max() <= MAX_PATH),
             "a path is empty or too long")
        need(len(chunk) == 0 or _inside(chunk, offsets, mapped),
             "a path is not inside the gallery root")
    need(_unique(paths), "a path is listed twice")
    rest = table.slice(count)
    need(table.column("skipped").slice(0, count).null_count == count,
         "an indexed image is marked as skipped")
    need(rest.column("sha256").null_count == skipped and rest.column("path").null_count == 0
         and rest.column("skipped").null_count == 0, "skipped entries are malformed")
    skips = [Skipped(p, r) for p, r in zip(rest.column("path").to_pylist(),
                                           rest.column("skipped").to_pylist())]
    return Records(PathColumn(paths, root), HashColumn(hashes), skips)
