"""Latency of the web page's pointer updates (`simexplain serve`), server side.

    python benchmarks/bench_web.py                      # efficientnet-lite0, 12 results
    python benchmarks/bench_web.py --requests 500 --uvicorn
    python benchmarks/bench_web.py --model simexplain.toy:tiny_cnn --layer features

A gallery index of scikit-image's photos (each also mirrored and halved: about 80 images) is
built in a temporary folder (or `--index` names one). One search with k results, then
`--requests` pointer updates at random query pixels through POST /api/search/point with all k
results visible (the gallery view's hover), and the same number through POST /api/point (the
pair view's hover). Reported: p50 / p95 / max of

* server: the app's own time per request (its `Server-Timing` header: arrival to first byte,
  JSON serialisation included), and
* round trip: as the client sees it (in-process test client, or HTTP to a real uvicorn on
  127.0.0.1 with --uvicorn).

Target (issue 5): server p95 of the search pointer update < 30 ms with 12 results.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

TARGET_MS = 30.0


def build_gallery(folder: Path) -> Path:
    from PIL import ImageOps

    from simexplain.datasets import skimage_photos
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in skimage_photos().items():
        w, h = image.size
        image.save(folder / f"{name}.png")
        ImageOps.mirror(image).save(folder / f"{name}-mirrored.png")
        image.crop((0, 0, w // 2, h)).save(folder / f"{name}-left.png")
        image.crop((w // 2, 0, w, h)).save(folder / f"{name}-right.png")
    return folder


def percentiles(values: list[float]) -> dict:
    array = np.asarray(values)
    return {"p50": float(np.percentile(array, 50)), "p95": float(np.percentile(array, 95)),
            "max": float(array.max()), "n": len(values)}


@contextlib.contextmanager
def http_client(app, use_uvicorn: bool):
    if not use_uvicorn:
        from fastapi.testclient import TestClient
        with TestClient(app, base_url="http://localhost") as client:
            yield client
        return
    import httpx
    import uvicorn
    # proto IPPROTO_TCP, so that asyncio sets TCP_NODELAY on the accepted connections (as it
    # does when uvicorn binds the port itself): else each keep-alive response waits ~40 ms for
    # a delayed ACK
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            yield client
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def timed_posts(client, path: str, bodies: list[dict]) -> tuple[list[float], list[float]]:
    server, trip = [], []
    for body in bodies:
        start = time.perf_counter()
        response = client.post(path, json=body)
        trip.append((time.perf_counter() - start) * 1000)
        response.raise_for_status()
        timing = response.headers["server-timing"]
        server.append(float(timing.split("dur=")[1]))
    return server, trip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--layer", help="explained layer (models outside the zoo)")
    parser.add_argument("--index", help="an existing index (default: build one of skimage photos)")
    parser.add_argument("--results", type=int, default=12, help="visible results (k)")
    parser.add_argument("--requests", type=int, default=300, help="pointer updates per endpoint")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--uvicorn", action="store_true",
                        help="real uvicorn on 127.0.0.1 and HTTP, instead of the test client")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import warnings
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    import torch

    from simexplain.zoo import resolve
    from simexplain.retrieval import Index
    from simexplain.web import create_app

    explainer = resolve(args.model, args.layer)
    with tempfile.TemporaryDirectory(prefix="bench-web-") as tmp:
        index_path = Path(args.index) if args.index else Path(tmp) / "index"
        if not args.index:
            start = time.perf_counter()
            gallery = build_gallery(Path(tmp) / "gallery")
            Index.build(gallery, explainer, model_name=args.model, out=index_path,
                        progress=False)
            print(f"built an index of {len(list(gallery.iterdir()))} images in "
                  f"{time.perf_counter() - start:.1f} s")
        app = create_app(explainer=explainer, model=args.model, index=index_path, samples=[])
        rng = np.random.default_rng(args.seed)
        with http_client(app, args.uvicorn) as client:
            start = time.perf_counter()
            search = client.post("/api/search", json={"query": "g0", "k": args.results})
            search.raise_for_status()
            search = search.json()
            print(f"search with k={args.results} (contributions of query and results): "
                  f"{(time.perf_counter() - start) * 1000:.0f} ms")
            height, width = search["query"]["image_size"]
            grid = search["query"]["grid"]
            ids = [h["id"] for h in search["hits"]]
            assert len(ids) == args.results, f"only {len(ids)} results"

            def points(n):
                return [(float(rng.uniform(0, height)), float(rng.uniform(0, width)))
                        for _ in range(n)]
            search_bodies = [{"search_id": search["search_id"], "results": ids, "row": r,
                              "col": c, "seq": i}
                             for i, (r, c) in enumerate(points(args.warmup + args.requests))]
            timed_posts(client, "/api/search/point", search_bodies[:args.warmup])
            gallery_server, gallery_trip = timed_posts(client, "/api/search/point",
                                                       search_bodies[args.warmup:])

            pair = client.post("/api/explain", json={"a": "g0", "b": ids[1]})
            pair.raise_for_status()
            eid = pair.json()["explanation_id"]
            pair_bodies = [{"explanation_id": eid, "side": "a", "row": r, "col": c}
                           for r, c in points(args.warmup + args.requests)]
            timed_posts(client, "/api/point", pair_bodies[:args.warmup])
            pair_server, pair_trip = timed_posts(client, "/api/point", pair_bodies[args.warmup:])

    transport = "uvicorn on 127.0.0.1 (HTTP)" if args.uvicorn else "in-process test client"
    print(f"model {args.model}, feature grid {grid[0]}x{grid[1]}, "
          f"{args.results} visible results, {args.requests} requests per endpoint, {transport}")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads")
    rows = [("POST /api/search/point", "server", gallery_server),
            ("POST /api/search/point", "round trip", gallery_trip),
            ("POST /api/point", "server", pair_server),
            ("POST /api/point", "round trip", pair_trip)]
    print(f"{'endpoint':24s} {'measured':10s} {'p50 ms':>8s} {'p95 ms':>8s} {'max ms':>8s}")
    for name, kind, values in rows:
        p = percentiles(values)
        print(f"{name:24s} {kind:10s} {p['p50']:8.2f} {p['p95']:8.2f} {p['max']:8.2f}")
    p95 = percentiles(gallery_server)["p95"]
    verdict = "meets" if p95 < TARGET_MS else "MISSES"
    print(f"search pointer update, server p95 = {p95:.2f} ms: {verdict} the target of "
          f"{TARGET_MS:.0f} ms")
    return 0 if p95 < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
