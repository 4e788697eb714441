"""Small randomly initialised embedding models with every supported head, for tests, benchmarks
and trying the CLI without weights (`--model simexplain.toy:tiny_cnn --layer features`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .explainer import Explainer

HEADS = ("gap", "gmp", "gem", "flatten", "mlp", "mlp-leaky", "layernorm", "dropout-bn", "gelu",
         "softplus")


class GeM(nn.Module):
    """Generalised mean pooling with exponent p (p=1: average, p->inf: max)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1), keepdim=True)
        return pooled.pow(1.0 / self.p)


class L2Norm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, dim=1)


def trunk(channels: int = 16, depth: int = 2, in_channels: int = 3) -> nn.Sequential:
    """Conv-ReLU blocks, each halving the resolution."""
    layers: list[nn.Module] = []
    c_in = in_channels
    for i in range(depth):
        c_out = channels * (2 ** i)
        layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.ReLU()]
        c_in = c_out
    return nn.Sequential(*layers)


class HeadModel(nn.Module):
    """trunk -> `features` (explained) -> head -> embedding (optionally L2-normalised)."""

    def __init__(self, head: str = "gap", dim: int = 8, channels: int = 16, depth: int = 2,
                 normalize: bool = True, bias: bool = True, grid: int = 8, in_channels: int = 3):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; choose one of {HEADS}")
        self.features = trunk(channels, depth, in_channels)
        c = channels * (2 ** (depth - 1))
        pool = {"gmp": nn.AdaptiveMaxPool2d(1), "gem": GeM()}.get(head, nn.AdaptiveAvgPool2d(1))
        if head == "flatten":
            body = [nn.Flatten(), nn.Linear(c * grid * grid, dim, bias=bias)]
        elif head in ("mlp", "mlp-leaky", "gelu", "softplus"):
            # gelu: a gate (exact, frozen); softplus: not a gate, linearised to first order
            act = {"mlp": nn.ReLU(), "mlp-leaky": nn.LeakyReLU(0.1), "gelu": nn.GELU(),
                   "softplus": nn.Softplus()}[head]
            body = [pool, nn.Flatten(), nn.Linear(c, 2 * dim, bias=bias), act,
                    nn.Linear(2 * dim, dim, bias=bias)]
        elif head == "layernorm":
            body = [pool, nn.Flatten(), nn.LayerNorm(c), nn.Linear(c, dim, bias=bias)]
        elif head == "dropout-bn":
            body = [pool, nn.Flatten(), nn.Dropout(0.5), nn.Linear(c, dim, bias=bias),
                    nn.BatchNorm1d(dim)]
        else:
            body = [pool, nn.Flatten(), nn.Linear(c, dim, bias=bias)]
        if normalize:
            body.append(L2Norm())
        self.head = nn.Sequential(*body)
        _randomise_batchnorm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class TokenModel(nn.Module):
    """A transformer-shaped model: patch tokens plus a class token, explained at `tokens`
    (B, 1 + N, C); head (`pool`): "norm-mean" LayerNorm then the mean over tokens, "mean" the
    mean then LayerNorm, "cls" the class token then LayerNorm; then linear, L2 norm."""

    POOLS = ("norm-mean", "mean", "cls")

    def __init__(self, dim: int = 8, width: int = 16, patch: int = 4, pool: str = "norm-mean"):
        super().__init__()
        if pool not in self.POOLS:
            raise ValueError(f"unknown pool {pool!r}; choose one of {self.POOLS}")
        self.pool = pool
        self.patch = nn.Conv2d(3, width, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, width))
        self.tokens = nn.Identity()
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)  # (B, N, C)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], dim=1)
        t = self.tokens(t)
        if self.pool == "norm-mean":
            pooled = self.norm(t).mean(1)
        else:
            pooled = self.norm(t.mean(1) if self.pool == "mean" else t[:, 0])
        return F.normalize(self.proj(pooled), dim=1)


class TinyViT(nn.Module):
    """A class-token vision transformer: patches -> [class token, registers, patch tokens] +
    position embedding -> `blocks.0` .. `blocks.{depth-1}` (nn.TransformerEncoderLayer, each
    output (B, N, C): the explained layers) -> LayerNorm -> class token -> Linear -> L2.

    Any square input whose side is a multiple of `patch` works: the position embedding is a
    grid resized to the patch grid (so 28 px items and 56 px composites both fit)."""

    def __init__(self, dim: int = 8, width: int = 16, depth: int = 2, heads: int = 2,
                 patch: int = 4, registers: int = 0, in_channels: int = 3, grid: int = 7):
        super().__init__()
        self.patch = nn.Conv2d(in_channels, width, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, width))
        self.registers = nn.Parameter(torch.randn(1, registers, width))
        self.pos = nn.Parameter(0.5 * torch.randn(1, width, grid, grid))
        self.blocks = nn.Sequential(*(
            nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.0, batch_first=True,
                                       norm_first=True, activation="gelu")
            for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x)
        t = t + F.interpolate(self.pos, size=t.shape[2:], mode="bilinear", align_corners=False)
        t = t.flatten(2).transpose(1, 2)  # (B, N, C)
        prefix = torch.cat([self.cls, self.registers], dim=1).expand(len(t), -1, -1)
        t = self.blocks(torch.cat([prefix, t], dim=1))
        return F.normalize(self.proj(self.norm(t)[:, 0]), dim=1)


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Give BatchNorm layers non-trivial statistics so that tests exercise them."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert m.running_mean is not None and m.running_var is not None  # tracked
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen) * 0.1)


def tiny_cnn(head: str = "gap") -> nn.Module:
    """Factory for the CLI: `--model simexplain.toy:tiny_cnn --layer features`."""
    torch.manual_seed(0)
    return HeadModel(head=head, dim=32, channels=16, depth=3, grid=28).eval()


def tiny_vit(depth: int = 2, registers: int = 0, in_channels: int = 3) -> nn.Module:
    """Factory for the CLI: `--model simexplain.toy:tiny_vit --layer blocks.0` (one block
    before the end: at the last block only the class token is read; `--size 28` gives a 7x7
    patch grid)."""
    torch.manual_seed(0)
    return TinyViT(dim=32, width=32, depth=depth, heads=4, registers=registers,
                   in_channels=in_channels).eval()



def toy_explainer(head: str = "gap", similarity: str = "cosine", size: int = 32,
                  seed: int = 0, keep_aspect: bool = False, model_name: str = "toy",
                  **model: object) -> Explainer:
    """An `Explainer` over a seeded `HeadModel` explained at `features`, with inputs resized
    to size x size (or the short side, with `keep_aspect`); `model` goes to HeadModel (dim,
    channels, depth, normalize, ...). The toy of the tests, benchmarks and examples."""
    from .explainer import Explainer
    from .images import Preprocess
    torch.manual_seed(seed)
    net = HeadModel(head, **model).eval()  # type: ignore[arg-type]
    return Explainer(net, "features", similarity=similarity, model_name=model_name,
                     transform=Preprocess(size=(size, size), keep_aspect=keep_aspect))
