"""Scale benchmark: the compressed, sharded "ivfpq" index at millions of vectors, and index
builds on Ray with 1 and 2 workers.

    OMP_NUM_THREADS=2 python benchmarks/bench_scale.py                 # 1M and 10M vectors
    python benchmarks/bench_scale.py --quick                           # 20k vectors, seconds
    python benchmarks/bench_scale.py --no-search --build-images 300    # only the Ray builds

Search: a clustered synthetic gallery (`bench_retrieval.synthetic_gallery`: sqrt(N) centres
plus noise, cosine similarity) is generated in chunks into a float16 .npy memory map (2 bytes
per dimension on disk, never whole in memory), indexed with `Index.from_vectors(...,
kind="ivfpq", params={"shards": S})` (training on a sample, then adding chunk by chunk) and
searched with region queries q_R (`bench_retrieval.region_queries`) one at a time through
`Index.search_vector(q_R, k, query_embedding=e_a)`: shards fanned out, candidates merged and
re-scored exactly from the memory-mapped floats. The exact top k comes from a brute-force scan
of the whole gallery written out here (numpy, float32 then the best 64 re-checked in float64).
Reported per size: generation, exact-scan and build seconds, peak RSS, bytes per vector of the
compressed index in memory, and for a sweep of (nprobe, candidates): p50 / p95 latency and
recall@k; the fastest setting with recall@k >= 0.95 is marked.

Build: `Index.build` of Fashion-MNIST test items written as PNGs with a zoo model
(efficientnet-lite0: each item resized to 224 px), single-process and on a local Ray instance
with 1 and 2 workers (images per second; decoding, hashing and saving included).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from bench_retrieval import region_queries, synthetic_gallery, time_search  # noqa: E402
from simexplain.retrieval import Index  # noqa: E402

TARGET_RECALL = 0.95
CHUNK = 1 << 18


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def rss_gib() -> float:
    """Resident memory now (file pages of the memory-mapped gallery included once touched)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2 ** 20
    return float("nan")


def exact_top(gallery: np.ndarray, queries, k: int) -> list[set[int]]:
    """The true top k rows of each region query (cosine partial similarity s_R =
    q_R . e_b / (|e_a| |e_b|)), by a scan of every row."""
    q = np.stack([v for v, _ in queries]).astype(np.float32)  # (Q, D)
    keep = 64
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    best_scores = np.zeros((len(queries), 0), dtype=np.float32)
    for start in range(0, len(gallery), CHUNK):
        block = np.asarray(gallery[start:start + CHUNK], dtype=np.float32)
        scores = (q @ block.T) / np.linalg.norm(block, axis=1)[None, :]
        top = np.argpartition(-scores, keep, axis=1)[:, :keep]
        best_rows = np.hstack([best_rows, top + start])
        best_scores = np.hstack([best_scores, np.take_along_axis(scores, top, 1)])
        order = np.argsort(-best_scores, axis=1)[:, :keep]
        best_rows = np.take_along_axis(best_rows, order, 1)
        best_scores = np.take_along_axis(best_scores, order, 1)
    out = []
    for rows, (vector, _) in zip(best_rows, queries):  # float64 for the final order
        g = np.asarray(gallery[np.sort(rows)], dtype=np.float64)
        s = (g @ vector.astype(np.float64)) / np.linalg.norm(g, axis=1)
        out.append(set(np.sort(rows)[np.argsort(-s, kind="stable")[:k]].tolist()))
    return out


def index_bytes(index: Index) -> dict:
    """What the compressed index holds in memory: codes and ids per vector, and the trained
    quantisers (per shard: coarse centroids and PQ codebooks)."""
    vectors = index.vectors
    per_vector = vectors.code_bytes
    shard = vectors.shards[0]
    fixed = len(vectors.shards) * (shard.nlist * shard.d * 4 + shard.pq.M * shard.pq.ksub
                                   * shard.pq.dsub * 4)
    return {"code_and_id_bytes": per_vector, "quantiser_bytes": fixed,
            "bytes_per_vector": per_vector + fixed / len(index)}


def bench_size(n: int, dim: int, shards: int, n_queries: int, k: int, sweep, work: Path,
               seed: int, build_threads: int) -> dict:
    rng = np.random.default_rng(seed)
    file = work / f"gallery-{n}.npy"
    start = time.perf_counter()
    stored = np.lib.format.open_memmap(file, mode="w+", dtype=np.float16, shape=(n, dim))
    _, centres = synthetic_gallery(n, dim, max(16, int(np.sqrt(n))), rng, out=stored)
    stored.flush()
    del stored
    gallery = np.load(file, mmap_mode="r")
    gen_s = time.perf_counter() - start
    queries = region_queries(centres, n_queries, rng)
    start = time.perf_counter()
    truth = exact_top(gallery, queries, k)
    exact_s = time.perf_counter() - start
    print(f"n={n:,}: generated in {gen_s:.1f} s ({file.stat().st_size / 2**30:.2f} GiB float16 "
          f"on disk), exact top {k} of {n_queries} queries in {exact_s:.1f} s", flush=True)
    import faiss
    search_threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(build_threads)
    gc.collect()
    before = rss_gib()
    start = time.perf_counter()
    index = Index.from_vectors(gallery, similarity="cosine", kind="ivfpq",
                               params={"shards": shards})
    build_s = time.perf_counter() - start
    faiss.omp_set_num_threads(search_threads)
    memory = index_bytes(index)
    row = {"n": n, "dim": dim, "shards": shards, "build_threads": build_threads,
           "generate_s": round(gen_s, 1),
           "exact_scan_s": round(exact_s, 1), "build_s": round(build_s, 1),
           "params": dict(index.params), **memory,
           "stored_float16_bytes_per_vector": 2 * dim,
           "rss_before_build_gib": round(before, 2), "rss_after_build_gib": round(rss_gib(), 2),
           "peak_rss_gib": round(peak_rss_gib(), 2),
           "settings": []}
    print(f"  built in {build_s:.1f} s, {memory['bytes_per_vector']:.1f} bytes/vector in memory, "
          f"RSS {row['rss_before_build_gib']:.2f} -> {row['rss_after_build_gib']:.2f} GiB, "
          f"peak RSS {row['peak_rss_gib']:.2f} GiB, params {index.params}", flush=True)
    for nprobe, candidates in sweep:
        index.params.update(nprobe=min(nprobe, index.params["nlist"]), candidates=candidates)
        timing, results = time_search(index, queries, k)
        recall = float(np.mean([len(a & b) / k for a, b in zip(results, truth)]))
        setting = {"nprobe": index.params["nprobe"], "candidates": candidates,
                   **{key: round(v, 2) for key, v in timing.items()}, "recall_at_k": recall}
        row["settings"].append(setting)
        print(f"  nprobe {setting['nprobe']:4d} candidates {candidates:5d}: p50 "
              f"{setting['p50_ms']:7.2f} ms  p95 {setting['p95_ms']:7.2f} ms  recall@{k} "
              f"{recall:.3f}", flush=True)
    good = [s for s in row["settings"] if s["recall_at_k"] >= TARGET_RECALL]
    row["best"] = min(good, key=lambda s: s["p95_ms"]) if good else max(
        row["settings"], key=lambda s: s["recall_at_k"])
    row["peak_rss_gib"] = round(peak_rss_gib(), 2)
    del index, gallery
    gc.collect()
    file.unlink()
    return row


def bench_ray_build(count: int, batch_size: int, worker_counts, name: str) -> list[dict]:
    """Images per second of `Index.build` on Fashion-MNIST PNGs: local, then Ray (one local
    instance started first, so its start-up is not counted; each build's actors start and load
    the model inside the timing)."""
    import functools
    import ray
    from PIL import Image
    from simexplain import datasets, zoo
    images, _ = datasets.fashion_mnist("test")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import simexplain
    ray.init(num_cpus=max(worker_counts), include_dashboard=False, log_to_driver=False,
             logging_level="WARNING",
             runtime_env={"py_modules": [str(Path(simexplain.__file__).parent)]})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "gallery"
        folder.mkdir()
        for i in range(count):
            Image.fromarray(np.asarray(images[i])).save(folder / f"item_{i:05d}.png")
        runs = [("local", 1)] + [("ray", w) for w in worker_counts]
        for engine, workers in runs:
            load = functools.partial(zoo.resolve, name)
            explainer = load() if engine == "local" else load
            start = time.perf_counter()
            index = Index.build(folder, explainer, name, batch_size=batch_size, progress=False,
                                engine=engine, ray={"workers": workers} if engine == "ray"
                                else None)
            seconds = time.perf_counter() - start
            row = {"model": name, "engine": engine, "workers": workers, "images": len(index),
                   "seconds": round(seconds, 2), "images_per_s": round(len(index) / seconds, 1)}
            rows.append(row)
            print(f"build {engine:5s} workers {workers}: {row['images']} images in "
                  f"{row['seconds']:.1f} s = {row['images_per_s']:.1f} img/s", flush=True)
    ray.shutdown()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20k vectors, 100 images")
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")],
                        help="gallery sizes (default 1000000,10000000)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1,
                        help="FAISS threads for searching (default 1: single-query latency)")
    parser.add_argument("--build-threads", type=int, default=2,
                        help="FAISS threads for training and adding (default 2)")
    parser.add_argument("--workdir", help="where the float16 galleries go (default: a temp dir)")
    parser.add_argument("--build-images", type=int, help="images of the Ray build benchmark")
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to compare")
    parser.add_argument("--build-model", default="efficientnet-lite0",
                        help="zoo model of the build benchmark (quick: fmnist-gap)")
    parser.add_argument("--no-search", action="store_true")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    import faiss
    faiss.omp_set_num_threads(args.threads)
    sizes = args.sizes or ([20_000] if args.quick else [1_000_000, 10_000_000])
    sweep = [(p, c) for p in (16, 32, 64) for c in (128, 256, 512)]
    if args.quick:
        sweep = [(8, 128), (16, 256)]
    print(f"faiss {faiss.__version__}, {args.threads} FAISS thread(s), {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    search = []
    try:
        if not args.no_search:
            for n in sizes:
                search.append(bench_size(n, args.dim, args.shards, args.queries, args.k, sweep,
                                         work, args.seed, args.build_threads))
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    build = [] if args.no_build else bench_ray_build(
        args.build_images or (100 if args.quick else 300), 32,
        [int(w) for w in args.workers.split(",")],
        "fmnist-gap" if args.quick and args.build_model == "efficientnet-lite0"
        else args.build_model)
    result = {"search": search, "build": build, "k": args.k, "queries": args.queries,
              "faiss": faiss.__version__, "faiss_threads": args.threads,
              "load_average": list(os.getloadavg())}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
