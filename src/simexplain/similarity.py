"""Similarities and their decomposition into position pairs (METHOD.md, "The decomposition").

A `Similarity` owns everything that depends on which similarity a model uses: the score of two
embeddings, the pairwise map D[p, q], the overall maps, the partial similarity of a region,
the ranking direction, and the vectors an inner-product search index stores. This module is
the only place where cosine, dot product and squared Euclidean distance are spelled out.

Shapes: contributions `u` (P, D) for side a and `v` (..., Q, D) for side b (a leading batch
dimension on side b explains a whole gallery batch at once); embeddings `e_a` (D,), `e_b`
(..., D).

Your own similarity: subclass `Similarity` (or one of the built-ins), set `name` and
`lower_is_better`, and implement `score`, `scores`, `pairwise`, `overall` and
`partial_scores`; for gallery search also `index_vectors` and `index_query` (so that the
inner product of the two ranks like your score: the index re-scores its candidates exactly
with `scores` / `partial_scores`). Pass an instance as `Explainer(similarity=...)`, or
`register` it to use it by name. The decomposition is exact when `pairwise` sums to `score`
(or `total` does, see `SquaredEuclidean`).
"""

from __future__ import annotations

import numpy as np
import torch
from torch.linalg import vector_norm as norm  # no Tensor.norm dispatch in Python

from .errors import SimexplainError
from .defaults import BUILTIN_SIMILARITIES

_EPS = 1e-12


def dots_with(u: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """u_p . e for rows u (..., P, D) and a vector e (..., D): (..., P), as a matrix-vector
    product (no P x D temporary), in the wider of the two dtypes."""
    dtype = torch.promote_types(u.dtype, e.dtype)
    u, e = u.to(dtype), e.to(dtype)
    if e.dim() == 1:  # one vector: one matrix-vector product over every leading row
        return u @ e
    if u.dim() == 2:  # one set of rows against a batch of vectors: one matrix product
        return e @ u.T
    return (u @ e[..., :, None])[..., 0]


class Similarity:
    """Base class. Subclasses implement the methods that raise NotImplementedError."""

    name: str = ""
    lower_is_better: bool = False  # distances rank ascending, similarities descending

    # -- one pair, or broadcast over leading dimensions -----------------------------------------
    def score(self, e_a: torch.Tensor, e_b: torch.Tensor) -> torch.Tensor:
        """The model's similarity of embeddings (..., D) x (..., D) -> (...)."""
        raise NotImplementedError

    def pairwise(self, u: torch.Tensor, v: torch.Tensor, e_a: torch.Tensor,
                 e_b: torch.Tensor) -> torch.Tensor:
        """D[..., p, q], the share of the score carried by position pair (p, q). Must be
        bilinear in (u, v) (for fixed embeddings): region maps and the total rely on it."""
        raise NotImplementedError

    def overall(self, u: torch.Tensor, v: torch.Tensor, e_a: torch.Tensor, e_b: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Overall maps O_a (..., P) and O_b (..., Q)."""
        raise NotImplementedError

    def total(self, pairwise: torch.Tensor, overall_a: torch.Tensor,
              overall_b: torch.Tensor) -> torch.Tensor:
        """What the decomposition sums to (the score, for exact heads)."""
        return pairwise.sum()

    # -- many queries against a gallery ---------------------------------------------------------
    def scores(self, queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        """All-pairs scores of query embeddings (Q, D) and gallery embeddings (G, D): (Q, G)."""
        raise NotImplementedError

    def partial_scores(self, vectors: torch.Tensor, query_embeddings: torch.Tensor,
                       gallery: torch.Tensor) -> torch.Tensor:
        """Partial similarities s_R (Q, G) of region vectors q_R = sum_p w_p u_p (Q, D) of
        queries with embeddings e_a (Q, D): s_R = sum_p w_p O_a[p] against each gallery row."""
        raise NotImplementedError

    def best_first(self, scores: np.ndarray) -> np.ndarray:
        """Indices that sort scores (along the last axis) best first; ties keep their order."""
        keys = np.asarray(scores) if self.lower_is_better else -np.asarray(scores)
        return np.argsort(keys, axis=-1, kind="stable")

    def closeness(self, score: torch.Tensor) -> torch.Tensor:
        """The score oriented so that larger means closer (what saliency methods explain)."""
        return -score if self.lower_is_better else score

    def without_normalisation(self) -> Similarity:
        """The similarity on raw (pre-normalisation) embeddings: Grad-CAM's "raw" variant."""
        return self

    def relative(self, overall: torch.Tensor, u: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """Relative map R[p] = O[p] - (sum_p' O[p']) * share[p], share[p] = u_p . e / |e|^2
        (METHOD.md, "Relative maps"): each position's contribution minus its share of the
        score. Shapes: O (..., P), u (..., P, D), e (..., D).

        Written in terms of O, so one form serves every similarity: it equals
        k u_p . (e_other minus its projection on e), k = 1/(|e_a||e_b|) for the cosine, 1 for
        the dot product, -1 for the squared distance (whose O is a share of the distance).
        The shares are divided by their own sum, sum_p u_p . e (= |e|^2 where the
        decomposition is complete), so R sums to 0 to float64 precision even where sum_p u_p
        differs from e by the forward pass's float32 error or a linearised head's residual.
        """
        dots = dots_with(u, e)
        total = dots.sum(-1, keepdim=True)
        share = dots / torch.where(total.abs() > 1e-300, total, torch.ones_like(total))
        return overall - overall.sum(-1, keepdim=True) * share

    # -- a search index (one inner-product structure serves whole and region queries) -----------
    def index_vectors(self, embeddings: np.ndarray) -> np.ndarray:
        """(N, D') float32 rows stored in an inner-product index for gallery embeddings."""
        raise SimexplainError(f"similarity {self.name!r} defines no index vectors: implement "
                              "Similarity.index_vectors and index_query to search with it")

    def index_query(self, vector: np.ndarray, region: bool) -> np.ndarray:
        """(D',) the search vector for a whole query's embedding e_a, or a region vector q_R,
        whose inner product with `index_vectors` ranks the gallery best first."""
        raise SimexplainError(f"similarity {self.name!r} defines no index query")

    # -- identity --------------------------------------------------------------------------------
    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other) -> bool:
        if isinstance(other, str):  # a similarity equals its registered name
            return other == self.name
        return type(other) is type(self) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


class Dot(Similarity):
    """Dot product e_a . e_b: D[p, q] = u_p . v_q."""

    name = "dot"

    def score(self, e_a: torch.Tensor, e_b: torch.Tensor) -> torch.Tensor:
        return (e_a * e_b).sum(-1)

    def pairwise(self, u: torch.Tensor, v: torch.Tensor, e_a: torch.Tensor, e_b: torch.Tensor
                 ) -> torch.Tensor:
        return u @ v.transpose(-1, -2)

    def overall(self, u: torch.Tensor, v: torch.Tensor, e_a: torch.Tensor, e_b: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return dots_with(u, e_b), dots_with(v, e_a)

    def scores(self, queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        return queries @ gallery.T

    def partial_scores(self, vectors: torch.Tensor, query_embeddings: torch.Tensor,
                       gallery: torch.Tensor) -> torch.Tensor:
        return vectors @ gallery.T

    def index_vectors(self, embeddings: np.ndarray) -> np.ndarray:
        return np.asarray(embeddings, dtype=np.float32)

    def index_query(self, vector: np.ndarray, region: bool) -> np.ndarray:
        return np.asarray(vector, dtype=np.float64)


class Cosine(Dot):
    """Cosine e_a . e_b / (|e_a| |e_b|): the dot-product decomposition times 1 / (|e_a| |e_b|).
    Indexed as L2-normalised gallery vectors (a region query q_R then ranks by s_R)."""

    name = "cosine"

    @staticmethod
    def _scale(e_a: torch.Tensor, e_b: torch.Tensor) -> torch.Tensor:
        return 1.0 / (norm(e_a, dim=-1) * norm(e_b, dim=-1)).clamp_min(_EPS)

    def score(self, e_a: torch.Tensor, e_b: torch.Tensor) -> torch.Tensor:
        return (e_a * e_b).sum(-1) / (norm(e_a, dim=-1) * norm(e_b, dim=-1)).clamp_min(_EPS)

    def pairwise(self, u: torch.Tensor, v: torch.Tensor, e_a: torch.Tensor, e_b: torch.Tensor
                 ) -> torch.Tensor:
        # the scale on u (P x D values), not on the P x Q result
        return super().pairwise(u * self._scale(e_a, e_b)[..., None, None], v, e_a, e_b)

    def overall(self, u: torch.Tensor, v: torch.Tensor, e_a: torch.Tensor, e_b: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        o_a, o_b = super().overall(u, v, e_a, e_b)
        scale = self._scale(e_a, e_b)[..., None]
        return o_a * scale, o_b * scale

    def scores(self, queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        norms = norm(queries, dim=1)[:, None] * norm(gallery, dim=1)[None, :]
        return (queries @ gallery.T) / norms.clamp_min(_EPS)

    def partial_scores(self, vectors: torch.Tensor, query_embeddings: torch.Tensor,
                       gallery: torch.Tensor) -> torch.Tensor:
        norms = norm(query_embeddings, dim=1)[:, None] * norm(gallery, dim=1)[None, :]
        return (vectors @ gallery.T) / norms.clamp_min(_EPS)

    def without_normalisation(self) -> Similarity:
        return Dot()  # the paper's "without normalisation" variant

    def index_vectors(self, embeddings: np.ndarray) -> np.ndarray:
        e = np.asarray(embeddings, dtype=np.float32)
        return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), _EPS)


class SquaredEuclidean(Similarity):
    """Squared distance |e_a - e_b|^2 (smaller is closer). Overall maps O_a[p] =
    u_p . (e_a - e_b), O_b[q] = v_q . (e_b - e_a), together summing to d^2; the pairwise map is
    the cross term -2 u_p . v_q. Indexed with one extra coordinate -|e_b|^2 / 2: the whole query
    [e_a, 1] ranks by the smallest distance, a region query [q_R, 0] by the smallest s_R."""

    name = "euclidean"
    lower_is_better = True

    def score(self, e_a: torch.Tensor, e_b: torch.Tensor) -> torch.Tensor:
        return (e_a - e_b).pow(2).sum(-1)

    def pairwise(self, u: torch.Tensor, v: torch.Tensor, e_a: torch.Tensor, e_b: torch.Tensor
                 ) -> torch.Tensor:
        return -2.0 * (u @ v.transpose(-1, -2))

    def overall(self, u: torch.Tensor, v: torch.Tensor, e_a: torch.Tensor, e_b: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        diff = e_a - e_b
        return dots_with(u, diff), -dots_with(v, diff)

    def total(self, pairwise: torch.Tensor, overall_a: torch.Tensor,
              overall_b: torch.Tensor) -> torch.Tensor:
        return overall_a.sum() + overall_b.sum()

    def scores(self, queries: torch.Tensor, gallery: torch.Tensor) -> torch.Tensor:
        out = ((queries ** 2).sum(1)[:, None] - 2 * (queries @ gallery.T)
               + (gallery ** 2).sum(1)[None, :])
        return out.clamp_min(0.0)

    def partial_scores(self, vectors: torch.Tensor, query_embeddings: torch.Tensor,
                       gallery: torch.Tensor) -> torch.Tensor:
        # s_R = q_R . (e_a - e_b)
        return (vectors * query_embeddings).sum(1)[:, None] - vectors @ gallery.T

    def index_vectors(self, embeddings: np.ndarray) -> np.ndarray:
        e = np.asarray(embeddings, dtype=np.float32)
        extra = -0.5 * (e.astype(np.float64) ** 2).sum(1, keepdims=True)
        return np.hstack([e, extra.astype(np.float32)])

    def index_query(self, vector: np.ndarray, region: bool) -> np.ndarray:
        return np.append(np.asarray(vector, dtype=np.float64), 0.0 if region else 1.0)


_REGISTRY: dict[str, Similarity] = {}


def register(similarity: Similarity) -> Similarity:
    """Make a similarity available by its name (e.g. for `--similarity` and index manifests)."""
    if not isinstance(similarity, Similarity) or not similarity.name:
        raise SimexplainError("register a Similarity instance with a non-empty name")
    _REGISTRY[similarity.name] = similarity
    return similarity


for _builtin in (Cosine(), Dot(), SquaredEuclidean()):
    register(_builtin)
# the command line names them without importing this module: the same ones
assert tuple(_REGISTRY) == BUILTIN_SIMILARITIES, (tuple(_REGISTRY), BUILTIN_SIMILARITIES)


def names() -> tuple[str, ...]:
    """Names of the registered similarities."""
    return tuple(_REGISTRY)


def get(similarity: str | Similarity) -> Similarity:
    """A Similarity from its name, or the instance itself."""
    if isinstance(similarity, Similarity):
        return similarity
    found = _REGISTRY.get(similarity) if isinstance(similarity, str) else None
    if found is None:
        raise SimexplainError(
            f"unknown similarity {similarity!r}; choose one of {', '.join(_REGISTRY)} "
            "or pass a Similarity instance")
    return found


def scores(vectors: np.ndarray | torch.Tensor, gallery: np.ndarray | torch.Tensor,
           similarity: str | Similarity,
           query_embeddings: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
    """Exact (float64) scores of query vectors (D,) or (Q, D) against gallery embeddings
    (G, D), as numpy: the model's similarity of whole queries, or with `query_embeddings` (e_a)
    the partial similarities s_R of region vectors q_R. Shape (G,) or (Q, G)."""
    sim = get(similarity)
    v = _float64(vectors)
    single = v.dim() == 1
    v = torch.atleast_2d(v)
    g = _float64(gallery)
    if query_embeddings is None:
        out = sim.scores(v, g)
    else:
        e = torch.atleast_2d(_float64(query_embeddings))
        if e.shape != v.shape:
            raise SimexplainError(f"query_embeddings has shape {tuple(e.shape)}, expected one "
                                  f"per vector {tuple(v.shape)}")
        out = sim.partial_scores(v, e, g)
    result = out.numpy()
    return result[0] if single else result


def _float64(value) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double()
    return torch.from_numpy(np.asarray(value, dtype=np.float64))
