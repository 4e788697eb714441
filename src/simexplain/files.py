"""Writing files atomically: readers see the old file or the new one, never half of one; the
image files of a folder; and folders written whole (index and output folders): what may be
replaced, staging next to the target, leftovers of a killed write."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
import warnings
from contextlib import contextmanager
from pathlib import Path
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .errors import SimexplainError


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; once the block ends without error it is flushed
    to disk and renamed onto `path`, otherwise removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide results from other users
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    """UTF-8 text through a temporary file and a rename. A file name that is not valid UTF-8
    (Python holds its bytes as surrogates) is written as those bytes, not an error."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")


def write_json_atomic(path: str | Path, data: Any) -> None:
    """JSON through a temporary file and a rename: never a half-written file. Numpy and torch
    values and paths are written as plain JSON."""
    write_text_atomic(path, json.dumps(data, indent=2, default=json_default))


def json_default(value: object) -> Any:
    """`json.dumps(default=...)` for numpy and torch values and paths: what every JSON file of
    simexplain may hold."""
    import numpy as np
    import torch
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return np.asarray(value).tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def shown_name(text: str) -> str:
    """A path or file name with the bytes that are not UTF-8 (which Python holds as
    surrogates) shown as U+FFFD: text that JSON, HTML and Arrow files can hold."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


# What a folder of images offers: files with these suffixes (any case), hidden ones left out.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


def image_files(folder: str | Path) -> list[Path]:
    """The image files directly in `folder` (not its subfolders), sorted by name."""
    return sorted(p for p in Path(folder).iterdir()
                  if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


# -- folders written whole: index folders and the output folders of pair, search and demo ------
#
# A folder is written into a staging folder next to it (`.NAME.simexplain-tmp-XXXXXXXX`, made
# exclusively: a name no user picks) and renamed into place; a folder it replaces is moved aside
# (`.NAME.simexplain-old-XXXXXXXX`) and only its own files are removed. A run killed on the way
# leaves these staging folders, which the next write into the same target removes
# (`remove_leftovers`).

STAGING = ("tmp", "old")
OUTPUT_MARKER = "simexplain-output.json"  # in every output folder simexplain writes
OUTPUT_FORMAT = "simexplain-output"
INDEX_MARKER = "simexplain-index"  # in every index folder simexplain writes (retrieval.storage)


def staging_folder(target: Path, kind: str) -> Path:
    """A new, empty folder next to `target`, named as ours: `kind` is "tmp" or "old"."""
    assert kind in STAGING
    return Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.simexplain-{kind}-"))


def leftovers(target: Path) -> list[Path]:
    """The staging folders of writes into `target` that did not finish (a killed run)."""
    target = Path(os.path.abspath(target))
    if not target.parent.is_dir():
        return []
    pattern = re.compile(re.escape(f".{target.name}.simexplain-") + r"(tmp|old)-[A-Za-z0-9_]{8}$")
    return sorted(target.parent / name for name in os.listdir(target.parent)
                  if pattern.match(name) and (target.parent / name).is_dir()
                  and not (target.parent / name).is_symlink())


def remove_leftovers(target: Path, ours: Callable[[str], bool]) -> None:
    """Remove what killed writes into `target` left behind: in each staging folder, the files
    `ours` recognises (by their path relative to it), then the folders left empty. Anything
    else stays, with a warning."""
    for folder in leftovers(target):
        others = _remove_files(folder, ours)
        if others:
            warnings.warn(f"left {folder} in place: it holds files simexplain did not write "
                          f"({', '.join(others[:3])})", stacklevel=3)


def _remove_files(folder: Path, ours: Callable[[str], bool]) -> list[str]:
    """Remove the regular files under `folder` that `ours` names, then the emptied folders
    (bottom up, `folder` included); the relative paths of what stayed."""
    stayed = []
    for parent, dirs, names in os.walk(folder, topdown=False):
        for name in names:
            file = Path(parent) / name
            relative = file.relative_to(folder).as_posix()
            if ours(relative) and file.is_file() and not file.is_symlink():
                file.unlink()
            else:
                stayed.append(relative)
        for name in dirs:
            try:
                (Path(parent) / name).rmdir()
            except OSError:
                stayed.append((Path(parent) / name).relative_to(folder).as_posix() + "/")
    if not stayed:
        folder.rmdir()
    return sorted(stayed)


def check_target(path: str | Path, option: str = "--out") -> Path:
    """The absolute form of an output path, refused (SimexplainError, one line) when it is the
    working folder or one above it, lies under a file, or its nearest existing folder cannot
    be written (read-only, no permission): before any work, and leaving nothing behind."""
    given = path
    path = Path(os.path.abspath(path))
    cwd = Path.cwd()
    if path == cwd or path in cwd.parents:
        raise SimexplainError(f"{option} {given} is the working folder (or holds it); name a "
                              f"new folder, e.g. {option} results")
    check_outside_ours(path, option)
    existing = path.parent
    while not existing.exists() and not existing.is_symlink():
        existing = existing.parent
    if not existing.is_dir():
        raise SimexplainError(f"{option} {given}: {existing} is a file, so no folder can be "
                              "made under it")
    try:
        os.rmdir(tempfile.mkdtemp(dir=existing, prefix=".simexplain-probe-"))
    except OSError as exc:
        raise SimexplainError(f"{option} {given}: cannot write into {existing} "
                              f"({exc.strerror or exc})") from None
    return path


def check_outside_ours(path: str | Path, option: str = "--out") -> None:
    """Refuse (one line) a path inside an index or an output folder simexplain wrote: anything
    written there breaks it (an index opens only with exactly its own files, an output folder
    is replaced only unchanged)."""
    for parent in Path(os.path.abspath(path)).parents:
        for marker, what in ((INDEX_MARKER, "an index"), (OUTPUT_MARKER, "an output folder")):
            if (parent / marker).is_file():
                raise SimexplainError(f"{option} {path} lies inside {parent}, {what} "
                                      "simexplain wrote; choose a path outside it")


@contextmanager
def writing(what: str | Path) -> Iterator[None]:
    """Report an OSError while writing `what` (disk full, read-only, ...) as one line."""
    try:
        yield
    except OSError as exc:
        raise SimexplainError(f"cannot write {what}: {exc.strerror or exc}") from None


def replace_folder(staged: Path, target: Path, own: Sequence[str]) -> None:
    """Move the finished folder `staged` to `target` (absent, empty, or a folder of ours whose
    own files, relative paths, are `own`); the replaced folder is moved aside and only its
    `own` files are removed."""
    os.chmod(staged, 0o755)  # mkdtemp's 0700 would hide the folder from other users
    if target.is_dir() and not target.is_symlink() and not os.listdir(target):
        os.rmdir(target)
    if not target.exists():
        os.rename(staged, target)
        return
    old = staging_folder(target, "old")  # rename() onto the empty folder mkdtemp made: ours
    os.rename(target, old)
    try:
        os.rename(staged, target)
    except BaseException:
        os.rename(old, target)
        raise
    listed = set(own)
    _remove_files(old, listed.__contains__)


def output_files(folder: Path) -> dict[str, str]:
    """Every regular file under `folder` but the marker: relative path -> sha256."""
    files = {}
    for file in sorted(folder.rglob("*")):
        if file.is_file() and not file.is_symlink() and file.name != OUTPUT_MARKER:
            files[file.relative_to(folder).as_posix()] = file_sha256(file)
    return files


def check_output(path: str | Path, option: str = "--out") -> Path:
    """Refuse (SimexplainError, one line) an output folder unless it is absent, empty, or an
    output of ours: its marker holds an identifier and the sha256 of every file simexplain
    wrote there, and the folder holds exactly those files, unchanged. Returns the absolute
    path."""
    target = check_target(path, option)
    if not target.exists() and not target.is_symlink():
        return target
    if target.is_symlink() or not target.is_dir():
        raise SimexplainError(f"{option} {path} exists and is not a folder; refusing to replace it")
    if not os.listdir(target):
        return target
    listed = _output_marker(target / OUTPUT_MARKER)
    if listed is None:
        raise SimexplainError(f"{option} {path} is not empty and was not written by simexplain; "
                              "refusing to write into it (choose another --out)")
    entries = [p for p in target.rglob("*") if p.name != OUTPUT_MARKER or p.parent != target]
    strays = sorted(p.relative_to(target).as_posix() for p in entries
                    if p.is_symlink() or not (p.is_dir() or p.is_file()))
    present = output_files(target)
    strays += sorted(name for name, sha in present.items() if listed.get(name) != sha)
    if strays:
        raise SimexplainError(f"{option} {path} holds files simexplain did not write or that "
                              f"changed since ({', '.join(strays[:3])}); refusing to replace it")
    return target


@contextmanager
def output_folder(path: str | Path, option: str = "--out") -> Iterator[Path]:
    """Write an output folder whole: yields an empty staging folder next to `path` (see
    `check_output` for what `path` may be); when the block ends without error, a marker naming
    every file written is added and the folder replaces `path`. On any error nothing is left
    behind, and a disk-full or read-only failure is one line (SimexplainError)."""
    target = check_output(path, option)
    remove_leftovers(target, _is_output_file)
    with writing(path):
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = staging_folder(target, "tmp")
    try:
        with writing(path):
            yield staged
            files = output_files(staged)
            marker = {"format": OUTPUT_FORMAT, "id": uuid.uuid4().hex, "files": files}
            (staged / OUTPUT_MARKER).write_text(json.dumps(marker, indent=1))
            own = list(_output_marker(target / OUTPUT_MARKER) or {}) + [OUTPUT_MARKER]
            replace_folder(staged, target, own)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)  # made by mkdtemp above: all ours
        raise


def _is_output_file(relative: str) -> bool:
    """What an output folder of simexplain holds (pages, figures, JSON): leftovers of a killed
    write are recognised by it."""
    return Path(relative).suffix.lower() in (".png", ".json", ".html", ".md", ".txt")


def _output_marker(file: Path) -> dict[str, str] | None:
    """The files an output marker lists (relative path -> sha256), or None when `file` is not
    one of ours."""
    try:
        if file.is_symlink() or not file.is_file():
            return None
        marker = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    if not (isinstance(marker, dict) and marker.get("format") == OUTPUT_FORMAT
            and isinstance(marker.get("id"), str) and re.fullmatch(r"[0-9a-f]{32}", marker["id"])
            and isinstance(marker.get("files"), dict)):
        return None
    files = marker["files"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        return None
    return files


def file_sha256(file: str | Path) -> str:
    """sha256 of a file's bytes (hex), read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(file, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
