"""Interactive retrieval benchmark: composites, metrics, and quick runs."""

from __future__ import annotations

import json

import numpy as np
from pathlib import Path

import pytest
import torch

from simexplain import zoo
from simexplain.cli import main
from simexplain.errors import SimexplainError
from simexplain.evaluation.interactive import (evaluate_model, make_composites, ranking_metrics,
                                               run_interactive)
from simexplain.evaluation.options import INTERACTIVE
from simexplain.metrics import map_at_r, recall_at_k
from simexplain.explainer import Explainer
from simexplain.images import Preprocess
from simexplain.toy import HeadModel

EXPECTED_KEYS = {"similarity", "grid", "item_size", "query_size", "global", "region",
                 "region_right", "max_residual", "seconds"}


def labelled_items(n: int = 120, classes: int = 5):
    """Items whose pixels encode their row (left half) so composites can be traced back."""
    labels = np.arange(n) % classes
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i in range(n):
        images[i] = i % 256
    return images, labels


def fmnist_test_split():
    from simexplain.datasets import fashion_mnist
    return fashion_mnist("test")


def test_composites_left_is_a_right_is_b_and_gallery_is_disjoint():
    images, labels = labelled_items()
    data = make_composites(images, labels, n_queries=20, n_gallery=50, seed=3)
    assert data.queries.shape == (20, 28, 56) and data.gallery.shape == (50, 28, 28)
    np.testing.assert_array_equal(data.queries[:, :, :28], images[data.left_index])
    np.testing.assert_array_equal(data.queries[:, :, 28:], images[data.right_index])
    np.testing.assert_array_equal(data.left_labels, labels[data.left_index])
    np.testing.assert_array_equal(data.right_labels, labels[data.right_index])
    assert (data.left_labels != data.right_labels).all()
    used = np.concatenate([data.left_index, data.right_index])
    assert len(np.unique(used)) == 40  # no item twice
    assert not set(used) & set(data.gallery_index)
    np.testing.assert_array_equal(data.gallery_labels, labels[data.gallery_index])
    again = make_composites(images, labels, n_queries=20, n_gallery=50, seed=3)
    np.testing.assert_array_equal(again.queries, data.queries)
    other = make_composites(images, labels, n_queries=20, n_gallery=50, seed=4)
    assert not np.array_equal(other.left_index, data.left_index)


def test_composites_refuse_impossible_requests():
    images, labels = labelled_items(30)
    with pytest.raises(SimexplainError, match="need"):
        make_composites(images, labels, n_queries=10, n_gallery=20)
    with pytest.raises(SimexplainError, match="two classes"):
        make_composites(images, np.zeros(30, int), n_queries=2, n_gallery=2)


def test_ranking_metrics_agree_with_the_metrics_module():
    rng = np.random.default_rng(0)
    q, g = rng.standard_normal((30, 6)), rng.standard_normal((80, 6))
    ql, gl = rng.integers(0, 4, 30), rng.integers(0, 4, 80)
    from simexplain.similarity import scores as similarity_scores
    figures = ranking_metrics(similarity_scores(q, g, "cosine"), ql, gl, "cosine")
    assert figures["recall@1"] == pytest.approx(recall_at_k(q, ql, g, gl, k=1))
    assert figures["map@r"] == pytest.approx(map_at_r(q, ql, g, gl))
    # distances rank ascending: the negated distance gives the same figures
    d = similarity_scores(q, g, "euclidean")
    assert ranking_metrics(d, ql, gl, "euclidean") == ranking_metrics(-d, ql, gl, "dot")


def toy_gray_explainer(similarity: str = "cosine"):
    torch.manual_seed(0)
    model = HeadModel("gap", dim=8, channels=8, depth=2, in_channels=1,
                      normalize=similarity == "cosine").eval()
    return Explainer(model, "features", similarity=similarity,
                     transform=Preprocess(size=(28, 28), mean=(0.5,), std=(0.5,),
                                          grayscale=True))


@pytest.mark.parametrize("similarity", ["cosine", "euclidean"])
def test_evaluate_model_on_synthetic_items(similarity):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (60, 28, 28), dtype=np.uint8)
    labels = np.arange(60) % 3
    data = make_composites(images, labels, n_queries=6, n_gallery=30, seed=0)
    figures = evaluate_model(toy_gray_explainer(similarity), data, item_size=32, batch_size=4)
    assert EXPECTED_KEYS <= set(figures)
    assert figures["query_size"] == [32, 64] and figures["grid"] == [8, 16]
    assert figures["max_residual"] < 1e-4
    for key in ("global", "region", "region_right"):
        assert 0 <= figures[key]["recall@1"] <= 1 and 0 <= figures[key]["map@r"] <= 1


@pytest.fixture
def toy_zoo(monkeypatch):
    """A gray toy model registered in the zoo (removed afterwards)."""
    entry = zoo.ZooEntry(name="toy-gray", build=lambda: toy_gray_explainer().stream_a.model,
                         layer="features", similarity="cosine",
                         preprocess=Preprocess(size=(28, 28), mean=(0.5,), std=(0.5,),
                                               grayscale=True),
                         embedding_dim=8, description="test model")
    zoo.list()  # register the built-ins first
    monkeypatch.setitem(zoo._REGISTRY, "toy-gray", entry)
    monkeypatch.setattr(zoo, "_MODELS", dict(zoo._MODELS))
    return "toy-gray"


def test_quick_run_and_cli(toy_zoo, tmp_path, capsys):
    fmnist_test_split()
    out = tmp_path / "eval"
    assert main(["eval", "interactive", "--quick", "--model", toy_zoo, "--model", "no-such-model",
                 "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "interactive.json").read_text())
    assert printed["models"].keys() == saved["models"].keys() == {toy_zoo}
    assert EXPECTED_KEYS <= set(saved["models"][toy_zoo])
    assert saved["queries"] == INTERACTIVE.quick_queries
    assert saved["gallery"] == INTERACTIVE.quick_gallery
    assert "no-such-model" in saved["skipped"]
    assert toy_zoo in (out / "interactive.md").read_text()
    # seeded: the same figures again
    again = run_interactive([toy_zoo], quick=True)
    assert again["models"][toy_zoo]["region"] == saved["models"][toy_zoo]["region"]


def test_cli_without_any_usable_model_fails(tmp_path, capsys):
    fmnist_test_split()
    assert main(["eval", "interactive", "--quick", "--model", "no-such-model"]) == 2
    assert "no model could be evaluated" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["fmnist-gap", "fmnist-gmp"])
def test_region_search_beats_global_search_for_a_trained_model(name):
    fmnist_test_split()
    results = run_interactive([name], quick=True)
    assert name in results["models"], results["skipped"].get(name)
    figures = results["models"][name]
    assert EXPECTED_KEYS <= set(figures)
    assert figures["region"]["recall@1"] > figures["global"]["recall@1"]
    assert figures["region"]["map@r"] > figures["global"]["map@r"]


def test_a_broken_benchmark_module_fails_loudly_without_breaking_the_command_line(
        tmp_path, monkeypatch, capsys):
    from simexplain.evaluation import options, registry
    (tmp_path / "broken_bench_for_test.py").write_text("from math import no_such_name\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(registry.BENCHMARKS, "broken",
                        registry.Benchmark("broken_bench_for_test", "fails to import",
                                           options.POINTING.configure))
    monkeypatch.setitem(registry.BENCHMARKS, "absent",
                        registry.Benchmark("simexplain.evaluation.no_such_module", "missing",
                                           options.POINTING.configure))
    for name, module in (("broken", "broken_bench_for_test"),
                         ("absent", "simexplain.evaluation.no_such_module")):
        # its options come from the registry, so its help is there ...
        with pytest.raises(SystemExit) as helped:
            main(["eval", name, "--help"])
        assert helped.value.code == 0 and "--samples" in capsys.readouterr().out
        # ... and running it fails naming the module, before writing anything
        out = tmp_path / f"out-{name}"
        assert main(["eval", name, "--quick", "--model", "fmnist-gap", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert "unavailable" in err and module in err and err.count("\n") == 1, err
        assert not out.exists()
    assert main(["models"]) == 0


def test_eval_all_fails_before_any_work_when_a_suite_benchmark_is_broken(monkeypatch):
    from simexplain.evaluation import registry, suite
    monkeypatch.setitem(registry.BENCHMARKS, "sanity",
                        registry.Benchmark("simexplain.evaluation.no_such_module", "missing",
                                           registry.BENCHMARKS["sanity"].configure))
    monkeypatch.setattr(suite, "available_models",
                        lambda wanted: pytest.fail("models were loaded before the check"))
    with pytest.raises(registry.BenchmarkUnavailable, match="'sanity'.*no_such_module"):
        suite.run_all(out=Path("unused"), quick=True)


def test_the_command_line_offers_every_registered_benchmark():
    import argparse
    from simexplain.evaluation import registry
    from simexplain.evaluation.commands import add_benchmarks
    from simexplain.lazy_parser import LazyParser
    evaluate = LazyParser(prog="eval")
    add_benchmarks(evaluate)
    offered = next(action.choices for action in evaluate._actions
                   if isinstance(action, argparse._SubParsersAction))
    assert list(offered) == list(registry.BENCHMARKS)
