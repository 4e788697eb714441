"""An index on disk: a folder holding exactly the marker file `simexplain-index`,
manifest.json (see `manifest`), embeddings.npy and vectors.faiss (or, for an index split into
shards, vectors-00000.faiss, vectors-00001.faiss, ...), and, for an index built with --explain,
the files of its explain cache (`explain_cache`).

Saving never deletes what simexplain did not write: the target must be absent, an empty
folder, or a complete index folder of ours holding nothing else (its marker holds an
identifier, the owner, that its intact manifest records too; only the files that manifest
lists are ever removed); anything else is refused. The new index is written into a staging
folder next to the target and renamed into place (`files.replace_folder`); leftovers of a
killed save are removed by the next one. `read_index` verifies the marker, the manifest
(checksum and schema), the size and sha256 of each stored file, refuses any file the
manifest does not list, and refuses any mismatch (IndexFormatError). An index folder is data:
loading one runs no code (the query model comes from the caller, see
`commands.explainer_for_index`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import similarity as similarities
from ..errors import SimexplainError
from ..files import (INDEX_MARKER, check_target, remove_leftovers, replace_folder,
                     staging_folder, writing)
from .basics import file_sha256, finite_rows, read_faiss_files, require_faiss
from .explain_cache import ExplainCache
from .kinds import kind as index_kind

if TYPE_CHECKING:
    from .index import Index
from . import columns
from .manifest import (CONTRIBUTIONS, EMBEDDINGS, FORMAT_NAME, FORMAT_VERSION, GALLERY, MANIFEST,
                       PROJECTED, READ_VERSIONS, SHAPES, SPATIAL, TOKENS, VECTORS,
                       IndexFormatError, damaged, parse, REBUILD, seal, stored_files,
                       vector_files)

MARKER = INDEX_MARKER  # present in every index folder simexplain writes
OWN_FILES = (MARKER, MANIFEST, EMBEDDINGS, GALLERY, VECTORS, CONTRIBUTIONS, SHAPES, PROJECTED,
             TOKENS, SPATIAL)
SHARD_FILE = re.compile(r"^vectors-\d{5}\.faiss$")  # one FAISS file per shard
_LEGACY_FILES = {MANIFEST, EMBEDDINGS, VECTORS}  # format 1 had no marker


def _own_file(name: str) -> bool:
    return name in OWN_FILES or bool(SHARD_FILE.match(name))


def marker_text(owner: str | None = None, version: int = FORMAT_VERSION) -> str:
    """The marker file's text: the format, and the identifier the manifest also records (None:
    the marker of indexes written before owners were recorded)."""
    body: dict = {"format": FORMAT_NAME, "version": version}
    if owner is not None:
        body["owner"] = owner
    return json.dumps(body) + "\n"


def check_replaceable(path: str | Path) -> list[str]:
    """Refuse (SimexplainError, one line) unless `path` is absent, an empty folder, or an
    index folder of ours holding nothing else: its marker holds the identifier that its intact
    manifest records, and it holds exactly the files that manifest lists. Also refused: the
    working folder, a path under a file, a folder that cannot be written (`files.check_target`).
    Returns the files that replacing it removes: only those its own manifest lists."""
    given = path
    path = check_target(path)
    if not path.exists() and not path.is_symlink():
        return []
    if path.is_symlink() or not path.is_dir():
        raise SimexplainError(f"{given} exists and is not an index folder; refusing to replace "
                              "it (choose another --out)")
    entries = set(os.listdir(path))
    if not entries:
        return []
    if entries == _LEGACY_FILES and _legacy_manifest(path / MANIFEST):
        return sorted(entries)
    if _read(path / MARKER) is None or (path / MARKER).is_symlink():
        raise SimexplainError(f"{given} is not an index folder written by simexplain; refusing "
                              "to replace it (choose another --out, or move it away yourself)")
    own = _own_listing(path)
    if own is None:
        raise SimexplainError(f"{given} holds a marker but no intact manifest recording the "
                              "same owner, so simexplain cannot tell its own files there; "
                              "refusing to replace it (move it away yourself)")
    extra = sorted(entries - set(own))
    if extra:
        raise SimexplainError(f"{given} holds files simexplain did not write "
                              f"({', '.join(extra[:3])}); refusing to replace it")
    for name in entries:
        if (path / name).is_symlink() or not (path / name).is_file():
            raise SimexplainError(f"{path / name} is not a file simexplain wrote; refusing to "
                                  "replace the folder")
    return own


def _own_listing(path: Path) -> list[str] | None:
    """The files of an index folder of ours (marker, manifest and what the manifest lists), or
    None: the marker and the manifest must hold the same owner (an index written before owners
    were recorded: the marker's old text and an intact manifest without one)."""
    try:
        marker = json.loads(_read(path / MARKER) or "")
        manifest = parse((path / MANIFEST).read_bytes(), path / MANIFEST)
    except (OSError, ValueError, RecursionError, SimexplainError):
        return None
    if not isinstance(marker, dict):
        return None
    owner = marker.get("owner")
    if (owner is None and _read(path / MARKER) not in {
            marker_text(None, version) for version in READ_VERSIONS}) or \
            owner != manifest.get("owner"):
        return None
    return [MARKER, MANIFEST, *stored_files(manifest)]


def save_index(index: Index, path: str | Path) -> Path:
    """Write the index folder atomically (see the module's docstring); leftovers of an earlier
    save that was killed are removed first. A write that fails (disk full, read-only) is one
    line (SimexplainError) and leaves nothing behind."""
    faiss = require_faiss()
    given = path
    own = check_replaceable(path)
    path = Path(os.path.abspath(path))
    remove_leftovers(path, _own_file)
    root = Path(index.root) if index.root is not None else common_root(index.paths)
    manifest = _manifest(index, root, path)
    owner = uuid.uuid4().hex
    manifest["owner"] = owner
    with writing(f"the index {given}"):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = staging_folder(path, "tmp")
    try:
        with writing(f"the index {given}"):
            _save_array(index.embeddings, tmp / EMBEDDINGS)
            columns.write(tmp / GALLERY, index.paths, index.hashes, index.skipped, root)
            names = vector_files(index.params)
            structures = index_kind(index.kind).structures(index.vectors)
            for name, structure in zip(names, structures, strict=True):
                _write_faiss(faiss, structure, tmp / name, given)
            if index.explain_cache is not None:
                manifest["explain"] = index.explain_cache.manifest_entry()
                for name, array in index.explain_cache.arrays().items():
                    _save_array(array, tmp / name, array.dtype)
            manifest["files"] = {name: {"bytes": (tmp / name).stat().st_size,
                                        "sha256": file_sha256(tmp / name)}
                                 for name in stored_files(manifest)}
            _write(tmp / MANIFEST, json.dumps(seal(manifest), indent=1))
            _write(tmp / MARKER, marker_text(owner))
            replace_folder(tmp, path, own)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # made by mkdtemp above: all ours
        raise
    index.root = root
    index.info["source"] = str(given)
    return Path(given)


def _write_faiss(faiss, structure, file: Path, given) -> None:
    """faiss.write_index, whose I/O errors (disk full) are RuntimeErrors: one line."""
    try:
        faiss.write_index(structure, str(file))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "write failed"
        raise SimexplainError(f"cannot write the index {given}: {first[:200]}") from None


def _save_array(array: np.ndarray, file: Path, dtype=np.float32, chunk: int = 1 << 16) -> None:
    """Write .npy rows (float32 by default) chunk by chunk: a memory-mapped or float16 gallery
    is never copied into memory whole. Plain writes, not a memory map: a full disk is then an
    OSError (ENOSPC), where writing through a map would kill the process (SIGBUS)."""
    dtype = np.dtype(dtype)
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False,
              "shape": tuple(array.shape)}
    with open(file, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        for start in range(0, array.shape[0], chunk):
            handle.write(np.ascontiguousarray(array[start:start + chunk], dtype=dtype).data)
        _fsync(handle)


def _manifest(index, root: Path, path: Path) -> dict:
    from_index = os.path.relpath(root, path.parent.resolve() / path.name)
    return {
        "format": FORMAT_NAME, "version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": index.info.get("model"), "layer": index.info.get("layer"),
        "layer_b": index.info.get("layer_b"), "similarity": index.similarity.name,
        "dim": index.dim, "input_size": index.info.get("input_size"),
        "weights_sha256": index.info.get("weights_sha256"),
        "kind": index.kind, "params": index.params, "count": len(index),
        "gallery_root": str(root),
        "gallery_root_from_index": Path(from_index).as_posix() if from_index != "." else None,
        "skipped": len(index.skipped),  # the records themselves: gallery.arrow
    }


def common_root(paths: Iterable[str | Path]) -> Path:
    """The deepest folder holding every path (absolute)."""
    folders = [os.path.dirname(os.path.abspath(p)) for p in paths]
    return Path(os.path.commonpath(folders))


def read_index(path: str | Path, verify: bool = True, engine: str = "local",
               ray: dict | None = None) -> dict:
    """Open an index folder, verifying everything (see the module's docstring): the
    arguments of the `Index` it holds. engine="ray": its shards are served by Ray actors
    (`ray_search.serve`, which takes the `ray` options)."""
    require_faiss()
    path = Path(path)
    manifest = read_manifest(path)
    kind = index_kind(manifest["kind"])
    names = vector_files(manifest["params"])
    for name in stored_files(manifest):
        _verify_file(path / name, manifest["files"][name], verify)
    try:
        # a kind for galleries larger than memory keeps its floats on disk
        embeddings = np.load(path / EMBEDDINGS, allow_pickle=False,
                             mmap_mode="r" if kind.on_disk else None)
    except (ValueError, OSError, EOFError) as exc:
        raise damaged(path / EMBEDDINGS, f"cannot read the embeddings ({exc})") from None
    count, dim = manifest["count"], manifest["dim"]
    if embeddings.dtype != np.float32 or embeddings.shape != (count, dim):
        raise damaged(path / EMBEDDINGS, f"expected float32 embeddings of shape ({count}, {dim}),"
                                         f" found {embeddings.dtype} {embeddings.shape}")
    # with engine="ray" each shard actor checks its own rows (`ray_search.ShardGroup`)
    if engine != "ray" and not finite_rows(embeddings, 0, count):
        raise damaged(path / EMBEDDINGS, "contains NaN or infinite values")
    similarity = similarities.get(manifest["similarity"])
    expected_d = kind.stored_dim(
        similarity.index_vectors(np.zeros((1, dim), np.float32)).shape[1])
    if engine == "ray":  # the shards go to Ray actors, not into this process (`ray_search`)
        if not kind.shardable:
            raise SimexplainError(f"an index of kind {kind.name!r} is one structure in one "
                                  "process; engine='ray' serves sharded --kind ivfpq indexes")
        from .ray_search import serve
        vectors = serve(path, names, (count, expected_d), similarity.name, ray)
    else:
        vectors = _read_vectors(path, names, kind, count, expected_d)
    root = gallery_root(manifest, path)
    info = {key: manifest[key] for key in
            ("model", "layer", "layer_b", "similarity", "input_size", "weights_sha256")}
    info["source"] = str(path)
    cache = None
    if "explain" in manifest:
        cache = ExplainCache.load(path, manifest["explain"], count, dim)
    records = _records(manifest, path, root)
    return dict(embeddings=embeddings, paths=records.paths, info=info, kind=manifest["kind"],
                hashes=records.hashes, vectors=vectors, params=manifest["params"], root=root,
                skipped=records.skipped, explain_cache=cache)


def _records(manifest: dict, path: Path, root: Path) -> columns.Records:
    """Per-image paths, hashes and skipped files: gallery.arrow, or a format-2 manifest's
    lists."""
    if manifest["version"] == 2:
        return columns.from_lists(manifest["paths"], manifest["sha256"], manifest["skipped"],
                                  root)
    return columns.open_file(path / GALLERY, manifest["count"], manifest["skipped"], root)


def _read_vectors(path: Path, names: list[str], kind, count: int, expected_d: int):
    """The FAISS files of an index folder as its kind's searchable structure, checked."""
    structures = read_faiss_files(path, names)
    if any(s.d != expected_d for s in structures) or sum(s.ntotal for s in structures) != count:
        where = path / names[0] if len(names) == 1 else path
        raise damaged(where, f"holds {sum(s.ntotal for s in structures)} vectors of dimension "
                             f"{structures[0].d}, the manifest says {count} of dimension "
                             f"{expected_d}")
    try:
        return kind.from_structures(structures)
    except SimexplainError as exc:
        raise damaged(path, str(exc)) from None


def gallery_root(manifest: dict, path: Path) -> Path:
    """The recorded absolute gallery root, or, when it is gone and the gallery moved along
    with the index, the root relative to the index folder."""
    root = Path(manifest["gallery_root"])
    if not root.is_dir() and manifest["gallery_root_from_index"] is not None:
        moved = Path(os.path.normpath(path.resolve() / manifest["gallery_root_from_index"]))
        if moved.is_dir():
            return moved
    return root


def read_manifest(path: str | Path) -> dict:
    """The verified manifest of an index folder (IndexFormatError otherwise)."""
    path = Path(path)
    if not path.exists():
        raise IndexFormatError(f"index not found: {path}")
    if not path.is_dir():
        raise IndexFormatError(f"{path} is not an index folder (expected a folder with "
                               f"{MANIFEST}, {EMBEDDINGS} and {VECTORS})")
    file = path / MANIFEST
    if not file.is_file():
        raise IndexFormatError(f"{file} is missing: {path} is not a complete simexplain index")
    try:
        text = file.read_bytes()
    except OSError as exc:
        raise IndexFormatError(f"{file}: cannot read it ({exc.strerror})") from None
    manifest = parse(text, file)  # first: a foreign or older manifest is named as such
    if not (path / MARKER).is_file():
        raise damaged(path, f"the marker file {MARKER} is missing")
    extra = sorted(set(os.listdir(path)) - {MARKER, MANIFEST, *stored_files(manifest)})
    if extra:  # an index folder is data: nothing in it is opened but what the manifest lists
        raise IndexFormatError(f"{path} holds files its manifest does not list "
                               f"({', '.join(extra[:3])}); refusing to open it (remove them, "
                               f"or {REBUILD})")
    return manifest


def _verify_file(file: Path, expected: dict, verify: bool) -> None:
    if not file.is_file():
        raise IndexFormatError(f"{file} is missing: the index is incomplete; rebuild it")
    size = file.stat().st_size
    if size != expected["bytes"]:
        raise damaged(file, f"{size} bytes, the manifest says {expected['bytes']} (truncated "
                            "or replaced)")
    if verify and file_sha256(file) != expected["sha256"]:
        raise damaged(file, "corrupted (its sha256 does not match the manifest)")


def _legacy_manifest(file: Path) -> bool:
    """A format-1 manifest (written before index folders carried a marker)."""
    try:
        manifest = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return (isinstance(manifest, dict) and manifest.get("format") == FORMAT_NAME
            and manifest.get("version") == 1)


def _write(file: Path, text: str) -> None:
    with open(file, "w") as handle:
        handle.write(text)
        _fsync(handle)


def _read(file: Path) -> str | None:
    try:
        return file.read_text()[:200]
    except (OSError, UnicodeDecodeError):
        return None


def _fsync(handle) -> None:
    handle.flush()
    try:
        os.fsync(handle.fileno())
    except OSError:
        pass
