"""The index kinds: each owns its FAISS structure (how it is built and searched), its
parameters and their defaults, and how it is split into files. Everything that depends on the
kind asks `kind(name)`; nothing else switches on the name.

- flat: exact inner product over every vector.
- ivf: inverted lists of the vectors (nlist lists, nprobe searched).
- hnsw: a navigable small-world graph (M links a node, ef_search candidates a query).
- ivfpq: product-quantised inverted lists split into shards (`compressed`), for galleries
  larger than memory; their floats stay on disk.

Every kind only proposes candidates: the index re-scores them exactly from the float
embeddings, so the reported scores and their order are exact for every kind.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import SimexplainError
from . import compressed, manifest
from .basics import require_faiss

Rows = Callable[[int, int], np.ndarray]  # rows(start, stop): float32 FAISS vectors of a block
# a FAISS structure (faiss has no type stubs), or compressed.ShardedVectors
Structure = Any
ADD_CHUNK = compressed.ADD_CHUNK


def list_count(count: int) -> int:
    """Inverted lists for `count` vectors: about sqrt(count), at least 39 vectors a list."""
    return max(1, min(int(round(math.sqrt(count))), count // 39))


class IndexKind:
    """One kind of FAISS structure; `name` is what the manifest and `--kind` say."""

    name = ""
    shardable = False   # may be split into several FAISS files
    on_disk = False     # its float embeddings stay memory-mapped when loaded
    min_count = 1       # images it needs (its quantisers are trained on the gallery)

    def default_params(self, count: int, dim: int, shards: int = 1) -> dict:
        return {}

    def build(self, rows: Rows, count: int, dim: int, params: dict) -> Structure:
        """The searchable structure over gallery rows [0, count) (read into memory: the
        kinds that are not `on_disk` hold their vectors in memory anyway)."""
        data = np.ascontiguousarray(rows(0, count), dtype=np.float32)
        structure = self.empty(require_faiss(), dim, params)
        self.train(structure, data, params)
        for start in range(0, count, ADD_CHUNK):
            structure.add(np.ascontiguousarray(data[start:start + ADD_CHUNK]))
        self.configure(structure, params, 0)
        return structure

    def train(self, structure: Structure, data: np.ndarray, params: dict) -> None:
        pass

    def empty(self, faiss: Any, dim: int, params: dict) -> Structure:
        raise NotImplementedError

    def configure(self, structure: Structure, params: dict, fetch: int) -> int:
        """Set the structure's search parameters for a query that wants `fetch` candidates;
        returns how many to fetch."""
        return fetch

    def structures(self, vectors: Structure) -> list:
        """The FAISS structures to write, one a file."""
        return [vectors]

    def from_structures(self, structures: list) -> Structure:
        """The searchable structure of structures read back from the files."""
        return structures[0]

    def stored_dim(self, dim: int) -> int:
        """The dimension its FAISS structure holds for `dim`-d index vectors."""
        return dim


class Flat(IndexKind):
    name = "flat"

    def empty(self, faiss: Any, dim: int, params: dict) -> Structure:
        return faiss.IndexFlatIP(dim)


class IVF(IndexKind):
    name = "ivf"

    def default_params(self, count: int, dim: int, shards: int = 1) -> dict:
        nlist = list_count(count)
        return {"nlist": nlist, "nprobe": max(1, min(nlist, int(math.ceil(nlist / 16))))}

    def empty(self, faiss: Any, dim: int, params: dict) -> Structure:
        return faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, int(params["nlist"]),
                                  faiss.METRIC_INNER_PRODUCT)

    def train(self, structure: Structure, data: np.ndarray, params: dict) -> None:
        # 64 vectors a list train the coarse quantiser as well as all of them
        rng = np.random.default_rng(0)
        nlist = int(params["nlist"])
        n = len(data)
        sample = data if n <= 64 * nlist else data[rng.choice(n, 64 * nlist, replace=False)]
        if nlist == 1:  # one list: nothing to cluster (FAISS would warn below 39 vectors)
            structure.cp.min_points_per_centroid = 1
        structure.train(np.ascontiguousarray(sample))

    def configure(self, structure: Structure, params: dict, fetch: int) -> int:
        structure.nprobe = int(params["nprobe"])
        return fetch


HNSW_M = 32
HNSW_EF_SEARCH = 64


class HNSW(IndexKind):
    name = "hnsw"

    def default_params(self, count: int, dim: int, shards: int = 1) -> dict:
        return {"M": HNSW_M, "ef_search": HNSW_EF_SEARCH}

    def empty(self, faiss: Any, dim: int, params: dict) -> Structure:
        return faiss.IndexHNSWFlat(dim, int(params["M"]), faiss.METRIC_INNER_PRODUCT)

    def configure(self, structure: Structure, params: dict, fetch: int) -> int:
        # the graph search keeps ef candidates: at least as many as asked for
        structure.hnsw.efSearch = max(int(params["ef_search"]), fetch)
        return fetch


class IVFPQ(IndexKind):
    name = "ivfpq"
    shardable = True
    on_disk = True
    min_count = compressed.MIN_COUNT

    def default_params(self, count: int, dim: int, shards: int = 1) -> dict:
        return compressed.default_params(count, dim, shards, list_count(count))

    def build(self, rows: Rows, count: int, dim: int, params: dict) -> Structure:
        return compressed.build(rows, count, dim, params)

    def configure(self, structure: Structure, params: dict, fetch: int) -> int:
        structure.set_nprobe(int(params["nprobe"]))
        return min(structure.ntotal, max(fetch, int(params["candidates"])))

    def structures(self, vectors: Structure) -> list:
        return vectors.shards

    def from_structures(self, structures: list) -> Structure:
        if any(not hasattr(s, "nprobe") for s in structures):
            raise SimexplainError("a shard is not an inverted-list FAISS index")
        return compressed.ShardedVectors(structures)

    def stored_dim(self, dim: int) -> int:
        return compressed.padded_dim(dim)


KINDS: dict[str, IndexKind] = {k.name: k for k in (Flat(), IVF(), HNSW(), IVFPQ())}
# the manifest's schema names the kinds it accepts: the same ones
assert tuple(KINDS) == manifest.KINDS, (tuple(KINDS), manifest.KINDS)


def kind(name: str) -> IndexKind:
    """The index kind of that name (SimexplainError naming the kinds otherwise)."""
    if name not in KINDS:
        raise SimexplainError(f"unknown index kind {name!r}; choose one of {', '.join(KINDS)}")
    return KINDS[name]


def check_count(name: str, count: int) -> None:
    """Refuse a gallery too small for the kind (SimexplainError saying how many it needs)."""
    needed = kind(name).min_count
    if count < needed:
        raise SimexplainError(f"an index of kind {name!r} needs at least {needed} images to "
                              f"train its quantisers, this gallery has {count}; use --kind flat")


def check_shards(name: str, shards: int) -> None:
    """Refuse a shard count the kind cannot take, before any work."""
    if shards < 1:
        raise SimexplainError(f"shards must be >= 1, got {shards}")
    if shards != 1 and not kind(name).shardable:
        shardable = ", ".join(f"--kind {k}" for k, v in KINDS.items() if v.shardable)
        raise SimexplainError(f"an index of kind {name!r} is one structure; shards need "
                              f"{shardable}")


def with_defaults(name: str, count: int, params: dict | None, dim: int) -> dict:
    """`params` (may be None) completed with the kind's defaults for `count` vectors of `dim`
    (FAISS) dimensions; unknown parameters are refused."""
    params = params or {}
    check_count(name, count)
    defaults = kind(name).default_params(count, dim, int(params.get("shards", 1)))
    unknown = set(params) - set(defaults)
    if unknown:
        raise SimexplainError(f"unknown parameters {sorted(unknown)} for index kind {name!r} "
                              f"(it takes {sorted(defaults) or 'none'})")
    return {**defaults, **{key: int(value) for key, value in params.items()}}
