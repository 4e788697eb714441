"""Manifest benchmark: loading the per-image records (paths, sha256) of an index of N images,
format 2 (every path and hash in the JSON manifest, held as Python lists) against format 3
(gallery.arrow, memory-mapped, `retrieval.columns`), and a Parquet file of the same columns
for the choice of file format.

    python benchmarks/bench_manifest.py                    # 10M images
    python benchmarks/bench_manifest.py --count 100000     # seconds

Each format is loaded in a fresh process (so that one's memory does not hide in another's):
wall and CPU time of the load with every check the index does on load (format 2: the manifest's
checksum, schema and every path; format 3: Arrow schema, row counts, every path inside the
gallery, no path twice), the sha256 of the Arrow file (what `Index.load(verify=True)` adds),
the growth of the resident memory (VmRSS) per image after the load, and the time of 1000
path lookups by row. Paths are synthetic: "class_XXXX/img_XXXXXXXX.png" (27 characters, sorted
as a folder's build lists them), hashes random.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

ROOT = Path("/gallery")


def rss_bytes(key: str = "VmRSS") -> int:
    """Resident memory (VmRSS), or its private part (RssAnon: the rest are mapped file
    pages, shared with the page cache and dropped under memory pressure)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    return 0


def synthetic(count: int) -> tuple[list[str], list[str]]:
    import numpy as np
    rng = np.random.default_rng(0)
    digests = rng.integers(0, 256, (count, 32), dtype=np.uint8)
    # in the order a folder's build lists them (sorted)
    paths = [f"class_{i * 1000 // count:04d}/img_{i:08d}.png" for i in range(count)]
    hashes = [bytes(row).hex() for row in digests]
    return paths, hashes


def write_all(folder: Path, count: int, formats: list[str]) -> dict:
    """The files of the same records (JSON manifest, Arrow, Parquet); returns their sizes."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from simexplain.retrieval import columns, manifest
    paths, hashes = synthetic(count)
    m = {"format": manifest.FORMAT_NAME, "version": 2, "created": "2026-01-01T00:00:00Z",
         "model": "vectors", "layer": None, "layer_b": None, "similarity": "cosine",
         "dim": 128, "input_size": None, "weights_sha256": None, "kind": "flat", "params": {},
         "count": count, "gallery_root": str(ROOT), "gallery_root_from_index": None,
         "paths": paths, "sha256": hashes, "skipped": [],
         "files": {manifest.EMBEDDINGS: {"bytes": 1, "sha256": "0" * 64},
                   manifest.VECTORS: {"bytes": 1, "sha256": "0" * 64}}}
    if "json" in formats:
        (folder / "manifest-v2.json").write_text(json.dumps(manifest.seal(m), indent=1))
    del m
    columns.write(folder / "gallery.arrow", [str(ROOT / p) for p in paths], hashes, [], ROOT)
    if "parquet" in formats:
        table = pa.ipc.open_file(str(folder / "gallery.arrow")).read_all()
        pq.write_table(table, folder / "gallery.parquet", compression="none")
    return {name: (folder / name).stat().st_size
            for name in ("manifest-v2.json", "gallery.arrow", "gallery.parquet")
            if (folder / name).exists()}


def load_one(fmt: str, folder: Path, count: int) -> dict:
    """Runs in its own process: load one format, measure."""
    import random
    import pyarrow  # noqa: F401 - imported before the baseline, like the index module does
    import pyarrow.parquet as pq
    from simexplain.retrieval import columns, manifest
    from simexplain.retrieval.basics import file_sha256
    import simexplain.similarity  # noqa: F401 - the manifest's check imports it (and torch)
    before, before_anon = rss_bytes(), rss_bytes("RssAnon")
    start, cpu = time.perf_counter(), time.process_time()
    if fmt == "json":
        where = folder / "manifest-v2.json"
        m = manifest.parse(where.read_bytes(), where)
        paths = [str(ROOT.joinpath(p)) for p in m["paths"]]  # what format 2's Index held
        hashes = m["sha256"]
        del m
    elif fmt == "arrow":
        records = columns.open_file(folder / "gallery.arrow", count, 0, ROOT)
        paths, hashes = records.paths, records.hashes
    else:
        table = pq.read_table(folder / "gallery.parquet")
        paths = columns.PathColumn(table.column("path"), ROOT)
        hashes = columns.HashColumn(table.column("sha256"))
    load_s, load_cpu_s = time.perf_counter() - start, time.process_time() - cpu
    after, after_anon = rss_bytes(), rss_bytes("RssAnon")
    rows = random.Random(0).sample(range(count), 1000)
    start = time.perf_counter()
    looked = [(paths[r], hashes[r]) for r in rows]
    lookup_us = (time.perf_counter() - start) / len(rows) * 1e6
    assert looked[0][0].endswith(f"/img_{rows[0]:08d}.png")
    out = {"format": fmt, "load_s": round(load_s, 3), "load_cpu_s": round(load_cpu_s, 3),
           "rss_growth_bytes_per_image": round((after - before) / count, 1),
           "anon_growth_bytes_per_image": round((after_anon - before_anon) / count, 1),
           "rss_after_lookups_bytes_per_image": round((rss_bytes() - before) / count, 1),
           "lookup_us": round(lookup_us, 2)}
    if fmt == "arrow":
        start = time.perf_counter()
        file_sha256(folder / "gallery.arrow")
        out["sha256_of_file_s"] = round(time.perf_counter() - start, 3)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=10_000_000)
    parser.add_argument("--formats", default="arrow,parquet,json")
    parser.add_argument("--workdir", help="where the files go (default: a temp dir)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--load", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args(argv)
    if args.load:
        print(json.dumps(load_one(args.load, Path(args.workdir), args.count)))
        return 0
    if args.workdir:
        Path(args.workdir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        sizes = write_all(folder, args.count, args.formats.split(","))
        print(f"{args.count:,} images: files written in {time.perf_counter() - start:.1f} s: "
              + ", ".join(f"{k} {v / args.count:.1f} B/image" for k, v in sizes.items()),
              flush=True)
        rows = []
        for fmt in args.formats.split(","):
            child = subprocess.run(
                [sys.executable, __file__, "--load", fmt, "--workdir", str(folder),
                 "--count", str(args.count)], capture_output=True, text=True, check=True)
            row = json.loads(child.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"  {fmt:8s} load {row['load_s']:7.3f} s (CPU {row['load_cpu_s']:.3f} s)  RSS +"
                  f"{row['rss_growth_bytes_per_image']:6.1f} B/image, private +"
                  f"{row['anon_growth_bytes_per_image']:6.1f} (after 1000 lookups +"
                  f"{row['rss_after_lookups_bytes_per_image']:6.1f})  lookup "
                  f"{row['lookup_us']:.1f} us"
                  + (f"  sha256 of the file {row['sha256_of_file_s']:.2f} s"
                     if "sha256_of_file_s" in row else ""), flush=True)
    result = {"count": args.count, "file_bytes": sizes, "loads": rows,
              "load_average": list(os.getloadavg())}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
