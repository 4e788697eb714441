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

The tally streams (`BoxTally`): each pair is scored against every candidate when it is added
and only running sums per box and the top `TOP_HOT` hot pairs per box are kept, so its memory
depends on the grid and `max_area`, not on the number of pairs. Hence `max_area`, `min_share`
and `min_ratio` are fixed before the first pair; `min_pairs` and `max_findings` apply at the end.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import SimexplainError
from . import regions as regionlib

if TYPE_CHECKING:
    from .result import Audit

MAX_AREA = 0.1  # candidates cover at most this fraction of the image
MIN_SHARE = 0.3  # a hot pair: the box carries at least this share of the score ...
MIN_RATIO = 6.0  # ... and at least this many times its area share
MIN_HOT = 3  # a finding: hot in at least this many pairs ...
MIN_PAIRS = 0.05  # ... and at least this fraction of the pairs
MAX_FINDINGS = 5  # per side
TOP_HOT = 8  # hot pairs kept per box (the ranked list and figures of a finding)
SCORE_FLOOR = 1e-9  # |s| below this: a pair has no share (NaN in `result`)


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


TALLY_OPTIONS = ("max_area", "min_share", "min_ratio")  # fixed while pairs are added
CHOICE_OPTIONS = ("min_pairs", "max_findings")  # used once, at the end


def check_options(options: Mapping[str, float], fixed: Mapping[str, float] | None = None
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """The finding options split into those of the tally and those of the final choice;
    an unknown name, or a tally option other than the `fixed` one (the tally already ran with
    it), is refused in one line."""
    unknown = sorted(set(options) - set(TALLY_OPTIONS) - set(CHOICE_OPTIONS))
    if unknown:
        raise SimexplainError(f"unknown finding option(s) {', '.join(unknown)}; known: "
                              f"{', '.join(TALLY_OPTIONS + CHOICE_OPTIONS)}")
    if fixed is not None:
        changed = [name for name in TALLY_OPTIONS
                   if name in options and (name not in fixed or options[name] != fixed[name])]
        if changed:
            raise SimexplainError(f"{', '.join(changed)} must be given when the audit starts "
                                  "(its candidate boxes are tallied pair by pair)")
    return ({k: v for k, v in options.items() if k in TALLY_OPTIONS},
            {k: v for k, v in options.items() if k in CHOICE_OPTIONS})


class BoxTally:
    """What the findings need, gathered one pair at a time: per candidate box and side, the
    number of hot pairs, the sums of their shares and excesses, the amount carried over all
    pairs, and the `top` hot pairs with the largest shares (per side, and sides averaged) in
    bounded heaps. Its size depends on the grid, `max_area` and `top`, never on the number of
    pairs."""

    VARIANTS = ("query", "hit", "both")

    def __init__(self, grid: tuple[int, int], max_area: float = MAX_AREA,
                 min_share: float = MIN_SHARE, min_ratio: float = MIN_RATIO, top: int = TOP_HOT):
        self.boxes = candidate_boxes(grid, max_area)
        rows, cols = grid
        self.areas = ((self.boxes[:, 2] - self.boxes[:, 0])
                      * (self.boxes[:, 3] - self.boxes[:, 1]) / (rows * cols))
        self.threshold = np.maximum(min_share, min_ratio * self.areas)
        self.top = top
        zeros = {side: np.zeros(len(self.boxes)) for side in ("query", "hit")}
        self.hot_count = {side: z.copy() for side, z in zeros.items()}
        self.excess = {side: z.copy() for side, z in zeros.items()}  # sum of (share - area)
        self.hot_share = {side: z.copy() for side, z in zeros.items()}  # sum of hot shares
        self.carried = {side: z.copy() for side, z in zeros.items()}  # sum of the box's s_R
        # variant -> box -> min-heap of (share, -pair): the `top` largest shares, earlier
        # pairs first among equal shares
        self.heaps: dict[str, dict[int, list[tuple[float, int]]]] = {
            variant: {} for variant in self.VARIANTS}

    def add(self, overall: dict[str, np.ndarray], score: float, pair: int) -> None:
        """One pair: its overall maps on the audit grid ("query", "hit"), score and number."""
        sums = {side: box_sums(overall[side][None], self.boxes)[0] for side in overall}
        usable = abs(score) > SCORE_FLOOR
        for side, amounts in sums.items():
            self.carried[side] += amounts
            if not usable:  # share 0: hot only for a threshold of 0
                shares = np.zeros(len(self.boxes))
            else:
                shares = amounts / score
            hot = shares >= self.threshold
            self.hot_count[side] += hot
            self.excess[side] += np.where(hot, shares - self.areas, 0.0)
            self.hot_share[side] += np.where(hot, shares, 0.0)
        if usable:
            both = np.mean([sums["query"], sums["hit"]], 0) / score
            for variant, shares in (("query", sums["query"] / score),
                                    ("hit", sums["hit"] / score), ("both", both)):
                self._keep(self.heaps[variant], shares, pair)

    def _keep(self, heaps: dict[int, list[tuple[float, int]]], shares: np.ndarray,
              pair: int) -> None:
        for box in np.flatnonzero(shares >= self.threshold):
            heap = heaps.setdefault(int(box), [])
            entry = (float(shares[box]), -pair)
            if len(heap) < self.top:
                heapq.heappush(heap, entry)
            elif entry > heap[0]:
                heapq.heapreplace(heap, entry)

    def hot_pairs(self, box: int, sides: list[str]) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """The box's hot pairs, largest share first (sides averaged when both), and shares."""
        variant = sides[0] if len(sides) == 1 else "both"
        kept = sorted(self.heaps[variant].get(box, []), reverse=True)
        return tuple(-pair for _, pair in kept), tuple(share for share, _ in kept)


def find(result: Audit, tally: BoxTally, min_pairs: float = MIN_PAIRS,
         max_findings: int = MAX_FINDINGS) -> list[Finding]:
    """The findings of an audit (see the module docstring), strongest first."""
    n = len(result.pairs)
    if n == 0:
        return []
    total = float(result.totals.sum())
    per_side = {}
    for side in ("query", "hit"):
        hot_count = tally.hot_count[side]
        chosen = _choose(tally.boxes, hot_count, tally.excess[side], n, min_pairs, max_findings)
        per_side[side] = [(i, hot_count[i] / n, tally.hot_share[side][i] / hot_count[i],
                           tally.carried[side][i] / total if abs(total) > SCORE_FLOOR
                           else float("nan"), tally.areas[i])
                          for i in chosen]
    return _merge(result, tally, per_side)


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


def _merge(result: Audit, tally: BoxTally, per_side: dict) -> list[Finding]:
    """One Finding per box and side; a box found on both sides becomes one "both" finding
    (the numbers: the two sides' means)."""
    rows, cols = result.grid
    found: dict[int, list] = {}
    for side, items in per_side.items():
        for box, pairs, share, aggregate, area in items:
            found.setdefault(int(box), []).append((side, pairs, share, aggregate, area))
    out = []
    for box, items in found.items():
        side = items[0][0] if len(items) == 1 else "both"
        pairs, share, aggregate, area = (float(np.mean([it[j] for it in items]))
                                         for j in range(1, 5))
        t, l, b, r = (int(v) for v in tally.boxes[box])
        relative = (t / rows, l / cols, b / rows, r / cols)
        hot, hot_shares = tally.hot_pairs(box, [it[0] for it in items])
        out.append(Finding(relative, side, pairs, share, aggregate, area,
                           _sentence(result, relative, side, pairs, share, area), hot,
                           hot_shares))
    return sorted(out, key=lambda f: -(f.share - f.area) * f.pairs)


def _sentence(result: Audit, box: tuple[float, float, float, float], side: str, pairs: float,
              share: float, area: float) -> str:
    where = regionlib.describe(box, result.common_input_size)
    of = {"query": "the query", "hit": "the hit", "both": "the query and the hit"}[side]
    what = "distance" if result.lower_is_better else "similarity"
    pairs_of = "the given pairs'" if result.given else f"top-{result.k}"
    if result.method == "occlusion":  # shares of the summed erase drops, not of the score
        text = (f"erasing the {where} of {of} ({area:.0%} of the image) accounts for "
                f"{share:.0%} of the summed drops of {pairs_of} {what}")
    else:
        text = (f"{share:.0%} of {pairs_of} {what} comes from the {where} of {of} "
                f"({area:.0%} of the image)")
    if pairs < 0.995:
        text += f", in {pairs:.0%} of the pairs"
    return text
