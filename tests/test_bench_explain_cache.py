"""Smoke test of benchmarks/bench_explain_cache.py (no timing asserts): it runs on a tiny
gallery and both ways of explaining the hits give the same maps."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_explain_cache.py"


def test_benchmark_runs_and_both_paths_agree():
    spec = importlib.util.spec_from_file_location("bench_explain_cache", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = bench.run("toy", images=6, side=32, k=3, repeats=1, batch_size=4)
    assert row["images"] == 6 and row["k"] == 3 and len(row["grids"]) == 2
    assert row["max_map_difference"] < 1e-5
    assert row["cache_bytes_per_image"] > 0
