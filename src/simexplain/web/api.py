"""The JSON API (FastAPI): routes, error handling, and the engine's results shaped as JSON.

Every error answers `{"error": "..."}` with a fitting status: 400 (bad input: malformed JSON,
points outside the image, empty boxes, undecodable images), 404 (unknown ids or models),
413 (upload or image too large), 422 (missing fields, wrong types). Schemas live in
`simexplain.web.schemas`, middleware in `simexplain.web.middleware`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Any, Literal
from collections.abc import Callable, Sequence

from fastapi import APIRouter, Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from ..errors import SimexplainError
from ..explanation import DEFAULT_POINT_MAP
from ..live_maps import grid_list, map_json, peak
from ..maps import Frame
from ..methods import method_class
from ..sides import pick
from .engine import SHOWN_METHODS, Engine, Explained, Prepared, SearchHit, SearchResult
from .errors import megabytes, status_of
from .hosts import LOCAL_HOSTS
from .middleware import BodyLimit, HostCheck, ServerTiming
from .schemas import (ERRORS, ErrorBody, ExplainRequest, ExplainResponse, Health,
                      IdenticalRequest, IdenticalResponse, ImageInfo, ImageList, MapResponse,
                      ModelsResponse, PatternsRequest, PatternsResponse, PointRequest,
                      RegionRequest, RegionResponse, SearchPointRequest, SearchPointResponse,
                      SearchRequest, SearchResponse)
from .store import ImageRecord, clean_name

STATIC = Path(__file__).parent / "static"
JSON_BODY_LIMIT = 1024 * 1024
log = logging.getLogger("simexplain.web")


# -- results as JSON (point and region maps: `simexplain.live_maps`) ------------------------
def image_json(record: ImageRecord) -> dict:
    width, height = record.size or (None, None)
    return {"id": record.id, "name": record.name, "source": record.source, "width": width,
            "height": height, "url": f"/api/images/{record.id}"}


def prepared_json(prepared: Prepared) -> dict:
    return {"id": prepared.image_id, "shown_id": prepared.shown_id,
            "url": f"/api/images/{prepared.shown_id}", "grid": list(prepared.side.grid),
            "image_size": list(prepared.side.image_size), **_placement(prepared.side.frame)}


def _placement(frame: Frame) -> dict:
    """Where the model's input lies in the photo: the crop box and the input size."""
    return {"crop": [int(v) for v in frame.box], "input_size": list(frame.input_size)}


def explain_json(result: Explained, input_side: int | None) -> dict:
    record, pair = result.record, result.record.pair
    sides = {}
    for name, prepared, grid_map in (("a", record.a, result.map_a),
                                     ("b", record.b, result.map_b)):
        sides[name] = {**prepared_json(prepared), "overall": grid_list(grid_map),
                       "overall_peak": peak(grid_map, prepared.side.frame),
                       "token_share": pick(name, pair.token_share_a, pair.token_share_b),
                       "spatial": prepared.side.spatial}
    return {"explanation_id": record.id, "model": record.model, "method": result.method,
            "size": record.size or input_side, "similarity": pair.similarity.name,
            "score": pair.score, "residual": pair.residual,
            "signed": method_class(result.method).signed,
            "point_maps": method_class(result.method).point_maps, **sides}


def search_json(result: SearchResult) -> dict:
    record = result.record
    return {"search_id": record.id, "model": record.model, "similarity": result.similarity,
            "query": prepared_json(record.query), "box": record.box,
            "hits": [_hit_json(hit) for hit in result.hits], "unavailable": result.unavailable}


def _hit_json(hit: SearchHit) -> dict:
    values = hit.map.require_values()  # (H, W) the hit's overall or region map
    return {"rank": hit.rank, "id": hit.result.image_id, "index": hit.index,
            "name": hit.name, "score": hit.score, "url": f"/api/images/{hit.result.shown_id}",
            "grid": list(values.shape), "map": grid_list(values),
            "argmax": peak(values, hit.map.frame),
            "image_size": list(hit.result.side.image_size), "stale": hit.stale,
            **_placement(hit.result.side.frame)}


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def current_engine(request: Request) -> Engine:
    """The app's engine (a FastAPI dependency of every route)."""
    return request.app.state.engine


# -- errors ------------------------------------------------------------------------------------
async def _simexplain_error(_request: Request, exc: SimexplainError):
    return JSONResponse({"error": str(exc), **getattr(exc, "fields", {})},
                        status_code=status_of(exc))

async def _http_error(_request: Request, exc: StarletteHTTPException):
    message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and message == "Not Found":
        message = "no such endpoint"
    elif exc.status_code == 400 and message == "There was an error parsing the body":
        message = "malformed request body: not valid JSON (UTF-8) or form data"
    elif exc.status_code == 400 and message == "Invalid multipart data.":
        message = _multipart_problem(exc)
    return JSONResponse({"error": message}, status_code=exc.status_code,
                        headers=getattr(exc, "headers", None))

def _multipart_problem(exc: BaseException) -> str:
    """The multipart parser's own reason, which starlette's "Invalid multipart data." hides
    (the exception it was raised from)."""
    reason = None
    seen: BaseException | None = exc
    while seen is not None and reason is None:
        if type(seen).__module__.startswith("python_multipart"):
            reason = str(seen).rstrip(".")
        seen = seen.__cause__ or seen.__context__
    if reason is None:
        return "malformed form data"
    if "header size" in reason.lower():  # the part's header line holds the file name
        reason += " (a part header line over 4 KB, such as a file name of thousands of characters)"
    return f"malformed form data: {reason}"


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

async def _unexpected(_request: Request, exc: Exception):
    log.exception("unexpected error", exc_info=exc)
    return error(500, f"internal error ({type(exc).__name__})")


# exception type -> handler, registered on the app by build_app
ERROR_HANDLERS: dict[type[Exception], Callable[..., Any]] = {
                  SimexplainError: _simexplain_error, StarletteHTTPException: _http_error,
                  RequestValidationError: _validation_error, Exception: _unexpected}


# -- routes, grouped as the API reference (/docs) shows them -----------------------------------
service = APIRouter(tags=["service"])
images = APIRouter(tags=["images"])
pairs = APIRouter(tags=["pairs"])
gallery = APIRouter(tags=["gallery"])
page = APIRouter(include_in_schema=False)


@service.get("/healthz", response_model=Health,
             summary="200 when the model (and the index, if any) are loaded")
def healthz(engine: Engine = Depends(current_engine)) -> dict:
    info = engine.index_info()
    return {"status": "ok", "model": engine.default_model,
            "index_size": info["size"] if info else None}


@service.get("/api/models", response_model=ModelsResponse,
             summary="models, methods and the index this server offers")
def models(engine: Engine = Depends(current_engine)) -> dict:
    return {"default": engine.default_model, "models": engine.model_infos(),
            "methods": list(SHOWN_METHODS), "index": engine.index_info(),
            "max_input_side": engine.max_input_side,
            "upload_limit_bytes": engine.max_upload_bytes, "pixel_limit": engine.max_pixels}


@images.get("/api/images", response_model=ImageList,
            summary="list the gallery images (with an index) or the sample images")
def list_images(source: Literal["gallery", "samples"] = "samples",
                offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
                limit: Annotated[int, Query(ge=1, le=1000)] = 200,
                engine: Engine = Depends(current_engine)) -> dict:
    items, total = engine.images.listing(source, offset, limit)
    return {"images": [image_json(r) for r in items], "total": total, "offset": offset,
            "limit": limit}


@images.post("/api/images", response_model=ImageInfo, status_code=201,
             summary="upload an image; returns its id",
             responses={**ERRORS, 413: {"model": ErrorBody, "description": "too large"}})
async def upload(file: UploadFile = File(description="the image file (PNG, JPEG, ...); at "
                                          "most 10 MB and 40 megapixels by default"),
                 engine: Engine = Depends(current_engine)) -> dict | JSONResponse:
    name = clean_name(file.filename or "upload")
    data = await file.read(engine.max_upload_bytes + 1)
    if len(data) > engine.max_upload_bytes:
        return JSONResponse({"error": f"{name}: the file is larger than the upload limit "
                                      f"of {megabytes(engine.max_upload_bytes)}",
                             "file": name}, status_code=413)
    from starlette.concurrency import run_in_threadpool
    try:
        record = await run_in_threadpool(engine.images.add_upload, data, name)
    except SimexplainError as exc:  # errors name the file, for the page to show
        return JSONResponse({"error": f"{name}: {exc}", "file": name},
                            status_code=status_of(exc))
    return image_json(record)


@images.get("/api/images/{image_id}",
            summary="the image with this id (re-encoded as PNG or JPEG)",
            responses={200: {"content": {"image/jpeg": {}, "image/png": {}}},
                       400: {"model": ErrorBody}, 404: {"model": ErrorBody}},
            response_class=Response)
def get_image(image_id: str,
              max_side: Annotated[int | None, Query(ge=16, le=4096)] = None,
              crop: Annotated[str | None, Query(
                  pattern=r"^\d{1,6}(,\d{1,6}){3}$",
                  description="top,left,bottom,right: only this part of the image (the "
                              "`crop` a model saw, as the explain and search answers give "
                              "it), in the image's pixels")] = None,
              engine: Engine = Depends(current_engine)) -> Response:
    box = [int(v) for v in crop.split(",")] if crop else None
    data, mime = engine.images.encoded(image_id, max_side, box)
    # a gallery file is checked again at every request (it may change on disk): no caching
    headers = {"Cache-Control": "no-cache" if image_id.startswith("g") else "max-age=3600"}
    stale = engine.images.stale(image_id)
    if stale is not None:  # served as the file is now, and said so
        headers["X-Simexplain-Stale"] = stale
    return Response(data, media_type=mime, headers=headers)


@pairs.post("/api/explain", response_model=ExplainResponse,
            summary="explain the similarity of two images", responses=ERRORS)
def explain(request: ExplainRequest, engine: Engine = Depends(current_engine)) -> dict:
    """Computes (or takes from the cache) both images' per-position contributions and
    returns the score, the residual and both overall maps of `method`. The
    `explanation_id` keys the cached decomposition for point and region maps."""
    model = request.model or engine.default_model
    return explain_json(engine.explain(request.a, request.b, request.method, model,
                                       request.size), engine.input_side(model))


@pairs.post("/api/identical", response_model=IdenticalResponse,
            summary="which methods give the same maps on this pair (for this model's head)",
            responses=ERRORS)
def identical(request: IdenticalRequest, engine: Engine = Depends(current_engine)) -> dict:
    """Computes every method's maps for the cached pair (occlusion only once computed)
    and compares them: e.g. Grad-CAM equals RGrad-CAM under a global-average-pooling
    head, and Grad-CAM is the positive part of the relative map there."""
    relations, compared = engine.identical(request.explanation_id)
    return {"explanation_id": request.explanation_id, "compared": compared,
            "methods": relations}


@pairs.post("/api/point", response_model=MapResponse,
            summary="point-specific map: a pixel of one image -> a map over the other",
            responses=ERRORS)
def point(request: PointRequest, engine: Engine = Depends(current_engine)) -> dict:
    """One small product (bilinear point weights times the cached decomposition)."""
    answer = engine.point(request.explanation_id, request.side, request.row, request.col)
    return {**answer, "seq": request.seq}


@pairs.post("/api/region", response_model=RegionResponse,
            summary="region map: a box on one image -> a map over the other",
            responses=ERRORS)
def region(request: RegionRequest, engine: Engine = Depends(current_engine)) -> dict:
    answer = engine.region(request.explanation_id, request.side, request.box)
    return {**answer, "seq": request.seq}


@pairs.post("/api/patterns", response_model=PatternsResponse,
            summary="cross-view patterns: the strongest mutual best matches of the pair",
            responses=ERRORS)
def patterns(request: PatternsRequest, engine: Engine = Depends(current_engine)) -> dict:
    """Positions of a and b whose point maps (the default kind) pick each other, ranked
    by the share of the score they carry, spread out; points in the photos' pixels."""
    found = engine.patterns(request.explanation_id, request.k)
    return {"explanation_id": request.explanation_id, "kind": DEFAULT_POINT_MAP,
            "patterns": [p.to_dict() for p in found]}


@gallery.post("/api/search", response_model=SearchResponse,
              summary="rank the gallery by similarity to the query (or to a region of it)",
              responses=ERRORS)
def search(request: SearchRequest, engine: Engine = Depends(current_engine)) -> dict:
    """With a box, ranks by the partial similarity s_R of that region (one vector
    searched against the index). Each hit carries its overall (or region) map."""
    return search_json(engine.search(request.query, request.box, request.k))


@gallery.post("/api/search/point", response_model=SearchPointResponse,
              summary="point-specific maps of a query pixel on the visible results",
              responses=ERRORS)
def search_point(request: SearchPointRequest, engine: Engine = Depends(current_engine)) -> dict:
    maps = engine.search_point(request.search_id, request.results, request.row,
                               request.col)
    return {"maps": [{**map_json(m), "id": image_id} for image_id, m in maps],
            "seq": request.seq}


@page.get("/")
def index_page() -> FileResponse:
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


class ScriptFiles(StaticFiles):
    """The static files, with `.js` always served as JavaScript: browsers refuse a module
    script of any other type, and the type `mimetypes` guesses depends on the system (Windows'
    registry can say text/plain)."""

    def file_response(self, full_path: str | os.PathLike[str], stat_result: os.stat_result,
                      scope: Scope, status_code: int = 200) -> Response:
        response = super().file_response(full_path, stat_result, scope, status_code)
        if isinstance(response, FileResponse) and str(full_path).endswith((".js", ".mjs")):
            response.headers["content-type"] = "text/javascript; charset=utf-8"
        return response


def build_app(engine: Engine, title: str = "simexplain",
              allowed_hosts: Sequence[str] = LOCAL_HOSTS) -> FastAPI:
    """The FastAPI application over `engine`, answering only to `allowed_hosts` (Host header
    names; "*" for any)."""
    app = FastAPI(
        title=title, version="0.1", docs_url=None, redoc_url=None,  # /docs: served below
        description="Explain why a metric-learning model finds two images similar "
                    "(activation decomposition, Zhu et al. TIP 2021): overall, point-specific "
                    "and region maps of image pairs, and region search in a gallery. Maps are "
                    "small float grids over the models' feature grids; the page at / renders "
                    "them.")
    app.state.engine = engine
    app.add_middleware(ServerTiming)
    app.add_middleware(BodyLimit, json_limit=JSON_BODY_LIMIT,
                       upload_limit=engine.max_upload_bytes)
    app.add_middleware(HostCheck, allowed=list(allowed_hosts))  # outermost: checked first
    for exception, handler in ERROR_HANDLERS.items():
        app.add_exception_handler(exception, handler)
    for router in (service, images, pairs, gallery, page):
        app.include_router(router)
    app.mount("/static", ScriptFiles(directory=STATIC), name="static")
    _add_docs(app)
    return app


def _add_docs(app: FastAPI) -> None:
    """/docs: Swagger UI from the swagger-ui-bundle-v2 package's files, served by this app
    (no CDN: the docs work offline); without the package, a page pointing at the JSON."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        swagger_ui_path = None
    if swagger_ui_path:
        app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs():
        if not swagger_ui_path:
            return HTMLResponse(
                "<!doctype html><title>simexplain API</title><p>The API is described in "
                "<a href='/openapi.json'>/openapi.json</a>. For the interactive docs here, "
                "<code>pip install swagger-ui-bundle-v2</code>.</p>")
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None})  # no calls to an online validator
