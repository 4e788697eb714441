"""The transformer baselines (attention rollout, Chefer et al.'s relevance, Grad-CAM on the last
block's tokens) and the attention capture they rest on, checked against hand computations on a
tiny ViT built from nn.TransformerEncoderLayer."""

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from simexplain import Explainer, METHODS, get_method
from simexplain.attention import trace
from simexplain.errors import NotApplicable, SimexplainError
from simexplain.images import Preprocess
from simexplain.methods import PreparedPair, applicable_methods
from simexplain.toy import TinyViT, tiny_cnn

ATTENTION_METHODS = ("attention-rollout", "chefer", "gradcam-tokens")


def vit(depth=1, registers=0, seed=0, in_channels=3):
    torch.manual_seed(seed)
    return TinyViT(dim=8, width=16, depth=depth, heads=2, patch=4, registers=registers,
                   in_channels=in_channels).eval()


def images(seed, side=16, channels=3):
    return torch.randn(1, channels, side, side, generator=torch.Generator().manual_seed(seed))


def explainer_for(model, layer=None):
    layer = layer or f"blocks.{len(model.blocks) - 1}"
    return Explainer(model, layer, transform=Preprocess(size=(16, 16)))


def manual(model, x, attention=None, tokens=None):
    """The 1-block TinyViT's forward pass written out from its weights: (embedding, per-head
    attention (B, heads, N, N), tokens entering the block). `attention` / `tokens` replace the
    computed ones (leaves to differentiate with respect to)."""
    layer = model.blocks[0]
    t = model.patch(x)
    t = t + F.interpolate(model.pos, size=t.shape[2:], mode="bilinear", align_corners=False)
    t = t.flatten(2).transpose(1, 2)
    prefix = torch.cat([model.cls, model.registers], dim=1).expand(len(t), -1, -1)
    x0 = torch.cat([prefix, t], dim=1) if tokens is None else tokens
    batch, n, width = x0.shape
    heads = layer.self_attn.num_heads
    q, k, v = F.linear(layer.norm1(x0), layer.self_attn.in_proj_weight,
                       layer.self_attn.in_proj_bias).chunk(3, dim=-1)

    def split(z):
        return z.reshape(batch, n, heads, width // heads).transpose(1, 2)
    a = torch.softmax(split(q) @ split(k).transpose(-2, -1) / math.sqrt(width // heads), dim=-1)
    if attention is not None:
        a = attention
    mixed = (a @ split(v)).transpose(1, 2).reshape(batch, n, width)
    x1 = x0 + layer.self_attn.out_proj(mixed)
    x2 = x1 + layer.linear2(F.gelu(layer.linear1(layer.norm2(x1))))
    return F.normalize(model.proj(model.norm(x2)[:, 0]), dim=1), a, x0


# -- capture -------------------------------------------------------------------------------------
def test_manual_forward_is_the_model():
    model = vit()
    with torch.no_grad():
        torch.testing.assert_close(manual(model, images(1))[0], model(images(1)))


@pytest.mark.parametrize("grad", [False, True])
def test_captured_attention_equals_the_hand_computation(grad):
    """Under no_grad in eval mode TransformerEncoderLayer could take its fused fast path
    (torch._transformer_encoder_layer_fwd), which skips Python: the capture turns it off, so
    every block is seen, and the model's output is unchanged."""
    model = vit(depth=1)
    x = images(1)
    found = trace(model, x, grad=grad)
    assert [a.block for a in found.attentions] == ["blocks.0"]
    with torch.no_grad():
        expected_e, expected_a, x0 = manual(model, x)
        plain = model(x)
    torch.testing.assert_close(found.attentions[0].weights.detach(), expected_a)
    torch.testing.assert_close(found.output.detach(), plain)
    torch.testing.assert_close(found.block_inputs["blocks.0"].detach(), x0)
    assert found.attentions[0].weights.shape == (1, 2, 17, 17)
    assert found.attentions[0].weights.requires_grad == grad


def test_every_block_is_captured_in_order_with_its_outputs():
    model = vit(depth=3)
    found = trace(model, images(1))
    assert [a.block for a in found.attentions] == ["blocks.0", "blocks.1", "blocks.2"]
    assert set(found.block_outputs) == {"blocks.0", "blocks.1", "blocks.2"}
    torch.testing.assert_close(found.last_block("input"), found.block_outputs["blocks.1"])
    assert found.last_block("output") is found.block_outputs["blocks.2"]


def test_sdpa_is_written_out_and_softmax_recorded():
    from simexplain.attention import capturing
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=gen) for _ in range(3))
    mask = torch.randn(5, 5, generator=gen)
    bool_mask = torch.rand(5, 5, generator=gen) > 0.3
    bool_mask.fill_diagonal_(True)
    for kwargs in ({}, {"attn_mask": mask}, {"attn_mask": bool_mask}, {"scale": 0.3}):
        with capturing(nn.Identity()) as found:
            out = F.scaled_dot_product_attention(q, k, v, **kwargs)
        torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, **kwargs))
        logits = q @ k.transpose(-2, -1) * kwargs.get("scale", 0.5)
        if "attn_mask" in kwargs:
            m = kwargs["attn_mask"]
            logits = logits.masked_fill(~m, float("-inf")) if m.dtype == torch.bool else logits + m
        assert len(found.attentions) == 1
        torch.testing.assert_close(found.attentions[0].weights, logits.softmax(-1))
    with capturing(nn.Identity()) as found:
        torch.softmax(q @ k.transpose(-2, -1), dim=-1)  # recorded: (B, heads, N, N), last dim
        F.softmax(q @ k.transpose(-2, -1), dim=1)  # not over the keys
        (q @ k.transpose(-2, -1)).softmax(-1)  # the Tensor method
        torch.softmax(q, dim=-1)  # not square
    assert len(found.attentions) == 2


def test_multihead_attention_callers_get_what_they_asked_for():
    from simexplain.attention import capturing
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(8, 2, batch_first=True).eval()
    x = torch.randn(1, 5, 8)
    with torch.no_grad():
        plain_out, plain_w = mha(x, x, x)
        with capturing(mha) as found:
            out, w = mha(x, x, x)
            _, none = mha(x, x, x, need_weights=False)
            _, per_head = mha(x, x, x, average_attn_weights=False)
    torch.testing.assert_close(out, plain_out)
    torch.testing.assert_close(w, plain_w)
    assert none is None
    assert len(found.attentions) == 3
    torch.testing.assert_close(found.attentions[0].weights.mean(1), plain_w)
    torch.testing.assert_close(per_head, found.attentions[2].weights)


HF_FAMILIES = {  # model class, config class, extra config: ViT, DINOv2 with registers, CLIP
    "vit": ("ViTModel", "ViTConfig", {}),
    "dinov2-registers": ("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig",
                         {"num_register_tokens": 2}),
    "clip": ("CLIPVisionModel", "CLIPVisionConfig", {}),
}


@pytest.mark.parametrize("family", sorted(HF_FAMILIES))
def test_hugging_face_eager_and_sdpa_capture_the_same_attention(family):
    import transformers
    model_name, config_name, extra = HF_FAMILIES[family]
    torch.manual_seed(0)
    models = {}
    for implementation in ("eager", "sdpa"):
        config = getattr(transformers, config_name)(
            image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2,
            num_attention_heads=2, intermediate_size=32, **extra)
        config._attn_implementation = implementation
        models[implementation] = getattr(transformers, model_name)(config).eval()
        assert models[implementation].config._attn_implementation == implementation
    models["sdpa"].load_state_dict(models["eager"].state_dict())
    x = images(3)
    with torch.no_grad():
        reference = models["eager"](pixel_values=x, output_attentions=True).attentions
    tokens = 16 + 1 + extra.get("num_register_tokens", 0)
    for implementation, model in models.items():
        found = trace(model, x)
        assert len(found.attentions) == 2, implementation
        assert re.search(r"layers?\.1$", found.attentions[-1].block), found.attentions[-1].block
        assert found.last_block("output").shape[1] == tokens
        for got, expected in zip(found.attentions, reference):
            assert got.weights.shape == (1, 2, tokens, tokens)
            torch.testing.assert_close(got.weights, expected, rtol=1e-4, atol=1e-6)


def test_transformer_encoder_fast_path_is_turned_off():
    """nn.TransformerEncoder in eval under no_grad would run its layers through the fused
    torch._transformer_encoder_layer_fwd (and nested tensors): every layer is still seen."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    encoder = nn.TransformerEncoder(layer, num_layers=3).eval()
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        plain = encoder(x)
    found = trace(encoder, x)
    assert [a.block for a in found.attentions] == ["layers.0", "layers.1", "layers.2"]
    assert found.attentions[0].weights.shape == (2, 2, 9, 9)
    torch.testing.assert_close(found.output, plain, rtol=1e-5, atol=1e-5)


class HFEmbedder(nn.Module):
    """A Hugging Face ViT as an embedding model: the class token, L2-normalised."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, x):
        return F.normalize(self.vit(pixel_values=x).last_hidden_state[:, 0], dim=1)


def test_the_methods_agree_on_hugging_face_eager_and_sdpa():
    import transformers
    torch.manual_seed(0)
    explained = {}
    state = None
    for implementation in ("eager", "sdpa"):
        config = transformers.ViTConfig(image_size=16, patch_size=4, hidden_size=16,
                                        num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=32)
        config._attn_implementation = implementation
        vit = transformers.ViTModel(config, add_pooling_layer=False).eval()
        state = state or vit.state_dict()
        vit.load_state_dict(state)
        model = HFEmbedder(vit).eval()
        found = trace(model, images(1))
        layer = found.attentions[-1].block  # the last block (its output tokens)
        explained[implementation] = Explainer(model, layer, transform=Preprocess(size=(16, 16)))
    for method in ATTENTION_METHODS:
        eager = explained["eager"].saliency(images(1), images(2), method)
        sdpa = explained["sdpa"].saliency(images(1), images(2), method)
        assert eager[0].shape == (4, 4)
        for e, s in zip(eager, sdpa):
            torch.testing.assert_close(e, s, rtol=1e-3, atol=1e-6)
        assert float(eager[1].max()) > 0, method


# -- the methods ----------------------------------------------------------------------------------
def test_rollout_of_one_block_is_the_hand_formula():
    """One block: (mean over heads of A + I), rows normalised (they sum to 2): the class
    token's row over the patches is half the mean attention to them."""
    model = vit(depth=1)
    with torch.no_grad():
        _, a, _ = manual(model, images(1))
    map_a, _ = get_method("attention-rollout").attribute(explainer_for(model), images(1),
                                                         images(2))
    expected = (a[0].mean(0)[0, 1:] / 2).reshape(4, 4)
    torch.testing.assert_close(map_a, expected, rtol=1e-5, atol=1e-7)


def test_rollout_multiplies_blocks_from_first_to_last_and_ignores_the_partner():
    model = vit(depth=2)
    explainer = explainer_for(model)
    found = trace(model, images(1))
    hats = []
    for attention in found.attentions:
        a = attention.weights[0].double().mean(0) + torch.eye(17, dtype=torch.float64)
        hats.append(a / a.sum(-1, keepdim=True))
    expected = (hats[1] @ hats[0])[0, 1:].reshape(4, 4).float()
    map_a, _ = explainer.saliency(images(1), images(2), "attention-rollout")
    torch.testing.assert_close(map_a, expected)
    other, _ = explainer.saliency(images(1), images(5), "attention-rollout")
    torch.testing.assert_close(other, map_a)  # input-only: b does not matter


def test_chefer_of_one_block_is_the_hand_formula():
    """R = I + mean_h ReLU(ds/dA * A) I; s = cos(e_a, e_b) with e_b fixed."""
    model = vit(depth=1)
    with torch.no_grad():
        _, a, _ = manual(model, images(1))
        e_b = model(images(2))
    leaf = a.clone().requires_grad_(True)
    e_a = manual(model, images(1), attention=leaf)[0]
    grad, = torch.autograd.grad(F.cosine_similarity(e_a, e_b)[0], leaf)
    expected = torch.relu(grad * a)[0].mean(0)[0, 1:].reshape(4, 4)
    map_a, map_b = get_method("chefer").attribute(explainer_for(model), images(1), images(2))
    torch.testing.assert_close(map_a, expected, rtol=1e-4, atol=1e-8)
    assert map_b.shape == (4, 4) and float(map_b.min()) >= 0
    # unlike rollout it depends on the partner
    other, _ = explainer_for(model).saliency(images(1), images(5), "chefer")
    assert not torch.allclose(other, map_a)


def test_gradcam_on_the_last_blocks_tokens_is_the_hand_computation():
    model = vit(depth=1)
    with torch.no_grad():
        x0 = manual(model, images(1))[2]
        e_b = model(images(2))
    leaf = x0.clone().requires_grad_(True)
    grad, = torch.autograd.grad(
        F.cosine_similarity(manual(model, images(1), tokens=leaf)[0], e_b)[0], leaf)
    alpha = grad[0, 1:].mean(0)
    expected = torch.relu((x0[0, 1:] * alpha).sum(-1)).reshape(4, 4)
    explainer = explainer_for(model)
    map_a, _ = explainer.saliency(images(1), images(2), "gradcam-tokens")
    torch.testing.assert_close(map_a, expected, rtol=1e-4, atol=1e-7)
    assert float(map_a.max()) > 0
    # the tokens the last block outputs: under a class-token head their gradient is 0
    out_a, out_b = get_method("gradcam-tokens", tokens="output").attribute(explainer, images(1),
                                                                         images(2))
    assert float(out_a.abs().max()) == 0 and float(out_b.abs().max()) == 0
    with pytest.raises(SimexplainError, match="'input' or 'output'"):
        get_method("gradcam-tokens", tokens="middle")


@pytest.mark.parametrize("registers", [0, 2])
@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_maps_cover_the_patch_grid(method, registers):
    model = vit(depth=2, registers=registers)
    explainer = explainer_for(model, layer="blocks.0")  # any token layer gives the grid
    for side in (16, 28):
        map_a, map_b = explainer.saliency(images(1, side), images(2, side), method)
        assert map_a.shape == map_b.shape == (side // 4, side // 4)
        assert torch.isfinite(map_a).all() and float(map_a.min()) >= 0
        if not METHODS[method].signed:
            assert float(map_b.min()) >= 0


def test_registry_and_prepared_pair_sharing():
    for name in ATTENTION_METHODS:
        assert name in METHODS and METHODS[name].needs_attention
    assert METHODS["chefer"].needs_gradients and METHODS["gradcam-tokens"].needs_gradients
    assert not METHODS["attention-rollout"].needs_gradients
    explainer = explainer_for(vit(depth=2))
    pair = PreparedPair.of(explainer, images(1), images(2))
    get_method("chefer").attribute(explainer, pair)
    cached = set(pair.cache)
    get_method("gradcam-tokens").attribute(explainer, pair)  # the same gradients
    assert set(pair.cache) == cached
    # the cache keeps no autograd graph
    for traced in pair.cache[("attention", True)].values():
        assert all(a.weights.grad_fn is None for a in traced.trace.attentions)


def test_a_cnn_is_a_clear_error_and_is_left_out():
    cnn = Explainer(tiny_cnn(), "features", transform=Preprocess(size=(28, 28)))
    a, b = images(1, 28), images(2, 28)
    for name in ATTENTION_METHODS:
        with pytest.raises(NotApplicable, match="no self-attention"):
            cnn.saliency(a, b, name)
        assert not get_method(name).applies(cnn, a, b)
    assert get_method("gradcam").applies(cnn, a, b)
    names = list(METHODS)
    assert applicable_methods(cnn, names, a, b) == [
        n for n in names if n not in ATTENTION_METHODS]
    vit_explainer = explainer_for(vit())
    assert applicable_methods(vit_explainer, names, images(1), images(2)) == names


def test_a_transformer_without_class_token_is_a_clear_error():
    class MeanPooled(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(3, 16, 4, stride=4)
            self.blocks = nn.Sequential(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0,
                                                                   batch_first=True))
            self.proj = nn.Linear(16, 8)

        def forward(self, x):
            t = self.blocks(self.patch(x).flatten(2).transpose(1, 2))
            return F.normalize(self.proj(t.mean(1)), dim=1)
    torch.manual_seed(0)
    explainer = Explainer(MeanPooled().eval(), "blocks.0", transform=Preprocess(size=(16, 16)))
    with pytest.raises(NotApplicable, match="no class token"):
        explainer.saliency(images(1), images(2), "attention-rollout")


def test_explaining_a_non_token_layer_is_a_clear_error():
    model = vit(depth=1)
    explainer = Explainer(model, "patch", transform=Preprocess(size=(16, 16)))  # (B, C, 4, 4)
    with pytest.raises(NotApplicable, match="explain a token layer"):
        explainer.saliency(images(1), images(2), "chefer")


@pytest.mark.parametrize("method", ATTENTION_METHODS)
def test_threads_sharing_a_model_get_the_attention_maps_each_gets_alone(method):
    """The attention capture's block hooks act in their own thread only: two threads whose
    forward passes meet inside the second block (a barrier) get the maps of their own pair."""
    import threading
    from concurrent.futures import ThreadPoolExecutor
    model = vit(depth=2)
    explainer = explainer_for(model)
    pairs = [(images(30 + i), images(40 + i)) for i in range(2)]
    alone = [explainer.saliency(a, b, method) for a, b in pairs]
    barrier = threading.Barrier(2, timeout=30)
    met = []
    handle = model.blocks[1].register_forward_pre_hook(
        lambda *_: met.append(barrier.wait()))
    try:
        with ThreadPoolExecutor(2) as pool:
            together = [f.result() for f in
                        [pool.submit(explainer.saliency, a, b, method) for a, b in pairs]]
    finally:
        handle.remove()
    assert len(met) >= 4  # every pass of the two threads met the other's
    for got, expected in zip(together, alone):
        for g, e in zip(got, expected, strict=True):
            assert torch.allclose(g, e, atol=1e-6, rtol=0)
