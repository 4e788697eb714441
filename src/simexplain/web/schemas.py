"""Request and response schemas of the JSON API (pydantic): validation and the OpenAPI docs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, FiniteFloat

from .engine import SHOWN_METHODS

ImageId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                               description="an image id from /api/images or an upload",
                               examples=["s0"])]
Token = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Side = Literal["a", "b"]
Method = Literal[SHOWN_METHODS]  # type: ignore[valid-type]  # the registry's names
Box = Annotated[list[FiniteFloat], Field(
    min_length=4, max_length=4,
    description="[top, left, bottom, right] in pixels of the image as the model sees it "
                "(`image_size`)", examples=[[40, 60, 120, 160]])]
Grid = Annotated[list[list[float]], Field(description="a map over the feature grid, rows of "
                                          "floats (H x W)")]
Seq = Annotated[int | None, Field(default=None, ge=0, le=2**53,
                                     description="echoed back, to match answers to requests")]


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong, in words")
    side: str | None = Field(default=None, description="the side of the image that failed "
                                "('a', 'b' or 'query'), when one did")
    image: str | None = Field(default=None, description="the id of the image that failed")
    file: str | None = Field(default=None, description="the uploaded file that failed")


class ImageInfo(BaseModel):
    id: str = Field(description="use this id in other requests")
    name: str
    source: Literal["gallery", "sample", "upload", "derived"]
    width: int | None = Field(default=None, description="pixels (null if not loaded yet)")
    height: int | None = None
    url: str = Field(description="where GET returns the image")


class ImageList(BaseModel):
    images: list[ImageInfo]
    total: int
    offset: int
    limit: int


class ModelInfo(BaseModel):
    name: str
    loaded: bool
    similarity: str | None = None
    description: str | None = None
    input_size: int | None = Field(default=None, description="the model's own input size "
                                      "(short side, pixels); null when it cannot change")
    sample_pair: list[str] | None = Field(default=None, description="ids of two sample "
                                             "images that suit the model (the page opens "
                                             "on them)")


class IndexInfo(BaseModel):
    model: str = Field(description="the model the index was built with (the gallery view uses it)")
    size: int = Field(description="number of gallery images")
    similarity: str
    layer: str


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelInfo]
    methods: list[str]
    index: IndexInfo | None = None
    upload_limit_bytes: int = Field(description="largest accepted upload file")
    pixel_limit: int = Field(description="largest accepted image, in pixels")
    max_input_side: int = Field(description="largest input size `size` may ask for")


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    index_size: int | None = None


class Peak(BaseModel):
    row: float = Field(description="pixel row of the map's maximum (cell centre)")
    col: float
    cell: list[int] = Field(description="[row, col] of the cell on the feature grid")
    value: float


class ExplainRequest(BaseModel):
    a: ImageId
    b: ImageId
    method: Method = Field(default="decomposition",
                           description="which overall maps to return; point and region maps "
                                       "always come from the decomposition (`point_maps` says "
                                       "whether the method has its own)")
    model: str | None = Field(default=None, max_length=200,
                                 description="a name from /api/models (default: the server's)")
    size: int | None = Field(default=None, description="the model's input size in pixels "
                                "(short side, as `--size`; a larger input gives a finer grid), "
                                "at most /api/models' max_input_side; null: the model's own")


class ExplainedSide(BaseModel):
    id: str = Field(description="the image id asked for")
    shown_id: str = Field(description="the image shown: the photo itself")
    url: str
    grid: list[int] = Field(description="[H, W] of the feature grid")
    image_size: list[int] = Field(description="[height, width] in pixels of the photo: points "
                                  "and boxes use these coordinates")
    crop: list[int] = Field(description="[top, left, bottom, right] of the photo that the "
                            "model saw (a face crop for face models, else the whole photo); "
                            "the feature grid covers it")
    input_size: list[int] = Field(description="[height, width] of the model's input")
    overall: Grid
    overall_peak: Peak
    token_share: float = Field(default=0.0, description="share of the score carried by the "
                               "image's class (prefix) tokens, which have no place on the grid "
                               "(transformers); the decomposition's overall map and it add up "
                               "to the score")
    spatial: bool = Field(default=True, description="false where no grid cell carries anything "
                          "of its own (a class-token model explained at its last layer): the "
                          "map is then no spatial explanation")


class ExplainResponse(BaseModel):
    explanation_id: str = Field(description="key of the cached decomposition for /api/point "
                                "and /api/region")
    model: str
    method: str
    similarity: str
    score: float = Field(description="the model's own similarity")
    residual: float = Field(description="|sum of the decomposition - score| (float error for "
                            "exact heads)")
    signed: bool = Field(description="true when the maps are signed (decomposition, relative)")
    point_maps: bool = Field(description="false when the method has no point maps of its own "
                             "(point and region maps then come from the decomposition)")
    size: int | None = Field(default=None, description="the input size used (short side, "
                                "pixels)")
    a: ExplainedSide
    b: ExplainedSide


class IdenticalRequest(BaseModel):
    explanation_id: Token


class Relation(BaseModel):
    method: str
    relation: Literal["identical", "positive part"] = Field(
        description="identical maps, or this method's map is the other's positive part")


class IdenticalResponse(BaseModel):
    explanation_id: str
    compared: list[str] = Field(description="the methods computed and compared")
    methods: dict[str, list[Relation]] = Field(description="for each method compared, the "
                                               "others that give the same maps on this pair")


class PointRequest(BaseModel):
    explanation_id: Token
    side: Side = Field(description="the image pointed at; the map is on the other one")
    row: FiniteFloat = Field(description="pixel row in the pointed image's `image_size`")
    col: FiniteFloat
    seq: Seq = None


class MapResponse(BaseModel):
    side: Side = Field(description="the image the map is drawn on")
    grid: list[int] | None = Field(description="null when no_map")
    map: Grid | None = Field(description="null when no_map")
    argmax: Peak | None = Field(description="null when no_map")
    top: list[Peak] | None = Field(default=None, description="point and region maps of a "
                                      "pair: the few largest cells, largest first (ringed 1, "
                                      "2, 3 in the page); null in search results")
    query_cell: list[float] | None = Field(default=None, description="point maps: [top, "
                                              "left, bottom, right] in pixels of the pointed "
                                              "cell")
    kind: str = Field(description="the point-map kind shown (the default, see README)")
    label: str = Field(description="what the map shows, for display")
    no_map: bool = Field(default=False, description="true where the point or region carries "
                         "no contribution (max-pooling heads): there is no map, not a flat one")
    message: str | None = Field(default=None, description="why there is no map")
    seq: int | None = None


class RegionRequest(BaseModel):
    explanation_id: Token
    side: Side
    box: Box
    seq: Seq = None


class RegionResponse(MapResponse):
    partial_score: float = Field(description="s_R: the share of the score carried by the box")


class SearchRequest(BaseModel):
    query: ImageId
    box: Box | None = Field(default=None, description="rank by the partial similarity of "
                               "this region of the query (null: the whole image)")
    k: int = Field(default=12, ge=1, le=100, description="number of results")


class QueryInfo(BaseModel):
    id: str
    shown_id: str
    url: str
    grid: list[int]
    image_size: list[int]
    crop: list[int]
    input_size: list[int]


class SearchHit(BaseModel):
    rank: int
    id: str = Field(description="gallery image id")
    index: int = Field(description="position in the index")
    name: str
    score: float = Field(description="similarity (partial similarity s_R with a box)")
    url: str
    grid: list[int]
    image_size: list[int]
    crop: list[int] = Field(description="[top, left, bottom, right] the model saw")
    input_size: list[int]
    map: Grid = Field(description="overall map (or region map, with a box) on this result")
    argmax: Peak
    stale: str | None = Field(None, description="set when the file changed since it was "
                                                "indexed (shown as it is now)")


class UnavailableHit(BaseModel):
    rank: int
    index: int = Field(description="position in the index")
    name: str
    stale: str = Field(description="why it is not shown: missing, or refused (not a regular "
                                   "file inside the gallery, e.g. a link swapped in)")


class SearchResponse(BaseModel):
    search_id: str = Field(description="key of the cached query for /api/search/point")
    model: str
    similarity: str
    query: QueryInfo
    box: list[float] | None = None
    hits: list[SearchHit]
    unavailable: list[UnavailableHit] = Field(default_factory=list)


class SearchPointRequest(BaseModel):
    search_id: Token
    results: list[ImageId] = Field(min_length=1, max_length=100,
                                   description="ids of the results on screen")
    row: FiniteFloat = Field(description="pixel row in the query's `image_size`")
    col: FiniteFloat
    seq: Seq = None


class ResultMap(MapResponse):
    id: str


class SearchPointResponse(BaseModel):
    maps: list[ResultMap]
    seq: int | None = None


ERRORS: dict[int | str, dict[str, Any]] = {400: {"model": ErrorBody, "description": "bad input"},
          404: {"model": ErrorBody, "description": "unknown id"},
          422: {"model": ErrorBody, "description": "invalid request body"}}


# -- cross-view patterns (PairExplanation.patterns) ----------------------------------------------
class PatternsRequest(BaseModel):
    explanation_id: Token
    k: int = Field(default=5, ge=1, le=50, description="how many patterns at most")


class PatternItem(BaseModel):
    point_a: list[float] = Field(description="(row, col) pixel of image a's `image_size`")
    point_b: list[float] = Field(description="(row, col) pixel of image b's `image_size`")
    strength: float = Field(description="the share of the score the two positions carry")
    match: float = Field(description="the value of the default point-map kind")
    cell_a: list[int]
    cell_b: list[int]


class PatternsResponse(BaseModel):
    explanation_id: str
    kind: str = Field(description="the point-map kind whose mutual best matches these are")
    patterns: list[PatternItem] = Field(description="strongest first; fewer than k where "
                                                    "fewer positions match mutually")
