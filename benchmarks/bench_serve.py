"""Serving benchmark: a sharded IVF-PQ index of N synthetic vectors saved as an index folder,
searched single-process (`Index.load(path)`) and by Ray actors (`Index.load(path,
engine="ray")`), side by side in one run.

    nice -n 10 python benchmarks/bench_serve.py build --count 30000000 --shards 6 \\
        --workdir /work/scale-data/serve                  # generate, exact top k, build, save
    python benchmarks/bench_serve.py search --workdir /work/scale-data/serve --actors 2
    python benchmarks/bench_serve.py build --count 20000 --workdir /tmp/s && \\
        python benchmarks/bench_serve.py search --workdir /tmp/s     # seconds

build: the clustered synthetic gallery of `bench_scale` (sqrt(N) centres plus noise, 128-d,
cosine, float16 memory map), 200 region queries q_R and their exact top k (a scan of every
row), then `Index.from_vectors(..., kind="ivfpq", params={"shards": S})` with synthetic
gallery paths held as an Arrow column (no Python list of N paths), saved with `Index.save`
(float32 embeddings, one FAISS file a shard, gallery.arrow). Reported: seconds of each step,
peak RSS.

search: the manifest's per-image records loaded alone (`columns.open_file`: time, resident
memory), then the index loaded single-process and searched (p50/p95 of one region query at a
time, recall@k against the exact top k, resident memory per vector of the driver; with
--more-candidates also at other numbers of re-scored candidates), then
loaded on Ray (a local instance with one CPU per actor, or --ray-address) and searched the
same way (driver and per-actor resident memory per vector), and the first queries' hits
compared between the two (same rows, scores within 1e-6). Resident memory is VmRSS; RssAnon
(private memory) is reported beside it, the rest being file pages of memory maps.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))
sys.path.insert(0, str(HERE))

from bench_retrieval import region_queries, synthetic_gallery, time_search  # noqa: E402
from bench_scale import exact_top  # noqa: E402

ROOT = Path("/synthetic-gallery")
CHUNK = 1 << 20


def memory() -> dict:
    """VmRSS and RssAnon of this process, bytes."""
    out = {}
    with open("/proc/self/status") as status:
        for line in status:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(line.split()[1]) * 1024
    return out


def synthetic_paths(count: int):
    """Relative gallery paths in sorted order, as one Arrow column built a chunk at a time."""
    import pyarrow as pa
    chunks = []
    for start in range(0, count, CHUNK):
        stop = min(count, start + CHUNK)
        chunks.append(pa.array([f"class_{i * 1000 // count:04d}/img_{i:09d}.png"
                                for i in range(start, stop)], pa.large_string()))
    return pa.chunked_array(chunks, pa.large_string())


def build(args) -> dict:
    from simexplain.retrieval import Index
    from simexplain.retrieval.columns import PathColumn
    import faiss
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    n = args.count
    steps = {}
    start = time.perf_counter()
    stored = np.lib.format.open_memmap(work / "gallery-float16.npy", mode="w+",
                                       dtype=np.float16, shape=(n, args.dim))
    _, centres = synthetic_gallery(n, args.dim, max(16, int(np.sqrt(n))), rng, out=stored)
    stored.flush()
    del stored
    gallery = np.load(work / "gallery-float16.npy", mmap_mode="r")
    steps["generate_s"] = time.perf_counter() - start
    queries = region_queries(centres, args.queries, rng)
    start = time.perf_counter()
    truth = exact_top(gallery, queries, args.k)
    steps["exact_scan_s"] = time.perf_counter() - start
    np.savez(work / "queries.npz", vectors=np.stack([q for q, _ in queries]),
             embeddings=np.stack([e for _, e in queries]),
             truth=np.asarray([sorted(t) for t in truth], dtype=np.int64))
    print(f"n={n:,}: generated in {steps['generate_s']:.0f} s, exact top {args.k} in "
          f"{steps['exact_scan_s']:.0f} s", flush=True)
    faiss.omp_set_num_threads(args.build_threads)
    start = time.perf_counter()
    paths = PathColumn(synthetic_paths(n), ROOT)
    index = Index.from_vectors(gallery, paths=paths, similarity="cosine", kind="ivfpq",
                               params={"shards": args.shards})
    steps["build_s"] = time.perf_counter() - start
    print(f"  built in {steps['build_s']:.0f} s, params {index.params}", flush=True)
    index.root = ROOT
    start = time.perf_counter()
    index.save(work / "index")
    steps["save_s"] = time.perf_counter() - start
    print(f"  saved in {steps['save_s']:.0f} s", flush=True)
    del index, gallery
    gc.collect()
    if not args.keep_gallery:
        (work / "gallery-float16.npy").unlink()
    return {"count": n, "dim": args.dim, "shards": args.shards,
            "build_threads": args.build_threads, **{k: round(v, 1) for k, v in steps.items()},
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
                                  2)}


def _queries(work: Path):
    data = np.load(work / "queries.npz")
    queries = list(zip(data["vectors"], data["embeddings"]))
    return queries, [set(row.tolist()) for row in data["truth"]]


def _search_row(index, queries, truth, k: int) -> dict:
    timing, results = time_search(index, queries, k)
    recall = float(np.mean([len(a & b) / k for a, b in zip(results, truth)]))
    return {**{key: round(v, 2) for key, v in timing.items()}, "recall_at_k": round(recall, 4)}


def search(args) -> dict:
    import faiss
    from simexplain.retrieval import Index
    from simexplain.retrieval import columns
    from simexplain.retrieval.manifest import GALLERY
    from simexplain.retrieval.storage import read_manifest
    faiss.omp_set_num_threads(1)
    work = Path(args.workdir)
    folder = work / "index"
    queries, truth = _queries(work)
    manifest = read_manifest(folder)
    n = manifest["count"]
    out: dict = {"count": n, "queries": len(queries), "k": args.k,
                 "load_average_start": list(os.getloadavg())}
    gc.collect()
    before = memory()
    start = time.perf_counter()
    records = columns.open_file(folder / GALLERY, n, manifest["skipped"], ROOT)
    out["records_load_s"] = round(time.perf_counter() - start, 3)
    after = memory()
    out["records_rss_bytes_per_image"] = round((after["VmRSS"] - before["VmRSS"]) / n, 1)
    out["records_anon_bytes_per_image"] = round((after["RssAnon"] - before["RssAnon"]) / n, 1)
    print(f"records of {n:,} images loaded in {out['records_load_s']:.3f} s, "
          f"+{out['records_rss_bytes_per_image']} B/image resident", flush=True)
    del records
    gc.collect()
    rows: dict = {}
    local_hits: list = []
    for engine in ("local", "ray"):
        gc.collect()
        before = memory()
        start = time.perf_counter()
        index = Index.load(folder, verify=False, engine=engine,
                           ray={"actors": args.actors, "address": args.ray_address}
                           if engine == "ray" else None)
        load_s = time.perf_counter() - start
        loaded = memory()
        row = {"load_s": round(load_s, 1),
               "driver_rss_bytes_per_vector": round((loaded["VmRSS"] - before["VmRSS"]) / n, 1),
               "driver_anon_bytes_per_vector":
                   round((loaded["RssAnon"] - before["RssAnon"]) / n, 1),
               **_search_row(index, queries, truth, args.k)}
        row["params"] = dict(index.params)
        default_candidates = index.params["candidates"]
        for candidates in args.more_candidates:  # recall against latency, same load
            index.params.update(candidates=candidates)
            row[f"candidates_{candidates}"] = _search_row(index, queries, truth, args.k)
        index.params.update(candidates=default_candidates)  # the hits compared below
        if engine == "ray":
            row["actors"] = index.vectors.describe()
            row["actor_rss_bytes_per_vector"] = [round(a["rss"] / a["rows"], 1)
                                                 for a in row["actors"]]
            row["actor_anon_bytes_per_vector"] = [round(a["anon"] / a["rows"], 1)
                                                  for a in row["actors"]]
            row["hits_equal_local"] = _compare(index, local_hits, queries[:args.compare],
                                               args.k)
            index.close()
        else:
            local_hits += [index.search_vector(q, args.k, e) for q, e in queries[:args.compare]]
        rows[engine] = row
        for candidates in args.more_candidates:
            more = row[f"candidates_{candidates}"]
            print(f"{engine} with {candidates} candidates: p50 {more['p50_ms']} ms, p95 "
                  f"{more['p95_ms']} ms, recall@{args.k} {more['recall_at_k']}", flush=True)
        print(f"{engine}: loaded in {row['load_s']} s, driver +"
              f"{row['driver_rss_bytes_per_vector']} B/vector resident (anon "
              f"{row['driver_anon_bytes_per_vector']}), p50 {row['p50_ms']} ms, p95 "
              f"{row['p95_ms']} ms, recall@{args.k} {row['recall_at_k']}"
              + (f", per actor {row['actor_rss_bytes_per_vector']} B/vector resident (anon "
                 f"{row['actor_anon_bytes_per_vector']}), hits equal: "
                 f"{row['hits_equal_local']}" if engine == "ray" else ""), flush=True)
        del index
        gc.collect()
    out["engines"] = rows
    out["load_average_end"] = list(os.getloadavg())
    return out


def _compare(index, expected, queries, k: int) -> str:
    """'n/n': queries whose Ray hits have the same rows as the local ones, scores within
    1e-6."""
    same = 0
    for hits, (q, e) in zip(expected, queries):
        got = index.search_vector(q, k, e)
        same += ([h.index for h in got] == [h.index for h in hits]
                 and all(abs(a.score - b.score) <= 1e-6 for a, b in zip(got, hits)))
    return f"{same}/{len(queries)}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=("build", "search"))
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--build-threads", type=int, default=2)
    parser.add_argument("--keep-gallery", action="store_true")
    parser.add_argument("--actors", type=int, default=2, help="Ray actors (shard groups)")
    parser.add_argument("--ray-address", default=None)
    parser.add_argument("--more-candidates", type=int, nargs="*", default=[],
                        metavar="N", help="search: also measure with N re-scored candidates "
                                          "(the index's default is measured first)")
    parser.add_argument("--compare", type=int, default=50,
                        help="queries whose hits are compared between the engines")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    result = build(args) if args.stage == "build" else search(args)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
