"""PairExplanation: the decomposition of one pair's similarity and the maps derived from it."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from . import maps, regions
from . import patterns as patternlib
from .errors import SimexplainError, check_whole
from .regions import DEFAULT_POINT_MAP, POINT_MAP_KINDS, point_map_label  # noqa: F401 (public here)
from .sides import pick
from .similarity import Similarity, get as get_similarity

if TYPE_CHECKING:  # the widget's module imports anywidget: only for the annotation
    from .notebook.widget import PointMapWidget


# Pairwise maps of more multiply-adds (P x Q x D) than this are formed in float32
# (`PairExplanation.pairwise_flat`); smaller ones, which take under a millisecond in float64,
# stay float64.
FLOAT32_PAIRWISE = 1 << 24


@dataclass
class Side:
    """One image of the pair: the photo, and what the model made of it.

    Points and regions on it are in the photo's pixels (coords="image", the default) or in
    the model input's (coords="input"); `frame` maps one onto the other (crop box, sizes).
    """

    image: Image.Image  # the photo as given (RGB); a gray canvas for tensor inputs
    grid: tuple[int, int]  # feature grid (H, W)
    contributions: torch.Tensor  # (P, D), u_p
    embedding: torch.Tensor  # (D,), the model's own embedding
    # where the model input lies in the photo; None given: all of it (__post_init__ sets it,
    # so a Side's frame is never None)
    frame: maps.Frame = None  # type: ignore[assignment]
    # (P, D) the positions' whole features mapped by the head (`head.Contributions.projected`)
    # for max-pooling and class-token heads; None where the contributions serve
    projected: torch.Tensor | None = None
    # (T, D) the prefix tokens' contributions (class token, registers; `head.Contributions.
    # tokens`): part of the embedding with no place in the image; None without such tokens
    tokens: torch.Tensor | None = None
    # False where no grid position carries anything of its own (`head.Contributions.spatial`):
    # the maps of this side are then an even spread of the constant term, not an explanation
    spatial: bool = True
    # what point maps need of this side, computed on first use (`regions.kind_maps`): a
    # pointer moving over many results reuses it
    point_map_stats: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.frame is None:
            self.frame = maps.Frame.whole((self.image.height, self.image.width))

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of the photo: the file's pixels."""
        return (self.image.height, self.image.width)

    @property
    def input_size(self) -> tuple[int, int]:
        """(height, width) of the model input."""
        return self.frame.input_size

    def point_weights(self, point: Sequence[float], coords: maps.Coords = "image") -> torch.Tensor:
        """(P,) bilinear weights of a pixel (row, col) on this side's grid."""
        return self.frame.point_weights(point, self.grid, coords)

    def region_weights(self, region: maps.Region, coords: maps.Coords = "image") -> torch.Tensor:
        """(P,) covered fraction of each cell for a box (top, left, bottom, right) or a mask."""
        return self.frame.region_weights(region, self.grid, coords)

    def to_dict(self) -> dict:
        """Photo size, crop box, input size, grid and the cells' boxes, in the file's pixels."""
        return self.frame.to_dict(self.grid)

    @property
    def rows(self) -> torch.Tensor:
        """(P + T, D) every contribution: the grid's positions, then the prefix tokens'."""
        if self.tokens is None:
            return self.contributions
        return torch.cat([self.contributions, self.tokens.to(self.contributions)])


# Values of the gallery sides' contributions that `PairExplanation.one_to_many` turns into
# float64 at once (128 MB): a whole gallery's would not fit in memory.
ONE_TO_MANY_VALUES = 1 << 24


@dataclass
class PairExplanation:
    """Why the model finds images a and b similar.

    `pairwise[i, j, k, l]` is the share of the score carried by position (i, j) of a's feature
    grid together with position (k, l) of b's. Maps are signed and on the feature grids;
    `upsample` brings one to image size, `simexplain.visualize.overlay_map` renders it.
    """

    score: float  # the model's own similarity from its own forward pass
    similarity: Similarity  # equals its name ("cosine", ...); to_dict reports the name
    a: Side
    b: Side
    overall_a_flat: torch.Tensor = field(repr=False)  # (P,)
    overall_b_flat: torch.Tensor = field(repr=False)  # (Q,)
    # (T,) the prefix tokens' shares of the score (class token first); empty without them.
    # The grid's overall map and these add up to the score.
    tokens_a: torch.Tensor = field(repr=False, default_factory=lambda: torch.zeros(0))
    tokens_b: torch.Tensor = field(repr=False, default_factory=lambda: torch.zeros(0))

    @classmethod
    def from_sides(cls, a: Side, b: Side, similarity: str | Similarity) -> PairExplanation:
        return cls.one_to_many(a, [b], similarity)[0]

    @classmethod
    def one_to_many(cls, a: Side, others: Sequence[Side], similarity: str | Similarity
                    ) -> list[PairExplanation]:
        """`from_sides(a, b)` for each b of `others`, in order, computed together: the maps
        of the sides of one shape as one batched product (`Similarity`'s side b takes a
        leading batch dimension), every score read back in one transfer (one read a pair
        would stall a GPU once a pair)."""
        similarity = get_similarity(similarity)
        u, e_a = a.rows.double(), a.embedding.double()
        n_a = len(a.contributions)
        groups: dict[tuple, list[int]] = {}
        for i, b in enumerate(others):  # by the rows' shape: the grid's, then the tokens'
            tokens = 0 if b.tokens is None else len(b.tokens)
            groups.setdefault((tuple(b.contributions.shape), tokens, b.contributions.device),
                              []).append(i)
        found: dict[int, PairExplanation] = {}
        chunks = []  # at most ONE_TO_MANY_VALUES contributions turned into float64 at once
        for (shape, tokens, _), members in groups.items():
            size = max(1, ONE_TO_MANY_VALUES // ((shape[0] + tokens) * shape[1]))
            chunks += [members[k:k + size] for k in range(0, len(members), size)]
        for members in chunks:
            # (G, Q + T, D) and (G, D); a group of one as a single pair, with no batch
            # dimension (the same numbers as ever, whatever the similarity broadcasts)
            single = len(members) == 1
            v = others[members[0]].rows if single else \
                torch.stack([others[i].rows for i in members])
            e_b = others[members[0]].embedding if single else \
                torch.stack([others[i].embedding for i in members])
            o_a, o_b = similarity.overall(u, v.double(), e_a, e_b.double())
            if single:
                o_a, o_b = o_a[None], o_b[None]  # (G, P + T), (G, Q + T)
            scores = similarity.score(a.embedding, e_b).reshape(-1).tolist()
            n_b = len(others[members[0]].contributions)
            for k, i in enumerate(members):
                found[i] = cls(score=scores[k], similarity=similarity, a=a, b=others[i],
                               overall_a_flat=o_a[k, :n_a], overall_b_flat=o_b[k, :n_b],
                               tokens_a=o_a[k, n_a:], tokens_b=o_b[k, n_b:])
        return [found[i] for i in range(len(others))]

    @property
    def token_share_a(self) -> float:
        """The share of the score carried by a's prefix tokens (class token, registers): what
        the grid's overall map does not hold (0 without such tokens)."""
        return float(self.tokens_a.sum())

    @property
    def token_share_b(self) -> float:
        """The share of the score carried by b's prefix tokens (see token_share_a)."""
        return float(self.tokens_b.sum())

    # -- the decomposition -----------------------------------------------------------------
    @functools.cached_property
    def pairwise_flat(self) -> torch.Tensor:
        """(P, Q) position-pair contributions D[p, q], float64. Computed on first use: the
        overall, point and region maps and the total never need it (P x Q grows as the
        square of the grid). Large maps (over FLOAT32_PAIRWISE multiply-adds) are formed from
        the float32 contributions in float32, about twice as fast; their entries then differ
        from a float64 product by about 1e-7 of their size (the contributions' own float32
        rounding is of that order), while the totals and overall maps stay float64."""
        u, v = self.a.contributions, self.b.contributions
        e_a, e_b = self.a.embedding, self.b.embedding
        if not (u.dtype == v.dtype == e_a.dtype == e_b.dtype == torch.float32
                and len(u) * len(v) * u.shape[1] > FLOAT32_PAIRWISE):
            u, v, e_a, e_b = u.double(), v.double(), e_a.double(), e_b.double()
        return self.similarity.pairwise(u, v, e_a, e_b.to(u.device)).double()

    @property
    def pairwise(self) -> torch.Tensor:
        """(Ha, Wa, Hb, Wb) position-pair contributions."""
        return self.pairwise_flat.reshape(*self.a.grid, *self.b.grid)

    @property
    def overall_a(self) -> torch.Tensor:
        """(Ha, Wa) signed overall map of image a."""
        return self.overall_a_flat.reshape(self.a.grid)

    @property
    def overall_b(self) -> torch.Tensor:
        """(Hb, Wb) signed overall map of image b."""
        return self.overall_b_flat.reshape(self.b.grid)

    @property
    def relative_a(self) -> torch.Tensor:
        """(Ha, Wa) relative map of image a: O_a minus each position's share of the score
        (METHOD.md, "Relative maps"); sums to 0. Red: carries more of the similarity than of
        a's own embedding."""
        return self._relative(self.a, self.overall_a_flat).reshape(self.a.grid)

    @property
    def relative_b(self) -> torch.Tensor:
        """(Hb, Wb) relative map of image b (see relative_a)."""
        return self._relative(self.b, self.overall_b_flat).reshape(self.b.grid)

    def _relative(self, side: Side, overall_flat: torch.Tensor) -> torch.Tensor:
        # over every row (prefix tokens too: their shares are part of the whole), then the grid
        tokens = self.tokens_a if side is self.a else self.tokens_b
        u, e = side.rows.double(), side.embedding.double()
        whole = torch.cat([overall_flat, tokens.to(overall_flat)])
        relative = self.similarity.relative(whole, u.to(overall_flat.device),
                                            e.to(overall_flat.device))
        return relative[:len(overall_flat)]

    @property
    def total(self) -> float:
        """What the decomposition sums to (the score, for exact heads)."""
        # sum_pq D[p, q] = pairwise(sum_p u_p, sum_q v_q): D is bilinear in (u, v); the prefix
        # tokens' rows count too (their shares complete the grid's to the score)
        u_sum = self.a.rows.double().sum(0, keepdim=True)
        v_sum = self.b.rows.double().sum(0, keepdim=True).to(u_sum.device)
        summed = self.similarity.pairwise(u_sum, v_sum, self.a.embedding.double(),
                                          self.b.embedding.double().to(u_sum.device))
        overall_a = torch.cat([self.overall_a_flat, self.tokens_a.to(self.overall_a_flat)])
        overall_b = torch.cat([self.overall_b_flat, self.tokens_b.to(self.overall_b_flat)])
        return float(self.similarity.total(summed, overall_a, overall_b))

    @property
    def residual(self) -> float:
        """|decomposition total - score|: float error for exact heads."""
        return abs(self.total - self.score)

    # -- point and region maps -------------------------------------------------------------
    def _sides(self, side: str) -> tuple[Side, Side]:
        """(the side pointed at, the other side)."""
        return pick(side, (self.a, self.b), (self.b, self.a))

    def weighted_map(self, side: str, weights: torch.Tensor) -> torch.Tensor:
        """sum_p w_p D[p, :] over the other image's grid, for weights (P,) on `side`'s grid."""
        here, there = self._sides(side)
        cells = here.grid[0] * here.grid[1]
        if tuple(torch.as_tensor(weights).shape) != (cells,):
            raise SimexplainError(
                f"weights must have shape ({cells},), one for each cell of image {side}'s "
                f"{here.grid[0]}x{here.grid[1]} grid, got {tuple(torch.as_tensor(weights).shape)}")
        return regions.side_map(self.similarity, weights, here, there, here_is_a=side == "a")

    def point_map(self, side: str, point: Sequence[float],
                  kind: str = DEFAULT_POINT_MAP, coords: maps.Coords = "image") -> torch.Tensor:
        """Map over the other image's grid for pixel (row, col) of `side` (bilinear weights),
        in the photo's pixels (coords="image") or the model input's (coords="input").

        kind: "contribution" (the exact row of D: the share of the score each position of the
        other image carries with this point), "match" (cosine between the point's contribution
        and each of the other image's), "match-centred" (the same after subtracting each image's
        mean contribution); see POINT_MAP_KINDS and DEFAULT_POINT_MAP. Under max pooling or a
        class token the match kinds compare the positions' whole features as the head maps them
        (`Side.projected`), so that every point has one. Raises NoPointMap where the point
        carries nothing to compare (the contribution kind at a GMP point that is no channel's
        maximum), instead of returning a flat map.
        """
        here, _ = self._sides(side)
        return self._kind_map(side, here.point_weights(point, coords), kind,
                              f"point {tuple(point)}")

    def region_map(self, side: str, region: maps.Region, kind: str = DEFAULT_POINT_MAP,
                   coords: maps.Coords = "image") -> torch.Tensor:
        """Map over the other image's grid for a box (top, left, bottom, right) or a mask of
        `side`, in the photo's pixels (or the model input's: coords="input"); the region's
        contribution is the covered-fraction weighted sum (kinds as for point_map)."""
        here, _ = self._sides(side)
        return self._kind_map(side, here.region_weights(region, coords), kind, "region")

    def _kind_map(self, side: str, weights: torch.Tensor, kind: str, what: str) -> torch.Tensor:
        here, there = self._sides(side)
        return regions.kind_map(self.similarity, weights, here, there, kind,
                                here_is_a=side == "a", what=f"{what} of image {side}")

    def point_map_matrix(self, kind: str = DEFAULT_POINT_MAP) -> torch.Tensor:
        """(P, Q) point maps of every position of a over b's grid (row p: the map of a's cell
        p; column q: the map of b's cell q over a's grid, for every kind); rows of positions
        without a map (no contribution) are NaN."""
        eye = torch.eye(self.a.contributions.shape[0], dtype=torch.float64)
        return regions.kind_maps(self.similarity, eye, self.a, self.b, kind, here_is_a=True)

    def patterns(self, k: int = patternlib.DEFAULT_PATTERNS, kind: str = DEFAULT_POINT_MAP,
                 spread: float = patternlib.DEFAULT_SPREAD, coords: maps.Coords = "image"
                 ) -> list[patternlib.Pattern]:
        """Cross-view patterns: the k strongest mutual best matches of the point maps of
        `kind` between a's and b's cells (strength: the share of the score the two cells carry
        together), spread out (`simexplain.patterns`), strongest first.
        Points are the cells' centres as pixel (row, col) indices in the photo (coords="image")
        or the model input (coords="input"): `point_map("a", pattern.point_a)` peaks at
        pattern.cell_b. Fewer than k where fewer positions match mutually. For a distance
        (`similarity.lower_is_better`: squared Euclidean) closeness is what counts: strength
        is -D[p, q] (how much the pair shortens the distance) and a contribution map's best
        match is its minimum."""
        check_whole(k, "k")
        matrix = self.point_map_matrix(kind)
        sign = -1.0 if self.similarity.lower_is_better else 1.0
        closeness = sign * self.pairwise_flat
        ranked = sign * matrix if kind == "contribution" else matrix
        found = patternlib.mutual_matches(ranked, closeness, self.a.grid, self.b.grid, k, spread)
        centres_a = self.a.frame.cell_centres(self.a.grid, coords) - 0.5  # pixel indices
        centres_b = self.b.frame.cell_centres(self.b.grid, coords) - 0.5
        return [patternlib.Pattern(
            point_a=(float(centres_a[p][0]), float(centres_a[p][1])),
            point_b=(float(centres_b[q][0]), float(centres_b[q][1])),
            strength=float(closeness[p, q]), match=float(matrix[p, q]),
            cell_a=divmod(p, self.a.grid[1]), cell_b=divmod(q, self.b.grid[1]))
            for p, q in found]

    def partial_score(self, side: str, region: maps.Region,
                      coords: maps.Coords = "image") -> float:
        """s_R = sum_p w_p O[p]: the share of the score carried by a region of `side` (a box
        or a mask in the photo's pixels, or the model input's with coords="input")."""
        here, _ = self._sides(side)
        overall = self.overall_a_flat if side == "a" else self.overall_b_flat
        weights = here.region_weights(region, coords).to(overall.device)
        return float(weights @ overall)

    # -- display -----------------------------------------------------------------------------
    def widget(self, kind: str = DEFAULT_POINT_MAP,
               display_size: int | None = None) -> PointMapWidget:
        """A live point-map widget for Jupyter (`simexplain.notebook.PointMapWidget`; needs
        `pip install 'simexplain[notebook]'`): point at one image, the other shows the point
        map of `kind`; drag a box for the region map. `display_size`: the images' longest
        side on screen in pixels (default 384)."""
        from .notebook import PointMapWidget  # here, not at the top: anywidget is optional
        options = {} if display_size is None else {"display_size": display_size}
        return PointMapWidget(self, kind=kind, **options)

    def show(self, kind: str = "overall", /, **options: Any) -> Image.Image:
        """One figure of the pair as an image (a PIL image: Jupyter displays it; `.save(path)`
        writes it). Kinds and their options:

        - "overall": per image, the photo, the overall map (signed and the paper's positive
          form) and the relative map; `title`.
        - "relative": the relative maps alone; `title`.
        - "points": point maps: `points` [(row, col), ...] in the photo's pixels of `side`
          ("a" by default; default points: the strongest cells), each marked there, its map of
          `kind` (default DEFAULT_POINT_MAP) drawn on the other image, the map's maximum
          ringed in the point's colour.
        - "patterns": the `k` (default 5) strongest cross-view patterns (`patterns`), linked
          across the two images; `kind` of point map.

        Where the model saw a crop of a photo (a face), maps are drawn on the crop enlarged.
        An unknown kind or option raises SimexplainError naming the valid ones. (The figure's
        kind is positional, so that `kind=` is the point-map option.)"""
        from .display import show  # here, not at the top: rendering sits above the engine
        return show(self, kind, **options)

    def _repr_html_(self) -> str:
        """Jupyter's inline display: score, residual, both photos with their overall and
        relative maps (the crop the model saw beside each photo, for faces)."""
        from .display import pair_html
        return pair_html(self)

    def image(self, side: str) -> Image.Image:
        return self._sides(side)[0].image

    def upsample(self, grid_map: torch.Tensor, side: str) -> np.ndarray:
        """A map over `side`'s grid, bilinearly upsampled onto that photo: the part the model
        saw (all of it, or the face crop) is filled, the rest is 0."""
        return self._sides(side)[0].frame.upsample(grid_map)[0]

    def to_dict(self) -> dict:
        """JSON-ready summary."""
        return {
            "score": self.score, "similarity": self.similarity.name, "residual": self.residual,
            "grid_a": list(self.a.grid), "grid_b": list(self.b.grid),
            "image_size_a": list(self.a.image_size), "image_size_b": list(self.b.image_size),
            "input_a": self.a.to_dict(), "input_b": self.b.to_dict(),
            "overall_a": self.overall_a.tolist(), "overall_b": self.overall_b.tolist(),
            "relative_a": self.relative_a.tolist(), "relative_b": self.relative_b.tolist(),
            "tokens_a": self.tokens_a.tolist(), "tokens_b": self.tokens_b.tolist(),
            "spatial_a": self.a.spatial, "spatial_b": self.b.spatial,
        }
