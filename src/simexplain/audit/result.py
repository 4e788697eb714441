"""What an audit gathers, pair by pair, and what it concludes (`Audit`).

Per (query, hit) pair the exact decomposition gives two signed overall maps, O_a on the query's
feature grid and O_b on the hit's, each summing to the pair's score s (METHOD.md). Of a region
R with cell weights w (the covered fraction of each cell), the partial score s_R = sum_p w_p O[p]
is what R carries on one side. An audit reports per pair and region:

* the share of the score, s_R / s, on the query side, on the hit side, and on both sides
  ((s_R,a + s_R,b) / 2s, the mean of the two: each side's map sums to s). It is signed and not
  bounded by [0, 1] (other regions may carry negative amounts); it is NaN where |s| < 1e-9;
* the positive-mass share, sum_p w_p max(O[p], 0) / sum_p max(O[p], 0), in [0, 1] (both sides:
  the two sides' positive masses pooled), defined whatever the sign or size of s;
* the joint share w_a^T D w_b / s: what R of the query carries together with R of the hit.

The audit streams: each pair's overall maps are resampled onto one fixed grid (G x G,
`maps.resample`: exact for boxes of that grid), added to running sums (the mean maps) and scored
against the findings' candidate boxes (`findings.BoxTally`), then dropped. What stays per pair is
scalars only: its `PairRecord` and 8 bytes per amount (`array("d")`): two positive totals and
five amounts per named region, the distribution over pairs that the shares report. Everything
else has a size set by the grid, the regions and `max_area`, never by the number of pairs or the
gallery (docs/audit.md, "Memory").
For a distance (squared Euclidean) the shares are shares of the distance d^2.

With `method="occlusion"` (an input-level counterfactual) each side's map is instead the occlusion
method's (`methods.Occlusion`): the drop of the pair's closeness when that cell's pixels are
erased. Those maps feed the same sums, shares and findings, with the pair's total drop
D = (D_query + D_hit) / 2 in the place of s, D_side = sum_p max(drop_p, 0) the side's summed
positive drops: occlusion shares are shares of the summed drops, not exact partial scores (the
drops of single cells need not add up to the score, and erasing a cell can raise the score: the
signed sum can be near zero, which would make shares meaningless). Relative maps, joint shares
and cross-view patterns stay the decomposition's, as in the default mode. Cost: one forward per
feature cell and side plus two (docs/audit.md), batched; memory per pair is the
batch of erased inputs, still bounded by the grid, not the gallery.
"""

from __future__ import annotations

import json
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from .. import maps
from ..errors import SimexplainError
from ..files import json_default
from . import regions as regionlib
from .findings import SCORE_FLOOR, BoxTally, Finding, check_options, find

if TYPE_CHECKING:
    from ..explanation import PairExplanation

SIDES = ("query", "hit")
HISTOGRAM_BINS = np.linspace(-0.5, 1.5, 21)  # region shares' distribution over pairs
RECURRING = 10  # recurring patterns reported
TOP_PAIRS = 8  # ranked pairs reported per region


@dataclass(slots=True)
class PairRecord:
    """One audited pair: the query (a path, or a gallery row's path) and its gallery row (-1:
    not of the gallery), the hit's path and gallery row (-1: a given hit outside the gallery),
    its rank among the query's hits (0: a given pair, no search) and the pair's score."""

    query: str
    hit: str
    hit_row: int
    rank: int
    score: float
    query_row: int = -1

    def to_dict(self) -> dict:
        return {"query": self.query, "query_row": self.query_row, "hit": self.hit,
                "hit_row": self.hit_row, "rank": self.rank, "score": self.score}


@dataclass
class RegionSums:
    """Per-pair amounts of one region, 8 bytes each (`array("d")`)."""

    partial_query: array = field(default_factory=lambda: array("d"))  # s_R on the query side
    partial_hit: array = field(default_factory=lambda: array("d"))
    positive_query: array = field(default_factory=lambda: array("d"))  # sum w_p max(O_p, 0)
    positive_hit: array = field(default_factory=lambda: array("d"))
    joint: array = field(default_factory=lambda: array("d"))  # w_a^T D w_b


METHODS = ("decomposition", "occlusion")  # where an audit's per-side maps come from


@dataclass
class Audit:
    """Where similarity comes from over many (query, hit) pairs (see the module docstring).

    `region_shares[name]`: (n_pairs,) share s_R / s of each pair's score carried by the region,
    both sides (`region_shares_query`, `region_shares_hit`, `region_joint_shares`,
    `region_positive_shares` for the others); `findings`: regions where similarity
    concentrates far above their area, found without being named; `mean_maps`: mean overall
    and relative maps per side on the audit's grid; `recurring`: cross-view patterns found at
    the same place in many pairs; `to_json()`, `write_report(folder)`. `given`: the pairs
    were given (`audit(pairs=...)`), not searched.
    """

    k: int
    regions: dict[str, regionlib.RelativeBox]
    grid: tuple[int, int]
    similarity: str = "cosine"
    lower_is_better: bool = False
    model: str | None = None
    index: str | None = None
    pairs: list[PairRecord] = field(default_factory=list)
    queries: int = 0
    input_sizes: set[tuple[int, int]] = field(default_factory=set)
    sums: dict[str, RegionSums] = field(default_factory=dict)
    positive_totals: dict[str, array] = field(
        default_factory=lambda: {side: array("d") for side in SIDES})
    overall_sums: dict[str, np.ndarray] = field(default_factory=dict)
    relative_sums: dict[str, np.ndarray] = field(default_factory=dict)
    pattern_counts: Counter = field(default_factory=Counter)
    pattern_strengths: dict[tuple, float] = field(default_factory=dict)
    findings: list[Finding] = field(default_factory=list)
    seconds: float = 0.0
    given: bool = False
    # gallery files left out because they are missing or refused now (path -> why)
    stale: dict[str, str] = field(default_factory=dict)
    # `max_area`, `min_share`, `min_ratio`, `min_pairs`, `max_findings` of `findings.find`
    finding_options: dict[str, float] = field(default_factory=dict)
    # "decomposition": the exact overall maps; "occlusion": each cell's erase drop (`add`'s
    # `side_maps`)
    method: str = "decomposition"
    # occlusion: each pair's total drop D (the mean of its two sides' summed positive drops)
    drop_totals: array = field(default_factory=lambda: array("d"))
    tally: BoxTally = field(init=False, repr=False, compare=False)
    # PairRecord -> its PairExplanation again, for the report's figures: set by `audit` (it
    # holds the index and its model); None: the report has no pair figures
    explain_pair: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        self.regions = regionlib.check_regions(self.regions)
        check_method(self.method)
        self.grid = (int(self.grid[0]), int(self.grid[1]))
        for name in self.regions:
            self.sums.setdefault(name, RegionSums())
        for side in SIDES:
            self.relative_sums.setdefault(side, np.zeros(self.grid))
            self.overall_sums.setdefault(side, np.zeros(self.grid))
        tally_options, _ = check_options(self.finding_options)
        self.tally = BoxTally(self.grid, **tally_options)

    # -- gathering -------------------------------------------------------------------------------
    def add(self, pair: PairExplanation, record: PairRecord, patterns: int = 3,
            side_maps: tuple[Any, Any] | None = None) -> None:
        """Add one explained pair (query = side a, hit = side b). `side_maps`: the (query, hit)
        maps on the pair's feature grids that replace its overall maps (method "occlusion":
        required; "decomposition": not given)."""
        if (side_maps is None) != (self.method == "decomposition"):
            need = "needs" if side_maps is None else "takes no"
            raise SimexplainError(f"an audit by {self.method} {need} side_maps with each pair")
        if side_maps is None:
            side_maps = (pair.overall_a, pair.overall_b)
        flat = [m.detach().double().cpu().reshape(-1) for m in side_maps]
        self.pairs.append(record)
        self.input_sizes.update({pair.a.input_size, pair.b.input_size})
        if self.method != "decomposition":
            self.drop_totals.append(float(flat[0].clamp_min(0).sum()
                                          + flat[1].clamp_min(0).sum()) / 2)
        on_grid = {}
        for side, here, o_map, r_map in (("query", pair.a, side_maps[0], pair.relative_a),
                                         ("hit", pair.b, side_maps[1], pair.relative_b)):
            overall = o_map.detach().double().cpu().reshape(here.grid)
            on_grid[side] = maps.resample(overall, self.grid)
            self.overall_sums[side] += on_grid[side]
            self.relative_sums[side] += maps.resample(r_map, self.grid)
            self.positive_totals[side].append(float(overall.clamp_min(0).sum()))
        self.tally.add(on_grid, float(self.totals[-1]), len(self.pairs) - 1)
        for name, box in self.regions.items():
            self._add_region(pair, flat, self.sums[name], box)
        if patterns:
            self._add_patterns(pair, patterns)

    def _add_region(self, pair: PairExplanation, flat: list, sums: RegionSums,
                    box: regionlib.RelativeBox) -> None:
        """`flat`: the pair's (query, hit) maps, flattened, float64 on the CPU."""
        weights = {}
        for side, here, overall, partial, positive in (
                ("a", pair.a, flat[0], sums.partial_query, sums.positive_query),
                ("b", pair.b, flat[1], sums.partial_hit, sums.positive_hit)):
            w = regionlib.grid_weights(box, here.grid).double()
            weights[side] = w
            partial.append(float(w @ overall))
            positive.append(float(w @ overall.clamp_min(0)))
        # w_a^T D w_b = D(sum_p w_p u_p, sum_q w_q v_q): D is bilinear in (u, v)
        u = (weights["a"].to(pair.a.contributions.device) @ pair.a.contributions.double())
        v = (weights["b"].to(pair.b.contributions.device) @ pair.b.contributions.double())
        joint = pair.similarity.pairwise(u[None], v[None].to(u.device),
                                         pair.a.embedding.double(),
                                         pair.b.embedding.double().to(u.device))
        sums.joint.append(float(joint.sum()))

    def _add_patterns(self, pair: PairExplanation, count: int) -> None:
        """Count the pair's strongest cross-view patterns by their cells on the audit grid."""
        scale = abs(pair.score) if abs(pair.score) > SCORE_FLOOR else 1.0
        for pattern in pair.patterns(k=count, coords="input"):
            cells = (self._cell(pattern.point_a, pair.a.input_size),
                     self._cell(pattern.point_b, pair.b.input_size))
            self.pattern_counts[cells] += 1
            self.pattern_strengths[cells] = (self.pattern_strengths.get(cells, 0.0)
                                             + pattern.strength / scale)

    def _cell(self, point: tuple[float, float], size: tuple[int, int]) -> tuple[int, int]:
        rows, cols = self.grid
        return (min(int((point[0] + 0.5) / size[0] * rows), rows - 1),
                min(int((point[1] + 0.5) / size[1] * cols), cols - 1))

    def finish(self, **options: float) -> Audit:
        """Find the regions where similarity concentrates (`findings.find`). `min_pairs` and
        `max_findings` may be given here; the others were fixed when the Audit was made."""
        _, choice = check_options({**self.finding_options, **options},
                                  fixed=self.finding_options)
        self.findings = find(self, self.tally, **choice)
        return self

    # -- per-pair numbers --------------------------------------------------------------------------
    @property
    def scores(self) -> np.ndarray:
        """(n_pairs,) each pair's score s (the model's own)."""
        return np.array([p.score for p in self.pairs], dtype=np.float64)

    @property
    def totals(self) -> np.ndarray:
        """(n_pairs,) what shares are shares of: the score s (decomposition), or the pair's
        total drop D, the mean of its two sides' summed positive drops (occlusion)."""
        if self.method == "decomposition":
            return self.scores
        return np.array(self.drop_totals, dtype=np.float64)

    def _share(self, amounts: Sequence[float] | np.ndarray, scale: float = 1.0,
               of_score: bool = False) -> np.ndarray:
        s = self.scores if of_score else self.totals
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.asarray(amounts, dtype=np.float64) / (scale * s)
        out[np.abs(s) < SCORE_FLOOR] = np.nan
        return out

    @property
    def region_shares(self) -> dict[str, np.ndarray]:
        """name -> (n_pairs,) (s_R,a + s_R,b) / 2s: the share of the score the region carries,
        both sides together."""
        return {name: self._share(list(np.add(r.partial_query, r.partial_hit)), 2.0)
                for name, r in self.sums.items()}

    @property
    def region_shares_query(self) -> dict[str, np.ndarray]:
        """name -> (n_pairs,) s_R,a / s: the query side's region."""
        return {name: self._share(r.partial_query) for name, r in self.sums.items()}

    @property
    def region_shares_hit(self) -> dict[str, np.ndarray]:
        """name -> (n_pairs,) s_R,b / s: the hit side's region."""
        return {name: self._share(r.partial_hit) for name, r in self.sums.items()}

    @property
    def region_joint_shares(self) -> dict[str, np.ndarray]:
        """name -> (n_pairs,) w_a^T D w_b / s: the region of the query with the region of the
        hit."""
        return {name: self._share(r.joint, of_score=True) for name, r in self.sums.items()}

    @property
    def region_positive_shares(self) -> dict[str, np.ndarray]:
        """name -> (n_pairs,) the region's share of the positive mass of both overall maps."""
        total = np.add(self.positive_totals["query"], self.positive_totals["hit"])
        with np.errstate(divide="ignore", invalid="ignore"):
            return {name: np.where(total > 0, np.add(r.positive_query, r.positive_hit) / total,
                                   np.nan) for name, r in self.sums.items()}

    def region_partial_scores(self, name: str) -> dict[str, np.ndarray]:
        """The region's raw amounts per pair: s_R on each side ("query", "hit") and "joint"."""
        r = self.sums[name]
        return {"query": np.array(r.partial_query, dtype=np.float64),  # copies: the arrays
                "hit": np.array(r.partial_hit, dtype=np.float64),  # behind may still grow
                "joint": np.array(r.joint, dtype=np.float64)}

    def aggregate_share(self, name: str) -> float:
        """sum over pairs of s_R (both sides, halved) / sum of s: the share of all the audited
        similarity the region carries (robust to single pairs of small score)."""
        r = self.sums[name]
        total = float(self.totals.sum())
        carried = float(np.sum(r.partial_query) + np.sum(r.partial_hit)) / 2
        return carried / total if abs(total) > SCORE_FLOOR else float("nan")

    def area_share(self, name: str) -> float:
        """The share the region would carry if similarity were spread by area."""
        return regionlib.area(self.regions[name])

    # -- maps -------------------------------------------------------------------------------------
    @property
    def mean_maps(self) -> dict[str, np.ndarray]:
        """"overall_query", "overall_hit", "relative_query", "relative_hit": mean maps on the
        audit grid (normalised image coordinates), and "share_query", "share_hit": the share
        of all the audited similarity each cell carries (sum of O / sum of s), to compare with
        the area share 1 / (G x G) of a cell."""
        n = max(len(self.pairs), 1)
        total = float(self.totals.sum()) or 1.0
        out = {}
        for side in SIDES:
            summed = self.overall_sums[side]
            out[f"overall_{side}"] = summed / n
            out[f"relative_{side}"] = self.relative_sums[side] / n
            out[f"share_{side}"] = summed / total
        return out

    @property
    def recurring(self) -> list[dict]:
        """Cross-view patterns found at the same place (cells of the audit grid, query and hit)
        in more than one pair, most frequent first: cells, the fraction of pairs, the mean
        strength as a share of the score."""
        n = max(len(self.pairs), 1)
        ranked = sorted(self.pattern_counts.items(), key=lambda item: (-item[1], item[0]))
        return [{"cell_query": list(cells[0]), "cell_hit": list(cells[1]), "pairs": count,
                 "fraction": count / n,
                 "mean_strength_share": self.pattern_strengths[cells] / count}
                for cells, count in ranked[:RECURRING] if count > 1]

    def top_pairs(self, shares: np.ndarray, count: int = TOP_PAIRS) -> list[int]:
        """Indices of the pairs with the largest shares (NaN last), largest first."""
        keys = np.where(np.isnan(shares), -np.inf, shares)
        return [int(i) for i in np.argsort(-keys, kind="stable")[:count]]

    @property
    def common_input_size(self) -> tuple[int, int] | None:
        """The model input size when every audited image had the same one, else None."""
        return next(iter(self.input_sizes)) if len(self.input_sizes) == 1 else None

    # -- output -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready summary (what result.json holds)."""
        region_out = {}
        shares = self.region_shares
        for name, box in self.regions.items():
            values = shares[name]
            finite = values[np.isfinite(values)]
            counts, edges = np.histogram(np.clip(finite, HISTOGRAM_BINS[0], HISTOGRAM_BINS[-1]),
                                         HISTOGRAM_BINS)
            region_out[name] = {
                "box": list(box), "area_share": self.area_share(name),
                "aggregate_share": _stat(np.mean, np.array([self.aggregate_share(name)])),
                "mean_share": _stat(np.mean, finite), "median_share": _stat(np.median, finite),
                "mean_share_query": _stat(np.nanmean, self.region_shares_query[name]),
                "mean_share_hit": _stat(np.nanmean, self.region_shares_hit[name]),
                "mean_joint_share": _stat(np.nanmean, self.region_joint_shares[name]),
                "mean_positive_share": _stat(np.nanmean, self.region_positive_shares[name]),
                "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
                "top_pairs": [{"pair": i, "share": float(values[i]), **self.pairs[i].to_dict()}
                              for i in self.top_pairs(values)],
                "shares": _floats(values),
                "shares_query": _floats(self.region_shares_query[name]),
                "shares_hit": _floats(self.region_shares_hit[name]),
                "joint_shares": _floats(self.region_joint_shares[name]),
                "positive_shares": _floats(self.region_positive_shares[name]),
            }
        return {
            "kind": "simexplain audit", "method": self.method, "model": self.model,
            "index": self.index,
            "similarity": self.similarity, "k": self.k,
            "given_pairs": self.given, "queries": self.queries,
            "stale": self.stale,
            "pairs": len(self.pairs), "grid": list(self.grid), "seconds": self.seconds,
            "input_size": None if self.common_input_size is None else
            list(self.common_input_size),
            "findings": [f.to_dict() for f in self.findings],
            "regions": region_out, "recurring_patterns": self.recurring,
            "mean_maps": {name: m.tolist() for name, m in self.mean_maps.items()},
            "pair_list": [p.to_dict() for p in self.pairs],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, default=json_default, allow_nan=False)

    def write_report(self, folder: str | Path, figures: int = TOP_PAIRS,
                     progress: bool = False) -> Path:
        """A self-contained report folder: index.html, PNG figures and result.json (see
        `simexplain.audit.report`). Refuses a folder that is neither empty nor an earlier
        audit's report."""
        from .report import write_report
        return write_report(self, Path(folder), figures=figures, progress=progress)


def check_method(method: str) -> str:
    """`method` if it is one of METHODS, else a one-line SimexplainError."""
    if method not in METHODS:
        raise SimexplainError(f"unknown audit method {method!r}; choose one of "
                              f"{', '.join(METHODS)}")
    return method


def _floats(values: np.ndarray) -> list[float | None]:
    """JSON-ready: NaN (an undefined share) as null."""
    return [float(v) if np.isfinite(v) else None for v in values]


def _stat(function, values: np.ndarray) -> float | None:
    """function(the finite values) as a float; None (JSON null) where there are none."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    return float(function(values)) if values.size else None
