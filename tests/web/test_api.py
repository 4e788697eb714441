"""The JSON API behind the page: every endpoint, its results, and every kind of bad input."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from simexplain.explanation import DEFAULT_POINT_MAP, point_map_label
from simexplain.web import create_app
from simexplain.web.api import STATIC
from simexplain.web.cache import LRU

SIZE = 64  # the toy model's input side in conftest.py (an 8x8 feature grid)
PHOTO = 96  # the sample and gallery photos' side: points and boxes are in their pixels


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a huge size (a decompression bomb's header) with a tiny payload."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def client(explainer, samples):
    app = create_app(explainer=explainer, samples=samples)
    with TestClient(app, base_url="http://localhost") as c:
        yield c


@pytest.fixture(scope="module")
def gallery_client(explainer, index_dir, samples):
    app = create_app(explainer=explainer, index=index_dir, samples=samples)
    with TestClient(app, base_url="http://localhost") as c:
        yield c


@pytest.fixture(scope="module")
def pair(client):
    response = client.post("/api/explain", json={"a": "s0", "b": "s1"})
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response, status: int, contains: str = ""):
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body.get("error"), str) and body["error"]
    assert contains.lower() in body["error"].lower(), body["error"]


# -- service ----------------------------------------------------------------------------------
def test_health_and_models(client):
    assert client.get("/healthz").json() == {"status": "ok", "model": "toy", "index_size": None}
    models = client.get("/api/models").json()
    assert models["default"] == "toy"
    assert [m["name"] for m in models["models"]] == ["toy"]
    assert models["models"][0]["loaded"] and models["models"][0]["similarity"] == "cosine"
    # the attention methods are listed too (on a CNN such as this toy they answer an error)
    assert set(models["methods"]) == {"decomposition", "relative", "gradcam", "gradcam-raw",
                                      "rgradcam", "occlusion", "attention-rollout", "chefer",
                                      "gradcam-tokens"}
    assert models["index"] is None


def test_openapi_documents_every_endpoint(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path, method in [("/api/images", "post"), ("/api/images", "get"),
                         ("/api/images/{image_id}", "get"), ("/api/explain", "post"),
                         ("/api/point", "post"), ("/api/region", "post"),
                         ("/api/search", "post"), ("/api/search/point", "post"),
                         ("/api/models", "get"), ("/healthz", "get")]:
        assert method in paths[path], (path, method)
        assert paths[path][method].get("summary")
    components = schema["components"]["schemas"]
    for name in ("ExplainRequest", "ExplainResponse", "PointRequest", "MapResponse",
                 "RegionRequest", "RegionResponse", "SearchRequest", "SearchResponse",
                 "SearchPointRequest", "SearchPointResponse", "ErrorBody"):
        assert name in components
    assert components["PointRequest"]["properties"]["row"].get("description")
    assert "404" in paths["/api/point"]["post"]["responses"]


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text
    assert '<script type="module" src="/static/main.js">' in page.text
    for name in ("main.js", "mapview.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    # module scripts load only with a JavaScript MIME type
    for script in sorted(STATIC.glob("*.js")):
        response = client.get(f"/static/{script.name}")
        assert response.headers["content-type"].startswith("text/javascript"), script.name
    assert_error(client.get("/static/nothing.js"), 404)


def test_docs_are_served_from_the_app(client):
    page = client.get("/docs")
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert client.get(f"/docs-assets/{asset}").status_code == 200
    assert_error(client.get("/redoc"), 404)  # FastAPI's default loads from a CDN


def test_unknown_endpoint_and_method(client):
    assert_error(client.get("/api/nothing"), 404)
    assert_error(client.get("/api/explain"), 405)


# -- images -----------------------------------------------------------------------------------
def test_list_and_get_images(client):
    listing = client.get("/api/images?source=samples").json()
    assert listing["total"] == 3 and [i["id"] for i in listing["images"]] == ["s0", "s1", "s2"]
    assert listing["images"][0]["name"] == "left-right"
    assert client.get("/api/images?source=gallery").json()["total"] == 0
    response = client.get("/api/images/s0")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(response.content)).size == (96, 96)
    small = client.get("/api/images/s0?max_side=32")
    assert Image.open(io.BytesIO(small.content)).size == (32, 32)
    assert_error(client.get("/api/images?source=files"), 422)
    assert_error(client.get("/api/images?limit=0"), 422)
    assert_error(client.get("/api/images/s0?max_side=1"), 422)


def test_get_the_part_of_an_image_a_model_saw(client, samples):
    """?crop=top,left,bottom,right (an answer's `crop`): that part of the image, shrunk to
    max_side like the whole; a part outside the image, or empty, is a 400 naming both."""
    response = client.get("/api/images/s0?crop=10,20,50,80")
    assert response.status_code == 200
    part = Image.open(io.BytesIO(response.content))
    expected = samples[0][1].convert("RGB").crop((20, 10, 80, 50))  # (left, top, right, bottom)
    assert part.size == (60, 40)
    assert np.array_equal(np.asarray(part.convert("RGB")), np.asarray(expected))
    small = client.get("/api/images/s0?crop=10,20,50,80&max_side=30")
    assert Image.open(io.BytesIO(small.content)).size == (30, 20)
    whole = client.get("/api/images/s0?crop=0,0,96,96")
    assert whole.content == client.get("/api/images/s0").content
    assert_error(client.get("/api/images/s0?crop=10,20,50,200"), 400,
                 "crop [10, 20, 50, 200] is empty or outside image s0 (96x96 pixels)")
    assert_error(client.get("/api/images/s0?crop=50,20,10,80"), 400, "empty or outside")
    for bad in ("1,2,3", "a,b,c,d", "-1,0,10,10", "1,2,3,4,5"):
        assert_error(client.get(f"/api/images/s0?crop={bad}"), 422)


@pytest.mark.parametrize("image_id", ["s9", "g0", "u" + "0" * 24, "nope", "..", "%2e%2e",
                                      "..%2F..%2Fetc%2Fpasswd", "s0.png", "x" * 300])
def test_get_unknown_image(client, image_id):
    assert_error(client.get(f"/api/images/{image_id}"), 404)


def test_upload_then_explain(client, kit):
    data = png_bytes(kit.two_part(3, 1, size=120))
    response = client.post("/api/images", files={"file": ("mine.png", data, "image/png")})
    assert response.status_code == 201, response.text
    info = response.json()
    assert info["id"].startswith("u") and info["source"] == "upload"
    assert (info["width"], info["height"]) == (120, 120) and info["name"] == "mine.png"
    again = client.post("/api/images", files={"file": ("other.png", data, "image/png")})
    assert again.json()["id"] == info["id"]  # content-addressed
    assert client.get(info["url"]).status_code == 200
    explained = client.post("/api/explain", json={"a": info["id"], "b": "s2"})
    assert explained.status_code == 200 and explained.json()["a"]["id"] == info["id"]


def test_upload_keeps_odd_modes_and_names_safe(client, kit):
    gray = Image.fromarray(kit.pattern(2)[..., 0]).convert("L")
    buffer = io.BytesIO()
    gray.save(buffer, format="JPEG")
    response = client.post("/api/images",
                           files={"file": ("../../evil<script>.jpg", buffer.getvalue(),
                                           "image/jpeg")})
    assert response.status_code == 201
    assert "/" not in response.json()["name"] and "<" not in response.json()["name"]
    rgba = Image.new("RGBA", (40, 30), (255, 0, 0, 0))
    response = client.post("/api/images", files={"file": ("t.png", png_bytes(rgba))})
    assert response.status_code == 201


@pytest.mark.parametrize("payload,contains", [
    (b"", "empty"),
    (b"this is not an image", "not an image"),
    (png_bytes(Image.new("RGB", (50, 50)))[:60], "decode"),
    (b"GIF89a" + b"\x00" * 20, ""),
])
def test_upload_rejects_non_images(client, payload, contains):
    response = client.post("/api/images", files={"file": ("x.png", payload, "image/png")})
    assert_error(response, 400, contains)


def test_upload_rejects_decompression_bomb(client):
    response = client.post("/api/images",
                           files={"file": ("bomb.png", png_header_only(100_000, 100_000))})
    assert_error(response, 413, "pixels")


def test_upload_missing_or_wrong_field(client):
    assert_error(client.post("/api/images"), 422)
    assert_error(client.post("/api/images", files={"other": ("x.png", b"123")}), 422)
    assert_error(client.post("/api/images", json={"file": "abc"}), 422)


def test_upload_size_and_pixel_limits(explainer, samples):
    app = create_app(explainer=explainer, samples=samples, max_upload_bytes=4000,
                     max_pixels=64 * 64)
    with TestClient(app, base_url="http://localhost") as small:
        noisy = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 60, 3),
                                                                  dtype=np.uint8))
        big = png_bytes(noisy)
        assert len(big) > 4000
        assert_error(small.post("/api/images", files={"file": ("big.png", big)}), 413)
        assert_error(small.post("/api/images", files={"file": ("big.png", big * 30)}), 413)
        wide = png_bytes(Image.new("RGB", (100, 100), (9, 9, 9)))
        assert len(wide) < 4000
        assert_error(small.post("/api/images", files={"file": ("wide.png", wide)}), 413,
                     "pixels")
        ok = png_bytes(Image.new("RGB", (60, 60), (9, 9, 9)))
        assert small.post("/api/images", files={"file": ("ok.png", ok)}).status_code == 201


def test_upload_errors_name_the_file_and_state_limits_in_mb(explainer, samples):
    app = create_app(explainer=explainer, samples=samples, max_upload_bytes=3 * 2**20)
    with TestClient(app, base_url="http://localhost") as c:
        assert c.get("/api/models").json()["upload_limit_bytes"] == 3 * 2**20
        response = c.post("/api/images", files={"file": ("notes.txt", b"just words")})
        assert_error(response, 400, "notes.txt: ")
        assert response.json()["file"] == "notes.txt"
        big = c.post("/api/images", files={"file": ("big.png", b"\0" * (3 * 2**20 + 100))})
        assert_error(big, 413, "3 MB")
        assert "bytes" not in big.json()["error"]


def test_explain_error_names_the_image_that_failed(picky, samples):
    """A model that refuses an image (as a face model refuses a photo without a face): the
    error says which image, and on which side, so the page can show it on that panel."""
    explainer, faceless = picky
    app = create_app(explainer=explainer, samples=[*samples[:2], faceless])
    with TestClient(app, base_url="http://localhost") as c:
        assert c.post("/api/explain", json={"a": "s0", "b": "s1"}).status_code == 200
        for a, b, side in (("s0", "s2", "b"), ("s2", "s1", "a")):
            response = c.post("/api/explain", json={"a": a, "b": b})
            assert_error(response, 400, f"image {side} (no-face): no face found")
            assert response.json()["side"] == side and response.json()["image"] == "s2"


def test_json_body_limit(client):
    huge = json.dumps({"a": "s0", "b": "s1", "pad": "x" * (2 * 1024 * 1024)})
    response = client.post("/api/explain", content=huge,
                           headers={"content-type": "application/json"})
    assert_error(response, 413)

    def chunks():  # no content-length: the limit applies while streaming
        for _ in range(40):
            yield b" " * 65536
    response = client.post("/api/explain", content=chunks(),
                           headers={"content-type": "application/json"})
    assert_error(response, 413)


# -- pairs ------------------------------------------------------------------------------------
def test_explain_matches_the_engine(client, pair, explainer, samples):
    expected = explainer.explain(samples[0][1], samples[1][1])
    assert pair["model"] == "toy" and pair["method"] == "decomposition" and pair["signed"]
    assert pair["score"] == pytest.approx(expected.score, abs=1e-6)
    assert pair["residual"] < 1e-5
    for side in ("a", "b"):
        assert pair[side]["grid"] == [8, 8] and pair[side]["image_size"] == [PHOTO, PHOTO]
        assert pair[side]["input_size"] == [SIZE, SIZE]
        assert pair[side]["crop"] == [0, 0, PHOTO, PHOTO]
        overall = np.array(pair[side]["overall"])
        assert overall.shape == (8, 8)
        assert overall.sum() == pytest.approx(expected.score, rel=1e-4)
    np.testing.assert_allclose(np.array(pair["a"]["overall"]),
                               expected.overall_a.numpy(), rtol=1e-4, atol=1e-9)
    again = client.post("/api/explain", json={"a": "s0", "b": "s1"}).json()
    assert again["explanation_id"] == pair["explanation_id"]


@pytest.mark.parametrize("method", ["gradcam", "gradcam-raw", "rgradcam", "occlusion"])
def test_explain_other_methods(client, pair, method):
    response = client.post("/api/explain", json={"a": "s0", "b": "s1", "method": method})
    assert response.status_code == 200, response.text
    body = response.json()
    # occlusion's score drops are negative where a cell lowers the similarity
    assert body["method"] == method and body["signed"] == (method == "occlusion")
    assert body["explanation_id"] == pair["explanation_id"]
    assert np.array(body["a"]["overall"]).shape == (8, 8)
    assert body["score"] == pytest.approx(pair["score"])


def test_point_map(client, pair, explainer, samples):
    expected = explainer.explain(samples[0][1], samples[1][1])
    for side, other in (("a", "b"), ("b", "a")):
        response = client.post("/api/point", json={
            "explanation_id": pair["explanation_id"], "side": side, "row": 20.5, "col": 40,
            "seq": 7})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["side"] == other and body["seq"] == 7 and body["grid"] == [8, 8]
        grid = np.array(body["map"])
        np.testing.assert_allclose(grid, expected.point_map(side, (20.5, 40)).numpy(),
                                   rtol=1e-4, atol=1e-9)
        assert body["kind"] == DEFAULT_POINT_MAP and body["no_map"] is False
        assert body["label"] == point_map_label(DEFAULT_POINT_MAP)
        r, c = np.unravel_index(grid.argmax(), grid.shape)
        assert body["argmax"]["cell"] == [r, c]
        assert body["argmax"]["row"] == pytest.approx((r + 0.5) * PHOTO / 8)
        assert body["argmax"]["col"] == pytest.approx((c + 0.5) * PHOTO / 8)
    # the edges of the image are inside it
    for row, col in ((0, 0), (PHOTO, PHOTO)):
        assert client.post("/api/point", json={"explanation_id": pair["explanation_id"],
                                               "side": "a", "row": row,
                                               "col": col}).status_code == 200


def test_region_map(client, pair, explainer, samples):
    expected = explainer.explain(samples[0][1], samples[1][1])
    box = [4, 0, 40.5, 30]
    response = client.post("/api/region", json={
        "explanation_id": pair["explanation_id"], "side": "a", "box": box, "seq": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["side"] == "b" and body["seq"] == 3
    np.testing.assert_allclose(np.array(body["map"]), expected.region_map("a", box).numpy(),
                               rtol=1e-4, atol=1e-9)
    assert body["partial_score"] == pytest.approx(expected.partial_score("a", box), rel=1e-5)
    # the map is of the default kind and says so; the contribution kind sums to s_R
    assert body["kind"] == DEFAULT_POINT_MAP and body["label"] and body["no_map"] is False
    assert float(expected.region_map("a", box, kind="contribution").sum()) == pytest.approx(
        body["partial_score"], rel=1e-4)
    whole = client.post("/api/region", json={
        "explanation_id": pair["explanation_id"], "side": "b", "box": [0, 0, PHOTO, PHOTO]})
    assert whole.json()["partial_score"] == pytest.approx(pair["score"], rel=1e-5)


@pytest.mark.parametrize("body,status,contains", [
    ({"a": "s0"}, 422, "b"),
    ({"a": "s0", "b": 5}, 422, "b"),
    ({"a": "s0", "b": "s1", "method": "magic"}, 422, "method"),
    ({"a": "s0", "b": "s1", "method": "random"}, 422, "method"),
    ({"a": "s0", "b": "s77"}, 404, "s77"),
    ({"a": "../../etc/passwd", "b": "s1"}, 422, "a"),
    ({"a": "u" + "a" * 24, "b": "s1"}, 404, ""),
    ({"a": "s0", "b": "s1", "model": "no-such-model"}, 404, "model"),
    ([1, 2, 3], 422, ""),
    ("just a string", 422, ""),
])
def test_explain_bad_input(client, body, status, contains):
    assert_error(client.post("/api/explain", json=body), status, contains)


@pytest.mark.parametrize("raw", [b"{bad json", b'{"a": "s0", "b": ', b"\xff\xfe\x00",
                                 b"{'a': 's0'}"])
def test_malformed_json(client, raw):
    for path in ("/api/explain", "/api/point", "/api/region", "/api/search",
                 "/api/search/point"):
        response = client.post(path, content=raw, headers={"content-type": "application/json"})
        assert_error(response, 400, "json")


def test_wrong_content_type_and_empty_body(client):
    assert_error(client.post("/api/explain", content=b'{"a":"s0","b":"s1"}',
                             headers={"content-type": "text/plain"}), 422)
    assert_error(client.post("/api/point"), 422)


@pytest.mark.parametrize("change,status,contains", [
    ({"side": "c"}, 422, "side"),
    ({"side": None}, 422, "side"),
    ({"row": "abc"}, 422, "row"),
    ({"row": [1]}, 422, "row"),
    ({"row": PHOTO + 1}, 400, "outside"),
    ({"col": -0.5}, 400, "outside"),
    ({"row": 1e308 * 10}, 422, "row"),  # serialised as Infinity
    ({"explanation_id": "nope"}, 404, "explanation"),
    ({"explanation_id": "../x"}, 422, "explanation_id"),
    ({"explanation_id": ""}, 422, "explanation_id"),
    ({"seq": -1}, 422, "seq"),
    ({"seq": "x"}, 422, "seq"),
])
def test_point_bad_input(client, pair, change, status, contains):
    body = {"explanation_id": pair["explanation_id"], "side": "a", "row": 10, "col": 10,
            **change}
    assert_error(client.post("/api/point", content=json.dumps(body),
                             headers={"content-type": "application/json"}), status, contains)


def test_point_missing_fields_and_nan(client, pair):
    assert_error(client.post("/api/point", json={"explanation_id": pair["explanation_id"]}),
                 422, "side")
    raw = ('{"explanation_id": "%s", "side": "a", "row": NaN, "col": 3}'
           % pair["explanation_id"])
    assert_error(client.post("/api/point", content=raw,
                             headers={"content-type": "application/json"}), 422, "row")


@pytest.mark.parametrize("box,status,contains", [
    ([10, 10, 10, 20], 400, "empty"),
    ([30, 10, 20, 20], 400, "empty"),
    ([10, 30, 20, 20], 400, "empty"),
    ([PHOTO + 5, PHOTO + 5, PHOTO + 20, PHOTO + 20], 400, "outside"),
    ([-20, -20, -10, -10], 400, "outside"),
    ([1, 2, 3], 422, "box"),
    ([1, 2, 3, 4, 5], 422, "box"),
    ("0,0,10,10", 422, "box"),
    (None, 422, "box"),
    ([0, 0, "a", 10], 422, "box"),
])
def test_region_bad_input(client, pair, box, status, contains):
    body = {"explanation_id": pair["explanation_id"], "side": "a", "box": box}
    assert_error(client.post("/api/region", json=body), status, contains)


def test_region_box_partly_outside_is_clipped(client, pair):
    response = client.post("/api/region", json={
        "explanation_id": pair["explanation_id"], "side": "a", "box": [-10, -10, 1e6, 1e6]})
    assert response.status_code == 200
    assert response.json()["partial_score"] == pytest.approx(pair["score"], rel=1e-5)


def test_caches_are_bounded(explainer, samples):
    app = create_app(explainer=explainer, samples=samples, max_explanations=2, max_sides=3)
    engine = app.state.engine
    with TestClient(app, base_url="http://localhost") as c:
        ids = [c.post("/api/explain", json={"a": a, "b": b}).json()["explanation_id"]
               for a, b in (("s0", "s1"), ("s1", "s2"), ("s2", "s0"))]
        assert len(engine.explanations) == 2 and len(engine.sides) <= 3
        assert_error(c.post("/api/point", json={"explanation_id": ids[0], "side": "a",
                                                "row": 1, "col": 1}), 404, "explain the pair")
        assert c.post("/api/point", json={"explanation_id": ids[2], "side": "a", "row": 1,
                                          "col": 1}).status_code == 200


def test_lru_cost_bound():
    cache = LRU(10, max_cost=100, cost=len)
    cache.put("a", "x" * 60)
    cache.put("b", "y" * 60)
    assert "a" not in cache and cache.get("b") and cache.total_cost == 60
    cache.put("c", "z" * 500)  # alone above the bound: kept by itself
    assert len(cache) == 1 and cache.get("c")


# -- gallery ----------------------------------------------------------------------------------
def test_search_needs_an_index(client):
    assert_error(client.post("/api/search", json={"query": "s0"}), 400, "index")
    assert_error(client.post("/api/search/point", json={
        "search_id": "abc", "results": ["g0"], "row": 1, "col": 1}), 404, "search")


def test_gallery_health_and_listing(gallery_client):
    assert gallery_client.get("/healthz").json()["index_size"] == 16
    info = gallery_client.get("/api/models").json()["index"]
    assert info == {"model": "toy", "size": 16, "similarity": "cosine", "layer": "features"}
    listing = gallery_client.get("/api/images?source=gallery&limit=5&offset=2").json()
    assert listing["total"] == 16 and [i["id"] for i in listing["images"]] == [
        "g2", "g3", "g4", "g5", "g6"]
    assert gallery_client.get("/api/images/g15").status_code == 200
    assert_error(gallery_client.get("/api/images/g16"), 404)


def test_search_whole_and_region_equal_brute_force(gallery_client, explainer, kit):
    """Hits, scores and maps against the full decomposition of the query with every gallery
    image (PairExplanation), not against the index the server searches."""
    engine = gallery_client.app.state.engine
    gallery = engine.images.gallery_paths
    pairs = explainer.explain_gallery(kit.two_part(0, 4), gallery)
    box = [0, 0, PHOTO, PHOTO / 2]
    weights = pairs[0].a.region_weights(box)
    responses = []
    for request, partial in (({}, None), ({"box": box}, box)):
        response = gallery_client.post("/api/search", json={"query": "s0", "k": 6, **request})
        assert response.status_code == 200, response.text
        body = response.json()
        responses.append(body)
        assert body["box"] == request.get("box")
        assert [h["rank"] for h in body["hits"]] == [1, 2, 3, 4, 5, 6]
        scores = np.array([p.partial_score("a", partial) if partial else p.score
                           for p in pairs])
        order = np.argsort(-scores, kind="stable")[:6]
        assert [h["index"] for h in body["hits"]] == list(order)
        for hit in body["hits"]:
            pair = pairs[hit["index"]]
            assert hit["id"] == f"g{hit['index']}" and hit["grid"] == [8, 8]
            assert hit["score"] == pytest.approx(scores[hit["index"]], rel=1e-5)
            # the map on each hit is the query's (region's) row sum of the pairwise map
            w = weights if partial else torch.ones(pair.pairwise_flat.shape[0],
                                                  dtype=torch.float64)
            expected = (w @ pair.pairwise_flat).reshape(pair.b.grid)
            np.testing.assert_allclose(np.array(hit["map"]), expected.numpy(), rtol=1e-4,
                                       atol=1e-9)
            assert np.array(hit["map"]).sum() == pytest.approx(hit["score"], rel=1e-4)
    whole, region = responses
    assert region["search_id"] != whole["search_id"]
    assert [h["id"] for h in region["hits"]] != [h["id"] for h in whole["hits"]]


def test_search_point_maps(gallery_client, explainer):
    search = gallery_client.post("/api/search", json={"query": "g3", "k": 5}).json()
    ids = [h["id"] for h in search["hits"]]
    response = gallery_client.post("/api/search/point", json={
        "search_id": search["search_id"], "results": ids[:4], "row": 12, "col": 50, "seq": 9})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["seq"] == 9 and [m["id"] for m in body["maps"]] == ids[:4]
    engine = gallery_client.app.state.engine
    for item in body["maps"]:
        i = int(item["id"][1:])
        pair = explainer.explain(engine.images.pixels("g3"), engine.images.gallery_paths[i])
        weights = pair.a.point_weights((12, 50))
        # the default kind, match-centred, computed here: cosine of centred contributions
        assert item["kind"] == DEFAULT_POINT_MAP == "match-centred"
        u, v = pair.a.contributions.double(), pair.b.contributions.double()
        query = weights @ (u - u.mean(0))
        expected = torch.nn.functional.cosine_similarity(
            v - v.mean(0), query[None], dim=1).reshape(pair.b.grid)
        np.testing.assert_allclose(np.array(item["map"]), expected.numpy(), rtol=1e-4,
                                   atol=1e-9)
        grid = np.array(item["map"])
        assert item["argmax"]["cell"] == list(np.unravel_index(grid.argmax(), grid.shape))
    # results that were not in the hit list are computed on demand
    other = [f"g{i}" for i in range(16) if f"g{i}" not in ids][:2]
    response = gallery_client.post("/api/search/point", json={
        "search_id": search["search_id"], "results": other, "row": 1, "col": 1})
    assert response.status_code == 200 and len(response.json()["maps"]) == 2


def test_search_with_an_uploaded_query(gallery_client, kit):
    data = png_bytes(kit.two_part(4, 0))
    image_id = gallery_client.post("/api/images", files={"file": ("q.png", data)}).json()["id"]
    response = gallery_client.post("/api/search", json={"query": image_id, "k": 3,
                                                        "box": [0, 32, 64, 64]})
    assert response.status_code == 200 and len(response.json()["hits"]) == 3


@pytest.mark.parametrize("body,status,contains", [
    ({"query": "s0", "k": 0}, 422, "k"),
    ({"query": "s0", "k": 1000}, 422, "k"),
    ({"query": "s0", "k": "many"}, 422, "k"),
    ({"query": "s99"}, 404, "s99"),
    ({}, 422, "query"),
    ({"query": "s0", "box": [5, 5, 5, 9]}, 400, "empty"),
    ({"query": "s0", "box": [100, 100, 200, 200]}, 400, "outside"),
    ({"query": "s0", "box": [1, 2]}, 422, "box"),
])
def test_search_bad_input(gallery_client, body, status, contains):
    assert_error(gallery_client.post("/api/search", json=body), status, contains)


def test_search_point_bad_input(gallery_client):
    search = gallery_client.post("/api/search", json={"query": "s1", "k": 3}).json()
    sid = search["search_id"]
    good = {"search_id": sid, "results": ["g0"], "row": 3, "col": 3}
    cases = [
        ({"search_id": "0123456789abcdef"}, 404, "search"),
        ({"results": []}, 422, "results"),
        ({"results": "g0"}, 422, "results"),
        ({"results": ["g99"]}, 404, "g99"),
        ({"results": ["s0"]}, 400, "gallery"),
        ({"results": ["../../x"]}, 422, "results"),
        ({"results": ["g0"] * 101}, 422, "results"),
        ({"row": 999}, 400, "outside"),
        ({"col": None}, 422, "col"),
    ]
    for change, status, contains in cases:
        assert_error(gallery_client.post("/api/search/point", json={**good, **change}),
                     status, contains)


def test_index_and_model_must_agree(explainer, index_dir):
    from simexplain.errors import SimexplainError
    with pytest.raises(SimexplainError, match="index"):
        create_app(explainer=explainer, model="other-name", index=index_dir, samples=[])


# -- the command -------------------------------------------------------------------------------
def test_serve_command_binds_localhost(monkeypatch, capsys):
    import uvicorn

    from simexplain import cli
    from simexplain.web import app as web_app
    calls = {}
    monkeypatch.setattr(web_app, "create_app", lambda **kw: calls.update(app=kw))
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: calls.update(
        host=host, port=port))
    monkeypatch.setattr(web_app, "_check_bind", lambda host, port: None)  # ports may be busy
    assert cli.main(["serve", "--index", "some/index", "--port", "8123"]) == 0
    assert calls["host"] == "127.0.0.1" and calls["port"] == 8123
    assert calls["app"]["index"] == "some/index"
    assert {"127.0.0.1", "localhost", "::1"} == set(calls["app"]["allowed_hosts"])
    assert cli.main(["serve", "--allowed-host", "a.lan", "--allowed-host", "b.lan"]) == 0
    assert {"a.lan", "b.lan", "localhost"} <= set(calls["app"]["allowed_hosts"])
    assert calls["app"]["max_input_side"] == 640
    assert cli.main(["serve", "--max-size", "320"]) == 0
    assert calls["app"]["max_input_side"] == 320
    assert "http://127.0.0.1:8123/" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    assert "127.0.0.1" in capsys.readouterr().out


def test_no_server_errors_on_random_bodies(client, pair):
    """Fuzz: random JSON values for every field of every endpoint never give a 500."""
    rng = np.random.default_rng(0)
    values = [None, True, -1, 0, 3.5, 1e300, "", "s0", "a", "zz", [], [1, 2, 3, 4], {},
              {"x": 1}, ["s0"], "g0", pair["explanation_id"], 10**30, [0, 0, 5, 5]]
    fields = {"/api/explain": ["a", "b", "method", "model"],
              "/api/point": ["explanation_id", "side", "row", "col", "seq"],
              "/api/region": ["explanation_id", "side", "box", "seq"],
              "/api/search": ["query", "box", "k"],
              "/api/search/point": ["search_id", "results", "row", "col", "seq"]}
    for path, names in fields.items():
        for _ in range(25):
            body = {n: values[rng.integers(len(values))] for n in names
                    if rng.random() < 0.85}
            response = client.post(path, json=body)
            assert response.status_code in (200, 400, 404, 413, 422), (path, body,
                                                                       response.text)
            assert "error" in response.json() or response.status_code == 200


def test_point_without_contribution_answers_no_map_not_a_flat_map():
    import torch

    from simexplain import Explainer
    from simexplain.toy import HeadModel
    from simexplain.live_maps import map_json, point_grid_map
    torch.manual_seed(0)
    explainer = Explainer(HeadModel("gmp", bias=False).eval(), "features")
    pair = explainer.explain(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    norms = pair.a.contributions.norm(dim=1)
    empty, full = int(torch.argmin(norms)), int(torch.argmax(norms))
    centre = lambda i: (4 * (i // 8) + 1.5, 4 * (i % 8) + 1.5)  # noqa: E731
    answer = map_json(point_grid_map(pair, "a", centre(empty), kind="contribution"))
    assert answer["no_map"] is True and answer["map"] is None and "no map" in answer["message"]
    assert answer["kind"] == "contribution"
    assert map_json(point_grid_map(pair, "a", centre(full), kind="contribution"))["no_map"] is False
    # the default (match) kind compares whole features there: a real map, not "no map"
    answer = map_json(point_grid_map(pair, "a", centre(empty)))
    assert answer["no_map"] is False and answer["kind"] == DEFAULT_POINT_MAP


# -- issue 14: input sizes, identical methods, sample pairs, ranked matches --------------------
def test_finer_grid_by_input_size(client, explainer, samples):
    """`size` is the model's input side: 128 px gives the toy a 16x16 grid, and the maps are
    the resized model's own (Explainer.resized, the CLI's --size)."""
    response = client.post("/api/explain", json={"a": "s0", "b": "s1", "size": 128})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["size"] == 128 and body["a"]["grid"] == [16, 16]
    assert body["a"]["input_size"] == [128, 128]
    resized = explainer.resized(128)
    expected = resized.explain(samples[0][1], samples[1][1])
    # the score is the resized model's own cosine of its two embeddings
    e_a, e_b = resized.embed([samples[0][1]], "a")[0], resized.embed([samples[1][1]], "b")[0]
    assert body["score"] == pytest.approx(float(e_a @ e_b / (e_a.norm() * e_b.norm())),
                                          rel=1e-5)
    np.testing.assert_allclose(body["a"]["overall"], expected.overall_a.numpy(), rtol=1e-4,
                               atol=1e-9)
    # the model's own size is the same explanation as no size at all
    own = client.post("/api/explain", json={"a": "s0", "b": "s1", "size": SIZE}).json()
    plain = client.post("/api/explain", json={"a": "s0", "b": "s1"}).json()
    assert own["explanation_id"] == plain["explanation_id"] and plain["size"] == SIZE
    assert client.get("/api/models").json()["models"][0]["input_size"] == SIZE


@pytest.mark.parametrize("size", [5000, 641, 4, 0, -3])
def test_input_size_is_bounded(client, size):
    response = client.post("/api/explain", json={"a": "s0", "b": "s1", "size": size})
    assert response.status_code == 400
    assert "640 px" in response.json()["error"] and str(size) in response.json()["error"]


def test_input_size_limit_is_the_servers(explainer, samples):
    app = create_app(explainer=explainer, samples=samples, max_input_side=96)
    with TestClient(app, base_url="http://localhost") as c:
        assert c.get("/api/models").json()["max_input_side"] == 96
        assert c.post("/api/explain", json={"a": "s0", "b": "s1", "size": 96}).status_code == 200
        response = c.post("/api/explain", json={"a": "s0", "b": "s1", "size": 128})
        assert response.status_code == 400 and "96 px" in response.json()["error"]


def test_point_map_top_matches_and_pointed_cell(client, pair):
    body = client.post("/api/point", json={"explanation_id": pair["explanation_id"],
                                           "side": "a", "row": 20.5, "col": 40}).json()
    grid = np.array(body["map"])
    order = np.argsort(-grid.ravel(), kind="stable")[:3]
    assert [t["value"] for t in body["top"]] == pytest.approx(grid.ravel()[order].tolist(),
                                                              rel=1e-5)
    assert body["top"][0]["value"] == pytest.approx(body["argmax"]["value"])
    for t in body["top"]:
        r, c = t["cell"]
        assert grid[r, c] == pytest.approx(t["value"], rel=1e-5)
        assert t["row"] == pytest.approx((r + 0.5) * PHOTO / 8)
    # pixel (20.5, 40) lies in cell (1, 3) of the 8x8 grid over the 96 px photo
    cell = PHOTO / 8
    assert body["query_cell"] == pytest.approx([cell, 3 * cell, 2 * cell, 4 * cell])


def test_identical_methods_are_computed_not_named():
    """A global-average-pooling head makes Grad-CAM and RGrad-CAM the same map, and Grad-CAM
    the positive part of the relative map (METHOD.md); a head with a flatten + linear layer
    does not. The answer follows the maps, checked here against the methods themselves."""
    from torch import nn

    from simexplain.explainer import Explainer
    from simexplain.images import Preprocess
    from simexplain.methods import get_method

    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3,
                                                                                 stride=2))
    gap = nn.Sequential()
    gap.add_module("features", features)
    gap.add_module("pool", nn.AdaptiveAvgPool2d(1))
    gap.add_module("flat", nn.Flatten())
    gap.add_module("fc", nn.Linear(8, 6, bias=False))  # a bias shifts the relative map
    flat = nn.Sequential()
    flat.add_module("features", features)
    flat.add_module("flat", nn.Flatten())
    flat.add_module("fc", nn.LazyLinear(6))
    flat(torch.zeros(1, 3, 32, 32))
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
              for _ in range(2)]
    for model, same in ((gap, True), (flat, False)):
        model.eval()
        explainer = Explainer(model, "features", transform=Preprocess(size=(32, 32)))
        app = create_app(explainer=explainer, samples=images)
        with TestClient(app, base_url="http://localhost") as c:
            e = c.post("/api/explain", json={"a": "s0", "b": "s1"}).json()
            body = c.post("/api/identical", json={"explanation_id": e["explanation_id"]}).json()
        g = get_method("gradcam").attribute(explainer, *images)
        r = get_method("rgradcam").attribute(explainer, *images)
        rel = get_method("relative").attribute(explainer, *images)

        def close(xs, ys):
            return all(torch.allclose(x.double(), y.double(), rtol=1e-4, atol=1e-7)
                       for x, y in zip(xs, ys))
        assert close(g, r) == same and close(g, [torch.relu(x) for x in rel]) == same
        named = {rel["method"]: rel["relation"] for rel in body["methods"]["gradcam"]}
        assert (named.get("rgradcam") == "identical") == same
        assert (named.get("relative") == "positive part") == same
        assert "occlusion" not in body["compared"]  # a forward pass per cell: not computed


def test_attention_methods_on_a_cnn_answer_why_and_are_not_compared(client, pair):
    response = client.post("/api/explain", json={"a": "s0", "b": "s1", "method": "chefer"})
    assert_error(response, 400, "no self-attention")
    body = client.post("/api/identical", json={"explanation_id": pair["explanation_id"]}).json()
    assert not {"attention-rollout", "chefer", "gradcam-tokens"} & set(body["compared"])
    assert "gradcam" in body["compared"]


def test_identical_needs_a_known_explanation(client):
    response = client.post("/api/identical", json={"explanation_id": "nope"})
    assert response.status_code == 404 and "explain the pair again" in response.json()["error"]


def test_zoo_models_offer_their_sample_pair(monkeypatch, explainer, samples):
    """A zoo model's sample pair becomes two sample images the page opens on; without the
    data on this machine the model has none (and the page keeps its current pair)."""
    from simexplain import zoo
    from simexplain.datasets import DatasetMissing
    expected = [p.name for p in zoo.entry("fmnist-gap").sample_pair()]
    app = create_app(explainer=explainer, model="fmnist-gap", samples=samples)
    with TestClient(app, base_url="http://localhost") as c:
        info = c.get("/api/models").json()["models"][0]
        assert info["name"] == "fmnist-gap" and info["input_size"] == SIZE
        listed = {i["id"]: i["name"] for i in c.get("/api/images").json()["images"]}
        assert [listed[i] for i in info["sample_pair"]] == expected
        with Image.open(zoo.entry("fmnist-gap").sample_pair()[0]) as first:
            size = first.size
        got = Image.open(io.BytesIO(c.get(f"/api/images/{info['sample_pair'][0]}").content))
        assert got.size == size

    def missing(self):
        raise DatasetMissing("not fetched")
    monkeypatch.setattr(zoo.ZooEntry, "sample_pair", missing)
    app = create_app(explainer=explainer, model="fmnist-gap", samples=samples)
    with TestClient(app, base_url="http://localhost") as c:
        assert c.get("/api/models").json()["models"][0]["sample_pair"] is None
        assert c.get("/api/images").json()["total"] == len(samples)


def test_a_class_token_model_reports_its_token_share_and_whether_the_map_is_spatial(samples):
    """A class-token ViT explained one block before the end: the grid's map plus the class
    token's share make the score; at the last block the answer says the map is not spatial."""
    import torch
    from simexplain.explainer import Explainer
    from simexplain.images import Preprocess
    from simexplain.toy import tiny_vit
    for layer, spatial in (("blocks.0", True), ("blocks.1", False)):
        explainer = Explainer(tiny_vit(), layer, transform=Preprocess(size=(28, 28)),
                              model_name="toy-vit")
        app = create_app(explainer=explainer, samples=samples)
        with TestClient(app, base_url="http://localhost") as c:
            body = c.post("/api/explain", json={"a": "s0", "b": "s1"}).json()
        for side in ("a", "b"):
            assert body[side]["spatial"] is spatial
            grid_total = float(torch.tensor(body[side]["overall"]).sum())
            assert grid_total + body[side]["token_share"] == pytest.approx(body["score"],
                                                                           abs=1e-4)
            assert body[side]["token_share"] != 0


def test_a_sample_whose_file_name_is_not_utf8(explainer, kit, tmp_path):
    """Its name made every /api/images answer a 500 (pydantic cannot write the surrogates
    Python holds such bytes as); it is shown with U+FFFD and explains like any other."""
    import os
    odd = tmp_path / os.fsdecode(b"caf\xe9.png")
    kit.two_part(0, 4).save(odd)
    app = create_app(explainer=explainer, samples=[odd, kit.two_part(1, 2)])
    with TestClient(app, base_url="http://localhost") as client:
        listed = client.get("/api/images")
        assert listed.status_code == 200
        assert listed.json()["images"][0]["name"] == "caf\ufffd.png"
        explained = client.post("/api/explain", json={"a": "s0", "b": "s1"})
        assert explained.status_code == 200, explained.text


def test_upload_with_a_file_name_too_long_to_parse_names_the_cause(client, kit):
    """The multipart parser refuses a part header over about 4 KB: the error says so instead
    of an unexplained "Invalid multipart data."."""
    data = png_bytes(kit.two_part(3, 1, size=40))
    response = client.post("/api/images", files={"file": ("a" * 5000 + ".png", data)})
    assert_error(response, 400, "header")
    assert "file name" in response.json()["error"]
    fine = client.post("/api/images", files={"file": ("a" * 300 + ".png", data)})
    assert fine.status_code == 201 and len(fine.json()["name"]) <= 80
