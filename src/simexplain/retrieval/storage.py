"""An index on disk: a folder with manifest.json (format version, model, layer, similarity,
input size, weights fingerprint, image paths and their sha256, skipped files, sizes and sha256
of the stored arrays), embeddings.npy and vectors.faiss. `save_index` writes a temporary
folder next to the target and renames it into place; `load_index` verifies everything and
refuses a mismatch (IndexFormatError)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import similarity as similarities
from ..errors import SimexplainError

FORMAT_NAME = "simexplain-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
VECTORS = "vectors.faiss"
KINDS = ("flat", "ivf", "hnsw")  # FAISS structures: exact, inverted lists, graph


class IndexFormatError(SimexplainError):
    """An index folder is missing, incomplete, corrupted, or of an unknown format."""


@dataclass
class Skipped:
    """A gallery file that could not be indexed, and why."""

    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise SimexplainError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    return kind


def require_faiss():
    try:
        import faiss
    except ImportError:
        raise SimexplainError("retrieval needs FAISS: pip install faiss-cpu "
                              "(or the 'retrieval' extra of simexplain)") from None
    return faiss


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_of(index, files: dict | None = None) -> dict:
    """The manifest describing `index` (and the stored `files`)."""
    return {
        "format": FORMAT_NAME, "version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": index.info.get("model"), "layer": index.info.get("layer"),
        "layer_b": index.info.get("layer_b"), "similarity": index.similarity.name,
        "dim": index.dim, "input_size": index.info.get("input_size"),
        "weights_sha256": index.info.get("weights_sha256"),
        "kind": index.kind, "params": index.params, "count": len(index),
        "paths": index.paths, "sha256": index.hashes,
        "skipped": [s.to_dict() for s in index.skipped],
        "files": files or {},
    }


def save_index(index, path: str | Path) -> Path:
    """Write the index folder atomically (see the module's docstring)."""
    faiss = require_faiss()
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise IndexFormatError(f"{path} exists and is not an index folder")
    if path.is_dir() and any(path.iterdir()) and not (path / MANIFEST).is_file():
        raise IndexFormatError(f"{path} is a folder that is not a simexplain index; "
                               "refusing to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    try:
        with open(tmp / EMBEDDINGS, "wb") as handle:
            np.save(handle, index.embeddings, allow_pickle=False)
            _fsync(handle)
        faiss.write_index(index.vectors, str(tmp / VECTORS))
        files = {name: {"bytes": (tmp / name).stat().st_size, "sha256": file_sha256(tmp / name)}
                 for name in (EMBEDDINGS, VECTORS)}
        with open(tmp / MANIFEST, "w") as handle:
            json.dump(manifest_of(index, files), handle, indent=1)
            _fsync(handle)
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    index.info["source"] = str(path)
    return path


def load_index(cls, path: str | Path, explainer=None, verify: bool = True):
    """Open an index folder as a `cls` (Index), verifying its manifest and the size and sha256
    of each stored file; with `explainer`, also check that it is the index's model."""
    faiss = require_faiss()
    path = Path(path)
    if not path.exists():
        leftovers = (sorted(path.parent.glob(f".{path.name}.old-*"))
                     if path.parent.is_dir() else [])
        hint = (f" (an interrupted save left the previous index at {leftovers[0]})"
                if leftovers else "")
        raise IndexFormatError(f"index not found: {path}{hint}")
    if not path.is_dir():
        raise IndexFormatError(f"{path} is not an index folder (expected a folder with "
                               f"{MANIFEST}, {EMBEDDINGS} and {VECTORS})")
    manifest = read_manifest(path)
    for name in (EMBEDDINGS, VECTORS):
        _verify_file(path / name, manifest["files"].get(name), verify)
    try:
        embeddings = np.load(path / EMBEDDINGS, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise IndexFormatError(f"{path / EMBEDDINGS}: cannot read embeddings ({exc})") from None
    count, dim = manifest["count"], manifest["dim"]
    if embeddings.dtype != np.float32 or embeddings.shape != (count, dim):
        raise IndexFormatError(
            f"{path / EMBEDDINGS}: expected float32 embeddings of shape ({count}, {dim}), "
            f"found {embeddings.dtype} {embeddings.shape}")
    if not np.isfinite(embeddings).all():
        raise IndexFormatError(f"{path / EMBEDDINGS}: contains NaN or infinite values")
    try:
        vectors = faiss.read_index(str(path / VECTORS))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise IndexFormatError(
            f"{path / VECTORS}: cannot read the FAISS index ({first})") from None
    similarity = similarities.get(manifest["similarity"])
    expected_d = similarity.index_vectors(np.zeros((1, dim), np.float32)).shape[1]
    if vectors.ntotal != count or vectors.d != expected_d:
        raise IndexFormatError(
            f"{path / VECTORS}: holds {vectors.ntotal} vectors of dimension {vectors.d}, "
            f"the manifest says {count} of dimension {expected_d}")
    info = {key: manifest.get(key) for key in
            ("model", "layer", "layer_b", "similarity", "input_size", "weights_sha256")}
    info["source"] = str(path)
    index = cls(embeddings, manifest["paths"], info, kind=manifest["kind"],
                hashes=manifest["sha256"], vectors=vectors, params=manifest["params"],
                skipped=[Skipped(s["path"], s["reason"]) for s in manifest["skipped"]])
    if explainer is not None:
        index.attach(explainer)
    return index


def read_manifest(path: Path) -> dict:
    """The manifest of an index folder, checked for the fields `load_index` relies on."""
    file = path / MANIFEST
    if not file.is_file():
        raise IndexFormatError(f"{file} is missing: {path} is not a complete simexplain index")
    try:
        manifest = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFormatError(f"{file}: not a valid manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{file}: not a simexplain index manifest")
    if manifest.get("version") != FORMAT_VERSION:
        raise IndexFormatError(f"{file}: index format version {manifest.get('version')!r} is "
                               f"not supported (this simexplain reads version {FORMAT_VERSION}); "
                               "rebuild the index")
    required = {"model": object, "similarity": str, "dim": int, "count": int, "kind": str,
                "params": dict, "paths": list, "sha256": list, "skipped": list, "files": dict}
    for key, kind in required.items():
        if key not in manifest or (kind is not object and not isinstance(manifest[key], kind)):
            raise IndexFormatError(f"{file}: field {key!r} is missing or invalid")
    if manifest["kind"] not in KINDS or manifest["similarity"] not in similarities.names():
        raise IndexFormatError(f"{file}: unknown kind or similarity")
    if len(manifest["paths"]) != manifest["count"] or len(manifest["sha256"]) != manifest["count"]:
        raise IndexFormatError(f"{file}: count {manifest['count']} does not match the lists of "
                               "paths and hashes")
    return manifest


def _verify_file(file: Path, expected: dict | None, verify: bool) -> None:
    if expected is None:
        raise IndexFormatError(f"{file.parent / MANIFEST}: no entry for {file.name}")
    if not file.is_file():
        raise IndexFormatError(f"{file} is missing: the index is incomplete; rebuild it")
    size = file.stat().st_size
    if size != expected.get("bytes"):
        raise IndexFormatError(f"{file} has {size} bytes, the manifest says "
                               f"{expected.get('bytes')} (truncated or replaced); "
                               "rebuild the index")
    if verify and file_sha256(file) != expected.get("sha256"):
        raise IndexFormatError(f"{file} is corrupted (sha256 does not match the manifest); "
                               "rebuild the index")


def _replace_dir(tmp: Path, path: Path) -> None:
    """Move the finished folder `tmp` to `path`, replacing an existing index there."""
    if not path.exists():
        os.rename(tmp, path)
        return
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _fsync(handle) -> None:
    handle.flush()
    try:
        os.fsync(handle.fileno())
    except OSError:
        pass
