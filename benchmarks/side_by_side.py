"""Issue rows of `bench_explain.py` measured side by side for several checkouts of the project.

    python benchmarks/side_by_side.py WORKTREE [WORKTREE ...] [--rounds 3]

Each round runs, for each worktree in turn (the order alternating from round to round), one
fresh process that imports that worktree's own `simexplain` and `bench_explain.py` and times,
with that file's own functions, 1 torch thread and CPU time (`--clock cpu`): the grid rows 7x7
and 14x14 (`explain` / two forward passes, median of ratios over at least 3 s of pairs) and the
paper shapes' `explain` given the activations (median of 15 calls after a warm-up). The table
gives each worktree's range over the rounds. Only functions that every release of
bench_explain.py has are used, so an older commit's worktree serves as "before".
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ONE_RUN = r"""
import json, sys, time
root = sys.argv[1]
sys.path[:0] = [root + "/src", root + "/benchmarks"]
import torch
torch.set_num_threads(1)
import bench_explain as be
be.CLOCK, be.MIN_SECONDS = time.process_time, 3.0
out = {}
for grid in (7, 14):
    model = be.grid_model()
    explainer = be.Explainer(model, "features")
    x_a, x_b = be.pair(16 * grid)
    _, out[f"grid {grid}x{grid}: explain / two forwards"] = be.compare(
        lambda: be.two_forwards(model, x_a, x_b), lambda: explainer.explain(x_a, x_b), 15)
for label, kind, channels, grid_a, grid_b, dim in be.PAPER_SHAPES:
    model_a = be.head_model(kind, channels, grid_a, dim, seed=0)
    two_stream = grid_a != grid_b
    model_b = be.head_model(kind, channels, grid_b, dim, seed=1) if two_stream else model_a
    explainer = be.Explainer(model_a, "features", model_b=model_b if two_stream else None,
                             layer_b="features" if two_stream else None)
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(1, channels, *grid_a, generator=gen).relu()
    b = torch.randn(1, channels, *grid_b, generator=gen).relu()
    out[f"{label}: explain, ms"] = 1e3 * be.measure(
        lambda: explainer.explain(a, b).pairwise_flat, 15)
print(json.dumps(out))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("worktrees", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for root in args.worktrees:
        if not (root / "benchmarks" / "bench_explain.py").is_file():
            raise SystemExit(f"{root}: no benchmarks/bench_explain.py (not a checkout?)")
    runs: dict[Path, list[dict]] = {root: [] for root in args.worktrees}
    for round_ in range(args.rounds):
        order = args.worktrees if round_ % 2 == 0 else args.worktrees[::-1]
        for root in order:
            done = subprocess.run([sys.executable, "-c", ONE_RUN, str(root.resolve())],
                                  capture_output=True, text=True, check=True)
            runs[root].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"round {round_ + 1}, {root}: {runs[root][-1]}", flush=True)
    rows = list(runs[args.worktrees[0]][0])
    print("\n| row | " + " | ".join(str(root) for root in args.worktrees) + " |")
    print("|---|" + "---|" * len(args.worktrees))
    for row in rows:
        cells = []
        for root in args.worktrees:
            values = sorted(run[row] for run in runs[root])
            unit = "x" if "/" in row else ""
            cells.append(f"{values[0]:.2f}{unit} - {values[-1]:.2f}{unit}")
        print(f"| {row} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
