"""Explain-ready index caches, measured side by side in one run: `Index.build` with and without
`explain=True` (`index build --explain`), and `Index.explain_hits` for k hits from the cache
against recomputing them with the model.

    OMP_NUM_THREADS=1 python benchmarks/bench_explain_cache.py --threads 1   # efficientnet-lite0
    OMP_NUM_THREADS=1 python benchmarks/bench_explain_cache.py --threads 1 --model toy   # seconds
    python benchmarks/bench_explain_cache.py --model hf-vit-s --images 40 --repeats 2

hf-vit-s: a class-token transformer (Hugging Face ViTModel with its pooler, ViT-S/16 sizes:
384 wide, 12 blocks, 224 px, a 14x14 grid after the class token) with random weights, saved
with save_pretrained into the temporary folder and loaded as `--model hf:FOLDER` (explained
one block before the end, on the packed head path): its cache stores the class token's rows
too (explain-tokens.npy).

The gallery is generated: smooth random colour fields, half square and half 4:3 (a model that
keeps the aspect ratio, as efficientnet-lite0 does, then sees two input sizes and two grids).
Builds write the index folder (hashing, decoding, saving included), alternating plain and
explain builds `--repeats` times; medians are reported. explain_hits: one query, its k best
hits, explained from the cached index and from the same index without its cache, alternating.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from simexplain.retrieval import Index, RegionQuery  # noqa: E402


def make_gallery(folder: Path, count: int, side: int, seed: int = 0) -> None:
    """Smooth random colour fields (upsampled noise), half square and half 4:3."""
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        size = (side, side) if i % 2 == 0 else (side, side * 4 // 3)  # (height, width)
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((size[1], size[0]), Image.BICUBIC)
        image.save(folder / f"img_{i:04d}.png")


def load_model(name: str, tmp: Path):
    if name == "hf-vit-s":
        import torch
        import transformers
        torch.manual_seed(0)
        config = transformers.ViTConfig(hidden_size=384, num_hidden_layers=12,
                                        num_attention_heads=6, intermediate_size=1536,
                                        image_size=224, patch_size=16)
        folder = tmp / "vit-s"
        transformers.ViTModel(config, add_pooling_layer=True).eval().save_pretrained(folder)
        (folder / "preprocessor_config.json").write_text(json.dumps(
            {"size": {"height": 224, "width": 224}, "resample": 2,
             "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
        from simexplain import zoo
        return zoo.resolve(f"hf:{folder}")
    if name == "toy":
        from simexplain.explainer import Explainer
        from simexplain.images import Preprocess
        from simexplain.toy import tiny_cnn
        return Explainer(tiny_cnn(), "features", transform=Preprocess(size=(64, 64),
                                                                       keep_aspect=True),
                         model_name="simexplain.toy:tiny_cnn")
    from simexplain import zoo
    return zoo.load(name)


def folder_bytes(folder: Path, names) -> int:
    return sum((folder / name).stat().st_size for name in names if (folder / name).exists())


def run(model: str, images: int, side: int, k: int, repeats: int, batch_size: int) -> dict:
    import torch
    from simexplain.retrieval.manifest import CONTRIBUTIONS, PROJECTED, SHAPES, SPATIAL, TOKENS
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        explainer = load_model(model, tmp)
        gallery = tmp / "gallery"
        make_gallery(gallery, images, side)
        # warm-up: weights, kernels and the layer probe of both input sizes are no build cost
        first = sorted(gallery.iterdir())[:2]
        explainer.embed(first, "b")
        list(explainer.sides(first, "b"))
        builds = {"plain": [], "explain": []}
        for r in range(repeats):
            for name in ("plain", "explain"):
                out = tmp / f"{name}-{r}"
                start = time.perf_counter()
                Index.build(gallery, explainer, explainer.model_name, batch_size=batch_size,
                            progress=False, out=out, explain=name == "explain")
                builds[name].append(time.perf_counter() - start)
        cached = Index.load(tmp / "explain-0", explainer)
        plain = Index.load(tmp / "plain-0", explainer)
        cache_bytes = folder_bytes(tmp / "explain-0",
                                   (CONTRIBUTIONS, SHAPES, PROJECTED, TOKENS, SPATIAL))
        grids = sorted({tuple(int(v) for v in row[2:]) for row in cached.explain_cache.shapes})
        query = RegionQuery.from_side(explainer.side(sorted(gallery.iterdir())[1], "a"))
        hits = cached.search_vector(query.vector, k)
        times = {"cache": [], "recompute": []}
        for _ in range(repeats):
            for name, index in (("cache", cached), ("recompute", plain)):
                start = time.perf_counter()
                index.explain_hits(query, hits)
                times[name].append(time.perf_counter() - start)
        plain.explain_hits(query, hits)  # the same maps either way (tests check it exactly)
        maps = [h.overall_map.clone() for h in hits]
        cached.explain_hits(query, hits)
        worst = max(float((h.overall_map - m).abs().max()) for h, m in zip(hits, maps))
        build_plain = statistics.median(builds["plain"])
        build_explain = statistics.median(builds["explain"])
        hits_cache = statistics.median(times["cache"])
        hits_recompute = statistics.median(times["recompute"])
        return {
            "model": model, "images": len(cached), "grids": [f"{h}x{w}" for h, w in grids],
            "dim": cached.dim, "k": len(hits), "repeats": repeats, "batch_size": batch_size,
            "build_plain_s": build_plain, "build_explain_s": build_explain,
            "build_ratio": build_explain / build_plain,
            "build_plain_images_per_s": len(cached) / build_plain,
            "build_explain_images_per_s": len(cached) / build_explain,
            "prefix_tokens": cached.explain_cache.token_count or 0,
            "head_path": explainer.contributions(
                explainer.prepare(first[0], "b").tensor, "b").path,
            "explain_hits_cache_ms": 1000 * hits_cache,
            "explain_hits_recompute_ms": 1000 * hits_recompute,
            "explain_hits_speedup": hits_recompute / hits_cache,
            "max_map_difference": worst,
            "cache_bytes": cache_bytes, "cache_bytes_per_image": cache_bytes / len(cached),
            "torch_threads": torch.get_num_threads(),
        }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet-lite0",
                        help="a zoo model, 'toy' (the tiny CNN; seconds) or 'hf-vit-s' (a "
                             "random-weight ViT-S/16 with a class token)")
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--side", type=int, default=224, help="short side of the images")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args(argv)
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    row = run(args.model, args.images, args.side, args.k, args.repeats, args.batch_size)
    row["machine"] = f"{platform.machine()}, {os.cpu_count()} CPUs"
    print(f"{row['model']}: {row['images']} images, grids {', '.join(row['grids'])}, "
          f"{row['dim']}-d, {row['prefix_tokens']} prefix token(s), head path "
          f"{row['head_path']!r}, {row['torch_threads']} torch thread(s), medians of "
          f"{row['repeats']}")
    print(f"build                 {row['build_plain_s']:7.2f} s   with --explain "
          f"{row['build_explain_s']:7.2f} s   ratio {row['build_ratio']:.2f}x")
    print(f"images/s              {row['build_plain_images_per_s']:7.2f}     with --explain "
          f"{row['build_explain_images_per_s']:7.2f}")
    print(f"explain_hits (k={row['k']:>2})  recompute {row['explain_hits_recompute_ms']:8.1f} ms"
          f"   cache {row['explain_hits_cache_ms']:8.1f} ms   "
          f"{row['explain_hits_speedup']:.1f}x faster (max map difference "
          f"{row['max_map_difference']:.1e})")
    print(f"cache on disk         {row['cache_bytes'] / 2**20:.2f} MB "
          f"({row['cache_bytes_per_image'] / 1024:.0f} KB an image)")
    if args.json:
        Path(args.json).write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
