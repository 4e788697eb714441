"""Frozen attention, norms and gates (frozen.py): the same values as torch's own calls, no
derivative through what is frozen, and transformer heads that decompose exactly, checked against
each model's own forward pass (torch's fused fast paths included)."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.func import jvp

from simexplain import Explainer
from simexplain.errors import NoSpatialMap
from simexplain.frozen import FreezeScales

torch.set_grad_enabled(True)


def _frozen(fn, *args):
    with FreezeScales():
        return fn(*args)


# -- values: frozen calls compute what torch computes -----------------------------------------

@pytest.mark.parametrize("mask", ["none", "bool", "float", "causal", "gqa"])
def test_attention_values_equal_torch(mask):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 5, 8, generator=gen) for _ in range(3))
    kwargs = {}
    if mask == "bool":
        kwargs["attn_mask"] = torch.rand(5, 5, generator=gen) > 0.3
        kwargs["attn_mask"][:, 0] = True  # every query sees something
    elif mask == "float":
        kwargs["attn_mask"] = torch.randn(2, 1, 5, 5, generator=gen)
    elif mask == "causal":
        kwargs["is_causal"] = True
    elif mask == "gqa":
        k, v = k[:, :2], v[:, :2]
        kwargs["enable_gqa"] = True
    kwargs["scale"] = 0.3 if mask == "float" else None
    expected = F.scaled_dot_product_attention(q, k, v, **kwargs)
    got = _frozen(lambda: F.scaled_dot_product_attention(q, k, v, **kwargs))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights", [True, False])
@pytest.mark.parametrize("padding", [False, True])
def test_multi_head_attention_values_equal_torch(batch_first, need_weights, padding):
    torch.manual_seed(0)
    attention = nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    x = torch.randn(3, 7, 16) if batch_first else torch.randn(7, 3, 16)
    pad = None
    if padding:
        pad = torch.zeros(3, 7, dtype=torch.bool)
        pad[0, -2:] = True
    with torch.no_grad():
        expected, expected_w = attention(x, x, x, need_weights=need_weights,
                                         key_padding_mask=pad)
        got, got_w = _frozen(lambda: attention(x, x, x, need_weights=need_weights,
                                               key_padding_mask=pad))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    if need_weights:
        torch.testing.assert_close(got_w, expected_w, rtol=1e-5, atol=1e-6)
    else:
        assert got_w is None and expected_w is None


@pytest.mark.parametrize("name", ["gelu", "gelu-tanh", "silu", "mish", "hardswish", "glu",
                                  "rms_norm", "group_norm", "tanh", "erf", "quick-gelu",
                                  "gelu-by-hand"])
def test_gates_and_norms_keep_their_values(name):
    x = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(1)) * 2
    x[0, 0, 0] = 0.0  # the rescaled tanh/erf at exactly zero
    weight = torch.rand(8) + 0.5
    group_weight, group_bias = torch.rand(6) + 0.5, torch.randn(6)
    calls = {
        "gelu": lambda t: F.gelu(t), "gelu-tanh": lambda t: F.gelu(t, approximate="tanh"),
        "silu": F.silu, "mish": F.mish, "hardswish": F.hardswish, "glu": F.glu,
        "rms_norm": lambda t: F.rms_norm(t, (8,), weight, 1e-6),
        "group_norm": lambda t: F.group_norm(t, 2, group_weight, group_bias),
        "tanh": torch.tanh, "erf": torch.erf,
        "quick-gelu": lambda t: t * torch.sigmoid(1.702 * t),
        "gelu-by-hand": lambda t: 0.5 * t * (1.0 + torch.tanh(
            math.sqrt(2.0 / math.pi) * (t + 0.044715 * torch.pow(t, 3.0)))),
    }
    fn = calls[name]
    torch.testing.assert_close(_frozen(fn, x), fn(x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["gelu", "silu", "quick-gelu", "gelu-by-hand", "tanh"])
def test_a_frozen_gate_is_linear_in_its_input(name):
    """With the gate frozen, f(x) = J x exactly (degree one): the tangent along x itself
    gives the value back; a plain derivative would not (GELU's is not x * Phi(x))."""
    calls = {
        "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh,
        "quick-gelu": lambda t: t * torch.sigmoid(1.702 * t),
        "gelu-by-hand": lambda t: 0.5 * t * (1.0 + torch.tanh(
            math.sqrt(2.0 / math.pi) * (t + 0.044715 * torch.pow(t, 3.0)))),
    }
    fn = calls[name]
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(2)) * 2
    value, tangent = jvp(lambda t: _frozen(fn, t), (x,), (x,))
    torch.testing.assert_close(tangent, value, rtol=1e-5, atol=1e-6)
    _, plain = jvp(fn, (x,), (x,))
    assert (plain - value).abs().max() > 1e-2


def test_frozen_attention_carries_no_derivative_through_its_weights():
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 4, 8, generator=gen) for _ in range(3))

    def attend(q_, k_, v_):
        return _frozen(lambda: F.scaled_dot_product_attention(q_, k_, v_))
    zeros = torch.zeros_like(q)
    _, along_qk = jvp(attend, (q, k, v), (torch.randn_like(q), torch.randn_like(k), zeros))
    assert float(along_qk.abs().max()) == 0.0
    out, along_v = jvp(attend, (q, k, v), (zeros, zeros, v))
    torch.testing.assert_close(along_v, out, rtol=1e-5, atol=1e-6)


def test_a_sigmoid_on_its_own_stays_differentiable():
    """Only a sigmoid that gates something is frozen: alone it is a nonlinearity (first
    order), not a constant."""
    x = torch.randn(6, generator=torch.Generator().manual_seed(4))
    _, tangent = jvp(lambda t: _frozen(torch.sigmoid, t), (x,), (torch.ones_like(x),))
    torch.testing.assert_close(tangent, torch.sigmoid(x) * (1 - torch.sigmoid(x)))


# -- transformer heads decompose exactly ------------------------------------------------------

class TorchViT(nn.Module):
    """A class-token ViT from torch's own nn.TransformerEncoderLayer (nn.MultiheadAttention,
    fused fast path in eval): blocks.i output (B, 1 + 16, C)."""

    def __init__(self, depth=3, width=32, heads=4, activation="gelu", norm_first=True):
        super().__init__()
        self.patch = nn.Conv2d(3, width, 4, stride=4)
        self.cls = nn.Parameter(torch.randn(1, 1, width))
        self.pos = nn.Parameter(torch.randn(1, 17, width) * 0.1)
        self.blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(width, heads, 2 * width, dropout=0.1,
                                       activation=activation, batch_first=True,
                                       norm_first=norm_first) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, 16)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(t), -1, -1), t], dim=1) + self.pos
        for block in self.blocks:
            t = block(t)
        return F.normalize(self.proj(self.norm(t)[:, 0]), dim=1)


class HandWrittenViT(nn.Module):
    """The forms Hugging Face models write by hand: eager attention (matmul, softmax),
    quick-GELU, RMSNorm, layer scale, a tanh pooler on the class token."""

    def __init__(self, depth=3, width=32, heads=4, registers=2):
        super().__init__()
        self.heads, self.registers = heads, registers
        self.patch = nn.Conv2d(3, width, 4, stride=4)
        self.prefix = nn.Parameter(torch.randn(1, 1 + registers, width))
        self.blocks = nn.ModuleList(_HandBlock(width, heads) for _ in range(depth))
        self.norm = nn.RMSNorm(width)
        self.pooler = nn.Linear(width, 24)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.prefix.expand(len(t), -1, -1), t], dim=1)
        for block in self.blocks:
            t = block(t)
        return torch.tanh(self.pooler(self.norm(t)[:, 0]))


class _HandBlock(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv, self.out = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, 2 * width), nn.Linear(2 * width, width)
        self.scale = nn.Parameter(torch.full((width,), 0.5))

    def forward(self, t):
        b, n, c = t.shape
        q, k, v = self.qkv(self.norm1(t)).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        weights = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
        weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(q.dtype)
        t = t + self.scale * self.out(torch.matmul(weights, v).transpose(1, 2).reshape(b, n, c))
        h = self.fc1(self.norm2(t))
        return t + self.fc2(h * torch.sigmoid(1.702 * h))


def _pair(seed=0, size=16):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, size, size, generator=gen), torch.randn(1, 3, size, size,
                                                                      generator=gen)


MODELS = {
    "torch-gelu-prenorm": lambda: TorchViT(),
    "torch-relu-postnorm": lambda: TorchViT(activation="relu", norm_first=False),
    "hand-written": lambda: HandWrittenViT(),
}


def _explained(name: str, blocks_before_end: int) -> tuple[nn.Module, Explainer]:
    """Model `name` (seeded) and an Explainer of the output of the block that many blocks
    before the end (0: the last block)."""
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    layer = f"blocks.{len(model.blocks) - 1 - blocks_before_end}"
    return model, Explainer(model, layer, similarity="cosine")


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("blocks_before_end", [1, 2])
@pytest.mark.parametrize("strategy", ["auto", "batched", "forward", "reverse", "tangents"])
def test_transformer_heads_are_exact(name, blocks_before_end, strategy):
    model, explainer = _explained(name, blocks_before_end)
    a, b = _pair()
    x = torch.cat([a, b])
    c = explainer.stream_a.contributions(x, strategy)
    with torch.no_grad():  # the model's own forward: fused fast paths, no mode active
        expected = model(x)
    total = c.positions.sum(1) + c.tokens.sum(1)
    relative = ((total - expected).norm(dim=1) / expected.norm(dim=1)).max()
    assert float(relative) <= 1e-4
    assert c.tokens.shape[1] == (3 if name == "hand-written" else 1)
    assert bool(c.spatial.all())


@pytest.mark.parametrize("name", list(MODELS))
def test_one_block_deep_the_maps_are_spatial_and_complete(name):
    model, explainer = _explained(name, 1)
    a, b = _pair(seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exact, spatial: no warning
        result = explainer.explain(a, b)
    with torch.no_grad():
        expected = float(F.cosine_similarity(model(a), model(b)))
    assert result.score == pytest.approx(expected, abs=1e-6)
    overall = result.overall_a
    assert overall.shape == (4, 4)
    assert float(overall.std()) > 1e-3 * abs(float(overall.mean()))  # not flat
    assert float(overall.sum()) + result.token_share_a == pytest.approx(expected, abs=1e-5)
    assert float(result.overall_b.sum()) + result.token_share_b == pytest.approx(expected,
                                                                                abs=1e-5)
    assert result.residual <= 1e-4 * abs(expected)
    summary = result.to_dict()
    assert summary["spatial_a"] and len(summary["tokens_a"]) == result.tokens_a.numel()
    # point, region maps and patterns run on the grid
    assert result.point_map("a", (5, 5)).shape == (4, 4)
    assert result.region_map("a", (0, 0, 8, 8), kind="contribution").shape == (4, 4)
    assert result.patterns(2)


@pytest.mark.parametrize("name", list(MODELS))
def test_at_the_last_block_the_result_says_there_is_no_spatial_map(name):
    _, explainer = _explained(name, 0)
    a, b = _pair(seed=2)
    with pytest.warns(NoSpatialMap, match="one block before the end"):
        result = explainer.explain(a, b)
    assert not result.a.spatial and not result.b.spatial
    assert result.to_dict()["spatial_a"] is False
    # still exact: the class token carries everything but the spread constant term
    assert result.residual <= 1e-4 * abs(result.score)
