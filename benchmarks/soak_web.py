"""Soak test of `simexplain serve` in its own process, on 127.0.0.1 only: memory under large
concurrent uploads, an API fuzz, and a load test of the pair view's pointer updates.

    python benchmarks/soak_web.py                        # efficientnet-lite0, about 2 minutes
    python benchmarks/soak_web.py --model simexplain.toy:tiny_cnn --layer features --size 64

1. memory: `--uploads` (12) concurrent uploads of 38 KB PNGs that each decode to 39.7
   megapixels (just under the 40 Mpx limit), twice; the server's RSS is sampled every 5 ms.
   Targets (issue 12): growth < 500 MB during the uploads, < 100 MB above the baseline after.
   Then `--disguised` (24) concurrent uploads of bombs in disguise, twice (issue 26: an icon
   whose directory says 256x256 over an 8900x8900 PNG or bitmap, a TIFF whose second page is
   8900x8900, a GIF whose first frame sits at (8899, 8899), and 16-bit grey PNGs of 39.7 Mpx);
   the same targets, the disguised ones refused (413) before decoding, the 16-bit ones stored.
2. fuzz: `--fuzz` (2,000) requests with random fields and values (schema-driven: right and
   wrong types, unknown ids, bad boxes, NaN, malformed JSON, random bytes as uploads, foreign
   Host headers). Target: no 5xx answer, every error a JSON body, redirects only to this server.
3. load: `--clients` (4) keep-alive clients POST /api/point at random pixels for at most
   `--seconds` (10) or `--requests` (20,000) requests in all. Reported: requests/s, p50/p95/max.

All traffic goes to 127.0.0.1 and is bounded in count and time. Exit status 1 if a target is
missed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

MAX_GROWTH_MB = 500.0
MAX_AFTER_MB = 100.0


def palette_png(width: int, height: int, colour: tuple[int, int, int]) -> bytes:
    """A one-colour palette PNG built without allocating its pixels (38 KB at 6300x6300)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
            + chunk(b"PLTE", bytes(colour)) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, samples: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    command = [sys.executable, "-m", "simexplain.cli", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--model", args.model, "--samples", str(samples)]
    if args.layer:
        command += ["--layer", args.layer]
    if args.size:
        command += ["--size", str(args.size)]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True)
    url = f"http://127.0.0.1:{port}"
    import httpx
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited: {server.stderr.read()}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    server.kill()
    raise SystemExit("the server did not come up in 300 s")


def _fuzz_module():
    """scripts/fuzz_images.py, whose crafted bombs this soak uploads."""
    import importlib.util
    path = Path(__file__).resolve().parents[1] / "scripts" / "fuzz_images.py"
    spec = importlib.util.spec_from_file_location("fuzz_images", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def disguised_files(count: int) -> tuple[list[bytes], list[int]]:
    """`count` uploads cycling through the disguised bombs and a 39.7 Mpx 16-bit grey PNG
    (each 16-bit file its own grey level, so none is answered from the upload cache), with
    the status each must get: 413 for a bomb, 201 for the 16-bit PNG."""
    fuzz_images = _fuzz_module()
    makers = sorted(fuzz_images.DISGUISED.items())
    files, expected = [], []
    for i in range(count):
        if i % (len(makers) + 1) == len(makers):
            data = fuzz_images.flat_png(6300, 6300, depth=16, color=0)
            note = fuzz_images._png_chunk(b"tEXt", b"n\x00%d" % i)  # before IEND
            files.append(data[:-12] + note + data[-12:])
            expected.append(201)
        else:
            files.append(makers[i % (len(makers) + 1)][1]())
            expected.append(413)
    return files, expected


def memory_soak(url: str, pid: int, uploads: int, rounds: int = 2,
                files: list[bytes] | None = None) -> dict:
    import httpx
    side = 6300  # 39.69 Mpx
    files = files or [palette_png(side, side, (r * 16 + i, 40, 200 - i)) for r in range(rounds)
                      for i in range(uploads)]
    with httpx.Client(base_url=url, timeout=600) as client:  # warm: one small upload
        client.post("/api/images", files={"file": ("w.png", palette_png(64, 64, (1, 2, 3)))})
    time.sleep(1)
    base = rss_mb(pid)
    peak, done = [base], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            time.sleep(0.005)
    sampler = threading.Thread(target=sample)
    sampler.start()
    statuses = []
    start = time.perf_counter()
    try:
        for r in range(rounds):
            batch = files[r * uploads:(r + 1) * uploads]

            def post(data):
                with httpx.Client(base_url=url, timeout=600) as client:
                    return client.post("/api/images", files={"file": ("big.png", data)})
            with ThreadPoolExecutor(uploads) as pool:
                statuses += [response.status_code for response in pool.map(post, batch)]
    finally:
        took = time.perf_counter() - start
        time.sleep(2)  # let the server settle
        done.set()
        sampler.join()
    after = rss_mb(pid)
    return {"uploads": len(files), "file_bytes": len(files[0]), "pixels": side * side,
            "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
            "seconds": took, "baseline_mb": base, "peak_growth_mb": peak[0] - base,
            "after_growth_mb": after - base}


FIELDS = {"/api/explain": ["a", "b", "method", "model"],
          "/api/point": ["explanation_id", "side", "row", "col", "seq"],
          "/api/region": ["explanation_id", "side", "box", "seq"],
          "/api/search": ["query", "box", "k"],
          "/api/search/point": ["search_id", "results", "row", "col", "seq"]}


def fuzz(url: str, count: int, seed: int, explanation_id: str) -> dict:
    import httpx
    rng = np.random.default_rng(seed)
    values = [None, True, False, -1, 0, 1, 3.5, -7.25, 1e300, -1e300, 2**63, "", "s0", "s1",
              "a", "b", "zz", "g0", "u" + "0" * 24, "f-face-s0", "../../etc/passwd", "x" * 300,
              [], [1, 2, 3, 4], [0, 0, 5, 5], [-5, -5, 1e9, 1e9], [5, 5, 5, 5], {}, {"x": 1},
              ["s0"], ["g0"] * 3, explanation_id, "decomposition", "occlusion", "gradcam",
              "magic"]
    raw_bodies = [b"{bad json", b'{"a": "s0", "b": ', b"\xff\xfe\x00", b"{'a': 's0'}", b"[]",
                  b"null", b'{"row": NaN}', b"{" * 5000]
    counts: dict[str, int] = {}
    failures: list[str] = []
    with httpx.Client(base_url=url, timeout=120) as client:
        for i in range(count):
            kind = rng.integers(10)
            path = list(FIELDS)[rng.integers(len(FIELDS))]
            headers = {}
            if kind < 6:
                body = {n: values[rng.integers(len(values))] for n in FIELDS[path]
                        if rng.random() < 0.85}
                response = client.post(path, content=json.dumps(body),
                                       headers={"content-type": "application/json"})
            elif kind == 6:
                response = client.post(path, content=raw_bodies[rng.integers(len(raw_bodies))],
                                       headers={"content-type": "application/json"})
            elif kind == 7:
                data = rng.integers(0, 256, rng.integers(0, 4000), dtype=np.uint8).tobytes()
                if rng.random() < 0.5:  # a real image's header, then garbage
                    data = palette_png(32, 32, (1, 2, 3))[:40] + data
                response = client.post("/api/images", files={"file": ("f.png", data)})
            elif kind == 8:
                image_id = str(values[rng.integers(len(values))])
                response = client.get(f"/api/images/{image_id}",
                                      params={"max_side": int(rng.integers(-5, 5000))})
            else:
                headers = {"host": ["evil.example", "localhost.evil.example", "", "[::2]"][
                    rng.integers(4)]}
                response = client.get("/api/models", headers=headers)
            status = response.status_code
            counts[str(status)] = counts.get(str(status), 0) + 1
            if 300 <= status < 400:  # e.g. /api/images/ -> /api/images: on this host only
                good = response.headers.get("location", "").startswith(url + "/")
            else:
                good = status < 300 or (
                    status < 500 and "json" in response.headers.get("content-type", "")
                    and "error" in response.json())
            if not good:
                failures.append(f"{status} {response.request.method} "
                                f"{response.request.url.path}: {response.text[:200]}")
    return {"requests": count, "statuses": dict(sorted(counts.items())),
            "failures": failures[:10], "failure_count": len(failures)}


def load(url: str, explanation_id: str, image_size: list[int], clients: int, seconds: float,
         requests: int, seed: int) -> dict:
    import httpx
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    per_client = requests // clients

    def run(k: int):
        rng = np.random.default_rng(seed + k)
        own = []
        with httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(per_client):
                if time.monotonic() > deadline:
                    break
                body = {"explanation_id": explanation_id, "side": "a",
                        "row": float(rng.uniform(0, image_size[0])),
                        "col": float(rng.uniform(0, image_size[1]))}
                start = time.perf_counter()
                response = client.post("/api/point", json=body)
                own.append((time.perf_counter() - start) * 1000)
                if response.status_code != 200:
                    with lock:
                        errors[0] += 1
        with lock:
            latencies.extend(own)
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(run, range(clients)))
    took = time.perf_counter() - start
    array = np.asarray(latencies)
    return {"clients": clients, "requests": len(latencies), "errors": errors[0],
            "seconds": took, "per_second": len(latencies) / took,
            "p50_ms": float(np.percentile(array, 50)), "p95_ms": float(np.percentile(array, 95)),
            "max_ms": float(array.max())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--layer", help="explained layer (models outside the zoo)")
    parser.add_argument("--size", type=int, help="input side (models outside the zoo)")
    parser.add_argument("--uploads", type=int, default=12, help="concurrent large uploads")
    parser.add_argument("--disguised", type=int, default=24,
                        help="concurrent uploads of disguised bombs and 16-bit PNGs (0: none)")
    parser.add_argument("--only-memory", action="store_true",
                        help="run the two memory soaks only (no fuzz, no load test)")
    parser.add_argument("--fuzz", type=int, default=2000, help="fuzzed requests")
    parser.add_argument("--clients", type=int, default=4, help="concurrent load clients")
    parser.add_argument("--seconds", type=float, default=10.0, help="load test time limit")
    parser.add_argument("--requests", type=int, default=20000, help="load test request limit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    args.uploads = max(1, min(args.uploads, 32))
    args.disguised = max(0, min(args.disguised, 48))
    args.fuzz = max(0, min(args.fuzz, 20000))
    args.clients = max(1, min(args.clients, 16))
    args.seconds = max(1.0, min(args.seconds, 120.0))
    args.requests = max(args.clients, min(args.requests, 200_000))

    import httpx
    from PIL import Image
    results: dict = {"model": args.model, "machine": f"{platform.machine()}, "
                     f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"}
    with tempfile.TemporaryDirectory(prefix="soak-web-") as tmp:
        samples = Path(tmp)
        rng = np.random.default_rng(args.seed)
        for i in range(3):
            pixels = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(samples / f"sample{i}.png")
        server, url = start_server(args, samples)
        try:
            with httpx.Client(base_url=url, timeout=300) as client:
                pair = client.post("/api/explain", json={"a": "s0", "b": "s1"})
                pair.raise_for_status()
                pair = pair.json()
            results["memory"] = memory_soak(url, server.pid, args.uploads)
            if args.disguised:
                files, expected = disguised_files(2 * args.disguised)
                results["disguised"] = memory_soak(url, server.pid, args.disguised,
                                                   files=files)
                results["disguised"]["expected"] = {
                    str(s): expected.count(s) for s in sorted(set(expected))}
            if not args.only_memory:
                results["fuzz"] = fuzz(url, args.fuzz, args.seed, pair["explanation_id"])
                results["load"] = load(url, pair["explanation_id"], pair["a"]["image_size"],
                                       args.clients, args.seconds, args.requests, args.seed)
            results["server_alive"] = server.poll() is None
        finally:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()

    memory, disguised = results["memory"], results.get("disguised")
    fuzzed, loaded = results.get("fuzz"), results.get("load")
    checks = {
        "RSS growth during the uploads": memory["peak_growth_mb"] < MAX_GROWTH_MB,
        "RSS above the baseline after": memory["after_growth_mb"] < MAX_AFTER_MB,
        "all uploads accepted": memory["statuses"] == {"201": memory["uploads"]},
        "server still up": results["server_alive"],
    }
    if disguised is not None:
        checks.update({
            "disguised: RSS growth during the uploads":
                disguised["peak_growth_mb"] < MAX_GROWTH_MB,
            "disguised: RSS above the baseline after": disguised["after_growth_mb"] < MAX_AFTER_MB,
            "disguised: bombs 413, 16-bit PNGs 201": disguised["statuses"] == disguised["expected"],
        })
    if fuzzed is not None and loaded is not None:
        checks["fuzz: no 5xx, JSON errors, no foreign redirects"] = fuzzed["failure_count"] == 0
        checks["no errors under load"] = loaded["errors"] == 0
    results["checks"] = checks
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(f"model {args.model}; {results['machine']}")
        print(f"memory: {memory['uploads']} uploads of {memory['file_bytes'] / 1000:.0f} KB PNGs "
              f"decoding to {memory['pixels'] / 1e6:.1f} Mpx, {args.uploads} at a time, "
              f"in {memory['seconds']:.1f} s: baseline {memory['baseline_mb']:.0f} MB, growth "
              f"{memory['peak_growth_mb']:.0f} MB at peak (target < {MAX_GROWTH_MB:.0f}), "
              f"{memory['after_growth_mb']:.0f} MB after (target < {MAX_AFTER_MB:.0f}); "
              f"statuses {memory['statuses']}")
        if disguised is not None:
            print(f"disguised: {disguised['uploads']} uploads (bombs in disguise, 16-bit 39.7 "
                  f"Mpx PNGs), {args.disguised} at a time, in {disguised['seconds']:.1f} s: "
                  f"baseline {disguised['baseline_mb']:.0f} MB, growth "
                  f"{disguised['peak_growth_mb']:.0f} MB at peak (target < "
                  f"{MAX_GROWTH_MB:.0f}), {disguised['after_growth_mb']:.0f} MB after; statuses "
                  f"{disguised['statuses']} (expected {disguised['expected']})")
        if fuzzed is not None and loaded is not None:
            print(f"fuzz: {fuzzed['requests']} requests, statuses {fuzzed['statuses']}, "
                  f"{fuzzed['failure_count']} failures (5xx, non-JSON errors, foreign redirects)")
            for failure in fuzzed["failures"]:
                print(f"  {failure}")
            print(f"load: POST /api/point, {loaded['clients']} clients, {loaded['requests']} "
                  f"requests in {loaded['seconds']:.1f} s = {loaded['per_second']:.0f} req/s, "
                  f"p50 {loaded['p50_ms']:.1f} ms, p95 {loaded['p95_ms']:.1f} ms, max "
                  f"{loaded['max_ms']:.1f} ms, {loaded['errors']} errors")
        for name, ok in checks.items():
            print(f"{'ok  ' if ok else 'MISS'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
