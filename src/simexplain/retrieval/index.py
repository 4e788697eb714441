"""The index and its search: gallery embeddings in one FAISS inner-product structure, searched
with a whole query or a region of it, candidates re-scored exactly."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TYPE_CHECKING
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from .. import maps, regions
from .. import similarity as similarities
from ..errors import ImageError, SimexplainError, check_whole
from ..explainer import side_from
from ..explanation import PairExplanation, Side
from ..gallery_files import CHANGED, OK, GalleryFile, read_gallery_file
from ..images import ImageInput, decode_image
from ..similarity import Similarity
from . import build, storage
from .basics import ENGINES, Skipped, finite_rows
from .columns import HashColumn, PathColumn
from .explain_cache import ExplainCache
from .kinds import kind as index_kind, with_defaults
from .model import IndexMismatchError, check_model, model_info

if TYPE_CHECKING:
    from ..explainer import Explainer

class StaleHit(UserWarning):
    """Warned for a gallery file that is not what was indexed: changed, missing, or refused
    (no longer a regular file inside the gallery)."""


# Extra candidates fetched from FAISS before exact re-scoring (guards near-ties at rank k).
FETCH_MARGIN = 16
_STORED = (np.float32, np.float16)


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
    # what became of the hit's file since it was indexed, in words ("changed since it was
    # indexed", "missing ...", "refused: ..."): None while it is the file that was indexed
    stale: str | None = None

    @property
    def overall_map(self) -> torch.Tensor | None:
        """The hit's signed overall map (on its feature grid), when explained."""
        return None if self.explanation is None else self.explanation.overall_b

    def to_dict(self) -> dict:
        out = {"rank": self.rank, "index": self.index, "path": self.path, "score": self.score,
               "full_score": self.full_score, "stale": self.stale}
        if self.explanation is not None:
            out["residual"] = self.explanation.residual
            out["grid"] = list(self.explanation.b.grid)
            # a transformer's prefix tokens carry a share of the pair's score beside the grid
            out["token_share"] = self.explanation.token_share_b
            out["spatial"] = self.explanation.b.spatial
            out["input"] = self.explanation.b.to_dict()  # sizes, crop, cells: file pixels
        return out


class Hits(list):
    """The hits of one search, best first: a list of `Hit` that Jupyter displays as a row of
    thumbnails with rank, file name and score (the region map on each, once explained)."""

    # the index searched: its hits' images are read through it (`Index.gallery_image`)
    source: Index | None = None

    def image(self, hit: Hit) -> Image.Image:
        """A hit's photo, read now through the index searched (never a link out of its
        gallery: SimexplainError; a changed file with a StaleHit warning), or from its path
        for hits made by hand."""
        if self.source is not None and hit.index < len(self.source):
            return self.source.gallery_image(hit.index)
        from ..images import load_image
        return load_image(hit.path)

    def _repr_html_(self) -> str:
        from ..display import hits_html  # here, not at the top: rendering sits above retrieval
        return hits_html(self)


@dataclass
class RegionQuery:
    """A query prepared for searching: `vector` is q_R (or e_a without a region)."""

    vector: torch.Tensor  # (D,) float64
    embedding: torch.Tensor  # (D,) e_a, the query's own embedding
    side: Side  # the query as the model saw it (contributions, grid, image)
    region: Any = None
    weights: torch.Tensor | None = None  # (P,) cell coverage of the region

    @classmethod
    def from_side(cls, side: Side, region: maps.Region | None = None,
                  coords: maps.Coords = "image") -> RegionQuery:
        """The search vector of a decomposed query: q_R = sum_p w_p u_p, or e_a. The region
        is in the query file's pixels (or the model input's, coords="input")."""
        embedding = side.embedding.detach().double().cpu()
        if region is None:
            return cls(vector=embedding, embedding=embedding, side=side)
        weights = side.region_weights(region, coords)
        vector = regions.region_vector(weights, side.contributions.detach().cpu())
        return cls(vector=vector, embedding=embedding, side=side, region=region,
                   weights=weights)

    @property
    def is_region(self) -> bool:
        return self.region is not None

    def map_on(self, other: Side, similarity: Similarity) -> torch.Tensor:
        """sum_p w_p D[p, :] on another image's grid: the region's map (every position, with
        weight 1, without a region)."""
        weights = self.weights if self.weights is not None else torch.ones(
            self.side.contributions.shape[0], dtype=torch.float64)
        return regions.side_map(similarity, weights, self.side, other)


class Index:
    """Gallery embeddings in a FAISS index, searchable by a whole query or a region of it.

    Build with `Index.build(folder_or_paths, explainer, model_name)`, or wrap vectors with
    `Index.from_vectors`; `save(path)` / `Index.load(path, explainer)`; `search(query, k, region)`.
    """

    def __init__(self, embeddings: np.ndarray, paths: Sequence[str], info: dict,
                 kind: str = "flat", hashes: Sequence[str] | None = None,
                 skipped: Sequence[Skipped] = (), vectors: Any = None, params: dict | None = None,
                 explainer: Explainer | None = None, root: str | Path | None = None,
                 explain_cache: ExplainCache | None = None):
        if not (isinstance(embeddings, np.ndarray) and embeddings.dtype in _STORED
                and embeddings.flags.c_contiguous):
            embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        # float32 (float16 accepted, e.g. a memory-mapped benchmark gallery): never copied, so
        # a memory-mapped gallery stays on disk; re-scoring reads only the candidates' rows
        if embeddings.ndim != 2 or embeddings.shape[0] == 0:
            raise SimexplainError(f"an index needs (N, D) embeddings with N >= 1, got "
                                  f"shape {embeddings.shape}")
        if len(paths) != embeddings.shape[0]:
            raise SimexplainError(f"{len(paths)} paths for {embeddings.shape[0]} embeddings")
        index_kind(kind)
        self.embeddings = embeddings
        # gallery paths and sha256 by row: lists, or the columns of an index read from disk
        # (`columns`: memory-mapped, no Python string per image)
        self.paths: Sequence[str] = paths if isinstance(paths, PathColumn) else [
            str(p) for p in paths]
        # the gallery folder the paths lie in (saved paths are relative to it); None: their
        # deepest common folder, decided when saved
        self.root = Path(root) if root is not None else None
        self.hashes: Sequence[str] = (hashes if isinstance(hashes, HashColumn)
                                      else list(hashes) if hashes is not None
                                      else [""] * len(self.paths))
        self.skipped = list(skipped)
        self.info = dict(info)
        self.similarity: Similarity = similarities.get(self.info.get("similarity", "cosine"))
        self.info["similarity"] = self.similarity.name
        self.info["dim"] = int(embeddings.shape[1])
        self.kind = kind
        self.params = dict(params) if params else with_defaults(
            kind, len(self.paths), None, self._index_dim())
        self.vectors = vectors if vectors is not None else self._build_vectors()
        if explain_cache is not None and (len(explain_cache) != len(self.paths)
                                          or explain_cache.dim != self.dim):
            raise SimexplainError(f"an explain cache of {len(explain_cache)} images of "
                                  f"{explain_cache.dim}-d contributions for {len(self.paths)} "
                                  f"{self.dim}-d embeddings")
        # each image's contributions from the build's forward pass (`Index.build(explain=
        # True)`): explaining a hit then runs no model
        self.explain_cache = explain_cache
        self.explainer: Explainer | None = None
        self.resumed_from = 0  # images already done in a checkpoint when a build resumed
        if explainer is not None:
            self.attach(explainer)

    # -- properties ----------------------------------------------------------------------------
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
    def from_vectors(cls, embeddings: np.ndarray | torch.Tensor, paths: Sequence[str] | None = None,
                     similarity: str = "cosine", kind: str = "flat", model: str = "vectors",
                     params: dict | None = None, **info: Any) -> Index:
        """An index over given (N, D) embeddings (no images: for tests and benchmarks). A
        float32 or float16 array (or np.memmap) is used as it is, without a copy. `params`
        overrides the kind's defaults (e.g. {"shards": 4} for "ivfpq")."""
        if isinstance(embeddings, torch.Tensor):
            embeddings = embeddings.detach().cpu().numpy()
        array = embeddings if isinstance(embeddings, np.ndarray) else np.asarray(
            embeddings, dtype=np.float32)
        if array.ndim != 2 or 0 in array.shape:
            raise SimexplainError(f"embeddings must be an (N, D) array with N, D >= 1, got shape "
                                  f"{tuple(array.shape)}")
        if not finite_rows(array, 0, len(array)):
            raise SimexplainError("embeddings contain NaN or infinite values")
        if paths is None:
            paths = [f"#{i}" for i in range(len(array))]
        index_dim = similarities.get(similarity).index_vectors(
            np.asarray(array[:1], np.float32)).shape[1]
        return cls(array, paths, {"model": model, "similarity": similarity, **info}, kind=kind,
                   params=with_defaults(kind, len(array), params, index_dim))

    @classmethod
    def build(cls, images: str | Path | Iterable[str | Path],
              explainer: Explainer | Callable[[], Explainer],
              model_name: str | None = None, batch_size: int = 32, progress: bool = True,
              out: str | Path | None = None, resume: bool = True, kind: str = "flat",
              checkpoint_every: int = 8, shards: int = 1, engine: str = "local",
              ray: dict | None = None, explain: bool = False) -> Index:
        """Embed a folder (all files, recursively, sorted) or a list of image files.

        Unreadable files are skipped and listed in `.skipped`. With `out`, progress is
        checkpointed to the folder `checkpoint_path(out)` every `checkpoint_every` batches (and
        when the build is interrupted); a rerun with `resume=True` continues from there, and
        the finished index is saved to `out` (the checkpoint is then removed). `out` must be
        absent, empty, or an index folder simexplain wrote that holds nothing else.
        `shards` splits a kind="ivfpq" index into that many FAISS files searched as one.

        engine="ray" embeds with a Ray Data pipeline of model actors (`ray_engine`; the
        `scale` extra): `ray` takes workers (default 2), address (a cluster; default
        RAY_ADDRESS, else a private local instance) and gpus (per worker). `explainer` may
        then also be a picklable zero-argument factory, so each worker loads its own model.
        The result, checkpoints and index folder are those of the default engine="local".

        explain=True also keeps each image's per-position contributions (and a transformer's
        prefix tokens' rows), taken from the same forward pass as its embedding (for a CNN
        about the cost of embedding alone; P x D x 4 bytes an image on disk and in memory):
        `explain_hits` (search with explain=True) then explains hits without running the
        model (`explain_cache`).
        """
        gallery = build.embed_gallery(images, explainer, model_name, batch_size, progress, out,
                                      resume, kind, checkpoint_every, shards, engine, ray,
                                      explain)
        array = gallery.embeddings
        info = gallery.info
        index_dim = similarities.get(info["similarity"]).index_vectors(array[:1]).shape[1]
        params = with_defaults(kind, len(array), {"shards": shards} if shards != 1 else None,
                               index_dim)
        index = cls(array, gallery.paths, {**info}, kind=kind, hashes=gallery.hashes,
                    skipped=gallery.skipped, root=gallery.root, params=params,
                    explain_cache=gallery.explain_cache)
        index.explainer = gallery.explainer
        index.resumed_from = gallery.resumed_from
        if out is not None:
            index.save(out)
            if gallery.checkpoint is not None:
                build.remove_checkpoint(gallery.checkpoint)
        return index

    def _build_vectors(self):
        return index_kind(self.kind).build(self._index_rows, len(self), self._index_dim(),
                                           self.params)

    def _index_rows(self, start: int, stop: int) -> np.ndarray:
        return self.similarity.index_vectors(np.asarray(self.embeddings[start:stop], np.float32))

    def _index_dim(self) -> int:
        return int(self._index_rows(0, 1).shape[1])

    # -- the query model -----------------------------------------------------------------------
    def attach(self, explainer: Explainer) -> Index:
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
    def region_vector(self, query: ImageInput, region: maps.Region | None = None,
                      coords: maps.Coords = "image") -> RegionQuery:
        """The query's search vector: q_R = sum_p w_p u_p for a region, else e_a."""
        explainer = self._require_explainer()
        side = explainer.side(query, "a")
        return RegionQuery.from_side(side, region, coords)

    def search(self, query: ImageInput | RegionQuery, k: int = 10,
               region: maps.Region | None = None,
               explain: bool = False, batch_size: int = 16,
               coords: maps.Coords = "image", check_files: bool = True) -> Hits:
        """Rank the gallery for a query image (path, PIL image or (1, C, H, W) tensor), or for
        a prepared `RegionQuery` (from `region_vector` or `RegionQuery.from_side`).

        region: a box (top, left, bottom, right) or a mask in the query file's pixels (in the
        model input's with coords="input"); hits are then ranked by the region's partial
        similarity s_R. explain: decompose the
        top k pairs too (`Hit.explanation`, `Hit.overall_map`, `Hit.region_map`).
        check_files: read each hit's file now (`gallery_file`) and mark the hits whose file
        changed, went missing or no longer is a regular file inside the gallery
        (`Hit.stale`, with a warning); the ranking itself comes from the index alone.
        """
        if isinstance(query, RegionQuery):
            if region is not None:
                raise SimexplainError("a prepared RegionQuery already holds its region")
            prepared = query
        else:
            prepared = self.region_vector(query, region, coords)
        hits = self.search_vector(prepared.vector, k,
                                  prepared.embedding if prepared.is_region else None)
        if check_files:
            self.mark_stale(hits)
        if explain:
            self.explain_hits(prepared, hits, batch_size=batch_size)
        return hits

    def search_vector(self, vector: np.ndarray | torch.Tensor, k: int = 10,
                      query_embedding: np.ndarray | torch.Tensor | None = None) -> Hits:
        """Search one vector. Alone, `vector` is a whole query's embedding e_a (ordinary
        similarity search); with `query_embedding` (e_a), it is a region vector q_R and hits
        are ranked by the partial similarity s_R."""
        check_whole(k, "k")
        v = _vector(vector)
        if v.shape[0] != self.dim:
            raise IndexMismatchError(f"query vector has {v.shape[0]} values, the index holds "
                                     f"{self.dim}-d embeddings (model {self.model_name!r})")
        if not np.isfinite(v).all():
            raise SimexplainError("query vector contains NaN or infinite values")
        e = None if query_embedding is None else _vector(query_embedding)
        if e is not None and e.shape != v.shape:
            raise SimexplainError(f"query_embedding has {e.shape[0]} values, expected {self.dim}")
        k = min(k, len(self))
        candidates = self._candidates(v, e is not None, min(len(self), k + FETCH_MARGIN))
        # an index served by Ray re-scores on the actors holding the rows (`ray_search`)
        served = getattr(self.vectors, "exact_scores", None)
        scores, all_full = (served(v, candidates, e) if served is not None else
                            (similarities.scores(v, self.embeddings[candidates],
                                                 self.similarity, e), None))
        order = self.similarity.best_first(scores)[:k]
        chosen = candidates[order]
        if e is None:
            full = scores[order]
        elif all_full is not None:
            full = all_full[order]
        else:
            full = similarities.scores(e, self.embeddings[chosen], self.similarity)
        hits = Hits(Hit(rank=r + 1, index=int(i), path=self.paths[int(i)], score=float(s),
                        full_score=float(f))
                    for r, (i, s, f) in enumerate(zip(chosen, scores[order], full)))
        hits.source = self
        return hits

    def _candidates(self, v: np.ndarray, is_region: bool, fetch: int) -> np.ndarray:
        """Gallery rows of the best `fetch` inner products in the FAISS index (sorted by row)."""
        query = np.ascontiguousarray(self.similarity.index_query(v, is_region)[None, :],
                                     dtype=np.float32)
        fetch = index_kind(self.kind).configure(self.vectors, self.params, fetch)
        _, rows = self.vectors.search(query, fetch)
        rows = rows[0]
        rows = rows[rows >= 0]
        if rows.size == 0:
            raise SimexplainError("the index returned no candidates")
        return np.unique(rows)  # sorted: exact ties then keep gallery order

    def explain_hits(self, prepared: RegionQuery, hits: list[Hit], batch_size: int = 16) -> None:
        """Attach the pair decomposition (and the region map) to each hit, in place, from its
        file as read now (`gallery_file`). With an explain cache, a hit's side comes from it
        (no model forward) unless its file changed since indexing or now gives another input
        size: those are computed again. A hit whose file is missing or refused is marked
        stale and left unexplained."""
        explainer = self._require_explainer()
        sides: dict[int, Side] = {}
        images: dict[int, Image.Image] = {}
        try:
            for i, hit in enumerate(hits):
                image, changed = self._hit_image(hit)
                if image is None:
                    continue
                images[i] = image
                if not changed and self.explain_cache is not None:
                    side = self._side_from_cache(hit.index, image)
                    if side is not None:
                        sides[i] = side
            missing = [i for i in images if i not in sides]
            if missing:
                computed = explainer.sides([images[i] for i in missing], "b", batch_size)
                sides.update(zip(missing, computed))
        except ImageError as exc:
            raise SimexplainError(f"cannot explain the hits: {exc}") from None
        explained = PairExplanation.one_to_many(prepared.side, list(sides.values()),
                                                explainer.similarity)
        for (i, side_b), explanation in zip(sides.items(), explained):
            hit = hits[i]
            hit.explanation = explanation
            if prepared.is_region:
                hit.region_map = prepared.map_on(side_b, explainer.similarity)

    def _hit_image(self, hit: Hit) -> tuple[Image.Image | None, bool]:
        """A hit's image decoded from its file as read now, and whether that file changed
        since indexing; (None, ...) for a missing or refused file (the hit is marked stale,
        with a warning)."""
        read = self.gallery_file(hit.index)
        if read.stale is not None and hit.stale is None:
            hit.stale = read.stale
            warnings.warn(f"{hit.path}: {read.stale}", StaleHit, stacklevel=4)
        if read.data is None:
            return None, False
        return decode_image(read.data, hit.path), read.status == CHANGED

    # -- the gallery's files, read now ------------------------------------------------------------
    def gallery_file(self, row: int, data: bool = True) -> GalleryFile:
        """Gallery row `row`'s file read now, with its status (`gallery_files`): refused
        unless a regular file inside the gallery folder; "changed" when its sha256 differs
        from the one recorded at indexing. data=False: the status alone (a file verified
        before and unchanged since is not read again)."""
        if not 0 <= row < len(self):
            raise SimexplainError(f"row {row} is not in the index (rows 0 to {len(self) - 1})")
        expected = self.hashes[row] if row < len(self.hashes) else ""
        return read_gallery_file(self.paths[row], self.root, expected, data=data)

    def gallery_image(self, row: int) -> Image.Image:
        """Gallery row `row`'s image (RGB) from its file as read now: SimexplainError when the
        file is missing or not a regular file inside the gallery (a symbolic link swapped in
        after indexing); a warning (StaleHit) when its content changed since indexing."""
        read = self.gallery_file(row)
        if read.data is None:
            raise SimexplainError(f"{self.paths[row]}: {read.stale}")
        if read.status == CHANGED:
            warnings.warn(f"{self.paths[row]}: {read.stale}", StaleHit, stacklevel=2)
        return decode_image(read.data, self.paths[row])

    def mark_stale(self, hits: Sequence[Hit], warn: bool = True) -> list[Hit]:
        """Check each hit's file now and set `Hit.stale` where it changed, went missing or is
        refused (a StaleHit warning each, unless warn=False: a caller that reports them
        itself, with no change to the process's warning filters); returns the stale hits.
        Rows without a recorded sha256 (`from_vectors`) have no file to check."""
        stale = []
        for hit in hits:
            if not (hit.index < len(self.hashes) and self.hashes[hit.index]):
                continue
            hit.stale = self.gallery_file(hit.index, data=False).stale
            if hit.stale is not None:
                if warn:
                    warnings.warn(f"{hit.path}: {hit.stale}", StaleHit, stacklevel=3)
                stale.append(hit)
        return stale

    def cached_side(self, row: int, image: ImageInput | None = None) -> Side | None:
        """Gallery row `row` as a decomposed Side (side b) from the explain cache: the file
        (or `image`, its pixels already loaded) is prepared for the model (no forward pass).
        None when the index has no cache, the file changed since indexing (sha256) or its
        model input now has another size: then compute it (`explainer.side(path, "b")`)."""
        if self.explain_cache is None:
            return None
        if image is not None:
            return None if self._changed(row) else self._side_from_cache(row, image)
        read = self.gallery_file(row)  # read and checked once, then decoded from these bytes
        if read.status != OK or read.data is None:
            return None
        return self._side_from_cache(row, decode_image(read.data, self.paths[row]))

    def _side_from_cache(self, row: int, image: ImageInput | None = None) -> Side | None:
        explainer = self._require_explainer()
        assert self.explain_cache is not None  # the callers check there is one
        cached = self.explain_cache.image(row)
        prepared = explainer.prepare(self.gallery_image(row) if image is None else image, "b")
        if tuple(prepared.tensor.shape[2:]) != cached.input_size:
            return None  # another input size is another grid: the cache does not apply
        device = explainer.stream("b").device

        def tensor(array: np.ndarray | None) -> torch.Tensor | None:
            return None if array is None else torch.from_numpy(array).to(device)
        return side_from(prepared, cached.grid, torch.from_numpy(cached.positions).to(device),
                         torch.from_numpy(np.array(self.embeddings[row], np.float32)).to(device),
                         tensor(cached.projected), tensor(cached.tokens), cached.spatial)

    def _changed(self, row: int) -> bool:
        """The gallery file is not the one indexed: its content changed, or it is missing or
        refused (`gallery_file`)."""
        if not 0 <= row < len(self):
            raise SimexplainError(f"row {row} is not in the index (rows 0 to {len(self) - 1})")
        expected = self.hashes[row] if row < len(self.hashes) else ""
        return bool(expected) and self.gallery_file(row, data=False).status != OK

    def close(self) -> None:
        """Release what serves the index: the Ray actors of engine="ray" (nothing otherwise)."""
        close = getattr(self.vectors, "close", None)
        if close is not None:
            close()

    # -- persistence ---------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the index folder atomically: a temporary folder next to `path`, renamed into
        place. `path` must be absent, empty, or an index folder of ours holding nothing else
        (else SimexplainError); an existing index is replaced once the new one is complete."""
        return storage.save_index(self, path)

    @classmethod
    def load(cls, path: str | Path, explainer: Explainer | None = None, verify: bool = True,
             engine: str = "local", ray: dict | None = None) -> Index:
        """Open an index folder, verifying its marker, its manifest (checksum and schema) and
        the size and sha256 of each stored file (IndexFormatError "index damaged: ..."); with
        `explainer`, also check that it is the index's model.

        engine="ray" (a sharded "ivfpq" index; the `scale` extra): the shards are served by
        Ray actors (`ray_search`), each holding a group of shards, and a search fans out to
        them; the hits equal those of engine="local". `ray` takes actors (shard groups,
        default 2), address (a cluster; default RAY_ADDRESS, else a private local instance),
        cpus (per actor, default 1) and threads (FAISS threads per actor, default 1).
        `close()` stops the actors."""
        if engine not in ENGINES:
            raise SimexplainError(f"unknown engine {engine!r}; choose one of "
                                  f"{', '.join(ENGINES)}")
        index = cls(**storage.read_index(path, verify, engine, ray))
        if explainer is not None:
            index.attach(explainer)
        return index


def _vector(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().numpy()
    try:
        return np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise SimexplainError(f"a query vector is an array of numbers, got "
                              f"{type(value).__name__}") from None
