"""Start-up of the command line and many queries in one `simexplain search`, measured side by
side in one run, every command in a fresh process (as a user runs it).

    python benchmarks/bench_cli.py [--queries 100] [--repeats 5] [--write docs/performance.md]

1. start-up: `simexplain --help` against importing what building the parser imported before
   the options were deferred (`python -c "import simexplain, ..."`, the modules in EAGER), and
   against the bare interpreter (`python -c pass`); medians of `--repeats` runs.
2. many queries: one `simexplain search INDEX Q1 ... QN --json` against N calls
   `simexplain search INDEX Qi --json`, on an index of GALLERY Fashion-MNIST test images
   (fmnist-gap, built with `simexplain index build` in a temporary folder); the queries are the
   next N test images. The hits of the two ways are checked to be the same.

`--write` replaces the block between the `bench-cli:start` and `bench-cli:end` markers of the
given page with the table. Ratios are what counts: the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(Path(__file__).resolve().parent))

GALLERY = 600
MODEL = "fmnist-gap"
# What building the parser imported before each command's options were deferred: the package
# (Explainer: torch), the retrieval (index, build: numpy, FAISS), training, the pair patterns,
# the web app with its engine and image store, and every evaluation benchmark.
EAGER = ("simexplain", "simexplain.explainer", "simexplain.retrieval.index",
         "simexplain.retrieval.build", "simexplain.retrieval.storage", "simexplain.training",
         "simexplain.patterns", "simexplain.web.app", "simexplain.web.engine",
         "simexplain.web.store", "simexplain.evaluation.interactive",
         "simexplain.evaluation.retrieval_quality", "simexplain.evaluation.pointing",
         "simexplain.evaluation.localisation", "simexplain.evaluation.faithfulness",
         "simexplain.evaluation.correspondence", "simexplain.evaluation.crossview",
         "simexplain.evaluation.sanity", "simexplain.evaluation.suite")


def environment() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH")]))
    return env


def timed(command: list[str]) -> tuple[float, str]:
    """Wall seconds of one process, and what it printed (a failure stops the benchmark)."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=environment())
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... failed:\n{done.stderr}")
    return seconds, done.stdout


def cli(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "simexplain", *arguments]


def median_seconds(command: list[str], repeats: int) -> float:
    return statistics.median(timed(command)[0] for _ in range(repeats))


def startup(repeats: int) -> dict:
    imports = "import " + ", ".join(EAGER)
    return {"help": median_seconds(cli("--help"), repeats),
            "eager": median_seconds([sys.executable, "-c", imports], repeats),
            "bare": median_seconds([sys.executable, "-c", "pass"], repeats)}


def write_images(folder: Path, images, names: list[str]) -> list[str]:
    from PIL import Image
    folder.mkdir(parents=True)
    paths = []
    for image, name in zip(images, names):
        Image.fromarray(image).save(folder / name)
        paths.append(str(folder / name))
    return paths


def same_hits(a: list[dict], b: list[dict]) -> bool:
    """The same rows in the same order, scores within 1e-6: one call explains its queries in
    batches, whose forward pass rounds differently from one query at a time."""
    return [h["index"] for h in a] == [h["index"] for h in b] and all(
        abs(x["score"] - y["score"]) <= 1e-6 for x, y in zip(a, b))


def many_queries(work: Path, queries: int) -> dict:
    from simexplain.datasets import fashion_mnist
    images, _ = fashion_mnist("test")
    write_images(work / "gallery", images[:GALLERY], [f"{i:05d}.png" for i in range(GALLERY)])
    query_paths = write_images(work / "queries", images[GALLERY:GALLERY + queries],
                               [f"q{i:04d}.png" for i in range(queries)])
    index = str(work / "index")
    build_seconds, _ = timed(cli("index", "build", str(work / "gallery"), "--model", MODEL,
                                 "--out", index, "--quiet"))
    one_call, printed = timed(cli("search", index, *query_paths, "--json"))
    together = json.loads(printed)
    separate_seconds = []
    for path, result in zip(query_paths, together if queries > 1 else [together]):
        seconds, printed = timed(cli("search", index, path, "--json"))
        separate_seconds.append(seconds)
        alone = json.loads(printed)
        if not same_hits(alone["hits"], result["hits"]):
            raise SystemExit(f"{path}: one call and separate calls disagree")
    return {"queries": queries, "gallery": GALLERY, "build": build_seconds, "one_call": one_call,
            "separate": sum(separate_seconds), "separate_median": statistics.median(
                separate_seconds)}


def table(start: dict, search: dict, repeats: int) -> str:
    n = search["queries"]
    return "\n".join([
        "| what | wall time | ratio |",
        "|---|---|---|",
        f"| `simexplain --help` | {start['help'] * 1e3:.0f} ms | 1x |",
        f"| `python -c \"import simexplain, ...\"` (what the parser building imported before) "
        f"| {start['eager'] * 1e3:.0f} ms | {start['eager'] / start['help']:.1f}x |",
        f"| `python -c pass` (the interpreter alone) | {start['bare'] * 1e3:.0f} ms | "
        f"{start['bare'] / start['help']:.2f}x |",
        f"| one `simexplain search` with {n} queries | {search['one_call']:.1f} s "
        f"({search['one_call'] / n * 1e3:.0f} ms a query) | 1x |",
        f"| {n} `simexplain search` calls, one query each | {search['separate']:.1f} s "
        f"({search['separate_median'] * 1e3:.0f} ms a call, median) | "
        f"{search['separate'] / search['one_call']:.1f}x |",
    ]) + (f"\n\nStart-up: medians of {repeats} runs. Search: fmnist-gap, an index of "
          f"{search['gallery']} Fashion-MNIST test images (flat), 28x28 queries, 10 hits each; "
          "both ways give the same hits (rows and order; scores within 1e-6, since one call "
          "explains its queries in batches).")


def write_tables(path: Path, text: str, header: str, block: str = "bench-cli") -> None:
    from bench_explain import write_tables as write
    write(path, text, header, block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=100,
                        help="N: queries of the one call and single-query calls (default 100)")
    parser.add_argument("--repeats", type=int, default=5, help="start-up runs (default 5)")
    parser.add_argument("--write", type=Path, help="page (markdown) whose bench-cli block to "
                                                   "replace")
    args = parser.parse_args()
    if args.queries < 1 or args.repeats < 1:
        raise SystemExit("--queries and --repeats must be at least 1")
    start = startup(args.repeats)
    print("start-up:", {k: round(v, 3) for k, v in start.items()}, flush=True)
    with tempfile.TemporaryDirectory() as folder:
        search = many_queries(Path(folder), args.queries)
    print("search:", {k: round(v, 3) for k, v in search.items()}, flush=True)
    text = table(start, search, args.repeats)
    print(text)
    if args.write:
        header = (f"Measured by `python benchmarks/bench_cli.py --queries {args.queries} "
                  f"--write docs/performance.md` on the CPU (Python {platform.python_version()}, "
                  f"{os.cpu_count()} cores, shared).")
        write_tables(args.write, text, header)


if __name__ == "__main__":
    main()
