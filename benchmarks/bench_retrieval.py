"""Retrieval benchmark: region-search latency vs gallery size and index kind, and the build
throughput of `Index.build`.

    python benchmarks/bench_retrieval.py            # 10k, 100k, 1M vectors of dim 512
    python benchmarks/bench_retrieval.py --quick    # small sizes, seconds
    python benchmarks/bench_retrieval.py --json results.json

Search: synthetic clustered gallery vectors (cosine similarity; the index stores them
L2-normalised) and region queries q_R built like real ones, as a partial sum of a gallery-like
embedding (a random fraction of a cluster centre plus noise), searched one at a time with
`Index.search_vector(q_R, k, query_embedding=e_a)` (FAISS candidates + exact re-scoring).
Reported per size and kind: build seconds, queries per second, p50 / p95 latency, speed-up over
flat, and recall@k of the approximate kinds against the exact (flat) top k.

Build: `Index.build` on a folder of generated PNGs with the toy CNN (and a zoo model unless
--quick or --no-zoo), images per second.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from simexplain.retrieval import Index  # noqa: E402


def synthetic_gallery(n: int, dim: int, clusters: int, rng: np.random.Generator, out=None):
    """Clustered vectors (centres plus noise), written chunk by chunk into `out` (default: a
    new float32 array; a float16 np.memmap keeps a large gallery on disk)."""
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    if out is None:
        out = np.empty((n, dim), dtype=np.float32)
    step = 100_000
    for start in range(0, n, step):
        stop = min(n, start + step)
        assign = rng.integers(0, clusters, stop - start)
        out[start:stop] = centres[assign] + 0.7 * rng.standard_normal((stop - start, dim),
                                                                         dtype=np.float32)
    return out, centres


def region_queries(centres: np.ndarray, count: int, rng: np.random.Generator):
    """(q_R, e_a) pairs: e_a a composite of two centres, q_R the part from the first."""
    dim = centres.shape[1]
    pairs = []
    for _ in range(count):
        a, b = rng.integers(0, len(centres), 2)
        share = rng.uniform(0.3, 0.7)
        part = share * centres[a] + 0.3 * rng.standard_normal(dim).astype(np.float32)
        rest = (1 - share) * centres[b] + 0.3 * rng.standard_normal(dim).astype(np.float32)
        pairs.append((part, part + rest))
    return pairs


def time_search(index: Index, queries, k: int):
    index.search_vector(queries[0][0], k, queries[0][1])  # warm-up
    latencies, results = [], []
    for vector, embedding in queries:
        start = time.perf_counter()
        hits = index.search_vector(vector, k, embedding)
        latencies.append(time.perf_counter() - start)
        results.append({h.index for h in hits})
    lat = np.asarray(latencies)
    return {"qps": float(len(lat) / lat.sum()), "p50_ms": float(np.percentile(lat, 50) * 1e3),
            "p95_ms": float(np.percentile(lat, 95) * 1e3)}, results


def bench_search(sizes, dim, kinds, n_queries, k, hnsw_max, seed):
    rows = []
    for n in sizes:
        rng = np.random.default_rng(seed)
        clusters = max(16, int(np.sqrt(n)))
        gallery, centres = synthetic_gallery(n, dim, clusters, rng)
        queries = region_queries(centres, n_queries, rng)
        exact = None
        flat_qps = None
        for kind in kinds:
            if kind == "hnsw" and n > hnsw_max:
                rows.append({"n": n, "kind": kind, "skipped": f"n > --hnsw-max ({hnsw_max})"})
                continue
            start = time.perf_counter()
            index = Index.from_vectors(gallery, similarity="cosine", kind=kind)
            build_s = time.perf_counter() - start
            timing, results = time_search(index, queries, k)
            if kind == "flat":
                exact, flat_qps = results, timing["qps"]
            row = {"n": n, "kind": kind, "dim": dim, "build_s": round(build_s, 2), **timing,
                   "params": index.params}
            if exact is not None:
                row["recall_at_k"] = float(np.mean([len(a & b) / k for a, b in zip(results, exact)]))
            if flat_qps:
                row["speedup_vs_flat"] = timing["qps"] / flat_qps
            rows.append(row)
            print(_search_line(row), flush=True)
            del index
            gc.collect()
        del gallery
        gc.collect()
    return rows


def bench_build(count: int, side: int, use_zoo: bool, batch_size: int):
    from PIL import Image
    import torch
    from simexplain.explainer import Explainer
    from simexplain.images import Preprocess
    from simexplain.toy import tiny_cnn
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "gallery"
        folder.mkdir()
        rng = np.random.default_rng(0)
        for i in range(count):
            array = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(array).save(folder / f"img_{i:04d}.png")
        models = [("simexplain.toy:tiny_cnn",
                   lambda: Explainer(tiny_cnn(), "features", transform=Preprocess(size=(64, 64)),
                                     model_name="simexplain.toy:tiny_cnn"))]
        if use_zoo:
            from simexplain import zoo
            models.append(("efficientnet-lite0", lambda: zoo.load("efficientnet-lite0")))
        for name, make in models:
            explainer = make()
            # warm-up: first-call costs (weights, kernels) are not throughput
            explainer.embed([folder / "img_0000.png"] * min(batch_size, count), "b", batch_size)
            start = time.perf_counter()
            index = Index.build(folder, explainer, name, batch_size=batch_size, progress=False,
                                out=Path(tmp) / f"index-{len(rows)}")
            seconds = time.perf_counter() - start
            size = getattr(explainer.transform_b, "size", None)
            row = {"model": name, "images": len(index), "input_size": list(size) if size else None,
                   "seconds": round(seconds, 2), "images_per_s": len(index) / seconds,
                   "torch_threads": torch.get_num_threads()}
            rows.append(row)
            print(f"build  {name:28s} {row['images']:5d} images  {row['seconds']:7.2f} s  "
                  f"{row['images_per_s']:8.1f} img/s (input {size}, incl. hashing, decoding, save)",
                  flush=True)
    return rows


def _search_line(row):
    extra = ""
    if "recall_at_k" in row and row["kind"] != "flat":
        extra = f"  recall@k {row['recall_at_k']:.3f}"
    return (f"search n={row['n']:>9,d} {row['kind']:5s} build {row['build_s']:8.2f} s  "
            f"{row['qps']:9.1f} q/s  p50 {row['p50_ms']:8.2f} ms  p95 {row['p95_ms']:8.2f} ms  "
            f"x{row.get('speedup_vs_flat', 1.0):6.1f} vs flat{extra}")


def table(rows):
    lines = ["| gallery | kind | build s | q/s | p50 ms | p95 ms | vs flat | recall@k |",
             "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['n']:,} | {r['kind']} | skipped: {r['skipped']} | | | | | |")
            continue
        lines.append(f"| {r['n']:,} | {r['kind']} | {r['build_s']:.2f} | {r['qps']:.1f} | "
                     f"{r['p50_ms']:.2f} | {r['p95_ms']:.2f} | {r.get('speedup_vs_flat', 1):.1f}x | "
                     f"{r.get('recall_at_k', 1.0):.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")],
                        help="gallery sizes, comma separated (default 10000,100000,1000000)")
    parser.add_argument("--dim", type=int, help="vector dimension (default 512; quick: 128)")
    parser.add_argument("--kinds", default="flat,ivf,hnsw")
    parser.add_argument("--queries", type=int, help="timed queries per setting (default 200)")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--hnsw-max", type=int, default=100_000,
                        help="largest gallery for HNSW (its build is slow on few cores)")
    parser.add_argument("--build-images", type=int, help="images for the build benchmark")
    parser.add_argument("--no-zoo", action="store_true", help="build benchmark: toy model only")
    parser.add_argument("--no-search", action="store_true", help="only the build benchmark")
    parser.add_argument("--no-build", action="store_true", help="only the search benchmark")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int,
                        help="FAISS (OpenMP) threads (default: FAISS's own, one per core); on a "
                             "busy machine 1 thread gives far lower single-query latency")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    sizes = args.sizes or ([2_000, 20_000] if args.quick else [10_000, 100_000, 1_000_000])
    dim = args.dim or (128 if args.quick else 512)
    n_queries = args.queries or (30 if args.quick else 200)
    kinds = [k for k in args.kinds.split(",") if k]
    import faiss
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    print(f"faiss {faiss.__version__}, {faiss.omp_get_max_threads()} threads, "
          f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
          f"{platform.machine()}", flush=True)
    search_rows = [] if args.no_search else bench_search(sizes, dim, kinds, n_queries, args.k,
                                                        args.hnsw_max, args.seed)
    build_rows = [] if args.no_build else bench_build(
        args.build_images or (16 if args.quick else 64), 96,
        use_zoo=not (args.quick or args.no_zoo), batch_size=16)
    if search_rows:
        print()
        print(f"Region search, dim {dim}, k {args.k}, {n_queries} queries one at a time:")
        print(table(search_rows))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"search": search_rows, "build": build_rows, "dim": dim, "k": args.k,
             "queries": n_queries, "faiss": faiss.__version__,
             "faiss_threads": faiss.omp_get_max_threads(),
             "load_average": list(os.getloadavg())}, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
