"""A small class-token Vision Transformer for Fashion-MNIST metric learning (`fmnist-vit`),
trained here (`simexplain train fmnist --head vit`), weights committed in half precision.

`FashionViT` maps a normalised gray 28x28 image (B, 1, 28, 28) to a unit-norm embedding:
4x4 patches -> 7x7 = 49 patch tokens (a linear patch embedding) after a learned class token,
plus learned position embeddings -> ``blocks.0`` ... ``blocks.{depth-1}`` (standard pre-norm
`nn.TransformerEncoderLayer`s with GELU, `nn.MultiheadAttention` inside) -> final LayerNorm
``norm`` -> the class token -> ``embed`` (linear, no bias) -> L2 normalisation.

The explained layer is the output of the block before the last (``blocks.{depth-2}``, a
(B, 50, C) token tensor: the class token then the 7x7 patches in row-major order): after the
last block only the class token is read (its patch tokens never reach the embedding).
The position embeddings fix the grid, so inputs are squashed to exactly 28x28.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelError
from ..images import Preprocess
from .fmnist import FMNIST_MEAN, FMNIST_STD, WEIGHTS_DIR, float_state, load_checkpoint

NAME = "fmnist-vit"
HEAD = "vit"  # `simexplain train fmnist --head vit`
WEIGHTS = WEIGHTS_DIR / f"{NAME}.pt"
SIZE = 28
PATCH = 4
DEPTH = 4
WIDTH = 64
HEADS = 4
MLP = 128
# FashionViT's constructor arguments, as stored in a checkpoint
CONFIG_KEYS = ("embedding_dim", "width", "depth", "heads", "mlp")
# The same normalisation as fmnist-gap/gmp; photos are squashed to the 28x28 (7x7 grid) it was
# trained on (other square sizes work with resized position embeddings, `FashionViT.tokens`).
VIT_PREPROCESS = Preprocess(size=(SIZE, SIZE), mean=(FMNIST_MEAN,), std=(FMNIST_STD,),
                            grayscale=True, keep_aspect=False)


def explained_layer(depth: int = DEPTH) -> str:
    """The block one before the last: at the last one only the class token is read."""
    return f"blocks.{depth - 2}"


class FashionViT(nn.Module):
    """Patch embedding + class token + position embeddings, pre-norm transformer blocks,
    final LayerNorm, class token -> linear -> L2."""

    def __init__(self, embedding_dim: int = 64, width: int = WIDTH, depth: int = DEPTH,
                 heads: int = HEADS, mlp: int = MLP):
        super().__init__()
        if depth < 2:
            raise ModelError("FashionViT needs at least 2 blocks (one explained, one after it)")
        self.embedding_dim = embedding_dim
        self.depth = depth
        self.grid = SIZE // PATCH
        # a linear map of each non-overlapping 4x4 patch, written as a strided conv
        self.patch_embed = nn.Conv2d(1, width, PATCH, stride=PATCH)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + self.grid ** 2, width) * 0.02)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, dim_feedforward=mlp, dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        # no bias: the whole embedding comes from the tokens, as in FashionNet
        self.embed = nn.Linear(width, embedding_dim, bias=False)

    @property
    def config(self) -> dict[str, int]:
        """The constructor's arguments (stored in checkpoints; `load_fmnist_vit` reads them)."""
        block = self.blocks[0]
        assert isinstance(block, nn.TransformerEncoderLayer)
        return {"embedding_dim": self.embedding_dim, "width": self.embed.in_features,
                "depth": self.depth, "heads": block.self_attn.num_heads,
                "mlp": block.linear1.out_features}

    @property
    def explained_layer(self) -> str:
        return explained_layer(self.depth)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, 28, 28) -> (B, 1 + 49, C): class token, then patches row by row. Other
        sizes (a 56x56 composite of four items) get the 7x7 position embeddings bilinearly
        resized to their grid, as ViTs are usually run off their training size."""
        patches = self.patch_embed(x)  # (B, C, H/4, W/4)
        grid = tuple(patches.shape[-2:])
        position: torch.Tensor = self.pos_embed
        if grid != (self.grid, self.grid):
            cls_pos, patch_pos = position[:, :1], position[:, 1:]
            patch_pos = patch_pos.transpose(1, 2).reshape(1, -1, self.grid, self.grid)
            patch_pos = F.interpolate(patch_pos, size=grid, mode="bilinear", align_corners=False)
            position = torch.cat([cls_pos, patch_pos.flatten(2).transpose(1, 2)], dim=1)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, patches.flatten(2).transpose(1, 2)], dim=1) + position

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 1:
            raise ModelError(
                f"FashionViT expects gray images of shape (B, 1, H, W), got {tuple(x.shape)}")
        if x.shape[-2] % PATCH or x.shape[-1] % PATCH:
            raise ModelError(f"FashionViT needs image sides that are multiples of {PATCH} px "
                             f"(4x4 patches), got {x.shape[-2]}x{x.shape[-1]}")
        h = self.tokens(x)
        for block in self.blocks:
            h = block(h)
        return F.normalize(self.embed(self.norm(h)[:, 0]), dim=1)


def load_fmnist_vit(path: str | Path | None = None) -> FashionViT:
    """The trained FashionViT (the committed weights by default), in eval mode."""
    path = Path(path) if path is not None else WEIGHTS
    checkpoint = load_checkpoint(path)
    if checkpoint.get("head") != HEAD:
        raise ModelError(f"{path}: holds a {checkpoint.get('head')!r} model, not a ViT; train "
                         f"one with `simexplain train fmnist --head vit --out {path}`")
    config = {key: int(checkpoint[key]) for key in CONFIG_KEYS if key in checkpoint}
    model = FashionViT(**config)
    try:
        model.load_state_dict(float_state(checkpoint["state_dict"]))
    except RuntimeError as exc:
        raise ModelError(f"{path}: weights do not fit FashionViT ({exc})") from None
    return model.eval()
