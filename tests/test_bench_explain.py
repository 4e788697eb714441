"""Smoke test of benchmarks/bench_explain.py (no timing asserts): its reference loops, written
from the paper's description, give the same decomposition as `explain` on small shapes, and
its report renders."""

import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_explain.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_explain", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.MIN_SECONDS = 0.0  # no timing to speak of here: one repeat is enough
    return module


@pytest.mark.parametrize("kind, grid_b", [("flatten+bn", (3, 4)), ("gap+bn", (3, 4)),
                                          ("gap+fc", (2, 5))])
def test_reference_loops_agree_with_explain(bench, kind, grid_b):
    row = bench.paper_row("small", kind, 16, (3, 4), grid_b, 8, repeats=1, quick=False)
    assert row["agreement"] < 1e-5  # paper_row also asserts it
    assert row["speedup"] > 0


def test_report_renders_and_replaces_the_readme_block(bench, tmp_path):
    results = {
        "grids": [{"grid": "7x7", "forwards_ms": 3.0, "explain": 1.1, "reference_path": 2.0,
                   "path": "mean pooling, forward", "memory_forwards_mb": 1.0,
                   "memory_explain_mb": 2.0}],
        "zoo": [], "saliency": [],
        "paper": [{"shape": "s", "explain_ms": 1.0, "loops_ms": 100.0, "speedup": 100.0,
                   "agreement": 1e-9}],
    }
    text = bench.tables(results)
    assert "| 7x7 | 1x (3 ms) | 1.10x | 2.0x | mean pooling, forward | 1 MB, 2 MB |" in text
    readme = tmp_path / "README.md"
    readme.write_text("a\n<!-- bench:start -->\nold\n<!-- bench:end -->\nb\n")
    bench.write_tables(readme, text, "header")
    written = readme.read_text()
    assert "old" not in written and "| 7x7 |" in written and written.endswith("b\n")


def test_gallery_row_compares_explain_gallery_with_one_embedding_pass(bench):
    from simexplain import Explainer
    explainer = Explainer(bench.grid_model(), "features")
    row = bench.gallery_row("grid model", explainer, (32, 32), repeats=1)
    assert row["images"] == bench.GALLERY + 1 and row["gallery"] > 0
    text = bench.tables({"grids": [], "zoo": [], "paper": [], "saliency": [],
                         "galleries": [row]})
    assert "| grid model | 17 | 1x (" in text


def test_zoo_row_of_the_vit_names_its_head_depth(bench):
    """The ViT row: fmnist-vit explained one block before its class-token head."""
    row = bench.zoo_row("fmnist-vit", repeats=1)
    assert row is not None, "fmnist-vit's sample pair (the Fashion-MNIST test split) is missing"
    assert row["model"] == "fmnist-vit (head: 1 block)" and row["grid"] == "7x7"
    assert row["forwards_ms"] > 0 and row["explain"] > 0
    text = bench.tables({"grids": [], "zoo": [row], "paper": [], "saliency": []})
    assert "| fmnist-vit (head: 1 block) | 7x7 | 1x (" in text


def test_count_calls_counts_operations_and_reads_to_the_host(bench):
    t = torch.ones(3)
    methods = {name: getattr(torch.Tensor, name) for name in bench.CountCalls.READS}
    with bench.CountCalls() as count:
        total = (t + 1).sum()  # 2 operations
        float(total)  # a read (item: one dispatched operation)
        t.tolist(), t.numpy()  # reads that do not dispatch on the CPU
    assert (count.ops, count.reads) == (3, 3)
    assert all(getattr(torch.Tensor, name) is method for name, method in methods.items())


def test_explain_on_a_known_head_reads_from_the_device_five_times(bench):
    """Each read to the host stalls a GPU until its queue is done: a known head's `explain`
    reads the two inputs' and the embedding's finiteness, the head's checks (agreement with
    the model, residual, spatial) in one transfer, and the score; the forward passes none."""
    from simexplain import Explainer
    model = bench.narrow_grid_model()
    explainer = Explainer(model, "features")
    x_a, x_b = bench.pair(16 * 7)
    ops, reads = bench.counted(lambda: explainer.explain(x_a, x_b))
    forward_ops, forward_reads = bench.counted(lambda: bench.two_forwards(model, x_a, x_b))
    assert explainer.stream_a.contributions(x_a).path == "mean pooling, affine, cached"
    assert reads <= 5 and forward_reads == 0
    assert ops <= forward_ops / 2 + 100  # one forward pass (batch of two) and the analysis


def test_fixed_rows_count_and_time_each_case(bench):
    rows = bench.fixed_rows(repeats=1)
    assert [r["case"].split(":")[0] for r in rows] == [
        "grid model 7x7", "narrow grid model 7x7 (width 8)", "narrow grid model 7x7"]
    for row in rows:
        assert row["baseline_reads"] <= 2 and row["ops"] > row["baseline_ops"] / 2
        assert row["ratio"] > 0 and row["baseline_ms"] > 0
    assert rows[0]["reads"] <= 5 and rows[1]["reads"] <= 5
    assert rows[2]["reads"] <= GALLERY_READS
    text = bench.tables({"grids": [], "zoo": [], "paper": [], "saliency": [], "fixed": rows})
    assert "| narrow grid model 7x7 (width 8): `explain` / two forwards | 36, 0 | " in text


# a gallery batch: each of its 17 inputs' finiteness, each batch's embedding (query, gallery)
# and its head's checks, and every score in one read
GALLERY_READS = 17 + 2 + 2 + 1
