"""POST /api/patterns: the cross-view patterns of a cached pair, for a one-stream toy model and
the two-stream sketch model, and the page's patterns script."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from simexplain.explanation import DEFAULT_POINT_MAP
from simexplain.web import create_app


def _explain(client, a="s0", b="s1", model=None):
    response = client.post("/api/explain", json={"a": a, "b": b, **({"model": model}
                                                                    if model else {})})
    assert response.status_code == 200, response.text
    return response.json()


def test_patterns_of_a_one_stream_pair(explainer, samples):
    with TestClient(create_app(explainer=explainer, samples=samples),
                    base_url="http://localhost") as client:
        pair = _explain(client)
        response = client.post("/api/patterns", json={"explanation_id": pair["explanation_id"],
                                                      "k": 3})
        assert response.status_code == 200, response.text
        body = response.json()
        expected = explainer.explain(samples[0][1], samples[1][1]).patterns(3)
        assert body["kind"] == DEFAULT_POINT_MAP and len(body["patterns"]) == len(expected)
        for got, want in zip(body["patterns"], expected):
            assert got["point_a"] == pytest.approx(list(want.point_a))
            assert got["point_b"] == pytest.approx(list(want.point_b))
            assert got["strength"] == pytest.approx(want.strength, rel=1e-6)
        # bad input: an unknown id (404) and k out of range (422), as the other endpoints
        assert client.post("/api/patterns", json={"explanation_id": "nope"}).status_code == 404
        assert client.post("/api/patterns", json={"explanation_id": pair["explanation_id"],
                                                  "k": 0}).status_code == 422
        page = client.get("/").text
        assert 'id="patterns"' in page and "/static/main.js" in page
        assert "./patterns.js" in client.get("/static/main.js").text
        script = client.get("/static/patterns.js")
        assert script.status_code == 200 and "/api/patterns" in script.text


def test_patterns_with_the_two_stream_sketch_model():
    from simexplain import zoo
    sketch_path, item_path = zoo.entry("fmnist-sketch").sample_pair()
    samples = [(path.stem, Image.open(path).convert("RGB")) for path in (sketch_path, item_path)]
    app = create_app(model="fmnist-sketch", samples=samples, models=["fmnist-sketch"])
    with TestClient(app, base_url="http://localhost") as client:
        pair = _explain(client, model="fmnist-sketch")
        assert pair["residual"] < 1e-5
        body = client.post("/api/patterns", json={"explanation_id": pair["explanation_id"]}).json()
    expected = zoo.load("fmnist-sketch").explain(*(image for _, image in samples)).patterns(5)
    assert [p["cell_a"] for p in body["patterns"]] == [list(p.cell_a) for p in expected]
    assert [p["cell_b"] for p in body["patterns"]] == [list(p.cell_b) for p in expected]
