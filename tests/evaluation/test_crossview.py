"""The cross-view benchmark on the two-stream sketch model: its ground truth and its report."""

import numpy as np
import pytest

from simexplain import datasets
from simexplain.evaluation import correspondence, crossview, report
from simexplain.evaluation.composites import FMNIST_FOREGROUND
from simexplain.geometry import apply_affine


def test_true_points_of_the_sketch_lie_on_the_item():
    items, _ = datasets.fashion_mnist("test")
    rng = np.random.default_rng(0)
    on_item = []
    for index in range(10):
        drawn, item, t, mask = crossview.sketch_pair(items, index, rng)
        assert drawn.shape == item.shape == mask.shape == (28, 28)
        back = np.linalg.inv(t)
        points = correspondence.query_points((7, 7), (28, 28), back, mask, rng)
        assert len(points) > 3
        truth = apply_affine(back, points)
        # a query point lies on the moved item; its truth on the item itself (within a pixel:
        # the moved item is resampled bilinearly)
        r, c = np.floor(truth).astype(int).T
        near = np.max([item[np.clip(r + dr, 0, 27), np.clip(c + dc, 0, 27)]
                       for dr in (-1, 0, 1) for dc in (-1, 0, 1)], axis=0)
        on_item += (near > FMNIST_FOREGROUND).tolist()
        # the map and its inverse: the truth maps back onto the query point
        assert np.allclose(apply_affine(t, truth), points)
    assert np.mean(on_item) > 0.97


def test_run_reports_pck_patterns_and_retrieval():
    result = crossview.run("fmnist-sketch", samples=3, quick=True)
    assert result["benchmark"] == "crossview" and result["samples"] == 3
    assert set(result["methods"]) == set(crossview.OPTIONS.allowed)
    for figures in result["methods"].values():
        for alpha in ("pck@0.05", "pck@0.1"):
            ci = figures[alpha]
            assert 0 <= ci["lo"] <= ci["mean"] <= ci["hi"] <= 1
    assert result["retrieval"]["items"] == crossview.QUICK_RETRIEVAL_ITEMS
    assert 0.3 < result["retrieval"]["recall_at_1"]["mean"] <= 1  # a trained model
    assert 0 < result["patterns"]["found"] <= 3 * crossview.PATTERNS
    text = report.benchmark_section(crossview, [result])
    assert text.startswith("## Cross-view correspondence")
    assert "| fmnist-sketch | cosine |" in text and "Recall@1 (own item)" in text
    assert crossview.brief_lines([result])[0].startswith("- Cross-view retrieval")
    with pytest.raises(Exception, match="two-stream sketch model"):
        crossview.run("fmnist-gap", samples=1)
