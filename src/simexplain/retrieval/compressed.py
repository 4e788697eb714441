"""The compressed index kind "ivfpq" for large galleries: FAISS inverted lists of product-
quantised codes (m bytes per vector plus FAISS's 8-byte row id), split into shards of
contiguous gallery rows. A query fans out over the shards, their candidates are merged by the
approximate inner product, and the best `candidates` of them are re-scored exactly by the
index from the stored float embeddings (memory-mapped on load), so reported scores and the
final order are exact; only whether a true top-k row reaches the candidate list is approximate
(`benchmarks/bench_scale.py` measures that recall).

One coarse quantiser and one product quantiser are trained on a sample of the gallery and
copied into every shard, so each shard is an ordinary, self-contained FAISS index (one file
each) that another process or machine can load and search on its own.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..errors import SimexplainError
from .basics import require_faiss

MAX_CODE_BYTES = 56  # m: with FAISS's 8-byte ids, at most 64 bytes per vector
TRAIN_PER_LIST = 64  # training sample: this many rows per inverted list (at least 10,000)
# the smallest gallery it trains on: two rows for the two centroids of 1-bit codes
MIN_COUNT = 2
ADD_CHUNK = 65536  # rows converted and added at a time (bounded memory for any gallery)


def default_params(count: int, dim: int, shards: int, nlist: int) -> dict:
    """Parameters of an ivfpq index over `count` vectors of `dim` (FAISS) dimensions in
    `nlist` inverted lists."""
    if not 1 <= shards <= count:
        raise SimexplainError(f"shards must be between 1 and the number of images ({count}), "
                              f"got {shards}")
    # the largest m dividing the padded dimension with at least 2 dimensions per sub-quantiser
    # (PQ needs d % m == 0; e.g. 32 for 128-d, 44 for the 129-d vectors of a 128-d euclidean
    # index, padded to 132)
    padded = padded_dim(dim)
    m = max(c for c in range(1, min(MAX_CODE_BYTES, max(1, padded // 2)) + 1)
            if padded % c == 0)
    # 256 centroids per sub-quantiser need at least 256 training rows: fewer bits below that
    nbits = max(1, min(8, int(math.log2(max(2, min(count, _sample_size(count, nlist)))))))
    # 16 lists: at 1M and 10M clustered vectors, recall after re-scoring was the same for 16,
    # 32 and 64 (benchmarks/bench_scale.py); raise it for less clustered data
    # re-scored candidates: at a fixed 256, recall@10 fell as the gallery grew (0.992 at 1M,
    # 0.965 at 10M, 0.94 at 30M, where 512 gave 0.98 for under a millisecond more:
    # benchmarks/bench_serve.py), so past 10M they grow as sqrt(N)
    candidates = 256 * math.ceil(math.sqrt(max(1.0, count / 10_000_000)))
    return {"nlist": nlist, "nprobe": min(nlist, max(16, int(math.ceil(nlist / 200)))), "m": m,
            "nbits": nbits, "shards": shards, "candidates": candidates}


def padded_dim(dim: int) -> int:
    """The dimension the PQ shards store: `dim` rounded up to a multiple of 4 with zeros,
    which leaves every inner product unchanged and gives PQ a divisor to work with (a prime
    dimension such as 17 would otherwise allow only one sub-quantiser)."""
    return dim if dim < 4 else -(-dim // 4) * 4


def _pad(rows: np.ndarray, width: int) -> np.ndarray:
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    if rows.shape[1] == width:
        return rows
    out = np.zeros((rows.shape[0], width), dtype=np.float32)
    out[:, :rows.shape[1]] = rows
    return out


def _sample_size(count: int, nlist: int) -> int:
    return min(count, max(TRAIN_PER_LIST * nlist, 10_000))


class ShardedVectors:
    """Shards of FAISS inner-product indexes over consecutive gallery rows, searched as one:
    `search` returns gallery rows (not shard rows) of the best approximate inner products."""

    def __init__(self, shards: list):
        if not shards:
            raise SimexplainError("a sharded index needs at least one shard")
        self.shards = list(shards)
        self.offsets = np.cumsum([0] + [s.ntotal for s in self.shards])
        self.d = int(self.shards[0].d)
        if any(int(s.d) != self.d for s in self.shards):
            raise SimexplainError("the shards hold vectors of different dimensions")

    @property
    def ntotal(self) -> int:
        return int(self.offsets[-1])

    @property
    def code_bytes(self) -> int:
        """Bytes per vector held in memory by the inverted lists (code and id)."""
        return int(self.shards[0].code_size) + 8

    def set_nprobe(self, nprobe: int) -> None:
        for shard in self.shards:
            shard.nprobe = nprobe

    def search(self, query: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """The `fetch` best approximate inner products of one (1, d) float32 query over all
        shards, best first: (scores, gallery rows), shape (1, fetch), rows -1 where fewer."""
        query = _pad(query, self.d)
        scores, rows = [], []
        for shard, offset in zip(self.shards, self.offsets):
            if shard.ntotal == 0:
                continue
            s, r = shard.search(query, min(fetch, shard.ntotal))
            keep = r[0] >= 0
            scores.append(s[0][keep])
            rows.append(r[0][keep] + offset)
        return merge_candidates(scores, rows, fetch)


def merge_candidates(scores: list[np.ndarray], rows: list[np.ndarray], fetch: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """The `fetch` best of several lists of (score, gallery row) candidates, best first (a
    stable sort: ties keep the lists' order): (scores, rows), shape (1, fetch), rows -1 where
    fewer. One merge for the shards of one process and the shard actors of Ray."""
    all_scores = np.concatenate(scores) if scores else np.zeros(0, np.float32)
    all_rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    best = np.argsort(-all_scores, kind="stable")[:fetch]
    out_s = np.full((1, fetch), -np.inf, dtype=np.float32)
    out_r = np.full((1, fetch), -1, dtype=np.int64)
    out_s[0, :best.size] = all_scores[best]
    out_r[0, :best.size] = all_rows[best]
    return out_s, out_r


def build(rows: Callable[[int, int], np.ndarray], count: int, dim: int, params: dict,
          progress: bool = False) -> ShardedVectors:
    """Train on a sample and add every row, chunk by chunk: `rows(start, stop)` gives the
    float32 FAISS vectors of gallery rows [start, stop) (so a gallery larger than memory is
    converted piecewise). Shard i holds a contiguous block of rows."""
    faiss = require_faiss()
    nlist, m, nbits = int(params["nlist"]), int(params["m"]), int(params["nbits"])
    dim = padded_dim(dim)
    if dim % m:
        raise SimexplainError(f"m={m} does not divide the index dimension {dim}")
    source = rows
    rows = lambda start, stop: _pad(source(start, stop), dim)  # noqa: E731
    rng = np.random.default_rng(0)
    size = _sample_size(count, nlist)
    picked = np.sort(rng.choice(count, size, replace=False)) if size < count else None
    sample = _gather(rows, count, picked)
    needed = max(nlist, 2 ** nbits)
    if len(sample) < needed:  # FAISS would fail deep in its k-means
        raise SimexplainError(f"nlist={nlist} and nbits={nbits} need at least {needed} images "
                              f"to train on, the gallery has {count}")
    quantizer = faiss.IndexFlatIP(dim)
    template = faiss.IndexIVFPQ(quantizer, dim, nlist, m, nbits, faiss.METRIC_INNER_PRODUCT)
    template.cp.min_points_per_centroid = 1  # small galleries: no warning spam, same result
    template.pq.cp.min_points_per_centroid = 1
    # PQ codebooks: m small k-means of 2^nbits centroids; FAISS's defaults (25 iterations, up
    # to 256 points a centroid) cost minutes at m=32 on two cores for no recall the exact
    # re-scoring does not restore
    template.pq.cp.niter = 10
    template.pq.cp.max_points_per_centroid = 64
    template.train(sample)
    del sample
    bounds = shard_bounds(count, int(params["shards"]))
    shards = len(bounds) - 1
    structures = []
    from tqdm.auto import tqdm
    bar = tqdm(total=count, desc="adding", unit="vec", disable=not progress)
    for i in range(shards):
        shard = faiss.clone_index(template)
        for start in range(int(bounds[i]), int(bounds[i + 1]), ADD_CHUNK):
            stop = min(int(bounds[i + 1]), start + ADD_CHUNK)
            shard.add(np.ascontiguousarray(rows(start, stop), dtype=np.float32))
            bar.update(stop - start)
        structures.append(shard)
    bar.close()
    out = ShardedVectors(structures)
    out.set_nprobe(int(params["nprobe"]))
    return out


def shard_bounds(count: int, shards: int) -> np.ndarray:
    """The first gallery row of each shard, and `count`: shard i holds rows
    [bounds[i], bounds[i + 1])."""
    return np.linspace(0, count, shards + 1).round().astype(np.int64)


def _gather(rows: Callable[[int, int], np.ndarray], count: int,
            picked: np.ndarray | None) -> np.ndarray:
    """The training rows (all, or the sorted `picked` ones), read chunk by chunk."""
    parts = []
    for start in range(0, count, ADD_CHUNK):
        stop = min(count, start + ADD_CHUNK)
        if picked is None:
            parts.append(rows(start, stop))
            continue
        inside = picked[(picked >= start) & (picked < stop)]
        if inside.size:
            parts.append(rows(start, stop)[inside - start])
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
