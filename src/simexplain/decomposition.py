"""The decomposition of a similarity into position pairs (METHOD.md, "The decomposition").

Shapes: contributions `u` (P, D) for side a and `v` (..., Q, D) for side b (a leading batch
dimension on side b explains a whole gallery batch at once); embeddings `e_a` (D,), `e_b` (..., D).
"""

from __future__ import annotations

import torch

SIMILARITIES = ("cosine", "dot", "euclidean")


def check_similarity(similarity: str) -> str:
    from .errors import SimexplainError
    if similarity not in SIMILARITIES:
        raise SimexplainError(
            f"unknown similarity {similarity!r}; choose one of {', '.join(SIMILARITIES)}")
    return similarity


def score(e_a: torch.Tensor, e_b: torch.Tensor, similarity: str) -> torch.Tensor:
    """The similarity of embeddings: cosine, dot product, or squared Euclidean distance."""
    if similarity == "dot":
        return (e_a * e_b).sum(-1)
    if similarity == "cosine":
        return (e_a * e_b).sum(-1) / (e_a.norm(dim=-1) * e_b.norm(dim=-1)).clamp_min(1e-12)
    return (e_a - e_b).pow(2).sum(-1)


def cosine_scale(e_a: torch.Tensor, e_b: torch.Tensor) -> torch.Tensor:
    """1 / (|e_a| |e_b|), shaped to broadcast over (..., P, Q)."""
    return (1.0 / (e_a.norm(dim=-1) * e_b.norm(dim=-1)).clamp_min(1e-12))[..., None, None]


def pairwise(u: torch.Tensor, v: torch.Tensor, e_a: torch.Tensor, e_b: torch.Tensor,
             similarity: str) -> torch.Tensor:
    """D[..., p, q]. Sums to the score for dot and cosine; for the squared distance it is the
    cross term -2 u_p . v_q (the overall maps carry the full decomposition there)."""
    products = u @ v.transpose(-1, -2)  # (..., P, Q)
    if similarity == "dot":
        return products
    if similarity == "cosine":
        return products * cosine_scale(e_a, e_b)
    return -2.0 * products


def overall(u: torch.Tensor, v: torch.Tensor, e_a: torch.Tensor, e_b: torch.Tensor,
            similarity: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Overall maps O_a (..., P) and O_b (..., Q); sum O_a + ... as in METHOD.md.

    dot/cosine: O_a[p] = u_p . e_b (scaled), each side sums to the score on its own.
    euclidean: O_a[p] = u_p . (e_a - e_b), O_b[q] = v_q . (e_b - e_a), together summing to d^2.
    """
    e_b_row = e_b[..., None, :]  # (..., 1, D)
    if similarity == "euclidean":
        diff = (e_a - e_b)[..., None, :]
        return (u * diff).sum(-1), -(v * diff).sum(-1)
    o_a = (u * e_b_row).sum(-1)
    o_b = (v * e_a[..., None, :]).sum(-1)
    if similarity == "cosine":
        scale = 1.0 / (e_a.norm(dim=-1) * e_b.norm(dim=-1)).clamp_min(1e-12)
        o_a = o_a * scale[..., None]
        o_b = o_b * scale[..., None]
    return o_a, o_b


def relative(overall_map: torch.Tensor, u: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Relative map R[p] = O[p] - (sum_p' O[p']) * share[p], share[p] = u_p . e / |e|^2
    (METHOD.md, "Relative maps"): each position's contribution minus its share of the score.

    Shapes: O (..., P), u (..., P, D), e (..., D). The form holds for every similarity because
    it is written in terms of O: it always equals k * u_p . (e_other minus its projection on e)
    with k = 1/(|e_a||e_b|) (cosine), 1 (dot), -1 (squared distance). Sums to 0.

    The shares are divided by their own sum, sum_p u_p . e (= |e|^2 where the decomposition is
    complete), so R sums to 0 to float64 precision even where sum_p u_p differs from e by the
    float32 error of the forward pass or a linearised head's residual.
    """
    dots = (u * e[..., None, :]).sum(-1)
    total = dots.sum(-1, keepdim=True)
    share = dots / torch.where(total.abs() > 1e-300, total, torch.ones_like(total))
    return overall_map - overall_map.sum(-1, keepdim=True) * share
