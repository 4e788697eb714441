"""The web engine takes gallery images' sides from an index's explain cache (`index build
--explain`) instead of running the model on them, with the same maps as computing them."""

from __future__ import annotations

import pytest
import torch

from simexplain.web.engine import Engine


@pytest.fixture(scope="module")
def cached_index_dir(gallery_dir, explainer, tmp_path_factory):
    from simexplain.retrieval import Index
    out = tmp_path_factory.mktemp("cached-index") / "toy-index"
    Index.build(gallery_dir, explainer, model_name="toy", out=out, progress=False, explain=True)
    return out


def _counting(monkeypatch, explainer) -> list:
    """Record how many images each call of explainer.sides gets."""
    real = explainer.sides
    seen = []

    def sides(images, *args, **kwargs):
        images = list(images)
        seen.append(len(images))
        return real(images, *args, **kwargs)
    monkeypatch.setattr(explainer, "sides", sides)
    return seen


def test_search_results_come_from_the_cache(explainer, cached_index_dir, index_dir, samples,
                                            monkeypatch):
    with_cache = Engine(explainer=explainer, index=cached_index_dir, samples=samples)
    without = Engine(explainer=explainer, index=index_dir, samples=samples)
    assert with_cache.index.explain_cache is not None and without.index.explain_cache is None
    seen = _counting(monkeypatch, explainer)
    found = with_cache.search("s0", k=6)
    assert seen == [1]  # the query alone; the six results were not run through the model
    seen.clear()
    expected = without.search("s0", k=6)
    assert seen == [1, 6]
    assert [h.index for h in found.hits] == [h.index for h in expected.hits]
    for ours, theirs in zip(found.hits, expected.hits):
        assert ours.result.side.grid == theirs.result.side.grid
        assert ours.result.side.frame == theirs.result.side.frame
        torch.testing.assert_close(ours.result.side.contributions,
                                   theirs.result.side.contributions, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ours.map.values, theirs.map.values, rtol=1e-5, atol=1e-6)
    # a pair view of a gallery image on side b uses it too; side a is computed
    seen.clear()
    pair = with_cache.explain("s1", "g2")
    assert seen == [1]
    direct = explainer.explain(samples[1][1], with_cache.images.gallery_paths[2])
    torch.testing.assert_close(pair.map_b.double(), direct.overall_b.double(),
                               rtol=1e-4, atol=1e-6)


def test_other_input_sizes_compute(explainer, cached_index_dir, samples, monkeypatch):
    """At another input size the cache (made at the model's own) does not apply."""
    engine = Engine(explainer=explainer, index=cached_index_dir, samples=samples)
    resized = engine.explainer("toy", 48)
    seen = _counting(monkeypatch, resized)
    engine.prepared("toy", ["g0", "g1"], "b", size=48)
    assert seen == [2]


def test_a_class_token_models_sides_come_from_the_cache(samples, gallery_dir, tmp_path,
                                                        monkeypatch):
    """A transformer explained at a layer with prefix tokens: the cached sides carry the
    tokens' contributions, so a pair's token share and spatial flag equal computed ones."""
    from simexplain.explainer import Explainer
    from simexplain.images import Preprocess
    from simexplain.retrieval import Index
    from simexplain.toy import tiny_vit

    def vit() -> Explainer:
        return Explainer(tiny_vit(registers=2), "blocks.0", model_name="vit",
                         transform=Preprocess(size=(28, 28)))
    explainer = vit()
    Index.build(gallery_dir, explainer, out=tmp_path / "index", progress=False, explain=True)
    Index.build(gallery_dir, explainer, out=tmp_path / "plain", progress=False)
    with_cache = Engine(explainer=explainer, index=tmp_path / "index", samples=samples)
    other = vit()  # its own explainer: the engines keep their sides apart
    without = Engine(explainer=other, index=tmp_path / "plain", samples=samples)
    seen = _counting(monkeypatch, explainer)
    ours = with_cache.explain("s1", "g2")
    assert seen == [1]  # side a alone: side b came from the cache
    theirs = without.explain("s1", "g2")
    pair, expected = ours.record.pair, theirs.record.pair
    assert pair.b.tokens is not None and pair.b.tokens.shape[0] == 3
    torch.testing.assert_close(pair.b.tokens, expected.b.tokens, rtol=1e-5, atol=1e-8)
    assert pair.token_share_b == pytest.approx(expected.token_share_b, abs=1e-6)
    assert pair.token_share_b != 0 and pair.b.spatial == expected.b.spatial
    torch.testing.assert_close(ours.map_b, theirs.map_b, rtol=1e-5, atol=1e-8)
    assert float(ours.map_b.sum()) + pair.token_share_b == pytest.approx(pair.score, abs=1e-5)
