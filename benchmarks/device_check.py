"""The device check: every number the GPU block of docs/performance.md needs, in one command
(it runs on the CPU too, to know that it works):

    PYTHONPATH=src python benchmarks/device_check.py --device cuda --write docs/performance.md
    PYTHONPATH=src python benchmarks/device_check.py --device cpu --quick --threads 1  # here

1. agreement: the maps of every toy head, the token model and the zoo models computed on the
   device against the CPU (largest difference of the pairwise and overall maps, relative to
   their largest value; TF32 off), completeness on the device, and the cached affine head
   (affine_head.py) on the device, its CUDA graph replayed from a shape's second call, against
   the autograd path and against the same head with graphs off. Any disagreement: exit 1.
2. `explain` against two forward passes: the grid rows of bench_explain.py, resnet50 / ViT-S/16
   / ConvNeXt-T (timm, else torchvision, else skipped with the reason) and the zoo models;
   and bench_explain.py's fixed cost per call (torch operations, reads to the host, the
   narrow grid model's ratio).
3. images/s: `explain_gallery` against one embedding pass (grid model 28x28, the backbones), and
   `Index.build(..., explain=True)` (`index build --explain`) against a plain build of a
   generated gallery (efficientnet-lite0 when its weights are present, else the toy CNN).

The tables are printed as markdown; --write replaces the page's `bench-<device>` block.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_explain as bench  # noqa: E402
from bench_explain_cache import make_gallery  # noqa: E402

from simexplain import Explainer, Preprocess, affine_head, zoo  # noqa: E402
from simexplain.toy import HEADS, HeadModel, L2Norm, TokenModel, trunk  # noqa: E402

EXACT = 1e-4  # relative: maps on two devices, completeness
CACHED = 1e-5  # relative to the embedding: cached head against autograd
ZOO = ("fmnist-gap", "fmnist-gmp", "efficientnet-lite0", "facenet")


# -- 1. agreement ----------------------------------------------------------------------------------
def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def agreement_row(name: str, explainer: Explainer, x_a, x_b) -> dict:
    """Maps on the CPU and on the device, the same model and inputs."""
    model = explainer.stream_a.model
    cpu = explainer.explain(x_a.cpu(), x_b.cpu()) if bench.DEVICE.type != "cpu" else None
    model.to(bench.DEVICE)
    here = explainer.explain(x_a.to(bench.DEVICE), x_b.to(bench.DEVICE))
    reference = cpu if cpu is not None else here
    row = {"model": name, "grid": f"{here.a.grid[0]}x{here.a.grid[1]}",
           "pairwise": relative(here.pairwise, reference.pairwise),
           "overall": relative(here.overall_a, reference.overall_a),
           "completeness": here.residual / max(abs(here.score), 1e-6)}
    row.update(cached_row(explainer, torch.cat([x_a, x_b]).to(bench.DEVICE)))
    row["ok"] = (max(row["pairwise"], row["overall"], row["completeness"]) < EXACT
                 and row.get("cached", 0.0) < CACHED and row.get("graphs_off", 0.0) < CACHED)
    return row


def cached_row(explainer: Explainer, x: torch.Tensor) -> dict:
    """The head analysis as explain runs it, called until a CUDA graph replays it (on a GPU),
    against the autograd path and against the cache with graphs off."""
    stream = explainer.stream_a
    for _ in range(affine_head.GRAPH_AFTER_CALLS + 2):
        result = stream.contributions(x)
    row: dict = {"path": result.path}
    if not result.path.endswith("affine, cached"):
        return row
    size = float(result.embedding.abs().max())
    autograd = stream.contributions(x, "reverse")
    row["cached"] = float((result.positions - autograd.positions).abs().max()) / size
    os.environ[affine_head.GRAPH_SWITCH] = "0"
    try:
        eager = stream.contributions(x)
    finally:
        os.environ.pop(affine_head.GRAPH_SWITCH)
    row["graphs_off"] = float((result.positions - eager.positions).abs().max()) / size
    return row


def agreement(quick: bool) -> list[dict]:
    gen = torch.Generator().manual_seed(0)
    x_a, x_b = (torch.randn(1, 3, 32, 32, generator=gen) for _ in range(2))
    rows = []
    for head in HEADS:
        if head == "softplus":  # first order by design (no gate): nothing exact to compare
            continue
        torch.manual_seed(0)
        rows.append(agreement_row(f"toy {head}", Explainer(HeadModel(head).eval(), "features"),
                                  x_a, x_b))
    torch.manual_seed(0)
    rows.append(agreement_row("toy tokens", Explainer(TokenModel().eval(), "tokens"), x_a, x_b))
    rows.append(agreement_row("toy pool-BN2d-flatten-linear-L2 x 3",
                              Explainer(scaled_head_model(), "0.0"), x_a, x_b))
    for name in () if quick else ZOO:
        try:
            explainer = zoo.load(name)
            images = zoo.entry(name).sample_pair()
        except Exception as exc:  # noqa: BLE001 - weights or data absent: skip, say why
            print(f"  {name}: skipped ({str(exc).splitlines()[0]})")
            continue
        x_a, x_b = (explainer.prepare(image).tensor.cpu() for image in images)
        rows.append(agreement_row(name, explainer, x_a, x_b))
    for row in rows:
        print("  ", row, flush=True)
    return rows


class _Times(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 3.0


def scaled_head_model() -> torch.nn.Module:
    """A pooled head with a BatchNorm2d before the flatten and a number after the L2: every
    kind of stage the cached affine head folds (tests/test_affine_head.py has the same)."""
    torch.manual_seed(0)
    head = torch.nn.Sequential(trunk(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.BatchNorm2d(32),
                               torch.nn.Flatten(), torch.nn.Linear(32, 16), L2Norm())
    with torch.no_grad():
        head[2].running_mean.normal_()
        head[2].running_var.uniform_(0.5, 2)
    return torch.nn.Sequential(head, _Times()).eval()


# -- 2. backbones ----------------------------------------------------------------------------------
def backbones() -> list[tuple[str, torch.nn.Module, str]]:
    """(label, model returning embeddings, explained layer), random weights (timing only)."""
    try:
        import timm
        return [("resnet50 (timm)", timm.create_model("resnet50", num_classes=0), "layer4"),
                ("ViT-S/16 avg (timm)", timm.create_model(
                    "vit_small_patch16_224", num_classes=0, global_pool="avg"), "blocks.10"),
                # what DINOv2 and CLIP read: the class token (one block deep: packed)
                ("ViT-S/16 class token (timm)", timm.create_model(
                    "vit_small_patch16_224", num_classes=0, global_pool="token"), "blocks.10"),
                ("ConvNeXt-T (timm)", timm.create_model("convnext_tiny", num_classes=0),
                 "stages.3")]
    except ImportError:
        pass
    try:
        import torchvision.models as tv
    except ImportError:
        print("  backbones: skipped (neither timm nor torchvision is installed)")
        return []
    resnet, vit, convnext = tv.resnet50(), tv.vit_b_16(), tv.convnext_tiny()
    resnet.fc, vit.heads = torch.nn.Identity(), torch.nn.Identity()
    convnext.classifier[2] = torch.nn.Identity()
    return [("resnet50 (torchvision)", resnet, "layer4"),
            ("ViT-B/16 class token (torchvision)", vit, "encoder.layers.encoder_layer_10"),
            ("ConvNeXt-T (torchvision)", convnext, "features.7")]


def backbone_row(label: str, model: torch.nn.Module, layer: str, repeats: int) -> dict:
    model = model.eval().to(bench.DEVICE)
    explainer = Explainer(model, layer, transform=Preprocess())
    x_a, x_b = bench.pair(224)
    t_fwd, ratio = bench.compare(lambda: bench.two_forwards(model, x_a, x_b),
                                 lambda: explainer.explain(x_a, x_b), repeats)
    grid = explainer.stream_a.grid(x_a)[0]
    return {"model": label, "grid": f"{grid[0]}x{grid[1]}", "forwards_ms": t_fwd * 1e3,
            "explain": ratio, "path": explainer.stream_a.contributions(x_a).path,
            "explainer": explainer}


# -- 3. index builds -------------------------------------------------------------------------------
def index_row(quick: bool, repeats: int) -> dict:
    from simexplain.retrieval import Index
    name = "toy" if quick else "efficientnet-lite0"
    try:
        explainer = bench_model(name)
    except Exception as exc:  # noqa: BLE001 - weights absent: the toy CNN
        print(f"  index: {name} unavailable ({str(exc).splitlines()[0]}), the toy CNN instead")
        name, explainer = "toy", bench_model("toy")
    explainer.stream_a.model.to(bench.DEVICE)
    count = 16 if quick else 64
    times: dict[str, list[float]] = {"plain": [], "explain": []}
    with tempfile.TemporaryDirectory() as tmp:
        gallery = Path(tmp) / "gallery"
        make_gallery(gallery, count, 224)
        first = sorted(gallery.iterdir())[:2]  # warm-up: weights, kernels, both input sizes
        explainer.embed(first, "b")
        list(explainer.sides(first, "b"))
        for r in range(max(1, repeats // 5)):
            for kind in ("plain", "explain"):
                start = time.perf_counter()
                Index.build(gallery, explainer, name, batch_size=16, progress=False,
                            out=Path(tmp) / f"{kind}-{r}", explain=kind == "explain")
                bench.sync()
                times[kind].append(time.perf_counter() - start)
    plain, explained = (count / min(times[k]) for k in ("plain", "explain"))
    return {"model": name, "images": count, "plain_per_s": plain, "explain_per_s": explained,
            "ratio": plain / explained}


def bench_model(name: str) -> Explainer:
    if name == "toy":
        from simexplain.toy import tiny_cnn
        return Explainer(tiny_cnn(), "features", transform=Preprocess(size=(64, 64),
                                                                       keep_aspect=True))
    return zoo.load(name)


# -- report ----------------------------------------------------------------------------------------
def markdown(results: dict) -> str:
    lines = ["| model | grid | pairwise map: device vs CPU | overall map | completeness | "
             "head analysis | cached vs autograd | CUDA graphs on vs off |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["agreement"]:
        cached = f"{r['cached']:.0e}" if "cached" in r else ""
        graphs = f"{r['graphs_off']:.0e}" if "graphs_off" in r else ""
        lines.append(f"| {r['model']} | {r['grid']} | {r['pairwise']:.0e} | {r['overall']:.0e} "
                     f"| {r['completeness']:.0e} | {r['path']} | {cached} | {graphs} |")
    lines += ["", "| model | grid | two forwards | `explain` | head analysis |",
              "|---|---|---|---|---|"]
    for r in results["grids"] + results["backbones"] + results["zoo"]:
        label = r.get("model", f"grid model {r.get('grid')}")
        lines.append(f"| {label} | {r['grid']} | 1x ({r['forwards_ms']:.1f} ms) | "
                     f"{r['explain']:.2f}x | {r['path']} |")
    lines += ["", "| model | images | embedding: images/s | explained: images/s | ratio |",
              "|---|---|---|---|---|"]
    for r in results["galleries"]:
        embed = r["images"] / (r["embed_ms"] / 1e3)
        lines.append(f"| `explain_gallery`, {r['model']} | {r['images']} | {embed:.0f} | "
                     f"{embed / r['gallery']:.0f} | {r['gallery']:.2f}x |")
    for r in results["index"]:
        lines.append(f"| `index build --explain`, {r['model']} | {r['images']} | "
                     f"{r['plain_per_s']:.0f} | {r['explain_per_s']:.0f} | {r['ratio']:.2f}x |")
    if results["fixed"]:
        lines += [""] + bench.fixed_table(results["fixed"])
    return "\n".join(lines)


def run(args) -> dict:
    results: dict = {"agreement": [], "grids": [], "backbones": [], "zoo": [],
                     "galleries": [], "index": [], "fixed": []}
    print("1. agreement: device vs CPU, cached head vs autograd")
    results["agreement"] = agreement(args.quick)
    print("2. explain vs two forward passes")
    for grid in (7, 14) if args.quick else bench.GRIDS:
        results["grids"].append(bench.grid_row(grid, args.repeats))
        print("  ", results["grids"][-1], flush=True)
    gallery_cases = [("grid model 28x28 (448 px)", Explainer(bench.grid_model(), "features"),
                      (448, 448))]
    for label, model, layer in () if args.quick else backbones():
        row = backbone_row(label, model, layer, args.repeats)
        gallery_cases.append((label, row.pop("explainer"), (224, 224)))
        results["backbones"].append(row)
        print("  ", row, flush=True)
    for name in () if args.quick else bench.ZOO_ROWS:
        row = bench.zoo_row(name, args.repeats)
        if row:
            results["zoo"].append(row)
            print("  ", row, flush=True)
    results["fixed"] = bench.fixed_rows(args.repeats)  # what sets the price on a GPU
    for row in results["fixed"]:
        print("  ", row, flush=True)
    print("3. images/s: explain_gallery and index build --explain against embedding")
    for name, explainer, size in gallery_cases:
        results["galleries"].append(bench.gallery_row(name, explainer, size, args.repeats))
        print("  ", results["galleries"][-1], flush=True)
    results["index"].append(index_row(args.quick, args.repeats))
    print("  ", results["index"][-1], flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="toy models and two grids only")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--write", type=Path, help="page whose bench-<device> block to replace")
    parser.add_argument("--json", type=Path, help="also write the results as JSON")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's; on a "
                        "shared CPU pass 1: spinning threads of an oversubscribed CPU distort)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench.DEVICE = torch.device(args.device)
    bench.MIN_SECONDS = 0.0 if args.quick else 2.0
    # TF32 convolutions (cuDNN's default) change the features: the agreement is about the engine
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    started = time.perf_counter()
    results = run(args)
    text = markdown(results)
    print(text)
    print(f"({time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    block = f"bench-{bench.DEVICE.type}"
    if args.write and bench.DEVICE.type == "cpu" and \
            f"<!-- {block}:start -->" not in args.write.read_text():
        print(f"{args.write}: not written (no {block} block: a try on the CPU, whose numbers "
              "are make bench's)")
    elif args.write:
        where = (torch.cuda.get_device_name(bench.DEVICE) if bench.DEVICE.type == "cuda"
                 else f"the CPU, {torch.get_num_threads()} torch thread(s)")
        header = (f"Measured by `python benchmarks/device_check.py --device {args.device}` on "
                  f"{where} (torch {torch.__version__.split('+')[0]}), medians of at least "
                  f"{args.repeats} pairs.")
        bench.write_tables(args.write, text, header, block)
    failed = [r["model"] for r in results["agreement"] if not r["ok"]]
    if failed:
        print(f"DISAGREEMENT (device vs CPU or cached vs autograd): {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
