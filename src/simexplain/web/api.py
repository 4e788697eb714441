"""The JSON API (FastAPI): request and response schemas, routes, error handling, body limits.

Every error answers `{"error": "..."}` with a fitting status: 400 (bad input: malformed JSON,
points outside the image, empty boxes, undecodable images), 404 (unknown ids or models),
413 (upload or image too large), 422 (missing fields, wrong types).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Annotated, Literal, Optional

from fastapi import FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field, FiniteFloat
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import SimexplainError
from .engine import METHODS, Engine, status_of

STATIC = Path(__file__).parent / "static"
JSON_BODY_LIMIT = 1024 * 1024
log = logging.getLogger("simexplain.web")

ImageId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$",
                               description="an image id from /api/images or an upload",
                               examples=["s0"])]
Token = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
Side = Literal["a", "b"]
Method = Literal["decomposition", "relative", "gradcam", "gradcam-raw", "rgradcam", "occlusion"]
Box = Annotated[list[FiniteFloat], Field(
    min_length=4, max_length=4,
    description="[top, left, bottom, right] in pixels of the image as the model sees it "
                "(`image_size`)", examples=[[40, 60, 120, 160]])]
Grid = Annotated[list[list[float]], Field(description="a map over the feature grid, rows of "
                                          "floats (H x W)")]
Seq = Annotated[Optional[int], Field(default=None, ge=0, le=2**53,
                                     description="echoed back, to match answers to requests")]


class ErrorBody(BaseModel):
    error: str = Field(description="what went wrong, in words")


class ImageInfo(BaseModel):
    id: str = Field(description="use this id in other requests")
    name: str
    source: Literal["gallery", "sample", "upload", "derived"]
    width: Optional[int] = Field(default=None, description="pixels (null if not loaded yet)")
    height: Optional[int] = None
    url: str = Field(description="where GET returns the image")


class ImageList(BaseModel):
    images: list[ImageInfo]
    total: int
    offset: int
    limit: int


class ModelInfo(BaseModel):
    name: str
    loaded: bool
    similarity: Optional[str] = None
    description: Optional[str] = None


class IndexInfo(BaseModel):
    model: str = Field(description="the model the index was built with (the gallery view uses it)")
    size: int = Field(description="number of gallery images")
    similarity: str
    layer: str


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelInfo]
    methods: list[str]
    index: Optional[IndexInfo] = None


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    index_size: Optional[int] = None


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
                                       "always come from the decomposition")
    model: Optional[str] = Field(default=None, max_length=200,
                                 description="a name from /api/models (default: the server's)")


class ExplainedSide(BaseModel):
    id: str = Field(description="the image id asked for")
    shown_id: str = Field(description="the image the model saw (a face crop for face models)")
    url: str
    grid: list[int] = Field(description="[H, W] of the feature grid")
    image_size: list[int] = Field(description="[height, width] in pixels of the image as the "
                                  "model sees it: points and boxes use these coordinates")
    overall: Grid
    overall_peak: Peak


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
    a: ExplainedSide
    b: ExplainedSide


class PointRequest(BaseModel):
    explanation_id: Token
    side: Side = Field(description="the image pointed at; the map is on the other one")
    row: FiniteFloat = Field(description="pixel row in the pointed image's `image_size`")
    col: FiniteFloat
    seq: Seq = None


class MapResponse(BaseModel):
    side: Side = Field(description="the image the map is drawn on")
    grid: list[int]
    map: Optional[Grid] = Field(description="null when no_map")
    argmax: Optional[Peak] = Field(description="null when no_map")
    kind: str = Field(description="the point-map kind shown (the default, see README)")
    label: str = Field(description="what the map shows, for display")
    no_map: bool = Field(default=False, description="true where the point or region carries "
                         "no contribution (max-pooling heads): there is no map, not a flat one")
    message: Optional[str] = None
    seq: Optional[int] = None


class RegionRequest(BaseModel):
    explanation_id: Token
    side: Side
    box: Box
    seq: Seq = None


class RegionResponse(MapResponse):
    partial_score: float = Field(description="s_R: the share of the score carried by the box")


class SearchRequest(BaseModel):
    query: ImageId
    box: Optional[Box] = Field(default=None, description="rank by the partial similarity of "
                               "this region of the query (null: the whole image)")
    k: int = Field(default=12, ge=1, le=100, description="number of results")


class QueryInfo(BaseModel):
    id: str
    shown_id: str
    url: str
    grid: list[int]
    image_size: list[int]


class SearchHit(BaseModel):
    rank: int
    id: str = Field(description="gallery image id")
    index: int = Field(description="position in the index")
    name: str
    score: float = Field(description="similarity (partial similarity s_R with a box)")
    url: str
    grid: list[int]
    image_size: list[int]
    map: Grid = Field(description="overall map (or region map, with a box) on this result")
    argmax: Peak


class SearchResponse(BaseModel):
    search_id: str = Field(description="key of the cached query for /api/search/point")
    model: str
    similarity: str
    query: QueryInfo
    box: Optional[list[float]] = None
    hits: list[SearchHit]


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
    seq: Optional[int] = None


ERRORS = {400: {"model": ErrorBody, "description": "bad input"},
          404: {"model": ErrorBody, "description": "unknown id"},
          422: {"model": ErrorBody, "description": "invalid request body"}}


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int):
        super().__init__(413, f"request body exceeds the limit of {limit} bytes")


class BodyLimit:
    """ASGI middleware: refuse request bodies above a limit (uploads get a larger one), by the
    declared Content-Length at once, else while the body streams in."""

    def __init__(self, app, json_limit: int, upload_limit: int):
        self.app = app
        self.json_limit = json_limit
        self.upload_limit = upload_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_limit if scope.get("path") == "/api/images" else self.json_limit
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > limit:
                    response = JSONResponse(
                        {"error": f"request body of {declared} bytes exceeds the limit of "
                                  f"{limit} bytes"}, status_code=413)
                    return await response(scope, receive, send)
        received = 0

        async def limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        return await self.app(scope, limited, send)


class ServerTiming:
    """ASGI middleware: a `Server-Timing: app;dur=<ms>` header on every response (the time
    from the request's arrival to the response's first byte, serialisation included)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()

        async def timed(message):
            if message["type"] == "http.response.start":
                took = (time.perf_counter() - start) * 1000
                message = {**message, "headers": [*message.get("headers", []),
                                                  (b"server-timing", f"app;dur={took:.2f}".encode())]}
            await send(message)

        return await self.app(scope, receive, timed)


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def build_app(engine: Engine, title: str = "simexplain") -> FastAPI:
    app = FastAPI(
        title=title, version="0.1",
        description="Explain why a metric-learning model finds two images similar "
                    "(activation decomposition, Zhu et al. TIP 2021): overall, point-specific "
                    "and region maps of image pairs, and region search in a gallery. Maps are "
                    "small float grids over the models' feature grids; the page at / renders "
                    "them.")
    app.state.engine = engine

    multipart_margin = 64 * 1024
    app.add_middleware(ServerTiming)
    app.add_middleware(BodyLimit, json_limit=JSON_BODY_LIMIT,
                       upload_limit=engine.max_upload_bytes + multipart_margin)

    # -- errors --------------------------------------------------------------------------------
    @app.exception_handler(SimexplainError)
    async def _simexplain_error(_request: Request, exc: SimexplainError):
        return error(status_of(exc), str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = "no such endpoint"
        elif exc.status_code == 400 and message == "There was an error parsing the body":
            message = "malformed request body: not valid JSON (UTF-8) or form data"
        return JSONResponse({"error": message}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError):
        problems = exc.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            detail = next(p for p in problems if p.get("type") == "json_invalid")
            reason = (detail.get("ctx") or {}).get("error", "invalid JSON")
            return error(400, f"malformed JSON body: {reason}")
        parts = []
        for p in problems[:5]:
            where = ".".join(str(x) for x in p.get("loc", ()) if x != "body") or "body"
            parts.append(f"{where}: {p.get('msg', 'invalid')}")
        return JSONResponse(
            {"error": "invalid request: " + "; ".join(parts),
             "detail": [{"loc": [str(x) for x in p.get("loc", ())], "msg": str(p.get("msg")),
                         "type": str(p.get("type"))} for p in problems[:20]]},
            status_code=422)

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception):
        log.exception("unexpected error", exc_info=exc)
        return error(500, f"internal error ({type(exc).__name__})")

    # -- service -------------------------------------------------------------------------------
    @app.get("/healthz", response_model=Health, tags=["service"],
             summary="200 when the model (and the index, if any) are loaded")
    def healthz():
        info = engine.index_info()
        return {"status": "ok", "model": engine.default_model,
                "index_size": info["size"] if info else None}

    @app.get("/api/models", response_model=ModelsResponse, tags=["service"],
             summary="models, methods and the index this server offers")
    def models():
        return {"default": engine.default_model, "models": engine.model_infos(),
                "methods": list(METHODS), "index": engine.index_info()}

    # -- images --------------------------------------------------------------------------------
    @app.get("/api/images", response_model=ImageList, tags=["images"],
             summary="list the gallery images (with an index) or the sample images")
    def list_images(source: Literal["gallery", "samples"] = "samples",
                    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
                    limit: Annotated[int, Query(ge=1, le=1000)] = 200):
        items, total = engine.images.listing(source, offset, limit)
        return {"images": items, "total": total, "offset": offset, "limit": limit}

    @app.post("/api/images", response_model=ImageInfo, status_code=201, tags=["images"],
              summary="upload an image; returns its id",
              responses={**ERRORS, 413: {"model": ErrorBody, "description": "too large"}})
    async def upload(file: UploadFile = File(description="the image file (PNG, JPEG, ...); at "
                                              "most 10 MB and 40 megapixels by default")):
        data = await file.read(engine.max_upload_bytes + 1)
        if len(data) > engine.max_upload_bytes:
            return error(413, f"upload exceeds the limit of {engine.max_upload_bytes} bytes")
        from starlette.concurrency import run_in_threadpool
        record = await run_in_threadpool(engine.images.add_upload, data,
                                         file.filename or "upload")
        return record.info(record.image.size)

    @app.get("/api/images/{image_id}", tags=["images"],
             summary="the image with this id (re-encoded as PNG or JPEG)",
             responses={200: {"content": {"image/jpeg": {}, "image/png": {}}},
                        404: {"model": ErrorBody}},
             response_class=Response)
    def get_image(image_id: str,
                  max_side: Annotated[Optional[int], Query(ge=16, le=4096)] = None):
        data, mime = engine.images.encoded(image_id, max_side)
        return Response(data, media_type=mime, headers={"Cache-Control": "max-age=3600"})

    # -- pairs ---------------------------------------------------------------------------------
    @app.post("/api/explain", response_model=ExplainResponse, tags=["pairs"],
              summary="explain the similarity of two images", responses=ERRORS)
    def explain(request: ExplainRequest):
        """Computes (or takes from the cache) both images' per-position contributions and
        returns the score, the residual and both overall maps of `method`. The
        `explanation_id` keys the cached decomposition for point and region maps."""
        return engine.explain(request.a, request.b, request.method, request.model)

    @app.post("/api/point", response_model=MapResponse, tags=["pairs"],
              summary="point-specific map: a pixel of one image -> a map over the other",
              responses=ERRORS)
    def point(request: PointRequest):
        """One small product (bilinear point weights times the cached decomposition)."""
        result = engine.point(request.explanation_id, request.side, request.row, request.col)
        return {**result, "seq": request.seq}

    @app.post("/api/region", response_model=RegionResponse, tags=["pairs"],
              summary="region map: a box on one image -> a map over the other",
              responses=ERRORS)
    def region(request: RegionRequest):
        result = engine.region(request.explanation_id, request.side, request.box)
        return {**result, "seq": request.seq}

    # -- gallery -------------------------------------------------------------------------------
    @app.post("/api/search", response_model=SearchResponse, tags=["gallery"],
              summary="rank the gallery by similarity to the query (or to a region of it)",
              responses=ERRORS)
    def search(request: SearchRequest):
        """With a box, ranks by the partial similarity s_R of that region (one vector
        searched against the index). Each hit carries its overall (or region) map."""
        return engine.search(request.query, request.box, request.k)

    @app.post("/api/search/point", response_model=SearchPointResponse, tags=["gallery"],
              summary="point-specific maps of a query pixel on the visible results",
              responses=ERRORS)
    def search_point(request: SearchPointRequest):
        maps = engine.search_point(request.search_id, request.results, request.row,
                                   request.col)
        return {"maps": maps, "seq": request.seq}

    # -- the page ------------------------------------------------------------------------------
    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
