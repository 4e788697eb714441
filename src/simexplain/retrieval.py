"""Interactive retrieval (METHOD.md, "Interactive retrieval"): a gallery index searched with a
whole query image or with a region of it.

A region R of the query (a box or a mask in the query's model-input pixels) gives cell weights
w_p and ONE query vector q_R = sum_p w_p u_p (u_p: the query's per-position contributions). The
partial similarity of a gallery image b with embedding e_b is then

* dot:        s_R(b) = q_R . e_b
* cosine:     s_R(b) = q_R . e_b / (|e_a| |e_b|)       (rank: q_R against L2-normalised e_b)
* euclidean:  s_R(b) = q_R . (e_a - e_b)               (the region's share of the squared
              distance, sum_p w_p O_a[p]; smaller is better, so the gallery is ranked by
              ascending s_R, i.e. by the largest q_R . e_b)

which is exactly `PairExplanation.partial_score("a", R)`. Without a region the search is the
ordinary similarity ranking (largest dot / cosine, smallest squared distance).

Storage. One FAISS inner-product index serves all searches:

* cosine: the L2-normalised gallery embeddings;
* dot: the raw embeddings;
* euclidean: the raw embeddings with one extra coordinate -|e_b|^2 / 2, so that the whole-image
  query [e_a, 1] ranks by e_a . e_b - |e_b|^2 / 2 (= smallest distance) and a region query
  [q_R, 0] ranks by q_R . e_b.

The raw float32 embeddings are kept next to it (`embeddings.npy`): the top candidates from
FAISS are re-scored exactly (float64) from them, so reported scores are the true s_R.
`kind` picks the FAISS structure: "flat" (exact, the default), "ivf" (inverted lists, for large
galleries) or "hnsw" (graph); the last two are approximate.

On disk an index is a folder: manifest.json (format version, model, layer, similarity, input
size, weights fingerprint, image paths and their sha256, skipped files, sizes and sha256 of the
stored arrays), embeddings.npy and vectors.faiss. `save` writes into a temporary folder next to
the target and renames it into place; `load` verifies everything and refuses a mismatch.
"""

from __future__ import annotations

import argparse
import hashlib
import html
import json
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from . import maps
from .decomposition import SIMILARITIES, check_similarity
from .errors import ImageError, SimexplainError
from .files import write_text_atomic
from .explanation import PairExplanation, Side

FORMAT_NAME = "simexplain-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.npy"
VECTORS = "vectors.faiss"
KINDS = ("flat", "ivf", "hnsw")
# Extra candidates fetched from FAISS before exact re-scoring (guards near-ties at rank k).
FETCH_MARGIN = 16
HNSW_M = 32
HNSW_EF_SEARCH = 64


class IndexFormatError(SimexplainError):
    """An index folder is missing, incomplete, corrupted, or of an unknown format."""


class IndexMismatchError(SimexplainError):
    """The model used for a query is not the model the index was built with."""


# ---------------------------------------------------------------------------------------------
# scoring (shared with the evaluation, so that the index and the benchmarks agree by design)


def lower_is_better(similarity: str) -> bool:
    """Squared distances (and their region shares) rank ascending; similarities descending."""
    return check_similarity(similarity) == "euclidean"


def similarity_scores(vectors: np.ndarray | torch.Tensor, gallery: np.ndarray | torch.Tensor,
                      similarity: str,
                      query_embeddings: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
    """Exact (float64) scores of query vectors (D,) or (Q, D) against gallery embeddings (G, D).

    Without `query_embeddings` the vectors are whole-query embeddings e_a and the result is the
    model's similarity (dot, cosine, or squared distance). With them, the vectors are region
    vectors q_R of queries whose embeddings are `query_embeddings`, and the result is the
    partial similarity s_R of METHOD.md. Shape: (G,) or (Q, G).
    """
    similarity = check_similarity(similarity)
    v = np.asarray(_numpy(vectors), dtype=np.float64)
    g = np.asarray(_numpy(gallery), dtype=np.float64)
    single = v.ndim == 1
    v = np.atleast_2d(v)
    products = v @ g.T  # (Q, G)
    if query_embeddings is None:
        if similarity == "dot":
            out = products
        elif similarity == "cosine":
            norms = np.linalg.norm(v, axis=1)[:, None] * np.linalg.norm(g, axis=1)[None, :]
            out = products / np.maximum(norms, 1e-12)
        else:
            out = ((v ** 2).sum(1)[:, None] - 2 * products + (g ** 2).sum(1)[None, :])
            out = np.maximum(out, 0.0)
    else:
        e = np.atleast_2d(np.asarray(_numpy(query_embeddings), dtype=np.float64))
        if e.shape != v.shape:
            raise SimexplainError(
                f"query_embeddings has shape {e.shape}, expected one per vector {v.shape}")
        if similarity == "dot":
            out = products
        elif similarity == "cosine":
            norms = np.linalg.norm(e, axis=1)[:, None] * np.linalg.norm(g, axis=1)[None, :]
            out = products / np.maximum(norms, 1e-12)
        else:
            out = (v * e).sum(1)[:, None] - products
    return out[0] if single else out


def rank_order(scores: np.ndarray, similarity: str) -> np.ndarray:
    """Indices that sort scores best first (stable: ties keep gallery order)."""
    keys = scores if lower_is_better(similarity) else -scores
    return np.argsort(keys, axis=-1, kind="stable")


def _numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    return np.asarray(value)


# ---------------------------------------------------------------------------------------------
# results


@dataclass
class Skipped:
    """A gallery file that could not be indexed, and why."""

    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


@dataclass
class Hit:
    """One search result. `score` is the ranking score: s_R for a region search, else the
    model's similarity (for euclidean: a distance, smaller is better). `full_score` is the whole-
    image similarity of the pair. With `explain=True`, `explanation` decomposes the pair
    (query = side a, hit = side b), and for a region search `region_map` is the region's map on
    the hit's feature grid."""

    rank: int
    index: int
    path: str
    score: float
    full_score: float
    explanation: PairExplanation | None = field(default=None, repr=False)
    region_map: torch.Tensor | None = field(default=None, repr=False)

    @property
    def overall_map(self) -> torch.Tensor | None:
        """The hit's signed overall map (on its feature grid), when explained."""
        return None if self.explanation is None else self.explanation.overall_b

    def to_dict(self) -> dict:
        out = {"rank": self.rank, "index": self.index, "path": self.path, "score": self.score,
               "full_score": self.full_score}
        if self.explanation is not None:
            out["residual"] = self.explanation.residual
            out["grid"] = list(self.explanation.b.grid)
        return out


@dataclass
class RegionQuery:
    """A query prepared for searching: `vector` is q_R (or e_a without a region)."""

    vector: torch.Tensor  # (D,) float64
    embedding: torch.Tensor  # (D,) e_a, the query's own embedding
    side: Side  # the query as the model saw it (contributions, grid, image)
    region: Any = None
    weights: torch.Tensor | None = None  # (P,) cell coverage of the region

    @property
    def is_region(self) -> bool:
        return self.region is not None


# ---------------------------------------------------------------------------------------------
# the index


class Index:
    """Gallery embeddings in a FAISS index, searchable by a whole query or a region of it.

    Build with `Index.build(folder_or_paths, explainer, model_name)`, or wrap vectors with
    `Index.from_vectors`; `save(path)` / `Index.load(path, explainer)`; `search(query, k, region)`.
    """

    def __init__(self, embeddings: np.ndarray, paths: Sequence[str], info: dict,
                 kind: str = "flat", hashes: Sequence[str] | None = None,
                 skipped: Sequence[Skipped] = (), vectors=None, params: dict | None = None,
                 explainer=None):
        embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise SimexplainError(f"an index needs (N, D) embeddings with N >= 1, got "
                                  f"shape {embeddings.shape}")
        if len(paths) != embeddings.shape[0]:
            raise SimexplainError(f"{len(paths)} paths for {embeddings.shape[0]} embeddings")
        if kind not in KINDS:
            raise SimexplainError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
        self.embeddings = embeddings
        self.paths = [str(p) for p in paths]
        self.hashes = list(hashes) if hashes is not None else [""] * len(self.paths)
        self.skipped = list(skipped)
        self.info = dict(info)
        self.info["similarity"] = check_similarity(self.info.get("similarity", "cosine"))
        self.info["dim"] = int(embeddings.shape[1])
        self.kind = kind
        self.params = dict(params) if params else _default_params(kind, len(self.paths))
        self.vectors = vectors if vectors is not None else self._build_vectors()
        self.explainer = None
        self.resumed_from = 0  # images already done in a checkpoint when a build resumed
        if explainer is not None:
            self.attach(explainer)

    # -- properties ----------------------------------------------------------------------------
    @property
    def similarity(self) -> str:
        return self.info["similarity"]

    @property
    def dim(self) -> int:
        return self.info["dim"]

    @property
    def model_name(self) -> str | None:
        return self.info.get("model")

    def __len__(self) -> int:
        return len(self.paths)

    def __repr__(self) -> str:
        return (f"Index({len(self)} images, model={self.model_name!r}, "
                f"similarity={self.similarity}, dim={self.dim}, kind={self.kind})")

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_vectors(cls, embeddings, paths: Sequence[str] | None = None,
                     similarity: str = "cosine", kind: str = "flat", model: str = "vectors",
                     **info) -> "Index":
        """An index over given (N, D) embeddings (no images: for tests and benchmarks)."""
        array = np.asarray(_numpy(embeddings), dtype=np.float32)
        if paths is None:
            paths = [f"#{i}" for i in range(len(array))]
        return cls(array, paths, {"model": model, "similarity": similarity, **info}, kind=kind)

    @classmethod
    def build(cls, images: str | Path | Iterable[str | Path], explainer,
              model_name: str | None = None, batch_size: int = 32, progress: bool = True,
              out: str | Path | None = None, resume: bool = True, kind: str = "flat",
              checkpoint_every: int = 8) -> "Index":
        """Embed a folder (all files, recursively, sorted) or a list of image files.

        Unreadable files are skipped and listed in `.skipped`. With `out`, progress is
        checkpointed to the folder `<out>.partial` every `checkpoint_every` batches (and when
        the build is interrupted); a rerun with `resume=True` continues from there, and the
        finished index is saved to `out` (the checkpoint is then removed).
        """
        if kind not in KINDS:
            raise SimexplainError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
        if batch_size < 1:
            raise SimexplainError(f"batch_size must be >= 1, got {batch_size}")
        _require_faiss()
        paths = gallery_files(images)
        info = model_info(explainer, model_name)
        checkpoint = checkpoint_path(out) if out is not None else None
        state = _BuildState.fresh(paths, info)
        if checkpoint is not None:
            if resume:
                state = _BuildState.resume(checkpoint, paths, info) or state
            else:
                _remove_checkpoint(checkpoint)
        resumed_from = state.done
        stream = explainer.stream("b")
        bar = tqdm(total=len(paths), initial=state.done, desc="indexing", unit="img",
                   disable=not progress)
        batches_since = 0
        try:
            while state.done < len(paths):
                chunk = paths[state.done:state.done + batch_size]
                state.add_batch(chunk, state.done, explainer, stream)
                bar.update(len(chunk))
                batches_since += 1
                if checkpoint is not None and batches_since >= checkpoint_every:
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
                f"no readable image among the {len(paths)} files; skipped: "
                + "; ".join(f"{s.path} ({s.reason})" for s in state.skipped[:5]))
        index = cls(np.concatenate(state.embeddings), [paths[i] for i in state.ok],
                    {**info}, kind=kind, hashes=state.hashes, skipped=state.skipped)
        index.explainer = explainer
        index.resumed_from = resumed_from
        if out is not None:
            index.save(out)
            _remove_checkpoint(checkpoint)
        return index

    def _build_vectors(self):
        faiss = _require_faiss()
        data = self._stored_vectors(self.embeddings)
        n, d = data.shape
        if self.kind == "flat":
            structure = faiss.IndexFlatIP(d)
        elif self.kind == "ivf":
            nlist = int(self.params["nlist"])
            quantizer = faiss.IndexFlatIP(d)
            structure = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            rng = np.random.default_rng(0)
            sample = data if n <= 64 * nlist else data[rng.choice(n, 64 * nlist, replace=False)]
            structure.train(np.ascontiguousarray(sample))
            structure.nprobe = int(self.params["nprobe"])
        else:
            structure = faiss.IndexHNSWFlat(d, int(self.params["M"]), faiss.METRIC_INNER_PRODUCT)
            structure.hnsw.efSearch = int(self.params["ef_search"])
        for start in range(0, n, 65536):
            structure.add(np.ascontiguousarray(data[start:start + 65536]))
        return structure

    def _stored_vectors(self, embeddings: np.ndarray) -> np.ndarray:
        e = np.asarray(embeddings, dtype=np.float32)
        if self.similarity == "cosine":
            norms = np.linalg.norm(e, axis=1, keepdims=True)
            return e / np.maximum(norms, 1e-12)
        if self.similarity == "euclidean":
            extra = -0.5 * (e.astype(np.float64) ** 2).sum(1, keepdims=True)
            return np.hstack([e, extra.astype(np.float32)])
        return e

    # -- the query model -----------------------------------------------------------------------
    def attach(self, explainer) -> "Index":
        """Use `explainer` for queries after checking it is the index's model."""
        check_model(self.info, model_info(explainer, getattr(explainer, "model_name", None)),
                    where=self.info.get("source", "the index"))
        self.explainer = explainer
        return self

    def _require_explainer(self):
        if self.explainer is None:
            raise SimexplainError(
                "this index has no query model: pass explainer= to Index.load or call "
                "index.attach(explainer)")
        return self.explainer

    # -- search --------------------------------------------------------------------------------
    def region_vector(self, query, region: maps.Region | None = None) -> RegionQuery:
        """The query's search vector: q_R = sum_p w_p u_p for a region, else e_a."""
        explainer = self._require_explainer()
        side = explainer.side(face_crop_for(explainer)(query), "a")
        if side.embedding.shape[-1] != self.dim:
            raise IndexMismatchError(
                f"the query model gives {side.embedding.shape[-1]}-d embeddings but the index "
                f"holds {self.dim}-d ones (model {self.model_name!r})")
        embedding = side.embedding.detach().double().cpu()
        if region is None:
            return RegionQuery(vector=embedding, embedding=embedding, side=side)
        weights = maps.region_weights(region, side.grid, side.image_size)
        vector = weights @ side.contributions.detach().double().cpu()
        return RegionQuery(vector=vector, embedding=embedding, side=side, region=region,
                           weights=weights)

    def search_vector(self, vector, k: int = 10, query_embedding=None) -> list[Hit]:
        """Search one vector. Alone, `vector` is a whole query's embedding e_a (ordinary
        similarity search); with `query_embedding` (e_a), it is a region vector q_R and hits
        are ranked by the partial similarity s_R."""
        if k < 1:
            raise SimexplainError(f"k must be >= 1, got {k}")
        v = np.asarray(_numpy(vector), dtype=np.float64).reshape(-1)
        if v.shape[0] != self.dim:
            raise IndexMismatchError(f"query vector has {v.shape[0]} values, the index holds "
                                     f"{self.dim}-d embeddings")
        if not np.isfinite(v).all():
            raise SimexplainError("query vector contains NaN or infinite values")
        e = None if query_embedding is None else np.asarray(
            _numpy(query_embedding), dtype=np.float64).reshape(-1)
        if e is not None and e.shape != v.shape:
            raise SimexplainError(f"query_embedding has {e.shape[0]} values, expected {self.dim}")
        k = min(k, len(self))
        candidates = self._candidates(v, e is not None, min(len(self), k + FETCH_MARGIN))
        scores = similarity_scores(v, self.embeddings[candidates], self.similarity, e)
        order = rank_order(scores, self.similarity)[:k]
        chosen = candidates[order]
        if e is None:
            full = scores[order]
        else:
            full = similarity_scores(e, self.embeddings[chosen], self.similarity)
        return [Hit(rank=r + 1, index=int(i), path=self.paths[int(i)], score=float(s),
                    full_score=float(f))
                for r, (i, s, f) in enumerate(zip(chosen, scores[order], full))]

    def _candidates(self, v: np.ndarray, is_region: bool, fetch: int) -> np.ndarray:
        """Gallery rows of the best `fetch` inner products in the FAISS index (sorted by row)."""
        if self.similarity == "euclidean":
            v = np.append(v, 0.0 if is_region else 1.0)
        query = np.ascontiguousarray(v[None, :], dtype=np.float32)
        if self.kind == "ivf":
            self.vectors.nprobe = int(self.params["nprobe"])
        elif self.kind == "hnsw":
            self.vectors.hnsw.efSearch = max(int(self.params["ef_search"]), fetch)
        _, rows = self.vectors.search(query, fetch)
        rows = rows[0]
        rows = rows[rows >= 0]
        if rows.size == 0:
            raise SimexplainError("the index returned no candidates")
        return np.unique(rows)  # sorted: exact ties then keep gallery order

    def search(self, query, k: int = 10, region: maps.Region | None = None,
               explain: bool = False, batch_size: int = 16) -> list[Hit]:
        """Rank the gallery for a query image (path, PIL image or (1, C, H, W) tensor).

        region: a box (top, left, bottom, right) or a mask in the query's model-input pixels;
        hits are then ranked by the region's partial similarity s_R. explain: decompose the
        top k pairs too (`Hit.explanation`, `Hit.overall_map`, `Hit.region_map`).
        """
        prepared = self.region_vector(query, region)
        hits = self.search_vector(prepared.vector, k,
                                  prepared.embedding if prepared.is_region else None)
        if explain:
            self.explain_hits(prepared, hits, batch_size=batch_size)
        return hits

    def explain_hits(self, prepared: RegionQuery, hits: list[Hit], batch_size: int = 16) -> None:
        """Attach the pair decomposition (and the region map) to each hit, in place."""
        explainer = self._require_explainer()
        for hit in hits:
            self._warn_if_changed(hit)
        model_input = face_crop_for(explainer)
        try:
            sides = list(explainer.sides([model_input(hit.path) for hit in hits], "b",
                                         batch_size))
        except ImageError as exc:
            raise SimexplainError(f"cannot explain the hits: {exc}") from None
        for hit, side_b in zip(hits, sides):
            result = PairExplanation.from_sides(prepared.side, side_b, explainer.similarity)
            hit.explanation = result
            if prepared.is_region:
                d = result.pairwise_flat
                weights = prepared.weights.to(device=d.device, dtype=d.dtype)
                hit.region_map = (weights @ d).reshape(side_b.grid)

    def _warn_if_changed(self, hit: Hit) -> None:
        expected = self.hashes[hit.index] if hit.index < len(self.hashes) else ""
        if expected and Path(hit.path).is_file() and file_sha256(hit.path) != expected:
            warnings.warn(f"{hit.path} changed since it was indexed; its explanation uses the "
                          "current file", stacklevel=3)

    # -- persistence ---------------------------------------------------------------------------
    def manifest(self, files: dict | None = None) -> dict:
        return {
            "format": FORMAT_NAME, "version": FORMAT_VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "model": self.info.get("model"), "layer": self.info.get("layer"),
            "layer_b": self.info.get("layer_b"), "similarity": self.similarity,
            "dim": self.dim, "input_size": self.info.get("input_size"),
            "weights_sha256": self.info.get("weights_sha256"),
            "kind": self.kind, "params": self.params, "count": len(self),
            "paths": self.paths, "sha256": self.hashes,
            "skipped": [s.to_dict() for s in self.skipped],
            "files": files or {},
        }

    def save(self, path: str | Path) -> Path:
        """Write the index folder atomically: a temporary folder next to `path`, renamed into
        place. An existing index at `path` is replaced only once the new one is complete."""
        faiss = _require_faiss()
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
                np.save(handle, self.embeddings, allow_pickle=False)
                _fsync(handle)
            faiss.write_index(self.vectors, str(tmp / VECTORS))
            files = {name: {"bytes": (tmp / name).stat().st_size,
                            "sha256": file_sha256(tmp / name)}
                     for name in (EMBEDDINGS, VECTORS)}
            with open(tmp / MANIFEST, "w") as handle:
                json.dump(self.manifest(files), handle, indent=1)
                _fsync(handle)
            _replace_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.info["source"] = str(path)
        return path

    @classmethod
    def load(cls, path: str | Path, explainer=None, verify: bool = True) -> "Index":
        """Open an index folder, verifying its manifest and the size and sha256 of each stored
        file; with `explainer`, also check that it is the index's model."""
        faiss = _require_faiss()
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
        expected_d = dim + (1 if manifest["similarity"] == "euclidean" else 0)
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


# ---------------------------------------------------------------------------------------------
# building helpers


class _BuildState:
    """What a build has done so far, and its checkpoint: a folder `<out>.partial` holding one
    shard per checkpoint (embeddings, gallery rows and sha256 of the images embedded since the
    previous one) and state.json (replaced atomically) naming the shards that count."""

    STATE = "state.json"

    def __init__(self, paths: list[str], info: dict):
        self.paths = paths
        self.info = info
        self.done = 0  # files processed, in order (embedded or skipped)
        self.embeddings: list[np.ndarray] = []  # one array per batch (or per resumed shard)
        self.ok: list[int] = []  # rows of `paths` that were embedded
        self.hashes: list[str] = []
        self.skipped: list[Skipped] = []
        self.shards: list[str] = []
        self._flushed_items = 0  # len(self.ok) already in a shard

    @classmethod
    def fresh(cls, paths, info) -> "_BuildState":
        return cls(paths, info)

    def _key(self) -> dict:
        listing = hashlib.sha256("\n".join(self.paths).encode()).hexdigest()
        return _jsonable({"format": FORMAT_NAME, "version": FORMAT_VERSION,
                          "paths_sha256": listing, "count": len(self.paths),
                          **{k: self.info.get(k) for k in _MODEL_KEYS}})

    @classmethod
    def resume(cls, checkpoint: Path, paths, info) -> "_BuildState | None":
        """The state saved in `checkpoint`, or None (with a warning) when it cannot be used."""
        if not (checkpoint / cls.STATE).is_file():
            return None
        state = cls(paths, info)
        try:
            meta = json.loads((checkpoint / cls.STATE).read_text())
            if meta.get("key") != state._key():
                warnings.warn(f"ignoring build checkpoint {checkpoint}: it belongs to another "
                              "model or another list of images; starting over", stacklevel=3)
                return None
            for name in meta["shards"]:
                with np.load(checkpoint / name, allow_pickle=False) as shard:
                    embeddings = np.asarray(shard["embeddings"], dtype=np.float32)
                    ok = [int(i) for i in shard["ok"]]
                    hashes = [str(h) for h in shard["hashes"]]
                if not (len(embeddings) == len(ok) == len(hashes)):
                    raise ValueError(f"inconsistent shard {name}")
                if len(embeddings):
                    state.embeddings.append(embeddings)
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
        return state

    def write(self, checkpoint: Path) -> None:
        """Write a shard with what is new since the last checkpoint, then atomically replace
        state.json: a crash at any point leaves the previous checkpoint usable."""
        checkpoint.mkdir(parents=True, exist_ok=True)
        new = len(self.ok) - self._flushed_items
        if new:
            rows = np.concatenate(self.embeddings)[self._flushed_items:] if self.embeddings \
                else np.zeros((0, 0), np.float32)
            name = f"shard-{len(self.shards):05d}-{uuid.uuid4().hex[:6]}.npz"
            fd, tmp = tempfile.mkstemp(dir=checkpoint, prefix=f".{name}.", suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as handle:
                    np.savez(handle, embeddings=rows,
                             ok=np.asarray(self.ok[self._flushed_items:], dtype=np.int64),
                             hashes=np.asarray(self.hashes[self._flushed_items:], dtype=str))
                    _fsync(handle)
                os.replace(tmp, checkpoint / name)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            self.shards.append(name)
            self._flushed_items = len(self.ok)
            # keep the in-memory list short
            self.embeddings = [np.concatenate(self.embeddings)]
        meta = {"key": self._key(), "done": self.done, "shards": self.shards,
                "skipped": [s.to_dict() for s in self.skipped]}
        fd, tmp = tempfile.mkstemp(dir=checkpoint, prefix=f".{self.STATE}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(meta, handle)
                _fsync(handle)
            os.replace(tmp, checkpoint / self.STATE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def add_batch(self, chunk: list[str], offset: int, explainer, stream) -> None:
        """Prepare, hash and embed one batch; unreadable files are recorded as skipped. The
        state changes only once the whole batch is done (a checkpoint never holds half a
        batch)."""
        ready: list[tuple[int, str, torch.Tensor]] = []
        skipped: list[Skipped] = []
        model_input = face_crop_for(explainer)
        for i, path in enumerate(chunk, offset):
            try:
                digest = file_sha256(path)
                tensor, _ = explainer.prepare(model_input(path), "b")
            except (ImageError, OSError) as exc:
                skipped.append(Skipped(path, _reason(exc)))
                continue
            ready.append((i, digest, tensor))
        groups: dict[tuple, list] = {}
        for item in ready:
            groups.setdefault(tuple(item[2].shape), []).append(item)
        results: list[tuple[int, str, np.ndarray]] = []
        for items in groups.values():
            out = stream.embed(torch.cat([t for _, _, t in items]))
            vectors = out.detach().float().cpu().numpy()
            for (i, digest, _), vec in zip(items, vectors):
                results.append((i, digest, vec))
        results.sort(key=lambda r: r[0])
        if results:
            dims = {r[2].shape[0] for r in results}
            if self.embeddings:
                dims.add(self.embeddings[0].shape[1])
            if len(dims) != 1:
                raise SimexplainError(
                    f"the model gives embeddings of different sizes {sorted(dims)}")
            self.embeddings.append(np.stack([r[2] for r in results]).astype(np.float32))
            self.ok.extend(r[0] for r in results)
            self.hashes.extend(r[1] for r in results)
        self.skipped.extend(skipped)
        self.done = offset + len(chunk)


def face_crop_for(explainer):
    """What the model is given for an image: face models (zoo entries marked `faces`) see the
    detected face crop, as in `simexplain pair`; an image without a face is an ImageError."""
    from . import zoo
    name = getattr(explainer, "model_name", None)
    if not zoo.crops_faces(name):
        return lambda image: image

    def crop(image):
        if isinstance(image, torch.Tensor):
            return image  # already the model's input
        from .faces import crop_face
        return crop_face(image, size=None)[0]
    return crop


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text if text else type(exc).__name__


def checkpoint_path(out: str | Path) -> Path:
    """Where a build into `out` keeps its partial progress (a folder)."""
    out = Path(out)
    return out.parent / f"{out.name}.partial"


def _remove_checkpoint(checkpoint: Path) -> None:
    if checkpoint.is_dir():
        shutil.rmtree(checkpoint, ignore_errors=True)
    elif checkpoint.exists():
        checkpoint.unlink()


def gallery_files(images: str | Path | Iterable[str | Path]) -> list[str]:
    """All files of a folder (recursively, sorted, hidden ones left out) or the given list."""
    if isinstance(images, (str, Path)):
        root = Path(images)
        if not root.exists():
            raise SimexplainError(f"gallery folder not found: {root}")
        if root.is_file():
            raise SimexplainError(f"{root} is a file; give a folder of images or a list of paths")
        files = sorted(str(p) for p in root.rglob("*")
                       if p.is_file() and not any(part.startswith(".")
                                                  for part in p.relative_to(root).parts))
        if not files:
            raise SimexplainError(f"gallery folder {root} holds no files")
        return files
    files = [str(p) for p in images]
    if not files:
        raise SimexplainError("the list of gallery images is empty")
    return files


_MODEL_KEYS = ("model", "layer", "layer_b", "similarity", "input_size", "weights_sha256")


def model_info(explainer, model_name: str | None = None) -> dict:
    """What identifies the gallery model of an explainer: name, layers, similarity, input
    size (of side b), and a sha256 of its weights."""
    stream_b = explainer.stream("b")
    size = getattr(explainer.transform_b, "size", None)
    return {
        "model": model_name if model_name is not None else getattr(explainer, "model_name", None),
        "layer": explainer.stream_a.layer_name,
        "layer_b": stream_b.layer_name,
        "similarity": explainer.similarity,
        "input_size": list(size) if size is not None else None,
        "weights_sha256": weights_fingerprint(explainer),
    }


def weights_fingerprint(explainer) -> str:
    """sha256 over the parameters and buffers of the explainer's model(s)."""
    return explainer.weights_sha256()


def check_model(expected: dict, actual: dict, where: str = "the index") -> None:
    """Refuse a query model that differs from the index's (IndexMismatchError)."""
    problems = []
    if expected.get("model") and actual.get("model") and expected["model"] != actual["model"]:
        problems.append(f"model {actual['model']!r} instead of {expected['model']!r}")
    for key, label in (("layer", "layer"), ("layer_b", "gallery layer"),
                       ("similarity", "similarity")):
        if expected.get(key) and actual.get(key) and expected[key] != actual[key]:
            problems.append(f"{label} {actual[key]!r} instead of {expected[key]!r}")
    if (expected.get("input_size") and actual.get("input_size")
            and list(expected["input_size"]) != list(actual["input_size"])):
        problems.append(f"input size {tuple(actual['input_size'])} instead of "
                        f"{tuple(expected['input_size'])}")
    if (not problems and expected.get("weights_sha256") and actual.get("weights_sha256")
            and expected["weights_sha256"] != actual["weights_sha256"]):
        problems.append("different weights (the weights fingerprint does not match)")
    if problems:
        raise IndexMismatchError(
            f"the query model does not match {where}: " + "; ".join(problems)
            + f". Use the model the index was built with ({expected.get('model')!r}, layer "
              f"{expected.get('layer')!r}, {expected.get('similarity')}) or rebuild the index.")


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(path: Path) -> dict:
    """The manifest of an index folder, checked for the fields `load` relies on."""
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
    if manifest["kind"] not in KINDS or manifest["similarity"] not in SIMILARITIES:
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


def _jsonable(value):
    return json.loads(json.dumps(value))


def _default_params(kind: str, count: int) -> dict:
    if kind == "ivf":
        nlist = max(1, min(int(round(math.sqrt(count))), count // 39))
        return {"nlist": nlist, "nprobe": max(1, min(nlist, int(math.ceil(nlist / 16))))}
    if kind == "hnsw":
        return {"M": HNSW_M, "ef_search": HNSW_EF_SEARCH}
    return {}


def _require_faiss():
    try:
        import faiss
    except ImportError:
        raise SimexplainError("retrieval needs FAISS: pip install faiss-cpu "
                              "(or the 'retrieval' extra of simexplain)") from None
    return faiss


# ---------------------------------------------------------------------------------------------
# command line: `simexplain index build` and `simexplain search`


def parse_region(text: str) -> tuple[float, float, float, float]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4:
        raise argparse.ArgumentTypeError(
            f"a region is TOP,LEFT,BOTTOM,RIGHT in the query's model-input pixels, got {text!r}")
    return values  # type: ignore[return-value]


def add_cli(subparsers) -> None:
    from .zoo.arguments import add_model_arguments

    index = subparsers.add_parser("index", help="build a searchable gallery index")
    index_commands = index.add_subparsers(dest="index_command", required=True)
    build = index_commands.add_parser("build", help="embed a folder of images into an index")
    build.add_argument("folder", help="folder of gallery images (searched recursively)")
    add_model_arguments(build)
    build.add_argument("--out", required=True, help="index folder to write")
    build.add_argument("--batch-size", type=int, default=32)
    build.add_argument("--kind", choices=KINDS, default="flat",
                       help="flat: exact (default); ivf, hnsw: approximate, for large galleries")
    build.add_argument("--restart", action="store_true",
                       help="ignore a checkpoint of an interrupted build and start over")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    build.set_defaults(run=cmd_index_build)

    search = subparsers.add_parser("search", help="search an index with an image or a region")
    search.add_argument("index", help="index folder (from `simexplain index build`)")
    search.add_argument("query", help="query image")
    add_model_arguments(search, required=False)
    search.add_argument("--region", type=parse_region,
                        help="TOP,LEFT,BOTTOM,RIGHT box in the query's model-input pixels: rank "
                             "by the partial similarity of that region")
    search.add_argument("-k", type=int, default=10, help="number of hits (default 10)")
    search.add_argument("--explain", action="store_true",
                        help="decompose each hit: overall map and (with --region) region map")
    search.add_argument("--out", help="write a results page (index.html + PNGs) here")
    search.add_argument("--json", action="store_true", help="print the hits as JSON")
    search.set_defaults(run=cmd_search)


def cmd_index_build(args: argparse.Namespace) -> int:
    from .zoo import resolve
    explainer = resolve(args.model, args.layer, args.similarity, args.size)
    checkpoint = checkpoint_path(args.out)
    if (checkpoint / "state.json").is_file() and not args.restart:
        print(f"resuming from {checkpoint}", file=sys.stderr)
    index = Index.build(args.folder, explainer, model_name=args.model,
                        batch_size=args.batch_size, progress=not args.quiet, out=args.out,
                        resume=not args.restart, kind=args.kind)
    print(f"indexed {len(index)} images into {args.out} ({index.similarity}, {index.dim}-d, "
          f"{index.kind}); skipped {len(index.skipped)}")
    for item in index.skipped:
        print(f"  skipped {item.path}: {item.reason}")
    return 0


def explainer_for_index(index_path: str | Path, args: argparse.Namespace | None = None):
    """The query model of an index: the one its manifest names, unless overridden (then it
    must match)."""
    from .zoo import resolve
    manifest = read_manifest(Path(index_path)) if Path(index_path).is_dir() else None
    if manifest is None:
        raise IndexFormatError(f"index not found: {index_path}")
    model = getattr(args, "model", None) or manifest.get("model")
    if not model:
        raise SimexplainError(f"{index_path}: the manifest names no model; pass --model")
    layer = getattr(args, "layer", None) or manifest.get("layer")
    similarity = getattr(args, "similarity", None) or manifest.get("similarity")
    size = getattr(args, "size", None)
    input_size = manifest.get("input_size")
    if size is None and input_size and input_size[0] == input_size[1]:
        size = int(input_size[0])
    return resolve(model, layer, similarity, size)


def cmd_search(args: argparse.Namespace) -> int:
    if args.k < 1:
        raise SimexplainError(f"-k must be >= 1, got {args.k}")
    explainer = explainer_for_index(args.index, args)
    index = Index.load(args.index, explainer=explainer)
    prepared = index.region_vector(args.query, args.region)
    hits = index.search_vector(prepared.vector, args.k,
                               prepared.embedding if prepared.is_region else None)
    if args.explain:
        index.explain_hits(prepared, hits)
    summary = {
        "index": str(args.index), "query": str(args.query), "model": index.model_name,
        "similarity": index.similarity,
        "region": list(args.region) if args.region else None,
        "ranking": "ascending" if lower_is_better(index.similarity) else "descending",
        "score": ("partial similarity s_R of the region" if args.region else
                  f"{index.similarity} of the whole images"),
        "hits": [hit.to_dict() for hit in hits],
    }
    if args.out:
        summary["page"] = str(write_results_page(Path(args.out), prepared, hits, index, summary))
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        what = "region" if args.region else "image"
        print(f"{len(hits)} hits for the query {what} ({summary['score']}, "
              f"{summary['ranking']}):")
        for hit in hits:
            print(f"{hit.rank:4d}  {hit.score: .6f}  {hit.path}")
        if args.out:
            print(f"wrote {summary['page']}")
    return 0


def write_results_page(out: Path, prepared: RegionQuery, hits: list[Hit], index: Index,
                       summary: dict) -> Path:
    """index.html with the query (region boxed), the ranked hits, their scores and maps."""
    from . import visualize
    from .files import write_json_atomic
    out.mkdir(parents=True, exist_ok=True)
    query_image = prepared.side.image
    if prepared.is_region and not isinstance(prepared.region, (np.ndarray, torch.Tensor)):
        query_image = visualize.mark_box(query_image, prepared.region)
    query_image.save(out / "query.png")
    rows = []
    for hit in hits:
        cells = {}
        image = None
        if hit.explanation is not None:
            image = hit.explanation.image("b")
        else:
            try:
                image = index.explainer.prepare(hit.path, "b")[1]
            except ImageError:
                image = None
        if image is not None:
            name = f"hit_{hit.rank:03d}.png"
            image.save(out / name)
            cells["image"] = name
        if hit.explanation is not None:
            name = f"hit_{hit.rank:03d}_overall.png"
            visualize.overlay_map(hit.explanation, hit.explanation.overall_b, "b",
                                  signed=True).save(out / name)
            cells["overall"] = name
            if hit.region_map is not None:
                name = f"hit_{hit.rank:03d}_region.png"
                visualize.overlay_map(hit.explanation, hit.region_map, "b",
                                      signed=True).save(out / name)
                cells["region"] = name
        rows.append((hit, cells))
    summary = {**summary, "files": {f"hit_{h.rank}": c for h, c in rows}}
    write_json_atomic(out / "results.json", summary)
    esc = html.escape
    score_label = "s_R (region)" if prepared.is_region else index.similarity
    lines = [
        "<!doctype html><html><head><meta charset='utf-8'><title>simexplain search</title>",
        "<style>body{font-family:sans-serif;margin:1em}td,th{padding:4px 8px;"
        "vertical-align:top;text-align:left}img{max-height:160px;image-rendering:pixelated}"
        ".path{font-size:80%;color:#555;word-break:break-all}</style></head><body>",
        "<h1>Search results</h1>",
        f"<p>Index <code>{esc(str(summary['index']))}</code>, model "
        f"<code>{esc(str(index.model_name))}</code>, {esc(index.similarity)}. Ranking "
        f"{esc(summary['ranking'])} by {esc(summary['score'])}.</p>",
        "<h2>Query</h2>",
        f"<p><img src='query.png' alt='query'><br><span class='path'>{esc(str(summary['query']))}"
        f"</span>" + (f"<br>region (top, left, bottom, right) = {esc(str(summary['region']))}"
                       if summary["region"] else "") + "</p>",
        "<h2>Hits</h2><table><tr><th>rank</th><th>image</th>"
        + ("<th>overall map of the hit</th>" if any("overall" in c for _, c in rows) else "")
        + ("<th>region map on the hit</th>" if any("region" in c for _, c in rows) else "")
        + f"<th>{esc(score_label)}</th><th>whole-image {esc(index.similarity)}</th></tr>",
    ]
    for hit, cells in rows:
        parts = [f"<td>{hit.rank}</td>"]
        parts.append(f"<td><img src='{cells['image']}' alt='hit {hit.rank}'><br>"
                     f"<span class='path'>{esc(hit.path)}</span></td>" if "image" in cells else
                     f"<td><span class='path'>{esc(hit.path)} (image unavailable)</span></td>")
        if any("overall" in c for _, c in rows):
            parts.append(f"<td><img src='{cells['overall']}' alt='overall'></td>"
                         if "overall" in cells else "<td></td>")
        if any("region" in c for _, c in rows):
            parts.append(f"<td><img src='{cells['region']}' alt='region map'></td>"
                         if "region" in cells else "<td></td>")
        parts.append(f"<td>{hit.score:.6f}</td><td>{hit.full_score:.6f}</td>")
        lines.append("<tr>" + "".join(parts) + "</tr>")
    lines.append("</table><p>Maps are signed: red raises the score, blue lowers it.</p>"
                 "</body></html>")
    page = out / "index.html"
    write_text_atomic(page, "\n".join(lines))
    return page
