"""Weighted positions of one image: region vectors and their maps on another image
(METHOD.md, "Region map" and "Interactive retrieval").

Weights w (P,) over one side's grid come from `maps.region_weights` (a box or a mask),
`maps.point_weights` (a pixel, bilinear) or are all ones (the whole image). By linearity,
sum_p w_p D[p, :] = pairwise(q, V) with the ONE vector q = sum_p w_p u_p: a region, a point
or a whole query needs neither the P x Q map nor per-position features of the other image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .defaults import POINT_MAP_KINDS
from .errors import NoPointMap, SimexplainError
from .similarity import Similarity

if TYPE_CHECKING:
    from .explanation import Side

# The kind that finds correspondences best on the correspondence benchmark (best or tied best
# on every model; README, "Evaluation"): used by the CLI, the demo report and the web app.
DEFAULT_POINT_MAP = "match-centred"
# A point whose contribution is below this fraction of the largest position's has none.
_NO_CONTRIBUTION = 1e-9


def point_map_label(kind: str) -> str:
    """How a point map of `kind` is labelled in figures and the web app."""
    return POINT_MAP_KINDS[check_kind(kind)]


def check_kind(kind: str) -> str:
    if kind not in POINT_MAP_KINDS:
        raise SimexplainError(
            f"unknown point-map kind {kind!r}; choose one of {', '.join(POINT_MAP_KINDS)}")
    return kind


def region_vector(weights: torch.Tensor, contributions: torch.Tensor) -> torch.Tensor:
    """q = sum_p w_p u_p: weights (P,) and contributions (..., P, D) -> (..., D), float64."""
    u = contributions.detach().double()
    return weights.to(device=u.device, dtype=u.dtype) @ u


def weighted_map(similarity: Similarity, weights: torch.Tensor, here_contributions: torch.Tensor,
                 here_embedding: torch.Tensor, there_contributions: torch.Tensor,
                 there_embedding: torch.Tensor,
                 here_is_a: bool = True) -> torch.Tensor:
    """(Q,) = sum_p w_p D[p, :] over the other side's positions for weights on this side;
    (K, Q) for K weightings (K, P).

    `here_is_a` says which side of the pair the weights lie on, so that the pair keeps its
    orientation (a, b) for similarities that are not symmetric."""
    q = region_vector(weights, here_contributions)
    single = q.dim() == 1
    q = q[None] if single else q
    v = there_contributions.detach().double().to(q.device)
    e_here = here_embedding.detach().double().to(q.device)
    e_there = there_embedding.detach().double().to(q.device)
    if here_is_a:
        maps = similarity.pairwise(q, v, e_here, e_there)
    else:
        maps = similarity.pairwise(v, q, e_there, e_here).T
    return maps[0] if single else maps


def side_map(similarity: Similarity, weights: torch.Tensor, here: Side, there: Side,
             here_is_a: bool = True) -> torch.Tensor:
    """`weighted_map` between two `explanation.Side`s, shaped as the other side's grid."""
    row = weighted_map(similarity, weights, here.contributions, here.embedding,
                       there.contributions, there.embedding, here_is_a)
    return row.reshape(there.grid)


def kind_map(similarity: Similarity, weights: torch.Tensor, here: Side, there: Side, kind: str,
             here_is_a: bool = True, what: str = "point") -> torch.Tensor:
    """The point or region map of `kind` (POINT_MAP_KINDS) of weights on `here` over `there`'s
    grid, from the two `explanation.Side`s' contributions alone (no P x Q map). Raises
    NoPointMap where the weighted contribution is zero (GMP heads), never a flat map."""
    row = kind_maps(similarity, weights[None], here, there, kind, here_is_a)[0]
    if torch.isnan(row).all():
        raise NoPointMap(
            f"no map: the {what} carries no contribution (u = 0: with a max-pooling head it "
            "is no channel's maximum), so nothing of the other image is matched to it; the "
            "match kinds give a map there")
    return row.reshape(there.grid)


def kind_maps(similarity: Similarity, weights: torch.Tensor, here: Side, there: Side, kind: str,
              here_is_a: bool = True) -> torch.Tensor:
    """(K, Q) maps of `kind` of K weightings (K, P) of `here` over `there`'s positions: row k
    is `kind_map` of weights[k], NaN where that weighting carries nothing to compare. With the
    identity for weights, the matrix of every position's point map (`patterns`)."""
    check_kind(kind)
    # contribution kind: the contributions u_p; match kinds: what the head makes of each
    # position's whole features where the pooling selects (max pooling, a class token: many
    # u_p are 0 there), else the contributions (average pooling: the same up to 1 / P)
    here_stats = _side_stats(here, kind)
    u = here_stats["vectors"]
    weights = weights.to(u.device, torch.float64)
    query = weights @ u  # (K, D)
    missing = query.norm(dim=1) <= _NO_CONTRIBUTION * here_stats["largest"]
    if kind == "contribution":
        maps = weighted_map(similarity, weights, u, here.embedding, there.contributions,
                            there.embedding, here_is_a)
    else:
        there_stats = _side_stats(there, kind)
        v, v_norms = there_stats["vectors"], there_stats["norms"]
        if kind == "match-centred":
            query = query - weights.sum(1, keepdim=True) * here_stats["mean"]
            v, v_norms = there_stats["centred"], there_stats["centred_norms"]
        v, v_norms = v.to(u.device), v_norms.to(u.device)
        maps = (query @ v.T) / (query.norm(dim=1, keepdim=True) * v_norms[None]
                                ).clamp_min(1e-300)
    return maps.masked_fill(missing[:, None], float("nan"))


def _side_stats(side, kind: str) -> dict:
    """What point maps need of one side, computed once and kept in `side.point_map_stats`:
    the compared vectors, their mean, centred copy and norms, and the largest norm."""
    key = "contribution" if kind == "contribution" else "match"
    cache = side.point_map_stats
    if key not in cache:
        vectors = matched_vectors(side, kind)
        mean = vectors.mean(0)
        centred = vectors - mean
        norms = vectors.norm(dim=1)
        cache[key] = {"vectors": vectors, "mean": mean, "centred": centred, "norms": norms,
                      "centred_norms": centred.norm(dim=1), "largest": float(norms.max())}
    return cache[key]


def matched_vectors(side: Side, kind: str) -> torch.Tensor:
    """(P, D) float64: the vectors a point map of `kind` compares on one side."""
    vectors = side.contributions if kind == "contribution" or side.projected is None \
        else side.projected
    return vectors.detach().to(torch.float64)
