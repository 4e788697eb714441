"""The manifest of an index folder: what it says, its checksum, and the schema every field is
checked against on load. Anything that does not hold is refused as "index damaged: <what>"
(IndexFormatError), so a damaged or edited manifest never yields a traceback or wrong hits.

Format 3 keeps the per-image records (gallery paths, sha256, skipped files) out of the JSON,
in the columnar file gallery.arrow (`columns`), which the manifest checksums like every other
file; the JSON holds only the index's own fields. Format 2 (every path and hash in the JSON)
is still read.

Gallery paths are stored relative to the gallery root, which is recorded as an absolute path
and, as a fallback when the gallery and the index moved together, relative to the index
folder: they resolve the same from any working directory, and a path that would leave the
root (absolute, `..`) is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from ..errors import SimexplainError, first_line
from ..defaults import MAX_PREFIX_TOKENS

FORMAT_NAME = "simexplain-index"
FORMAT_VERSION = 3
READ_VERSIONS = (2, 3)  # format 2: per-image records in the JSON manifest itself
MANIFEST = "manifest.json"
GALLERY = "gallery.arrow"  # format 3: per-image paths, sha256 and skip records (`columns`)
EMBEDDINGS = "embeddings.npy"
VECTORS = "vectors.faiss"
# the explain-ready cache (`explain_cache`), present only in indexes built with --explain
CONTRIBUTIONS = "explain-contributions.npy"
SHAPES = "explain-shapes.npy"
PROJECTED = "explain-projected.npy"
# a transformer's prefix tokens (class, registers): their contributions and each image's
# `Side.spatial`, present only for models that have such tokens at the explained layer
TOKENS = "explain-tokens.npy"
SPATIAL = "explain-spatial.npy"
# FAISS structures: exact, inverted lists, graph, and inverted lists of product-quantised codes
# (compressed, split into shards, candidates re-scored from the stored float embeddings)
KINDS = ("flat", "ivf", "hnsw", "ivfpq")
KIND_PARAMS = {"flat": (), "ivf": ("nlist", "nprobe"), "hnsw": ("M", "ef_search"),
               "ivfpq": ("nlist", "nprobe", "m", "nbits", "shards", "candidates")}
MAX_SHARDS = 4096
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_OWNER = re.compile(r"^[0-9a-f]{32}$")  # a uuid4's hex: the marker and the manifest hold it
REBUILD = "rebuild it with `simexplain index build GALLERY --model MODEL --out INDEX`"


class IndexFormatError(SimexplainError):
    """An index folder is missing, incomplete, damaged, or of an unknown format."""


def damaged(where: str | Path, what: str) -> IndexFormatError:
    return IndexFormatError(f"index damaged: {where}: {what}; {REBUILD}")


def vector_files(params: dict) -> list[str]:
    """The FAISS files of an index: vectors.faiss, or one file per shard."""
    shards = int(params.get("shards", 1))
    return [VECTORS] if shards == 1 else [f"vectors-{i:05d}.faiss" for i in range(shards)]


def explain_files(entry: dict | None) -> list[str]:
    """The explain cache's files for the manifest's "explain" field (None: no cache)."""
    if entry is None:
        return []
    return ([CONTRIBUTIONS, SHAPES] + ([PROJECTED] if entry.get("projected") else [])
            + ([TOKENS, SPATIAL] if entry.get("tokens") else []))


def stored_files(manifest: dict) -> list[str]:
    """Every data file an index folder holds, as its manifest describes it."""
    gallery = [GALLERY] if manifest.get("version", FORMAT_VERSION) >= 3 else []
    return [EMBEDDINGS, *gallery, *vector_files(manifest["params"]),
            *explain_files(manifest.get("explain"))]


def checksum(manifest: dict) -> str:
    """sha256 of the manifest's canonical JSON without its "checksum" field."""
    body = {key: value for key, value in manifest.items() if key != "checksum"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


def seal(manifest: dict) -> dict:
    """The manifest with its checksum."""
    return {**manifest, "checksum": checksum(manifest)}


def relative_paths(paths: list[str], root: Path) -> list[str]:
    """Gallery paths as POSIX paths relative to `root` (each must lie inside it)."""
    out = []
    for path in paths:
        rel = os.path.relpath(os.path.abspath(path), root)
        if rel == "." or rel.startswith(".." + os.sep) or rel == ".." or os.path.isabs(rel):
            raise SimexplainError(f"{path} lies outside the gallery folder {root}")
        out.append(PurePosixPath(*Path(rel).parts).as_posix())
    return out


def parse(text: str | bytes, where: Path) -> dict:
    """The manifest in `text`, verified: checksum, then every field (see `validate`)."""
    try:
        manifest = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise damaged(where, f"not valid JSON ({first_line(exc, 80)})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise IndexFormatError(f"{where}: not a simexplain index manifest")
    version = manifest.get("version")
    if version == 1:
        raise IndexFormatError(f"{where}: this index was written by an older simexplain (format "
                               f"1, gallery paths relative to the working directory): {REBUILD}")
    if version not in READ_VERSIONS:
        raise IndexFormatError(f"{where}: index format version {version!r} is not supported "
                               f"(this simexplain reads versions 2 and 3): {REBUILD}")
    if manifest.get("checksum") != checksum(manifest):
        raise damaged(where, "the manifest's checksum does not match its content")
    validate(manifest, where)
    return manifest


def validate(m: dict, where: Path) -> None:
    """Types and ranges of every field; raises `damaged` naming the first that is wrong."""
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise damaged(where, what)

    expected = {"format", "version", "checksum", "created", "model", "layer", "layer_b",
                "similarity", "dim", "input_size", "weights_sha256", "kind", "params", "count",
                "gallery_root", "gallery_root_from_index", "skipped", "files"}
    if m["version"] == 2:
        expected |= {"paths", "sha256"}
    # explain: absent from indexes without an explain cache; owner: the identifier its marker
    # also holds (absent from indexes written before it was recorded)
    optional = {"explain", "owner"}
    need(expected <= set(m) <= expected | optional, "unexpected or missing fields "
         + ", ".join(sorted((set(m) - optional) ^ expected)))
    need(isinstance(m["created"], str), "created is not a string")
    need(_optional_text(m["model"]), "model is not a name")
    need(_optional_text(m["layer"]), "layer is not a layer name")  # None: vectors only
    need(_optional_text(m["layer_b"]), "layer_b is not a layer name")
    from .. import similarity as similarities  # here: the command line imports KINDS alone
    need(m["similarity"] in similarities.names(),
         f"unknown similarity {str(m['similarity'])[:40]!r}")
    need(_int(m["dim"], 1), "dim is not a positive integer")
    need(m["input_size"] is None or (isinstance(m["input_size"], list)
                                     and len(m["input_size"]) == 2
                                     and all(_int(v, 1) for v in m["input_size"])),
         "input_size is not two positive integers")
    need(m["weights_sha256"] is None or _hex(m["weights_sha256"]),
         "weights_sha256 is not a sha256")
    need(m["kind"] in KINDS, f"unknown index kind {str(m['kind'])[:20]!r}")
    params = m["params"]
    need(isinstance(params, dict) and set(params) == set(KIND_PARAMS[m["kind"]])
         and all(_int(v, 1) for v in params.values()), f"params do not fit kind {m['kind']}")
    if m["kind"] in ("ivf", "ivfpq"):
        need(params["nprobe"] <= params["nlist"], "nprobe exceeds nlist")
    if m["kind"] == "ivfpq":
        need(params["nbits"] <= 16, "nbits exceeds 16")
    need(_int(m["count"], 1), "count is not a positive integer")
    if m["kind"] in ("ivf", "ivfpq"):
        need(params["nlist"] <= m["count"], "nlist exceeds the number of images")
    if m["kind"] == "ivfpq":
        need(params["shards"] <= min(m["count"], MAX_SHARDS), "more shards than images or than "
             f"{MAX_SHARDS}")
    need(_text(m["gallery_root"]) and os.path.isabs(m["gallery_root"])
         and "\x00" not in m["gallery_root"], "gallery_root is not an absolute path")
    need(m["gallery_root_from_index"] is None or _relative(m["gallery_root_from_index"], True),
         "gallery_root_from_index is not a relative path")
    if m["version"] == 2:
        _validate_records(m, need)
    else:  # the records themselves are checked when gallery.arrow is opened (`columns`)
        need(_int(m["skipped"], 0, 2 ** 53), "skipped is not a count")
    if "explain" in m:
        entry = m["explain"]
        # tokens: the number of prefix tokens, absent without them (and from indexes written
        # before they were cached)
        need(isinstance(entry, dict)
             and set(entry) - {"tokens"} == {"positions", "projected"}
             and _int(entry["positions"], m["count"], 2 ** 53)
             and isinstance(entry["projected"], bool)
             and _int(entry.get("tokens", 1), 1, MAX_PREFIX_TOKENS),
             "the explain cache entry is malformed")
    need("owner" not in m or (isinstance(m["owner"], str) and bool(_OWNER.match(m["owner"]))),
         "owner is not an identifier")
    files = m["files"]
    need(isinstance(files, dict) and set(files) == set(stored_files(m)) and all(
        isinstance(f, dict) and set(f) == {"bytes", "sha256"} and _int(f["bytes"], 1, 2 ** 53)
        and _hex(f["sha256"]) for f in files.values()), "the stored files' entries are malformed")


def _validate_records(m: dict, need: Callable[[bool, str], None]) -> None:
    """Format 2's per-image records, listed in the manifest itself."""
    paths, hashes = m["paths"], m["sha256"]
    need(isinstance(paths, list) and len(paths) == m["count"],
         "paths do not list count entries")
    need(isinstance(hashes, list) and len(hashes) == m["count"],
         "sha256 does not list count entries")
    for path in paths:
        need(_relative(path), f"path {str(path)[:60]!r} is not inside the gallery root")
    need(len(set(paths)) == len(paths), "a path is listed twice")
    need(all(h == "" or _hex(h) for h in hashes), "an image sha256 is malformed")
    need(isinstance(m["skipped"], list) and all(
        isinstance(s, dict) and set(s) == {"path", "reason"} and isinstance(s["path"], str)
        and isinstance(s["reason"], str) for s in m["skipped"]), "skipped entries are malformed")


def _int(value, low: int, high: int = 2 ** 31 - 1) -> bool:
    """An integer in [low, high] (FAISS takes 32-bit parameters)."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _text(value) -> bool:
    return isinstance(value, str) and 0 < len(value) <= 4096


def _optional_text(value) -> bool:
    return value is None or _text(value)


def _hex(value) -> bool:
    return isinstance(value, str) and bool(_HEX64.match(value))


def _relative(value, parents: bool = False) -> bool:
    """A relative POSIX path without `.`/empty parts (and without `..` unless `parents`)."""
    if not _text(value) or "\x00" in value or "\\" in value or value.startswith("/"):
        return False
    parts = value.split("/")
    return all(part not in ("", ".") and (parents or part != "..") for part in parts)
