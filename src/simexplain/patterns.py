"""Cross-view pattern discovery (METHOD.md, "Cross-view pattern discovery"): the strongest
point-to-point correspondences between the two images of a pair.

Every position p of a's grid has a point map M[p, :] over b's grid (a point-map kind:
`regions.kind_maps`), and every position q of b one over a's grid, which is M[:, q] for every
kind (the contribution D is one matrix read both ways; the match kinds are cosines, symmetric).
A pattern is a *mutual best match*: q is the maximum of p's map and p the maximum of q's map
(the kind says where things correspond). Patterns are ranked by their strength, the share of
the score the two positions carry together, D[p, q] (the kind's own value M[p, q] is reported as
`match`: a cosine for the match kinds, which is high for any two plain background cells, so it
would rank empty corners first); only patterns with D[p, q] > 0 are kept. A greedy
non-maximum suppression then drops any pattern whose point in a or in b lies within `spread`
cells of a stronger pattern's, so the patterns spread over the images.
Works for any model, one stream or two. For a distance (squared Euclidean, where lower is
closer) `PairExplanation.patterns` passes -D, so strength is always closeness.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .defaults import DEFAULT_PATTERNS

DEFAULT_SPREAD = 1.5  # grid cells: neighbours (diagonal ones too) of a chosen point are dropped


@dataclass(frozen=True)
class Pattern:
    """One correspondence: a point of a, its match in b (pixel (row, col) indices, the
    convention of `PairExplanation.point_map`), its strength (the share of the score the two
    positions carry, D[p, q]), the value M[p, q] of the point-map kind, and the grid cells."""

    point_a: tuple[float, float]
    point_b: tuple[float, float]
    strength: float
    match: float
    cell_a: tuple[int, int]
    cell_b: tuple[int, int]

    def to_dict(self) -> dict:
        return {"point_a": [round(v, 3) for v in self.point_a],
                "point_b": [round(v, 3) for v in self.point_b],
                "strength": self.strength, "match": self.match,
                "cell_a": list(self.cell_a), "cell_b": list(self.cell_b)}


def mutual_matches(matrix: torch.Tensor, contribution: torch.Tensor, grid_a: tuple[int, int],
                   grid_b: tuple[int, int], k: int = DEFAULT_PATTERNS,
                   spread: float = DEFAULT_SPREAD) -> list[tuple[int, int]]:
    """(p, q) flat positions of the top-k mutual best matches of a (P, Q) point-map matrix
    (NaN rows: positions without a map), by D[p, q] (> 0), strongest first, with the
    non-maximum suppression of the module's docstring."""
    m = np.asarray(torch.as_tensor(matrix, dtype=torch.float64).cpu())
    d = np.asarray(torch.as_tensor(contribution, dtype=torch.float64).cpu())
    valid = np.isfinite(m)
    if not valid.any():
        return []
    filled = np.where(valid, m, -np.inf)
    best_b = filled.argmax(1)  # each p's best q
    best_a = filled.argmax(0)  # each q's best p
    rows = np.flatnonzero(valid.any(1))
    candidates = [(int(p), int(best_b[p])) for p in rows
                  if best_a[best_b[p]] == p and d[p, best_b[p]] > 0]
    candidates.sort(key=lambda pq: -d[pq])
    cells_a = np.stack(np.unravel_index(np.arange(m.shape[0]), grid_a), 1)
    cells_b = np.stack(np.unravel_index(np.arange(m.shape[1]), grid_b), 1)
    chosen: list[tuple[int, int]] = []
    for p, q in candidates:
        if len(chosen) >= k:
            break
        if any(np.linalg.norm(cells_a[p] - cells_a[cp]) < spread or
               np.linalg.norm(cells_b[q] - cells_b[cq]) < spread for cp, cq in chosen):
            continue
        chosen.append((p, q))
    return chosen
