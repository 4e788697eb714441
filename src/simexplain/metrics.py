"""Retrieval metrics on embeddings: Recall@K and MAP@R (cosine similarity, chunked).

* Recall@K: the fraction of queries with at least one gallery item of the same label among
  their K nearest gallery items.
* MAP@R (Musgrave, Belongie and Lim, "A Metric Learning Reality Check", ECCV 2020): for a
  query with R gallery items of its label, rank the gallery, keep the first R results, and
  average the precision at each rank i <= R where the i-th result is correct, dividing by R:
  MAP@R = 1/R * sum_{i<=R} P(i) * rel(i). Queries with R = 0 are left out of the mean.

With ``exclude_self=True`` the query set is the gallery set (same order): each query's own
gallery entry is neither retrieved nor counted in R.

Similarities are computed a chunk of queries at a time, so 10k queries against a 60k gallery
needs memory for a chunk x gallery matrix only.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .errors import SimexplainError

Array = torch.Tensor | np.ndarray  # embeddings (N, D) or labels (N,)
# Upper bound on the floats in one (chunk x gallery) similarity block (~64 MB in float32).
_BLOCK_ELEMENTS = 16_000_000


def _embeddings(array, name: str) -> torch.Tensor:
    tensor = array.detach().cpu() if torch.is_tensor(array) else torch.as_tensor(
        np.asarray(array, dtype=np.float32))
    if tensor.dim() != 2:
        raise SimexplainError(
            f"{name}: expected (N, D) embeddings, got shape {tuple(tensor.shape)}")
    return tensor.float()


def _labels(array, name: str) -> np.ndarray:
    labels = array.detach().cpu().numpy() if torch.is_tensor(array) else np.asarray(array)
    if labels.ndim != 1:
        raise SimexplainError(f"{name}: expected (N,) labels, got shape {labels.shape}")
    return labels


def _prepare(query_emb, query_labels, gallery_emb, gallery_labels, exclude_self):
    q = _embeddings(query_emb, "query_emb")
    g = _embeddings(gallery_emb, "gallery_emb")
    ql = _labels(query_labels, "query_labels")
    gl = _labels(gallery_labels, "gallery_labels")
    if q.shape[0] != ql.shape[0]:
        raise SimexplainError(f"{q.shape[0]} query embeddings but {ql.shape[0]} query labels")
    if g.shape[0] != gl.shape[0]:
        raise SimexplainError(f"{g.shape[0]} gallery embeddings but {gl.shape[0]} gallery labels")
    if q.shape[1] != g.shape[1]:
        raise SimexplainError(
            f"query and gallery embeddings differ in size ({q.shape[1]} vs {g.shape[1]})")
    if exclude_self and q.shape[0] != g.shape[0]:
        raise SimexplainError(
            "exclude_self=True needs the query set to be the gallery set (same length and order)")
    if q.shape[0] == 0 or g.shape[0] == 0:
        raise SimexplainError("retrieval metrics need at least one query and one gallery item")
    # Labels of any kind (ints, strings) -> integer ids shared by queries and gallery.
    try:
        _, ids = np.unique(np.concatenate([ql, gl]), return_inverse=True)
    except TypeError:
        raise SimexplainError("query and gallery labels cannot be compared") from None
    label_ids = torch.from_numpy(ids.reshape(-1).astype(np.int64))
    return (F.normalize(q, dim=1), label_ids[: len(ql)], F.normalize(g, dim=1),
            label_ids[len(ql):])


def _chunks(n_queries: int, n_gallery: int, extra_columns: int = 0):
    size = max(1, _BLOCK_ELEMENTS // max(1, n_gallery + extra_columns))
    for start in range(0, n_queries, size):
        yield start, min(n_queries, start + size)


def _similarities(q, g, start, stop, exclude_self):
    sim = q[start:stop] @ g.T
    if exclude_self:
        rows = torch.arange(stop - start)
        sim[rows, rows + start] = -math.inf
    return sim


def recall_at_k(query_emb: Array, query_labels: Array, gallery_emb: Array,
                gallery_labels: Array, k: int = 1,
                exclude_self: bool = False) -> float:
    """Fraction of queries with a same-label item among their `k` most similar gallery items."""
    return float(hits_at_k(query_emb, query_labels, gallery_emb, gallery_labels, k,
                           exclude_self).mean())


def hits_at_k(query_emb: Array, query_labels: Array, gallery_emb: Array,
              gallery_labels: Array, k: int = 1,
              exclude_self: bool = False) -> np.ndarray:
    """Per query: is a same-label item among its `k` most similar gallery items? (bool (n,):
    its mean is `recall_at_k`, its bootstrap the CI)."""
    if k < 1:
        raise SimexplainError(f"k must be >= 1, got {k}")
    q, ql, g, gl = _prepare(query_emb, query_labels, gallery_emb, gallery_labels, exclude_self)
    available = g.shape[0] - (1 if exclude_self else 0)
    k = min(k, available)
    if k < 1:
        raise SimexplainError("the gallery has no item to retrieve")
    hits = []
    for start, stop in _chunks(q.shape[0], g.shape[0]):
        sim = _similarities(q, g, start, stop, exclude_self)
        top = sim.topk(k, dim=1).indices
        hits.append((gl[top] == ql[start:stop, None]).any(dim=1).cpu().numpy())
    return np.concatenate(hits)


def average_precision_at_r(relevant: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Per-query AP@R from ranked relevance (n, >= max R; best first) and R (n,), R > 0."""
    ranks = torch.arange(1, relevant.shape[1] + 1, dtype=torch.float64)
    hits = relevant.double() * (ranks[None, :] <= r[:, None])  # only the first R ranks count
    precision = hits.cumsum(dim=1) / ranks[None, :]
    return (precision * hits).sum(dim=1) / r.double()


def map_at_r(query_emb: Array, query_labels: Array, gallery_emb: Array, gallery_labels: Array,
             exclude_self: bool = False) -> float:
    """Mean average precision at R (Musgrave et al. 2020); NaN when no query has a match."""
    q, ql, g, gl = _prepare(query_emb, query_labels, gallery_emb, gallery_labels, exclude_self)
    n_ids = int(max(ql.max(), gl.max())) + 1
    counts = torch.bincount(gl, minlength=n_ids)
    r_all = counts[ql] - (1 if exclude_self else 0)  # R of every query
    total, counted = 0.0, 0
    for start, stop in _chunks(q.shape[0], g.shape[0]):
        r = r_all[start:stop]
        keep = r > 0
        if not keep.any():
            continue
        sim = _similarities(q, g, start, stop, exclude_self)[keep]
        r = r[keep]
        labels = ql[start:stop][keep]
        top = sim.topk(int(r.max()), dim=1).indices              # (n, max R)
        total += float(average_precision_at_r(gl[top] == labels[:, None], r).sum())
        counted += int(keep.sum())
    return total / counted if counted else math.nan
