"""Resumable index builds: embed a gallery a batch at a time, checkpointing next to the output
(`.<out>.simexplain-partial`, a name no user picks, created exclusively and marked as ours) so
that an interrupted build continues where it stopped and ends with the same index. Only the
files a build wrote are ever removed from it."""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from tqdm.auto import tqdm

from ..errors import SimexplainError
from ..files import atomic_path, shown_name, writing
from .basics import ENGINES, Skipped, require_faiss
from .embedding import Embedded, embed_files
from .explain_cache import ExplainCache, same_token_counts
from .kinds import check_count, check_shards, kind as index_kind
from .model import MODEL_KEYS, model_info
from .ray_engine import embed_with_ray
from .storage import FORMAT_NAME, FORMAT_VERSION, check_replaceable, common_root

if TYPE_CHECKING:
    from ..explainer import Explainer

PARTIAL_MARKER = "simexplain-partial"
# what a build writes into its checkpoint folder (atomic_path's temporary files included)
_OWN = re.compile(r"^(simexplain-partial|state\.json|shard-\d{5}-[0-9a-f]{6}\.npz"
                  r"|\.(simexplain-partial|state\.json|shard-\d{5}-[0-9a-f]{6}\.npz)\..+\.tmp)$")


@dataclass
class EmbeddedGallery:
    """What a build embedded, in gallery order: the index is made of it (`Index.build`)."""

    embeddings: np.ndarray  # (N, D) float32
    paths: list[str]
    info: dict  # the model's (model_info)
    hashes: list[str]
    skipped: list[Skipped]
    root: Path
    explain_cache: ExplainCache | None
    explainer: Explainer  # the driver's explainer (the factory's product for Ray builds)
    resumed_from: int  # files already done in a checkpoint when the build resumed
    checkpoint: Path | None  # to remove once the index is saved


def embed_gallery(images: str | Path | Iterable[str | Path],
                  explainer: Explainer | Callable[[], Explainer],
                  model_name: str | None = None, batch_size: int = 32, progress: bool = True,
                  out: str | Path | None = None, resume: bool = True, kind: str = "flat",
                  checkpoint_every: int = 8, shards: int = 1, engine: str = "local",
                  ray: dict | None = None, explain: bool = False) -> EmbeddedGallery:
    """The embedding part of `Index.build` (see there): every check before any work, then the
    gallery embedded batch by batch with checkpoints."""
    index_kind(kind)
    check_shards(kind, shards)
    if batch_size < 1:
        raise SimexplainError(f"batch_size must be >= 1, got {batch_size}")
    if engine not in ENGINES:
        raise SimexplainError(f"unknown build engine {engine!r}; choose one of "
                              f"{', '.join(ENGINES)}")
    require_faiss()
    root, paths = gallery_files(images)
    check_count(kind, len(paths))  # before any work: too few files can only give too few images
    listed = len(paths)
    paths, unnamed = _utf8_names(paths)
    checkpoint = None
    if out is not None:  # refuse a bad --out before any work
        check_replaceable(out)
        if isinstance(images, (str, Path)) and Path(os.path.abspath(out)).is_relative_to(root):
            raise SimexplainError(f"--out {out} lies inside the gallery folder {images}: the "
                                  "next build would take the index's files for gallery images; "
                                  "choose a path outside it")
        checkpoint = checkpoint_path(out)
        check_checkpoint(checkpoint)
    # a factory (for Ray workers that load their own model) also gives the driver its copy
    local = (cast("Explainer", explainer) if hasattr(explainer, "prepare")
             else cast("Callable[[], Explainer]", explainer)())
    info = model_info(local, model_name)
    state = _BuildState(paths, info, root, explain)
    if checkpoint is not None:
        if resume:
            state = _BuildState.resume(checkpoint, paths, info, root, explain) or state
        else:
            remove_checkpoint(checkpoint)
    resumed_from = state.done
    bar = tqdm(total=len(paths), initial=state.done, desc="indexing", unit="img",
               disable=not progress)
    batches_since = 0
    try:
        if engine == "ray":
            batches = embed_with_ray(paths, state.done, root, explainer, info, batch_size,
                                     explain=explain, **(ray or {}))
        else:
            batches = _embed_locally(paths, state.done, root, local, batch_size, explain)
        for results, skipped, done in batches:
            bar.update(done - state.done)
            state.record(results, skipped, done)
            batches_since += 1
            if checkpoint is not None and batches_since >= checkpoint_every:
                with writing(f"the build checkpoint {checkpoint}"):  # disk full: one line
                    state.write(checkpoint)
                batches_since = 0
    except BaseException:
        if checkpoint is not None and state.done > resumed_from:
            try:
                state.write(checkpoint)
            except Exception:  # noqa: BLE001 - keep the original error
                pass
        raise
    finally:
        bar.close()
    if not state.embeddings:
        raise SimexplainError(
            f"no readable image among the {listed} files; skipped: "
            + "; ".join(f"{s.path} ({s.reason})" for s in (unnamed + state.skipped)[:5]))
    return EmbeddedGallery(np.concatenate(state.embeddings), [paths[i] for i in state.ok], info,
                           state.hashes, unnamed + state.skipped, root,
                           ExplainCache.concat(state.cache) if explain else None, local,
                           resumed_from, checkpoint)


def _embed_locally(paths: list[str], start: int, root: Path, explainer, batch_size: int,
                   explain: bool = False):
    """(results, skipped, files done) of each batch, embedded in this process."""
    stream = explainer.stream("b")
    for offset in range(start, len(paths), batch_size):
        chunk = paths[offset:offset + batch_size]
        results, skipped = embed_files(chunk, offset, explainer, stream, root, explain)
        yield results, skipped, offset + len(chunk)


class _BuildState:
    """What a build has done so far, and its checkpoint: a folder `<out>.partial` holding one
    shard per checkpoint (embeddings, gallery rows and sha256 of the images embedded since the
    previous one, and with explain=True their explain cache) and state.json (replaced
    atomically) naming the shards that count."""

    STATE = "state.json"
    # shard arrays: ExplainCache's own, by attribute (projected, tokens and spatial only when
    # the model gives them)
    _CACHE = {"explain_positions": "positions", "explain_shapes": "shapes",
              "explain_projected": "projected", "explain_tokens": "tokens",
              "explain_spatial": "spatial"}

    def __init__(self, paths: list[str], info: dict, root: Path, explain: bool = False):
        self.paths = paths
        self.info = info
        self.root = root
        self.explain = explain
        self.done = 0  # files processed, in order (embedded or skipped)
        self.embeddings: list[np.ndarray] = []  # one array per batch (or per resumed shard)
        self.cache: list[ExplainCache] = []  # with explain: one per batch or resumed shard
        self.ok: list[int] = []  # rows of `paths` that were embedded
        self.hashes: list[str] = []
        self.skipped: list[Skipped] = []
        self.shards: list[str] = []
        self._flushed_items = 0  # len(self.ok) already in a shard
        self._flushed_cache = 0  # len(self.cache) already in a shard

    def _key(self) -> dict:
        listing = hashlib.sha256("\n".join(self.paths).encode()).hexdigest()
        key = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "paths_sha256": listing,
               "count": len(self.paths), **{k: self.info.get(k) for k in MODEL_KEYS}}
        if self.explain:  # only then: checkpoints of builds without it stay valid
            key["explain"] = True
        return json.loads(json.dumps(key))

    @classmethod
    def resume(cls, checkpoint: Path, paths, info, root,
               explain: bool = False) -> _BuildState | None:
        """The state saved in `checkpoint`, or None (with a warning) when it cannot be used."""
        if not (checkpoint / cls.STATE).is_file():
            return None
        state = cls(paths, info, root, explain)
        try:
            meta = json.loads((checkpoint / cls.STATE).read_text())
            if meta.get("key") != state._key():
                warnings.warn(f"ignoring build checkpoint {checkpoint}: it belongs to another "
                              "model, another list of images or a build with(out) --explain; "
                              "starting over", stacklevel=3)
                return None
            for name in meta["shards"]:
                with np.load(checkpoint / name, allow_pickle=False) as shard:
                    embeddings = np.asarray(shard["embeddings"], dtype=np.float32)
                    ok = [int(i) for i in shard["ok"]]
                    hashes = [str(h) for h in shard["hashes"]]
                    cache = state._shard_cache(shard) if explain and ok else None
                if not (len(embeddings) == len(ok) == len(hashes)) or (
                        cache is not None and len(cache) != len(ok)):
                    raise ValueError(f"inconsistent shard {name}")
                if len(embeddings):
                    state.embeddings.append(embeddings)
                if cache is not None:
                    state.cache.append(cache)
                state.ok += ok
                state.hashes += hashes
            state.shards = list(meta["shards"])
            state.done = int(meta["done"])
            state.skipped = [Skipped(s["path"], s["reason"]) for s in meta["skipped"]]
        except Exception as exc:  # noqa: BLE001 - any damage means: start again
            warnings.warn(f"ignoring unreadable build checkpoint {checkpoint} ({exc}); "
                          "starting over", stacklevel=3)
            return None
        if state.ok and (max(state.ok) >= state.done or state.done > len(paths)):
            warnings.warn(f"ignoring inconsistent build checkpoint {checkpoint}; starting over",
                          stacklevel=3)
            return None
        state._flushed_items = len(state.ok)
        state._flushed_cache = len(state.cache)
        return state

    def _shard_cache(self, shard) -> ExplainCache:
        dtypes: dict[str, type] = {"shapes": np.int64, "spatial": np.bool_}
        arrays: dict[str, Any] = {
            attribute: np.asarray(shard[name], dtype=dtypes.get(attribute, np.float32))
            for name, attribute in self._CACHE.items() if name in shard.files}
        return ExplainCache(**arrays)

    def write(self, checkpoint: Path) -> None:
        """Write a shard with what is new since the last checkpoint, then atomically replace
        state.json: a crash at any point leaves the previous checkpoint usable."""
        _make_own(checkpoint)
        new = len(self.ok) - self._flushed_items
        if new:
            rows = np.concatenate(self.embeddings)[self._flushed_items:]
            arrays = {"embeddings": rows,
                      "ok": np.asarray(self.ok[self._flushed_items:], dtype=np.int64),
                      "hashes": np.asarray(self.hashes[self._flushed_items:], dtype=str)}
            if self.explain:  # only the new batches' caches: no copy of the whole gallery's
                cache = ExplainCache.concat(self.cache[self._flushed_cache:])
                arrays.update({name: getattr(cache, attribute)
                               for name, attribute in self._CACHE.items()
                               if getattr(cache, attribute) is not None})
            name = f"shard-{len(self.shards):05d}-{uuid.uuid4().hex[:6]}.npz"
            with atomic_path(checkpoint / name) as tmp, open(tmp, "wb") as handle:
                np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub: allow_pickle
            self.shards.append(name)
            self._flushed_items = len(self.ok)
            self._flushed_cache = len(self.cache)
            self.embeddings = [np.concatenate(self.embeddings)]  # keep the list short
        meta = {"key": self._key(), "done": self.done, "shards": self.shards,
                "skipped": [s.to_dict() for s in self.skipped]}
        with atomic_path(checkpoint / self.STATE) as tmp:
            tmp.write_text(json.dumps(meta))

    def record(self, results: list[Embedded], skipped: list[Skipped], done: int) -> None:
        """Take one embedded batch (rows in order, from `embed_files`): files up to `done`
        are then processed."""
        if results:
            dims = {r.embedding.shape[0] for r in results}
            if self.embeddings:
                dims.add(self.embeddings[0].shape[1])
            if len(dims) != 1:
                raise SimexplainError(
                    f"the model gives embeddings of different sizes {sorted(dims)}")
            if self.explain:
                if any(r.cached is None for r in results):
                    raise SimexplainError("an explain build got an image without its "
                                          "contributions")
                batch = ExplainCache.stack([r.cached for r in results if r.cached is not None])
                if self.cache:  # refused now, not when the whole gallery is put together
                    same_token_counts([self.cache[0].token_count, batch.token_count])
                self.cache.append(batch)
            self.embeddings.append(np.stack([r.embedding for r in results]).astype(np.float32))
            self.ok.extend(r.row for r in results)
            self.hashes.extend(r.sha256 for r in results)
        self.skipped.extend(skipped)
        self.done = done


def checkpoint_path(out: str | Path) -> Path:
    """Where a build into `out` keeps its partial progress (a folder)."""
    out = Path(out)
    return out.parent / f".{out.name}.simexplain-partial"


def _is_own(checkpoint: Path) -> bool:
    marker = checkpoint / PARTIAL_MARKER
    try:
        return (checkpoint.is_dir() and not checkpoint.is_symlink() and marker.is_file()
                and json.loads(marker.read_text()) == {"format": PARTIAL_MARKER})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False


def check_checkpoint(checkpoint: Path) -> None:
    """Refuse a folder at the checkpoint name that simexplain did not make."""
    if (checkpoint.exists() or checkpoint.is_symlink()) and not _is_own(checkpoint):
        raise SimexplainError(f"{checkpoint} exists and was not made by simexplain; refusing to "
                              "use or remove it (move it away, or choose another --out)")


def _make_own(checkpoint: Path) -> None:
    """Create the checkpoint folder exclusively, marked as ours (or check an existing one)."""
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(checkpoint)
    except FileExistsError:
        check_checkpoint(checkpoint)
        return
    with atomic_path(checkpoint / PARTIAL_MARKER) as tmp:
        tmp.write_text(json.dumps({"format": PARTIAL_MARKER}))


def remove_checkpoint(checkpoint: Path) -> None:
    """Remove a checkpoint folder of ours: only the files a build writes, then the folder if
    that left it empty (anything else stays, with a warning)."""
    if not checkpoint.exists():
        return
    check_checkpoint(checkpoint)
    for entry in os.listdir(checkpoint):
        if _OWN.match(entry) and entry != PARTIAL_MARKER and (checkpoint / entry).is_file():
            (checkpoint / entry).unlink()
    others = [e for e in os.listdir(checkpoint) if e != PARTIAL_MARKER]
    if others:
        warnings.warn(f"left {checkpoint} in place: it holds files simexplain did not write "
                      f"({', '.join(sorted(others)[:3])})", stacklevel=3)
        return
    (checkpoint / PARTIAL_MARKER).unlink()
    checkpoint.rmdir()


def _utf8_names(paths: list[str]) -> tuple[list[str], list[Skipped]]:
    """The paths that are valid UTF-8 (an index stores its paths as UTF-8 text), and the
    others as skipped files (their names shown with U+FFFD for the undecodable bytes)."""
    kept, unnamed = [], []
    for path in paths:
        try:
            path.encode("utf-8")
            kept.append(path)
        except UnicodeEncodeError:  # a file name's bytes that are not UTF-8 (surrogateescape)
            unnamed.append(Skipped(shown_name(path), "the file name is not valid UTF-8 (an "
                                   "index stores names as UTF-8): rename the file to index it"))
    return kept, unnamed


def gallery_files(images: str | Path | Iterable[str | Path]) -> tuple[Path, list[str]]:
    """The gallery root (absolute) and its files as absolute paths: all files of a folder
    (recursively, sorted, hidden ones left out), or the given list (root: their deepest common
    folder)."""
    if isinstance(images, (str, Path)):
        root = Path(os.path.abspath(images))
        if not root.exists():
            raise SimexplainError(f"gallery folder not found: {images}")
        if root.is_file():
            raise SimexplainError(f"{images} is a file; give a folder of images or a list of "
                                  "paths")
        # links to nothing (broken, or a loop) are listed too, to be reported as skipped
        files = sorted(str(p) for p in root.rglob("*")
                       if (p.is_file() or (p.is_symlink() and not p.exists()))
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        if not files:
            raise SimexplainError(f"gallery folder {images} holds no files")
        return root, files
    files = [os.path.abspath(p) for p in images]
    if not files:
        raise SimexplainError("the list of gallery images is empty")
    return common_root(files), files
