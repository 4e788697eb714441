"""Time of `Explainer.explain` against two plain forward passes and a per-position loop.

    python benchmarks/bench_explain.py [--model efficientnet-lite0] [--repeats 5]

All three are measured side by side in one run, on the same inputs; ratios are reported
against the two forward passes (the least any explanation of a pair can cost).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.func import jvp

from simexplain import zoo
from simexplain.head import FreezeScales, head_offsets, mask_shape
from simexplain.toy import tiny_cnn


def per_position_loop(explainer, x_a, x_b):
    """The reference approach: one head evaluation per position, then loops over (p, q)."""
    contributions = []
    for x in (x_a, x_b):
        stream = explainer.stream_a
        shape, head = stream._probe(x)
        offsets = head_offsets(stream.model, head)
        ones = torch.ones(mask_shape(shape))
        n_pos = ones.numel()

        def forward(mask, offset_values):
            handle = stream.layer.register_forward_hook(lambda _m, _i, out: out * mask)
            try:
                with FreezeScales():
                    return torch.func.functional_call(stream.model, offset_values, (x,),
                                                      strict=False)
            finally:
                handle.remove()
        zeros = {k: torch.zeros_like(v) for k, v in offsets.items()}
        with torch.no_grad():
            _, const = jvp(forward, (ones, offsets), (torch.zeros_like(ones), offsets))
            rows = []
            for p in range(n_pos):
                tangent = torch.zeros(n_pos)
                tangent[p] = 1
                _, t = jvp(forward, (ones, offsets), (tangent.view_as(ones), zeros))
                rows.append(t[0] + const[0] / n_pos)
        contributions.append(rows)
    u, v = contributions
    return [[float(u[p] @ v[q]) for q in range(len(v))] for p in range(len(u))]


def measure(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(name, explainer, size, repeats):
    torch.manual_seed(0)
    x_a, x_b = torch.randn(1, 3, size, size), torch.randn(1, 3, size, size)
    model = explainer.stream_a.model

    def two_forwards():
        with torch.no_grad():
            model(x_a), model(x_b)
    t_forward = measure(two_forwards, repeats)
    t_explain = measure(lambda: explainer.explain(x_a, x_b), repeats)
    t_loop = measure(lambda: per_position_loop(explainer, x_a, x_b), 1)
    grid = explainer.explain(x_a, x_b).a.grid
    print(f"{name:20s} grid {grid[0]}x{grid[1]}  two forwards {t_forward * 1e3:8.1f} ms   "
          f"explain {t_explain * 1e3:8.1f} ms ({t_explain / t_forward:5.2f}x)   "
          f"per-position loop {t_loop * 1e3:9.1f} ms ({t_loop / t_forward:6.1f}x, "
          f"{t_loop / t_explain:5.1f}x slower than explain)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="toy model only")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    from simexplain import Explainer, Preprocess
    bench("toy (tiny_cnn)", Explainer(tiny_cnn(), "features", transform=Preprocess((64, 64))),
          64, args.repeats)
    if not args.quick:
        bench("efficientnet-lite0", zoo.load("efficientnet-lite0"), 224, args.repeats)


if __name__ == "__main__":
    main()
