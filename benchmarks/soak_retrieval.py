"""Soak test of index folders (issue 12): SIGKILLs during builds, then resume; a manifest
corruption campaign. One command, results as JSON and a line for the README:

    python benchmarks/soak_retrieval.py                   # 40 kills, 3,000 corruptions (minutes)
    python benchmarks/soak_retrieval.py --kills 5 --flips 300 --json soak.json

Kills: `simexplain index build` of a generated gallery runs in a subprocess and is killed with
SIGKILL at a random moment, then rerun (resuming from its checkpoint) until it finishes; the
final index must equal an uninterrupted build (same paths, same embeddings), the user's files
next to it (a sentinel folder `<out>.partial`, a file in the parent) must be untouched, and no
temporary folder may be left behind.

Corruptions: single-byte flips (random position, random XOR) of a valid manifest.json, and
targeted edits. Each damaged index must be refused with a SimexplainError ("refused") or give
exactly the intact index's hits ("harmless"); a different ranking ("wrong") or any other
exception ("crashed") is a failure. The same edits with a recomputed checksum (deliberate
forgeries, counted apart) must never crash; invalid values are refused by the schema, while a
well-formed forgery is simply another index (or refused by the model check).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SIDE = 32
MODEL = ["--model", "simexplain.toy:tiny_cnn", "--layer", "features", "--size", str(SIDE)]


def make_gallery(folder: Path, count: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for i in range(count):
        array = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / f"img_{i:04d}.png")
    (folder / "notes.txt").write_text("not an image")


def build_command(gallery: Path, out: Path) -> list[str]:
    return [sys.executable, "-c", "import sys; from simexplain.cli import main; sys.exit(main())",
            "index", "build", str(gallery), *MODEL,
            "--out", str(out), "--batch-size", "4", "--quiet"]


def run_build(gallery: Path, out: Path, kill_after: float | None,
              extra: tuple = ()) -> tuple[bool, bool]:
    """(finished, resumed): False when it was killed; whether it resumed from a checkpoint."""
    process = subprocess.Popen([*build_command(gallery, out), *extra],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _, err = process.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.communicate()
        return False, False
    if process.returncode != 0:
        raise RuntimeError(f"build failed: {err.decode()[-500:]}")
    return True, b"resuming from" in err


def soak_kills(work: Path, kills: int, images: int, seed: int) -> dict:
    from simexplain.retrieval import Index
    gallery = work / "gallery"
    make_gallery(gallery, images)
    reference = work / "reference"
    started = time.perf_counter()
    run_build(gallery, reference, None, ("--help",))  # imports and exits: the start-up time
    startup = time.perf_counter() - started
    started = time.perf_counter()
    run_build(gallery, reference, None)
    full = time.perf_counter() - started
    expected = Index.load(reference)
    rng = random.Random(seed)
    done_kills = rounds = resumed = 0
    mismatches, leftovers, touched = [], [], 0
    while done_kills < kills:
        rounds += 1
        parent = work / f"round{rounds}"
        parent.mkdir()
        out = parent / "index"
        sentinel = parent / "index.partial"  # a user's folder with the old checkpoint name
        sentinel.mkdir()
        (sentinel / "mine.txt").write_text("user data")
        (parent / "keep.txt").write_text("user data")
        finished = False
        while not finished:
            kill = done_kills < kills and rng.random() < 0.85
            finished, resumed_now = run_build(
                gallery, out, rng.uniform(0.8 * startup, full) if kill else None)
            done_kills += 0 if finished else 1
            resumed += resumed_now
        got = Index.load(out)
        if list(got.paths) != list(expected.paths):
            mismatches.append(f"round {rounds}: paths differ")
        elif not np.allclose(got.embeddings, expected.embeddings, rtol=1e-5, atol=1e-6):
            mismatches.append(f"round {rounds}: embeddings differ")
        if (sentinel / "mine.txt").read_text() != "user data" or \
                (parent / "keep.txt").read_text() != "user data":
            touched += 1
        extra = sorted(set(os.listdir(parent)) - {"index", "index.partial", "keep.txt"})
        if extra:
            leftovers.append(f"round {rounds}: {extra}")
    return {"kills": done_kills, "rounds": rounds, "images": images, "resumed_runs": resumed,
            "uninterrupted_build_s": round(full, 1), "startup_s": round(startup, 1),
            "mismatches": mismatches,
            "leftovers": leftovers, "user_files_touched": touched}


def soak_manifest(work: Path, flips: int, seed: int) -> dict:
    import torch

    from simexplain.errors import SimexplainError
    from simexplain.retrieval import MANIFEST, Index, RegionQuery
    from simexplain.retrieval.manifest import checksum
    from simexplain.retrieval.commands import explainer_for_index
    gallery = work / "gallery-m"
    make_gallery(gallery, 24, seed=1)
    path = work / "index-m"
    run_build(gallery, path, None)
    explainer = explainer_for_index(path)
    index = Index.load(path, explainer=explainer)
    side = explainer.side(torch.randn(1, 3, SIDE, SIDE,
                                      generator=torch.Generator().manual_seed(seed)), "a")
    queries = [RegionQuery.from_side(side), RegionQuery.from_side(side, (0, 0, 16, 20))]

    def hits(ix):
        return [[(h.index, h.path, round(h.score, 9)) for h in ix.search(q, k=len(ix))]
                for q in queries]
    expected = hits(index)
    original = (path / MANIFEST).read_bytes()
    copy = work / "copy-m"
    shutil.copytree(path, copy)
    counts = {"refused": 0, "harmless": 0, "wrong": 0, "crashed": 0}
    examples: dict[str, list] = {"wrong": [], "crashed": []}

    def judge(data: bytes, label: str, counts: dict = counts) -> None:
        (copy / MANIFEST).write_bytes(data)
        try:
            loaded = Index.load(copy, explainer=explainer)
            result = "harmless" if hits(loaded) == expected else "wrong"
        except SimexplainError:
            result = "refused"
        except Exception as exc:  # noqa: BLE001 - counted, that is the point
            result = "crashed"
            label = f"{label}: {type(exc).__name__}: {exc}"
        counts[result] += 1
        if result in examples and len(examples[result]) < 5:
            examples[result].append(label)

    rng = random.Random(seed)
    for i in range(flips):
        data = bytearray(original)
        position = rng.randrange(len(data))
        data[position] ^= rng.randrange(1, 256)
        judge(bytes(data), f"flip {i} at byte {position}")
    manifest = json.loads(original)
    edits = {
        "kind hnsw": ("kind", "hnsw"), "skipped [1]": ("skipped", [1]),
        "input_size x": ("input_size", "x"), "input_size 0,0": ("input_size", [0, 0]),
        "layer 5": ("layer", 5), "count": ("count", manifest["count"] + 1),
        # (the per-image paths live in gallery.arrow since format 3: its edits are in
        # tests/retrieval/test_safety.py)
        "skipped count": ("skipped", manifest["skipped"] + 1),
        "input_size 64,64": ("input_size", [64, 64]),
        "similarity": ("similarity", "dot"), "dim": ("dim", manifest["dim"] + 1),
    }
    # edits with a recomputed checksum are deliberate forgeries, counted apart: the schema
    # refuses invalid values; a valid forged manifest is another index
    forged = {"refused": 0, "harmless": 0, "wrong": 0, "crashed": 0}
    edit_counts = {}
    for name, (key, value) in edits.items():
        for reseal, tally in ((False, counts), (True, forged)):
            edited = {**manifest, key: value}
            if reseal:
                edited["checksum"] = checksum(edited)
            before = dict(tally)
            judge(json.dumps(edited).encode(), f"edit {name}, reseal={reseal}", tally)
            edit_counts[f"{name}{' (resealed)' if reseal else ''}"] = next(
                k for k in tally if tally[k] != before[k])
    return {"flips": flips, "edits_checked": len(edits), "counts": counts,
            "forged_counts": forged, "edits": edit_counts, "examples": examples}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--flips", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="simexplain-soak-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        results = {"kills": soak_kills(work, args.kills, args.images, args.seed),
                   "manifest": soak_manifest(work, args.flips, args.seed)}
        results["seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    kills, manifest = results["kills"], results["manifest"]
    failed = (kills["mismatches"] or kills["leftovers"] or kills["user_files_touched"]
              or manifest["counts"]["wrong"] or manifest["counts"]["crashed"]
              or manifest["forged_counts"]["crashed"])
    print(f"\n{kills['kills']} SIGKILLs in {kills['rounds']} builds: "
          f"{kills['rounds'] - len(kills['mismatches'])}/{kills['rounds']} equal to an "
          f"uninterrupted build, {kills['user_files_touched']} user files touched, "
          f"{len(kills['leftovers'])} leftovers, {kills['resumed_runs']} resumed runs; "
          f"{manifest['flips']} byte flips + {manifest['edits_checked']} edits: "
          f"{manifest['counts']}; resealed edits: {manifest['forged_counts']}",
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
