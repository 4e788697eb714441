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
