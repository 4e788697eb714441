"""Search served by Ray actors (`Index.load(path, engine="ray")`, `simexplain serve --engine
ray`): the shards of an "ivfpq" index folder are split into groups of consecutive shards, and
each group is a Ray actor that reads its FAISS files once and memory-maps the index's float
embeddings. A query fans out to every actor, which returns the best approximate inner
products of its shards; the driver merges them exactly as the single-process search does
(`compressed.ShardedVectors.search`), and the actors holding the chosen candidates re-score
them exactly from their memory-mapped floats. The hits (rows, scores, order) are those of the
single-process search; only the inverted lists' codes move out of the driver.

Failures are Ray's to handle: the actors are created with `max_restarts` (a dead actor is
started again, reading its shards again) and `max_task_retries` (a call to an actor that died
is sent again once it is back), so a query survives the loss of an actor's process; the actors
are spread over the cluster's nodes (scheduling strategy SPREAD). On a cluster
(`address`, or RAY_ADDRESS) every node must see the index folder at the same path.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import similarity as similarities
from ..errors import SimexplainError, first_line
from .basics import finite_rows, read_faiss_files, require_faiss
from .compressed import ShardedVectors, merge_candidates, shard_bounds
from .manifest import EMBEDDINGS, damaged

MAX_RESTARTS = 4  # restarts of one shard actor before its queries fail
MAX_TASK_RETRIES = 4  # times one call is sent again to a restarted actor


class ShardGroup:
    """One Ray actor: consecutive shards of an index folder (gallery rows [first, stop)), and
    the folder's embeddings memory-mapped for exact re-scoring."""

    def __init__(self, folder: str, names: Sequence[str], first: int, similarity: str,
                 threads: int = 1):
        # a damaged file is reported by `describe` as a task error (Ray passes that on to the
        # driver, while an error in an actor's constructor reaches it only as text)
        self.problem: SimexplainError | None = None
        try:
            self._open(Path(folder), names, int(first), similarity, threads)
        except SimexplainError as exc:
            self.problem = exc

    def _open(self, folder: Path, names: Sequence[str], first: int, similarity: str,
              threads: int) -> None:
        require_faiss().omp_set_num_threads(threads)
        self.vectors = ShardedVectors(read_faiss_files(folder, names))
        self.first = first
        self.stop = self.first + self.vectors.ntotal
        self.embeddings = np.load(folder / EMBEDDINGS, mmap_mode="r")
        self.similarity = similarities.get(similarity)
        # the driver leaves this check of the rows to their actor
        if not finite_rows(self.embeddings, self.first, self.stop):
            raise damaged(folder / EMBEDDINGS, "contains NaN or infinite values")

    def describe(self) -> dict:
        """Rows, FAISS dimension, process, node and resident memory of this actor."""
        import ray
        if self.problem is not None:
            raise self.problem
        status = _memory()
        return {"first": self.first, "rows": self.stop - self.first, "d": self.vectors.d,
                "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id(),
                "rss": status.get("VmRSS", 0), "anon": status.get("RssAnon", 0)}

    def candidates(self, query: np.ndarray, fetch: int, nprobe: int
                   ) -> tuple[np.ndarray, np.ndarray]:
        """The best `fetch` approximate inner products of this group's shards, best first:
        (scores, gallery rows)."""
        self.vectors.set_nprobe(nprobe)
        scores, rows = self.vectors.search(query, min(fetch, self.vectors.ntotal))
        keep = rows[0] >= 0
        return scores[0][keep], rows[0][keep] + self.first

    def rescore(self, rows: np.ndarray, vector: np.ndarray, embedding: np.ndarray | None
                ) -> tuple[np.ndarray, np.ndarray | None]:
        """Exact scores of gallery rows of this group (and the whole-image scores of a region
        query), from the memory-mapped floats."""
        floats = self.embeddings[rows]
        scores = similarities.scores(vector, floats, self.similarity, embedding)
        full = None if embedding is None else similarities.scores(embedding, floats,
                                                                  self.similarity)
        return scores, full


class RayShards:
    """The searchable structure of an index served by Ray actors: what `Index` calls on a
    `ShardedVectors` (`search`, `set_nprobe`, `ntotal`), plus `exact_scores`, which lets the
    actors re-score the candidates."""

    def __init__(self, ray: Any, actors: list, groups: list[tuple[int, int]], d: int,
                 started: bool):
        self._ray, self.actors, self.groups = ray, actors, groups
        self.d, self.nprobe, self._started = d, 1, started
        self.bounds = np.asarray([first for first, _ in groups] + [groups[-1][1]])

    @property
    def ntotal(self) -> int:
        return int(self.bounds[-1])

    @property
    def shards(self) -> list:
        raise SimexplainError("an index served by Ray cannot be saved; load it with "
                              "engine='local' to save it")

    def set_nprobe(self, nprobe: int) -> None:
        self.nprobe = int(nprobe)

    def search(self, query: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        """Fan out, then merge as `ShardedVectors.search` does (groups in shard order)."""
        replies = self._get([a.candidates.remote(query, fetch, self.nprobe)
                             for a in self.actors])
        return merge_candidates([s for s, _ in replies], [r for _, r in replies], fetch)

    def exact_scores(self, vector: np.ndarray, rows: np.ndarray, embedding: np.ndarray | None
                     ) -> tuple[np.ndarray, np.ndarray | None]:
        """Exact scores of sorted gallery rows, each re-scored by the actor holding it."""
        cuts = np.searchsorted(rows, self.bounds[1:-1])
        parts = np.split(rows, cuts)
        calls = [(i, actor.rescore.remote(part, vector, embedding))
                 for i, (actor, part) in enumerate(zip(self.actors, parts)) if part.size]
        replies = self._get([call for _, call in calls])
        scores = np.concatenate([s for s, _ in replies])
        full = None if embedding is None else np.concatenate([f for _, f in replies])
        return scores, full

    def describe(self) -> list[dict]:
        """Each actor's rows, process, node and resident memory."""
        return self._get([a.describe.remote() for a in self.actors])

    def close(self) -> None:
        """Stop the actors (and the local Ray instance this index started)."""
        for actor in self.actors:
            self._ray.kill(actor, no_restart=True)
        self.actors = []
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()

    def _get(self, refs: list) -> list:
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayError as exc:
            from .ray_engine import _simexplain_cause
            cause = _simexplain_cause(exc)
            if cause is not None:
                raise cause from None
            raise SimexplainError("a shard actor failed beyond its restarts: "
                                  f"{first_line(exc)}") from None


def serve(folder: Path, names: list[str], counts_dim: tuple[int, int], similarity: str,
          options: dict | None) -> RayShards:
    """Start the shard actors of an index folder: `options` takes actors (shard groups,
    default: one a shard, at most 2), address (a cluster; default RAY_ADDRESS, else a
    private local instance), cpus (per actor, default 1), threads (FAISS threads per actor,
    default 1). `counts_dim`: the manifest's (count, FAISS dimension), checked against what
    the actors read."""
    from .ray_engine import _connect, require_ray
    options = dict(options or {})
    unknown = set(options) - {"actors", "address", "cpus", "threads"}
    if unknown:
        raise SimexplainError(f"unknown Ray options {sorted(unknown)} (it takes actors, "
                              "address, cpus, threads)")
    count = int(options.get("actors") or min(2, len(names)))
    if not 1 <= count <= len(names):
        raise SimexplainError(f"--ray-actors must be between 1 and the index's {len(names)} "
                              f"shards, got {count}")
    ray = require_ray()
    started = _connect(ray, options.get("address"), count)
    try:
        return _start(ray, Path(folder).resolve(), names, count, counts_dim, similarity,
                      options, started)
    except BaseException:
        if started:
            ray.shutdown()
        raise


def _start(ray: Any, folder: Path, names: list[str], count: int, counts_dim: tuple[int, int],
           similarity: str, options: dict, started: bool) -> RayShards:
    total, dim = counts_dim
    starts = shard_bounds(total, len(names))  # how the build split the rows
    splits = np.array_split(np.arange(len(names)), count)
    remote = ray.remote(ShardGroup).options(
        max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES,
        num_cpus=float(options.get("cpus", 1)), scheduling_strategy="SPREAD")
    actors, groups = [], []
    for split in splits:
        first, stop = int(starts[split[0]]), int(starts[split[-1] + 1])
        actors.append(remote.remote(str(folder), [names[i] for i in split], first, similarity,
                                    int(options.get("threads", 1))))
        groups.append((first, stop))
    shards = RayShards(ray, actors, groups, 0, started)
    try:
        described = shards.describe()
    except BaseException:
        shards.close()  # a damaged shard: no actor outlives the refusal
        raise
    if ([d["rows"] for d in described] != [stop - first for first, stop in groups]
            or any(d["d"] != dim for d in described)):
        shards.close()
        raise damaged(folder, f"the shards hold {sum(d['rows'] for d in described)} vectors "
                              f"of dimension {described[0]['d']}, the manifest says {total} "
                              f"of dimension {dim} in {len(names)} shards")
    shards.d = dim
    return shards


def _memory() -> dict:
    out = {}
    with open("/proc/self/status") as status:
        for line in status:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon"):
                out[key] = int(line.split()[1]) * 1024
    return out
