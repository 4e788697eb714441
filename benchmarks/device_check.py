"""CUDA check of the engine (run on a GPU machine): completeness on the GPU, agreement with
the CPU, timm backbones when timm is installed, and explain vs forward timings on the GPU.

    PYTHONPATH=src python benchmarks/device_check.py
"""

from __future__ import annotations

import time

import torch

from simexplain import Explainer, Preprocess
from simexplain.toy import HEADS, HeadModel, TokenModel


def check(name, model, layer, x_a, x_b, similarity="cosine"):
    explainer = Explainer(model, layer, similarity=similarity)
    result = explainer.explain(x_a, x_b)
    rel = result.residual / max(abs(result.score), 1e-6)
    print(f"{name:34s} device={x_a.device.type} grid={result.a.grid} score={result.score:+.5f} "
          f"relative residual={rel:.1e}")
    return result


def timed(fn, repeats=10):
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main():
    assert torch.cuda.is_available(), "no CUDA device"
    cuda = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    x_a, x_b = torch.randn(1, 3, 32, 32, generator=gen), torch.randn(1, 3, 32, 32, generator=gen)
    for head in HEADS:
        torch.manual_seed(0)
        model = HeadModel(head).eval()
        cpu = check(f"toy {head} (cpu)", model, "features", x_a, x_b)
        gpu = check(f"toy {head} (cuda)", model.to(cuda), "features", x_a.to(cuda), x_b.to(cuda))
        diff = float((cpu.pairwise - gpu.pairwise.cpu()).abs().max())
        print(f"    max |cpu - cuda| pairwise = {diff:.1e}")
        point = gpu.point_map("a", (10, 10))
        assert point.device.type == "cuda"
    torch.manual_seed(0)
    check("token model (cuda)", TokenModel().eval().to(cuda), "tokens", x_a.to(cuda), x_b.to(cuda))
    try:
        import timm
    except ImportError:
        print("timm not installed: skipping real backbones")
        return
    big_a = torch.randn(1, 3, 224, 224, generator=gen).to(cuda)
    big_b = torch.randn(1, 3, 224, 224, generator=gen).to(cuda)
    for arch, layer, kwargs in (("resnet50", "layer4", {}),
                                ("vit_small_patch16_224", "blocks.11", {"global_pool": "avg"}),
                                ("vit_small_patch16_224", "blocks.10", {"global_pool": "avg"}),
                                ("convnext_tiny", "stages.3", {})):
        model = timm.create_model(arch, pretrained=False, num_classes=0, **kwargs).eval().to(cuda)
        check(f"timm {arch} @ {layer}", model, layer, big_a, big_b)
        explainer = Explainer(model, layer, transform=Preprocess())
        t_fwd = timed(lambda: (model(big_a), model(big_b)))
        t_exp = timed(lambda: explainer.explain(big_a, big_b))
        gallery = torch.randn(64, 3, 224, 224, device=cuda)
        t_gal = timed(lambda: explainer.contributions(gallery, "b"), repeats=3)
        print(f"    two forwards {t_fwd * 1e3:.1f} ms, explain {t_exp * 1e3:.1f} ms "
              f"({t_exp / t_fwd:.1f}x), contributions of 64 images {t_gal * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
