"""Findings: regions where similarity concentrates far above their area, found without being
named.

Every box of whole cells of the audit grid no larger than `max_area` of the image is a
candidate, on the query side and on the hit side. Its share of a pair's score is exact: the
pair's overall map resampled onto the audit grid (`maps.resample`) summed over the box, over s.
A pair is *hot* for a box when the box carries at least max(min_share, min_ratio x its area) of
the pair's score (a box of 2% of the image carrying 30%: fifteen times its area share). A box is
a finding when it is hot in at least `min_pairs` of the pairs (a fraction; a shortcut tied to one
class of ten shows in about a tenth of them) and at least MIN_HOT of them. (On the trained
Fashion-MNIST model fmnist-gap, 300 test items, 60 queries x 5 hits, no box was hot in any pair:
the largest share of one cell of its 7x7 grid was 13% at the 99th percentile of the pairs.)
Candidates are ranked by their mean excess over the pairs, sum over hot pairs of
(share - area) / n_pairs, so the box that matches a hot spot best outranks boxes around it;
then chosen greedily, each new one not overlapping those already chosen on its side. A box
found on both sides is one finding ("both").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import regions as regionlib

if TYPE_CHECKING:
    from .result import Audit

MAX_AREA = 0.1  # candidates cover at most this fraction of the image
MIN_SHARE = 0.3  # a hot pair: the box carries at least this share of the score ...
MIN_RATIO = 6.0  # ... and at least this many times its area share
MIN_HOT = 3  # a finding: hot in at least this many pairs ...
MIN_PAIRS = 0.05  # ... and at least this fraction of the pairs
MAX_FINDINGS = 5  # per side
CHUNK = 256  # pairs scored against every candidate at once (memory: CHUNK x candidates)


@dataclass(frozen=True)
class Finding:
    """A region where similarity concentrates: its box (relative top, left, bottom, right),
    the side(s) it was found on, the fraction of pairs where it is hot, the mean share of the
    score it carries in those pairs and over all the audited similarity, its area share, and
    the sentence that says so."""

    box: tuple[float, float, float, float]
    side: str  # "query", "hit" or "both"
    pairs: float  # fraction of the pairs in which the box is hot
    share: float  # mean share of the score in the hot pairs
    aggregate_share: float  # sum of s_R over all pairs / sum of s
    area: float
    sentence: str
    hot_pairs: tuple[int, ...] = ()  # the hot pairs, largest share first (at most 8)
    hot_shares: tuple[float, ...] = ()  # the box's share of their scores (sides averaged)

    def to_dict(self) -> dict:
        return {"box": [round(v, 6) for v in self.box], "side": self.side,
                "pairs": self.pairs, "share": self.share,
                "aggregate_share": self.aggregate_share if np.isfinite(self.aggregate_share)
                else None, "area": self.area,
                "sentence": self.sentence, "hot_pairs": list(self.hot_pairs),
                "hot_shares": list(self.hot_shares)}


def candidate_boxes(grid: tuple[int, int], max_area: float = MAX_AREA) -> np.ndarray:
    """(n, 4) integer boxes (top, left, bottom, right) of whole cells covering at most
    `max_area` of the grid (at least one cell)."""
    rows, cols = grid
    boxes = [(t, l, t + h, l + w)
             for h in range(1, rows + 1) for w in range(1, cols + 1)
             if h * w <= max(max_area * rows * cols, 1)
             for t in range(rows - h + 1) for l in range(cols - w + 1)]
    return np.asarray(boxes, dtype=np.int64).reshape(-1, 4)


def box_sums(maps_: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(n_maps, n_boxes) sum of each map over each box (integral images)."""
    integral = np.zeros((len(maps_), maps_.shape[1] + 1, maps_.shape[2] + 1))
    integral[:, 1:, 1:] = maps_.cumsum(1).cumsum(2)
    t, l, b, r = boxes.T
    return integral[:, b, r] - integral[:, t, r] - integral[:, b, l] + integral[:, t, l]


def find(result: Audit, max_area: float = MAX_AREA, min_share: float = MIN_SHARE,
         min_ratio: float = MIN_RATIO, min_pairs: float = MIN_PAIRS,
         max_findings: int = MAX_FINDINGS) -> list[Finding]:
    """The findings of an audit (see the module docstring), strongest first."""
    n = len(result.pairs)
    if n == 0:
        return []
    boxes = candidate_boxes(result.grid, max_area)
    rows, cols = result.grid
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) / (rows * cols)
    threshold = np.maximum(min_share, min_ratio * areas)
    scores = result.scores
    usable = np.abs(scores) > 1e-9
    per_side = {}
    for side in ("query", "hit"):
        stack = result.overall_stack(side)
        hot_count = np.zeros(len(boxes))
        excess = np.zeros(len(boxes))
        hot_share = np.zeros(len(boxes))
        carried = np.zeros(len(boxes))
        for start in range(0, n, CHUNK):
            sums = box_sums(stack[start:start + CHUNK], boxes)
            carried += sums.sum(0)
            s = scores[start:start + CHUNK, None]
            with np.errstate(divide="ignore", invalid="ignore"):
                shares = np.where(usable[start:start + CHUNK, None], sums / s, 0.0)
            hot = shares >= threshold
            hot_count += hot.sum(0)
            excess += np.where(hot, shares - areas, 0.0).sum(0)
            hot_share += np.where(hot, shares, 0.0).sum(0)
        total = float(scores.sum())
        chosen = _choose(boxes, hot_count, excess, n, min_pairs, max_findings)
        per_side[side] = [(boxes[i], hot_count[i] / n, hot_share[i] / hot_count[i],
                           carried[i] / total if abs(total) > 1e-9 else float("nan"), areas[i])
                          for i in chosen]
    return _merge(result, per_side, threshold_of=(min_share, min_ratio))


def _choose(boxes: np.ndarray, hot_count: np.ndarray, excess: np.ndarray, n: int,
            min_pairs: float, max_findings: int) -> list[int]:
    eligible = np.flatnonzero((hot_count >= max(MIN_HOT, min_pairs * n)) & (excess > 0))
    order = eligible[np.argsort(-excess[eligible], kind="stable")]
    chosen: list[int] = []
    for i in order:
        if len(chosen) >= max_findings:
            break
        if any(_overlap(boxes[i], boxes[j]) for j in chosen):
            continue
        chosen.append(int(i))
    return chosen


def _overlap(a: np.ndarray, b: np.ndarray) -> bool:
    return bool(a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3])


def _merge(result: Audit, per_side: dict, threshold_of: tuple[float, float]) -> list[Finding]:
    """One Finding per box and side; a box found on both sides becomes one "both" finding
    (the numbers: the two sides' means)."""
    rows, cols = result.grid
    found: dict[tuple, list] = {}
    for side, items in per_side.items():
        for box, pairs, share, aggregate, area in items:
            found.setdefault(tuple(int(v) for v in box), []).append(
                (side, pairs, share, aggregate, area))
    out = []
    for box, items in found.items():
        side = items[0][0] if len(items) == 1 else "both"
        pairs, share, aggregate, area = (float(np.mean([it[j] for it in items]))
                                         for j in range(1, 5))
        relative = (box[0] / rows, box[1] / cols, box[2] / rows, box[3] / cols)
        hot, hot_shares = _hot_pairs(result, box, [it[0] for it in items], threshold_of, area)
        out.append(Finding(relative, side, pairs, share, aggregate, area,
                           _sentence(result, relative, side, pairs, share, area), hot,
                           hot_shares))
    return sorted(out, key=lambda f: -(f.share - f.area) * f.pairs)


def _hot_pairs(result: Audit, box: tuple, sides: list[str], threshold_of: tuple[float, float],
               area: float, count: int = 8) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """The pairs where the box carries the largest share (sides averaged), hot ones only, and
    those shares."""
    boxes = np.asarray([box])
    shares = np.mean([box_sums(result.overall_stack(side), boxes)[:, 0] for side in sides], 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = np.where(np.abs(result.scores) > 1e-9, shares / result.scores, -np.inf)
    threshold = max(threshold_of[0], threshold_of[1] * area)
    order = [int(i) for i in np.argsort(-shares, kind="stable") if shares[i] >= threshold]
    return tuple(order[:count]), tuple(float(shares[i]) for i in order[:count])


def _sentence(result: Audit, box: tuple[float, float, float, float], side: str, pairs: float,
              share: float, area: float) -> str:
    where = regionlib.describe(box, result.common_input_size)
    of = {"query": "the query", "hit": "the hit", "both": "the query and the hit"}[side]
    what = "distance" if result.lower_is_better else "similarity"
    text = (f"{share:.0%} of top-{result.k} {what} comes from the {where} of {of} "
            f"({area:.0%} of the image)")
    if pairs < 0.995:
        text += f", in {pairs:.0%} of the pairs"
    return text
