"""The two-stream sketch-to-item model (`fmnist-sketch`): exact decomposition against the
model's own forward pass, its sample pair, and the recorded geometry of its sketches."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from simexplain import datasets, zoo
from simexplain.geometry import apply_affine
from simexplain.zoo import samples, sketch


@pytest.fixture(scope="module")
def pair():
    return zoo.entry(sketch.NAME).sample_pair()


def test_two_streams_have_their_own_weights():
    entry = zoo.entry(sketch.NAME)
    assert entry.two_stream and not zoo.entry("fmnist-gap").two_stream
    explainer = zoo.load(sketch.NAME)
    a, b = explainer.stream_a.model, explainer.stream_b.model
    assert a is not b and a is zoo.model(sketch.NAME) and b is zoo.model(sketch.NAME, "b")
    weights_a, weights_b = a.state_dict(), b.state_dict()
    assert weights_a.keys() == weights_b.keys()
    assert not torch.equal(weights_a["features.0.weight"], weights_b["features.0.weight"])
    assert explainer.transform_a == sketch.SKETCH_PREPROCESS
    assert explainer.transform_b == sketch.ITEM_PREPROCESS
    # the committed weights stay small
    assert sketch.WEIGHTS.stat().st_size < 500_000


def test_decomposition_is_exact_against_the_models_own_forward(pair):
    explainer = zoo.load(sketch.NAME)
    result = explainer.explain(*pair)
    # the score, independently: each stream's own forward pass on its own preprocessing
    a, b = (Image.open(p) for p in pair)
    with torch.no_grad():
        e_a = explainer.stream_a.model(sketch.SKETCH_PREPROCESS(a)[None])
        e_b = explainer.stream_b.model(sketch.ITEM_PREPROCESS(b)[None])
        wrong = explainer.stream_a.model(sketch.ITEM_PREPROCESS(b)[None])
    own = float(F.cosine_similarity(e_a, e_b)[0])
    assert result.score == pytest.approx(own, abs=1e-6)
    assert float(result.pairwise_flat.sum()) == pytest.approx(own, abs=1e-5)
    assert result.residual < 1e-5
    # the item through the sketch stream is another embedding: the streams matter
    assert not torch.allclose(wrong, e_b, atol=1e-3)
    assert result.a.grid == result.b.grid == (7, 7)
    # a trained model: a sketch is closer to its own item than to most other items
    items, _ = datasets.fashion_mnist("test")
    others = torch.stack([sketch.ITEM_PREPROCESS(Image.fromarray(items[i])) for i in range(1, 65)])
    with torch.no_grad():
        gallery = explainer.stream_b.model(others)
    assert own > float(np.quantile((gallery @ e_a[0]).numpy(), 0.9))


def test_resolve_with_a_layer_keeps_both_streams(pair):
    explainer = zoo.resolve(sketch.NAME, layer="trunk.4")
    assert explainer.stream_a.model is not explainer.stream_b.model
    assert explainer.stream_b.layer_name == "trunk.4"
    result = explainer.explain(*pair)
    assert result.a.grid == (7, 7)
    assert result.score == pytest.approx(zoo.load(sketch.NAME).explain(*pair).score, abs=1e-6)


def test_sample_pair_is_a_sketch_of_its_item_written_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMEXPLAIN_DATA", str(tmp_path))
    sketch_path, item_path = zoo.entry(sketch.NAME).sample_pair()
    assert sketch_path.parent == item_path.parent == tmp_path / "samples"
    assert not list((tmp_path / "samples").glob(".*"))  # no temporary files left
    items, _ = datasets.fashion_mnist("test")
    item = np.asarray(Image.open(item_path))
    assert np.array_equal(item, items[0])
    t = np.array(json.loads(samples.sketch_transform_path().read_text()))
    expected = sketch.draw_sketch(sketch.edges(item[None])[0], t)
    assert np.array_equal(np.asarray(Image.open(sketch_path)), expected)
    stamp = sketch_path.stat().st_mtime_ns
    assert zoo.entry(sketch.NAME).sample_pair() == (sketch_path, item_path)
    assert sketch_path.stat().st_mtime_ns == stamp  # not rewritten


def test_recorded_affine_maps_item_edges_onto_sketch_edges():
    items, _ = datasets.fashion_mnist("test")
    rng = np.random.default_rng(3)
    for index in range(5):
        item = items[index]
        lines = sketch.edges(item[None])[0]
        t = sketch.random_transform(rng)
        assert not np.allclose(t, np.eye(3))
        drawn = sketch.draw_sketch(lines, t).astype(float)
        # strong edge pixels of the item, by their centres, through T
        rows, cols = np.nonzero(lines > 200)
        centres = np.c_[rows + 0.5, cols + 0.5]
        mapped = apply_affine(t, centres)
        inside = ((mapped >= 0.5) & (mapped < 27.5)).all(1)
        r, c = np.floor(mapped[inside]).astype(int).T
        # where the item's edge went, the sketch has an edge (a pixel of the 3x3 around it)
        near = np.max([drawn[np.clip(r + dr, 0, 27), np.clip(c + dc, 0, 27)]
                       for dr in (-1, 0, 1) for dc in (-1, 0, 1)], axis=0)
        assert inside.mean() > 0.8
        assert np.mean(near > 100) > 0.95
        # exactly at the mapped pixel; far less often where a shifted map points
        hit = np.mean(drawn[r, c] > 100)
        shifted = np.mean([np.mean(drawn[np.clip(r + dr, 0, 27), np.clip(c + dc, 0, 27)] > 100)
                           for dr, dc in ((3, 0), (6, 0), (0, 6), (-6, 0))])
        assert hit > 0.95 and shifted < hit - 0.2


def test_identity_transform_draws_the_edges_themselves():
    items, _ = datasets.fashion_mnist("test")
    lines = sketch.edges(items[:1])[0]
    assert lines.dtype == np.uint8 and lines.max() == 255
    assert np.abs(sketch.draw_sketch(lines, np.eye(3)).astype(int) - lines).max() <= 1
    # background stays black: edges lie on the item's outline
    assert lines[items[0] == 0].mean() < lines.mean()
