"""Weighted positions of one image: region vectors and their maps on another image
(METHOD.md, "Region map" and "Interactive retrieval").

Weights w (P,) over one side's grid come from `maps.region_weights` (a box or a mask),
`maps.point_weights` (a pixel, bilinear) or are all ones (the whole image). By linearity,
sum_p w_p D[p, :] = pairwise(q, V) with the ONE vector q = sum_p w_p u_p: a region, a point
or a whole query needs neither the P x Q map nor per-position features of the other image.
"""

from __future__ import annotations

import torch

from .similarity import Similarity


def region_vector(weights: torch.Tensor, contributions: torch.Tensor) -> torch.Tensor:
    """q = sum_p w_p u_p: weights (P,) and contributions (..., P, D) -> (..., D), float64."""
    u = contributions.detach().double()
    return weights.to(device=u.device, dtype=u.dtype) @ u


def weighted_map(similarity: Similarity, weights: torch.Tensor, here_contributions,
                 here_embedding, there_contributions, there_embedding, here_is_a: bool = True
                 ) -> torch.Tensor:
    """(Q,) = sum_p w_p D[p, :] over the other side's positions for weights on this side.

    `here_is_a` says which side of the pair the weights lie on, so that the pair keeps its
    orientation (a, b) for similarities that are not symmetric."""
    q = region_vector(weights, here_contributions)[None]
    v = there_contributions.detach().double().to(q.device)
    e_here = here_embedding.detach().double().to(q.device)
    e_there = there_embedding.detach().double().to(q.device)
    if here_is_a:
        return similarity.pairwise(q, v, e_here, e_there)[0]
    return similarity.pairwise(v, q, e_there, e_here)[:, 0]


def side_map(similarity: Similarity, weights: torch.Tensor, here, there,
             here_is_a: bool = True) -> torch.Tensor:
    """`weighted_map` between two `explanation.Side`s, shaped as the other side's grid."""
    row = weighted_map(similarity, weights, here.contributions, here.embedding,
                       there.contributions, there.embedding, here_is_a)
    return row.reshape(there.grid)
