"""Cost of `Explainer.explain`, measured side by side with what it is compared to.

    python benchmarks/bench_explain.py [--quick] [--repeats 3] [--clock cpu]
        [--sections grids,paper] [--grids 7,14] [--write docs/performance.md]

Sections (medians over `--repeats`, and over at least `--min-seconds` of pairs for cheap
comparisons, on the same inputs, in one process; each ratio is the
median of ratios of two timings taken back to back):

1. grids: a conv trunk (C=256) -> GAP -> Linear(256->128) -> L2 at feature grids 7x7 to 64x64:
   `explain(a, b)` against two plain forward passes, the reference head path (one tangent per
   position, the previous engine) where it finishes quickly, and the peak memory of `explain`
   above that of the two forward passes (resident set size, each grid in a fresh process).
2. zoo: the same ratio on the named models whose weights are present (fmnist-vit explained one
   transformer block before its class-token head), and on a ViT-S/16 at 224 px (random
   weights from a Hugging Face config; one block before its class token).
3. paper shapes: the reference loops written from the paper's description (per-position
   contributions u_p, then for each pair (p, q) the product u_p . v_q, in Python loops) against
   `explain` given the same activations (the explained layer is the model's input).
4. saliency: `saliency("decomposition")` against `saliency("gradcam")` (which backpropagates
   through the head only: the two share their forward pass) and against Grad-CAM as hook-based
   libraries such as pytorch-grad-cam run it (backward through the whole model), per image.
5. galleries: `explain_gallery(query, gallery)` (one query against GALLERY images, batches of
   16) against one embedding pass over the same images (`Explainer.embed`).
6. fixed cost: what `explain` adds to the forward pass and `explain_gallery` to an embedding
   pass, counted (torch operations and reads of values to the host, each of which waits for
   a GPU's queued work) and timed on a narrow grid model (width 8), whose operations cost
   about what they take to launch: the regime of a GPU, where the fixed cost per call, not
   the arithmetic, sets the price.

Ratios are what counts: the machine may be shared. `--write` replaces the block between
the `bench:start` and `bench:end` markers of the given README with the tables.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from simexplain import Explainer, zoo
from simexplain.explanation import PairExplanation, Side
from simexplain.toy import L2Norm
from simexplain.images import blank_image

GRIDS = (7, 14, 28, 32, 48, 64)
SECTIONS = ("grids", "zoo", "paper", "saliency", "galleries", "fixed")
REFERENCE_PATH_MAX_GRID = 14  # the previous engine is O(P^2 C): minutes beyond this
DEVICE = torch.device("cpu")  # --device: where models and inputs live (the code is agnostic)
# --clock cpu: the process's CPU time instead of wall time. On a shared, oversubscribed CPU the
# wall time of a 1-thread run includes the time other jobs held the core; CPU time does not.
CLOCK = time.perf_counter


def sync() -> None:
    """Wait for queued GPU work, so that a timing covers the work it times."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()


def measure(fn, repeats: int) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        start = CLOCK()
        fn()
        sync()
        times.append(CLOCK() - start)
    return statistics.median(times)


# Each comparison takes at least `repeats` pairs and at least this long (--min-seconds): cheap
# rows (a 7x7 pair takes 20 ms) would otherwise rest on a fraction of a second of a shared
# machine's time.
MIN_SECONDS = 3.0


def compare(base, other, repeats: int) -> tuple[float, float]:
    """(median time of `base`, median ratio other / base), the two timed back to back in
    turn, so that a load change on the shared machine hits both sides of each ratio."""
    start = CLOCK()
    base(), other()  # warm-up, which also sizes the run
    sync()
    pair = CLOCK() - start
    repeats = max(repeats, math.ceil(MIN_SECONDS / max(pair, 1e-6)))
    times, ratios = [], []
    for _ in range(repeats):
        start = CLOCK()
        base()
        sync()
        middle = CLOCK()
        other()
        sync()
        end = CLOCK()
        times.append(middle - start)
        ratios.append((end - middle) / (middle - start))
    return statistics.median(times), statistics.median(ratios)


def explain_with(explainer: Explainer, x_a: torch.Tensor, x_b: torch.Tensor,
                 strategy: str) -> PairExplanation:
    """`explain` with the head analysed by a given strategy ("auto" is what explain does)."""
    sides = []
    for x, side in ((x_a, "a"), (x_b, "b")):
        c = explainer.stream(side).contributions(x, strategy)
        sides.append(Side(image=blank_image(tuple(x.shape[2:])), grid=c.grid,
                          contributions=c.positions[0], embedding=c.embedding[0]))
    return PairExplanation.from_sides(*sides, explainer.similarity)


# -- 1. grids ------------------------------------------------------------------------------------
def grid_model(seed: int = 0) -> nn.Module:
    """Conv trunk with four stride-2 stages (input = 16 x grid) to C=256, GAP, Linear, L2."""
    torch.manual_seed(seed)
    trunk, c_in = [], 3
    for c_out in (32, 64, 128, 256):
        trunk += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU()]
        c_in = c_out
    trunk += [nn.Conv2d(256, 256, 3, padding=1), nn.ReLU()]
    return nn.Sequential(OrderedDict(features=nn.Sequential(*trunk), pool=nn.AdaptiveAvgPool2d(1),
                                     flat=nn.Flatten(), fc=nn.Linear(256, 128),
                                     norm=L2Norm())).eval().to(DEVICE)


def pair(size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, 3, size, size, generator=gen).to(DEVICE) for _ in range(2))


def two_forwards(model: nn.Module, x_a: torch.Tensor, x_b: torch.Tensor) -> None:
    with torch.no_grad():
        model(x_a), model(x_b)


def grid_row(grid: int, repeats: int) -> dict:
    model = grid_model()
    explainer = Explainer(model, "features")
    x_a, x_b = pair(16 * grid)
    forwards = lambda: two_forwards(model, x_a, x_b)  # noqa: E731
    t_fwd, ratio = compare(forwards, lambda: explainer.explain(x_a, x_b), repeats)
    row = {"grid": f"{grid}x{grid}", "forwards_ms": t_fwd * 1e3, "explain": ratio,
           "path": explainer.stream_a.contributions(x_a).path}
    if grid <= REFERENCE_PATH_MAX_GRID:
        _, row["reference_path"] = compare(
            forwards, lambda: explain_with(explainer, x_a, x_b, "tangents"), 1)
    if DEVICE.type == "cpu":  # resident memory of a fresh process (see peak_memory)
        row["memory_forwards_mb"] = peak_memory(grid, "forwards")
        row["memory_explain_mb"] = peak_memory(grid, "explain")
    else:
        row["memory_forwards_mb"], row["memory_explain_mb"] = gpu_peak_memory(
            forwards, lambda: explainer.explain(x_a, x_b))
    return row


def peak_memory(grid: int, task: str) -> float:
    """Peak resident memory (MB) that `task` (forwards or explain) adds, in a fresh process in
    which large buffers are mapped and unmapped directly (so resident memory follows live
    tensors), sampled every half millisecond."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run([sys.executable, __file__, "--memory-probe", f"{grid}:{task}"],
                         capture_output=True, text=True, check=True, env=env)
    return float(out.stdout.strip().splitlines()[-1])


def gpu_peak_memory(*tasks) -> list[float]:
    """Peak GPU memory (MB) each task adds above what is allocated before it."""
    peaks = []
    for task in tasks:
        sync()
        before = torch.cuda.memory_allocated(DEVICE)
        torch.cuda.reset_peak_memory_stats(DEVICE)
        task()
        sync()
        peaks.append((torch.cuda.max_memory_allocated(DEVICE) - before) / 2**20)
    return peaks


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_probe(spec: str) -> None:
    grid, task = spec.split(":")
    torch.set_num_threads(1)
    model = grid_model()
    explainer = Explainer(model, "features")
    x_a, x_b = pair(16 * int(grid))
    run = (lambda: explainer.explain(x_a, x_b)) if task == "explain" else (
        lambda: two_forwards(model, x_a, x_b))
    run()  # warm-up: one-time set-up (the probe pass, lazy imports) is not the task's memory
    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _resident_bytes())
            time.sleep(0.0005)
    before = _resident_bytes()
    sampler = threading.Thread(target=sample)
    sampler.start()
    run()
    done.set()
    sampler.join()
    print(max(0, peak[0] - before) / 2**20)


# -- 2. zoo ------------------------------------------------------------------------------------
# name: row label; the ViT's label says how deep its head is (what `explain` analyses)
ZOO_ROWS = {"efficientnet-lite0": "efficientnet-lite0", "fmnist-gap": "fmnist-gap",
            "fmnist-vit": "fmnist-vit (head: 1 block)", "facenet": "facenet"}


def zoo_row(name: str, repeats: int) -> dict | None:
    try:
        explainer = zoo.load(name)
        explainer.stream_a.model.to(DEVICE)
        images = zoo.entry(name).sample_pair()  # real images that suit the model (faces...)
    except Exception as exc:  # noqa: BLE001 - weights or data absent: skip, say why
        print(f"  {name}: skipped ({str(exc).splitlines()[0]})")
        return None
    x_a, x_b = (explainer.prepare(image).tensor for image in images)
    model = explainer.stream_a.model
    t_fwd, ratio = compare(lambda: two_forwards(model, x_a, x_b),
                           lambda: explainer.explain(x_a, x_b), repeats)
    grid = explainer.stream_a.grid(x_a)[0]
    return {"model": ZOO_ROWS.get(name, name), "grid": f"{grid[0]}x{grid[1]}",
            "forwards_ms": t_fwd * 1e3,
            "explain": ratio, "path": explainer.stream_a.contributions(x_a).path}


# Transformers of a size people use (ViT-S/16 at 224 px: 196 patches, 12 blocks), random
# weights from a Hugging Face config (their cost does not depend on them), each explained at its
# default layer: a class-token ViT one block deep, a ViT pooled by the mean of its patch tokens
# (head: the final norm and the mean) and a SigLIP vision tower (head: the post-norm and its
# attention pooling head, one learned query) at the last block.
VIT_SMALL = "vit-small/16 at 224 (random weights, head: 1 block)"
TRANSFORMERS = {
    VIT_SMALL: ("vit", "cls"),
    "vit-small/16 at 224, mean of the patches (random weights, head: norm + mean)":
        ("vit", "mean"),
    "siglip vision, vit-small/16 at 224 (random weights, head: pooling attention)":
        ("siglip", "auto"),
}


def transformer_row(label: str, repeats: int) -> dict | None:
    try:
        import transformers
    except ImportError:
        print(f"  {label}: skipped (transformers is not installed)")
        return None
    from simexplain.zoo.hf import HFEmbedder
    kind, pooling = TRANSFORMERS[label]
    torch.manual_seed(0)
    shape = dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                 intermediate_size=1536, image_size=224, patch_size=16)
    if kind == "siglip":
        hf_model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**shape))
    else:
        hf_model = transformers.ViTModel(transformers.ViTConfig(**shape),
                                         add_pooling_layer=False)
    model = HFEmbedder(hf_model.eval(), pooling=pooling).to(DEVICE)
    explainer = Explainer(model, model.default_layer, similarity="cosine")
    x_a, x_b = (torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(seed))
                .to(DEVICE) for seed in (1, 2))
    t_fwd, ratio = compare(lambda: two_forwards(model, x_a, x_b),
                           lambda: explainer.explain(x_a, x_b), repeats)
    return {"model": label, "grid": "14x14", "forwards_ms": t_fwd * 1e3, "explain": ratio,
            "path": explainer.stream_a.contributions(x_a).path}


# -- 3. the paper's shapes and reference loops -----------------------------------------------------
def head_model(kind: str, channels: int, grid: tuple[int, int], dim: int, seed: int) -> nn.Module:
    """Identity 'trunk' (the activations are the input), then the head."""
    torch.manual_seed(seed)
    if kind == "flatten+bn":
        head = [nn.Flatten(), nn.Linear(channels * grid[0] * grid[1], dim), nn.BatchNorm1d(dim)]
    elif kind == "gap+bn":
        head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(channels)]
    else:  # gap+fc
        head = [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, dim)]
    model = nn.Sequential(OrderedDict([("features", nn.Identity())] + [
        (str(i), m) for i, m in enumerate(head)])).eval().to(DEVICE)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            with torch.no_grad():
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model


def reference_contributions(model: nn.Module, a: np.ndarray) -> list[np.ndarray]:
    """u_p from the paper's description, one position at a time: the head's linear map applied to
    A_p (GAP: divided by P; flatten: the position's own block of W), BN folded in, the constant
    term spread evenly."""
    layers = [m for m in model.children() if not isinstance(m, nn.Identity)]
    c, h, w = a.shape
    n_pos = h * w
    linear = next((m for m in layers if isinstance(m, nn.Linear)), None)
    bn = next((m for m in layers if isinstance(m, nn.BatchNorm1d)), None)
    flatten_first = isinstance(layers[0], nn.Flatten)
    weight = linear.weight.detach().cpu().numpy().astype(np.float64) if linear else None
    bias = linear.bias.detach().cpu().numpy().astype(np.float64) if linear else 0.0
    if bn is not None:
        scale = (bn.weight / (bn.running_var + bn.eps).sqrt()).detach().cpu().numpy().astype(np.float64)
        shift = (bn.bias.detach() - bn.running_mean * bn.weight /
                 (bn.running_var + bn.eps).sqrt()).detach().cpu().numpy().astype(np.float64)
    else:
        scale, shift = 1.0, 0.0
    u = []
    for i in range(h):
        for j in range(w):
            a_p = a[:, i, j].astype(np.float64)
            if flatten_first:  # W reshaped to D x C x P: the block of position p
                proj = weight[:, np.arange(c) * n_pos + i * w + j] @ a_p
            elif weight is not None:
                proj = weight @ a_p / n_pos
            else:
                proj = a_p / n_pos
            u.append(scale * proj + (scale * bias + shift) / n_pos)
    return u


def reference_loops(model_a, model_b, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The decomposition D[p, q] = u_p . v_q / (|e_a| |e_b|) with loops over positions."""
    u = reference_contributions(model_a, a)
    v = reference_contributions(model_b, b)
    e_a, e_b = sum(u), sum(v)
    scale = 1.0 / (np.linalg.norm(e_a) * np.linalg.norm(e_b))
    out = np.zeros((len(u), len(v)))
    for p in range(len(u)):
        for q in range(len(v)):
            out[p, q] = np.dot(u[p], v[q]) * scale
    return out


PAPER_SHAPES = (  # (label, head, channels, grid a, grid b, dim)
    ("re-ID 7x7, flatten + BN", "flatten+bn", 512, (7, 7), (7, 7), 512),
    ("re-ID 16x8, GAP + BN", "gap+bn", 2048, (16, 8), (16, 8), 2048),
    ("cross-view 32x32 vs 14x77, GAP + FC", "gap+fc", 512, (32, 32), (14, 77), 512),
)


def paper_row(label, kind, channels, grid_a, grid_b, dim, repeats, quick) -> dict:
    model_a = head_model(kind, channels, grid_a, dim, seed=0)
    two_stream = grid_a != grid_b
    model_b = head_model(kind, channels, grid_b, dim, seed=1) if two_stream else model_a
    explainer = Explainer(model_a, "features", model_b=model_b if two_stream else None,
                          layer_b="features" if two_stream else None)
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(1, channels, *grid_a, generator=gen).relu().to(DEVICE)
    b = torch.randn(1, channels, *grid_b, generator=gen).relu().to(DEVICE)
    # the same output as the loops: the P x Q map (explain computes it on first use)
    t_exp = measure(lambda: explainer.explain(a, b).pairwise_flat, repeats)
    if quick and len(a[0, 0].flatten()) * len(b[0, 0].flatten()) > 20000:
        return {"shape": label, "explain_ms": t_exp * 1e3}
    start = CLOCK()
    loops = reference_loops(model_a, model_b, a[0].cpu().numpy(), b[0].cpu().numpy())
    t_ref = CLOCK() - start
    ours = explainer.explain(a, b).pairwise_flat.cpu().numpy()
    gap = float(np.abs(loops - ours).max() / np.abs(loops).max())
    assert gap < 1e-5, f"{label}: explain and the reference loops disagree ({gap:.1e})"
    return {"shape": label, "explain_ms": t_exp * 1e3, "loops_ms": t_ref * 1e3,
            "speedup": t_ref / t_exp, "agreement": gap}


# -- 4. saliency -----------------------------------------------------------------------------------
def gradcam_full_backward(explainer: Explainer, x_a: torch.Tensor, x_b: torch.Tensor):
    """Grad-CAM as hook-based libraries run it (pytorch-grad-cam's way, written here from its
    description): a forward pass with gradients enabled everywhere, the layer's output kept by a
    hook, then `backward()` from the score through the whole model, parameters included."""
    model, layer = explainer.stream_a.model, explainer.stream_a.layer
    kept: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        output.retain_grad()
        kept.append(output)
    handle = layer.register_forward_hook(keep)
    try:
        model.zero_grad()
        score = explainer.similarity.score(model(x_a)[0], model(x_b)[0])
        score.backward()
    finally:
        handle.remove()
    return [torch.relu((a * a.grad.mean((2, 3), keepdim=True)).sum(1))[0] for a in kept]


def saliency_row(name: str, explainer: Explainer, size: tuple[int, int], repeats: int) -> dict:
    x_a, x_b = (torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(s)).to(DEVICE)
                for s in (1, 2))
    decomposition = lambda: explainer.saliency(x_a, x_b, "decomposition")  # noqa: E731
    t_dec, ratio = compare(decomposition, lambda: explainer.saliency(x_a, x_b, "gradcam"),
                           repeats)
    _, ratio_full = compare(decomposition, lambda: gradcam_full_backward(explainer, x_a, x_b),
                            repeats)
    return {"model": name, "decomposition_ms": t_dec / 2 * 1e3,
            "gradcam_ms": t_dec * ratio / 2 * 1e3, "speedup": ratio,
            "gradcam_full_ms": t_dec * ratio_full / 2 * 1e3, "speedup_full": ratio_full}


# -- 5. galleries ----------------------------------------------------------------------------------
GALLERY = 16


def gallery_row(name: str, explainer: Explainer, size: tuple[int, int], repeats: int) -> dict:
    gen = torch.Generator().manual_seed(5)
    images = torch.randn(GALLERY + 1, 3, *size, generator=gen).to(DEVICE)
    query, gallery = images[:1], list(images[1:, None])  # (1, 3, H, W) each
    t_embed, ratio = compare(lambda: explainer.embed(images, batch_size=16),
                             lambda: explainer.explain_gallery(query, gallery, batch_size=16),
                             repeats)
    return {"model": name, "images": GALLERY + 1, "embed_ms": t_embed * 1e3, "gallery": ratio}


# -- 6. fixed cost -----------------------------------------------------------------------------
class CountCalls(TorchDispatchMode):
    """Counts the torch operations run inside it (`ops`) and the reads of tensor values to the
    host (`reads`: item, float, bool, tolist, numpy, cpu), each of which, on a GPU, waits until
    the work queued before it is done."""

    READS = ("tolist", "numpy", "cpu")

    def __init__(self):
        super().__init__()
        self.ops = self.reads = 0
        self._reading = False
        self._saved: dict = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self._reading:  # the copy inside a counted read is that read
            self.ops += 1
            self.reads += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))

    def _counted(self, method):
        def read(tensor, *args, **kwargs):
            if self._reading:
                return method(tensor, *args, **kwargs)
            self.reads += 1
            self._reading = True
            try:
                return method(tensor, *args, **kwargs)
            finally:
                self._reading = False
        return read

    def __enter__(self):
        for name in self.READS:  # on the CPU these do not dispatch: counted by name
            self._saved[name] = torch.Tensor.__dict__.get(name)  # None: TensorBase's
            setattr(torch.Tensor, name, self._counted(getattr(torch.Tensor, name)))
        return super().__enter__()

    def __exit__(self, *exc):
        for name, method in self._saved.items():
            if method is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, method)
        return super().__exit__(*exc)


def counted(fn) -> tuple[int, int]:
    """(torch operations, host reads) of one call of fn, after a warm-up call (heads known)."""
    fn()
    with CountCalls() as count:
        fn()
    return count.ops, count.reads


def narrow_grid_model(width: int = 8) -> nn.Module:
    """The grid model's layout at width 8 (input 16 x grid, GAP, Linear(8->16), L2): each
    operation costs about what it takes to launch, as a small model's do on a GPU."""
    torch.manual_seed(0)
    trunk, c_in = [], 3
    for stride in (2, 2, 2, 2, 1):
        trunk += [nn.Conv2d(c_in, width, 3, stride=stride, padding=1), nn.ReLU()]
        c_in = width
    return nn.Sequential(OrderedDict(features=nn.Sequential(*trunk), pool=nn.AdaptiveAvgPool2d(1),
                                     flat=nn.Flatten(), fc=nn.Linear(width, 16),
                                     norm=L2Norm())).eval().to(DEVICE)


def fixed_rows(repeats: int) -> list[dict]:
    """`explain` against two forward passes on the grid model and the narrow one, and the
    narrow one's `explain_gallery` (a query and GALLERY images) against one embedding pass."""
    narrow = Explainer(narrow_grid_model(), "features")
    cases = []
    for label, explainer in (("grid model 7x7", Explainer(grid_model(), "features")),
                             ("narrow grid model 7x7 (width 8)", narrow)):
        model, (x_a, x_b) = explainer.stream_a.model, pair(16 * 7)
        cases.append((f"{label}: `explain` / two forwards",
                      lambda model=model, x_a=x_a, x_b=x_b: two_forwards(model, x_a, x_b),
                      lambda explainer=explainer, x_a=x_a, x_b=x_b: explainer.explain(x_a, x_b)))
    images = torch.randn(GALLERY + 1, 3, 112, 112,
                         generator=torch.Generator().manual_seed(5)).to(DEVICE)
    query, gallery = images[:1], list(images[1:, None])
    cases.append((f"narrow grid model 7x7: `explain_gallery` of {GALLERY} images / one "
                  f"embedding pass over {GALLERY + 1}",
                  lambda: narrow.embed(images, batch_size=16),
                  lambda: narrow.explain_gallery(query, gallery, batch_size=16)))
    rows = []
    for label, baseline, ours in cases:
        (ops_base, reads_base), (ops, reads) = counted(baseline), counted(ours)
        t_base, ratio = compare(baseline, ours, repeats)
        rows.append({"case": label, "baseline_ops": ops_base, "baseline_reads": reads_base,
                     "ops": ops, "reads": reads, "baseline_ms": t_base * 1e3, "ratio": ratio})
    return rows


# -- report ----------------------------------------------------------------------------------------
def tables(results: dict) -> str:
    lines = ["| grid | two forwards | `explain` | reference head path | head analysis | "
             "peak memory: forwards, `explain` |", "|---|---|---|---|---|---|"]
    for r in results["grids"]:
        ref = f"{r['reference_path']:.1f}x" if "reference_path" in r else "(not run)"
        lines.append(f"| {r['grid']} | 1x ({r['forwards_ms']:.0f} ms) | {r['explain']:.2f}x | "
                     f"{ref} | {r['path']} | {r['memory_forwards_mb']:.0f} MB, "
                     f"{r['memory_explain_mb']:.0f} MB |")
    if results["zoo"]:
        lines += ["", "| model | grid | two forwards | `explain` | head analysis |",
                  "|---|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['grid']} | 1x ({r['forwards_ms']:.1f} ms) | "
                  f"{r['explain']:.2f}x | {r['path']} |" for r in results["zoo"]]
    lines += ["", "| paper shape (given the activations) | reference loops | `explain` | "
              "speed-up | agreement |", "|---|---|---|---|---|"]
    for r in results["paper"]:
        if "loops_ms" in r:
            lines.append(f"| {r['shape']} | {r['loops_ms']:.0f} ms | {r['explain_ms']:.1f} ms | "
                         f"{r['speedup']:.0f}x | {r['agreement']:.0e} |")
        else:
            lines.append(f"| {r['shape']} | (skipped, --quick) | {r['explain_ms']:.1f} ms | | |")
    lines += ["", "| model | `saliency(\"decomposition\")` per image | `saliency(\"gradcam\")` "
              "per image (backward through the head only) | ratio | Grad-CAM with a full "
              "backward (hook libraries) | ratio |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['decomposition_ms']:.1f} ms | {r['gradcam_ms']:.1f} ms | "
              f"{r['speedup']:.2f} | {r['gradcam_full_ms']:.1f} ms | {r['speedup_full']:.2f} |"
              for r in results["saliency"]]
    if results.get("galleries"):
        lines += ["", "| model | images | one embedding pass | `explain_gallery` (query vs the "
                  "rest) |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['images']} | 1x ({r['embed_ms']:.0f} ms) | "
                  f"{r['gallery']:.2f}x |" for r in results["galleries"]]
    if results.get("fixed"):
        lines += [""] + fixed_table(results["fixed"])
    return "\n".join(lines)


def fixed_table(rows: list[dict]) -> list[str]:
    """Section 6's table (device_check.py prints it too)."""
    return ["| case (fixed cost per call) | baseline: torch operations, host reads | ours: "
            "torch operations, host reads | baseline | ours |", "|---|---|---|---|---|"] + [
        f"| {r['case']} | {r['baseline_ops']}, {r['baseline_reads']} | {r['ops']}, "
        f"{r['reads']} | 1x ({r['baseline_ms']:.1f} ms) | {r['ratio']:.2f}x |" for r in rows]


def write_tables(path: Path, text: str, header: str, block: str = "bench") -> None:
    readme = path.read_text()
    start, end = f"<!-- {block}:start -->", f"<!-- {block}:end -->"
    if start not in readme or end not in readme:
        raise SystemExit(f"{path}: no {start} ... {end} block to replace")
    before, rest = readme.split(start, 1)
    after = rest.split(end, 1)[1]
    path.write_text(f"{before}{start}\n{header}\n\n{text}\n{end}{after}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small grids, toy shapes only")
    parser.add_argument("--write", type=Path, help="page (markdown) whose bench block to replace")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="torch threads (default: torch's own choice)")
    parser.add_argument("--device", default="cpu",
                        help="where to run (cpu, cuda); the GPU name goes into the header")
    parser.add_argument("--min-seconds", type=float, default=3.0,
                        help="time each comparison takes at least, repeating cheap ones "
                             "(default 3; --quick: 0)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="what the timings count: wall time, or the process's CPU time "
                             "(CPU runs on a shared machine; not for --device cuda)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"which sections to run, comma-separated (default: all of "
                             f"{','.join(SECTIONS)}); --write needs them all")
    parser.add_argument("--grids", help="grid sizes of section 1, comma-separated (e.g. 7,14)")
    parser.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sections = set(args.sections.split(","))
    if not sections <= set(SECTIONS):
        parser.error(f"--sections: choose among {','.join(SECTIONS)}")
    if args.write and sections != set(SECTIONS):
        parser.error("--write replaces every table: run all sections")
    grids = tuple(int(g) for g in args.grids.split(",")) if args.grids else (
        (7, 14) if args.quick else GRIDS)
    if args.memory_probe:
        memory_probe(args.memory_probe)
        return
    torch.set_num_threads(args.threads)
    global DEVICE, MIN_SECONDS, CLOCK
    DEVICE = torch.device(args.device)
    if args.clock == "cpu":
        if DEVICE.type != "cpu":
            raise SystemExit("--clock cpu counts CPU time only: use it with --device cpu")
        CLOCK = time.process_time
    MIN_SECONDS = 0.0 if args.quick else args.min_seconds
    started = time.perf_counter()
    results: dict = {"grids": [], "zoo": [], "paper": [], "saliency": [], "galleries": [],
                     "fixed": []}
    print("1. grids: conv trunk C=256 -> GAP -> Linear(256->128) -> L2")
    for grid in grids if "grids" in sections else ():
        results["grids"].append(grid_row(grid, args.repeats))
        print("  ", results["grids"][-1], flush=True)
    print("2. zoo models")
    zoo_rows = [lambda name=name: zoo_row(name, args.repeats) for name in ZOO_ROWS] + [
        lambda label=label: transformer_row(label, args.repeats) for label in TRANSFORMERS]
    for make_row in () if args.quick or "zoo" not in sections else zoo_rows:
        row = make_row()
        if row:
            results["zoo"].append(row)
            print("  ", row, flush=True)
    print("3. paper shapes: reference loops vs explain")
    for shape in PAPER_SHAPES if "paper" in sections else ():
        results["paper"].append(paper_row(*shape, args.repeats, args.quick))
        print("  ", results["paper"][-1], flush=True)
    print("4. saliency per image")
    cases = [("grid model 28x28 (448 px)", Explainer(grid_model(), "features"), (448, 448))]
    if not sections & {"saliency", "galleries"}:
        cases = []
    elif not args.quick:
        try:
            explainer = zoo.load("efficientnet-lite0")
            explainer.stream_a.model.to(DEVICE)
            cases.append(("efficientnet-lite0", explainer, (224, 224)))
        except Exception:  # noqa: BLE001 - weights absent
            pass
    for name, explainer, size in cases if "saliency" in sections else ():
        results["saliency"].append(saliency_row(name, explainer, size, args.repeats))
        print("  ", results["saliency"][-1], flush=True)
    print("5. galleries: explain_gallery vs one embedding pass")
    for name, explainer, size in cases if "galleries" in sections else ():
        results["galleries"].append(gallery_row(name, explainer, size, args.repeats))
        print("  ", results["galleries"][-1], flush=True)
    print("6. fixed cost per call")
    if "fixed" in sections:
        results["fixed"] = fixed_rows(args.repeats)
        for row in results["fixed"]:
            print("  ", row, flush=True)
    text = tables(results)
    print(text)
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if args.write:
        where = (f"on {torch.cuda.get_device_name(DEVICE)}" if DEVICE.type == "cuda" else
                 f"on the CPU with {torch.get_num_threads()} torch thread(s)")
        command = "`make bench`" if DEVICE.type == "cpu" else \
            f"`python benchmarks/bench_explain.py --device {args.device}`"
        clock = " (CPU time)" if args.clock == "cpu" else ""
        header = (f"Measured by {command} {where} (torch {torch.__version__.split('+')[0]}), "
                  f"medians of at least {args.repeats} pairs and of at least "
                  f"{MIN_SECONDS:g} s{clock} of pairs.")
        # a GPU run has its own block: the CPU table stays
        write_tables(args.write, text, header,
                     "bench" if DEVICE.type == "cpu" else f"bench-{DEVICE.type}")


if __name__ == "__main__":
    main()
