"""Class-token heads of one attention, explained by one packed replay (token_packing.py): equal
to the reference path (one tangent per position through the whole model), whichever token the
head reads; the check that sends a misread head to the batched path; the heads the packing
does not fit."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from simexplain import token_packing
from test_frozen import MODELS, TorchViT, _explained, _pair


def _same(got, reference) -> None:
    scale = max(float(t.abs().max()) for t in (reference.positions, reference.tokens)
                if t is not None)
    assert (got.tokens is None) == (reference.tokens is None)
    for name in ("positions", "constant", "embedding") + ("tokens",) * (got.tokens is not None):
        torch.testing.assert_close(getattr(got, name), getattr(reference, name), rtol=0,
                                   atol=1e-5 * scale, msg=name)


def _batch(seed: int = 3) -> torch.Tensor:
    return torch.cat(_pair(seed=seed))


def _blocks(model: TorchViT, x: torch.Tensor) -> torch.Tensor:
    """The output of a TorchViT's last block, (B, 1 + 16, C): what the variants below read."""
    t = model.patch(x).flatten(2).transpose(1, 2)
    t = torch.cat([model.cls.expand(len(t), -1, -1), t], dim=1) + model.pos
    for block in model.blocks:
        t = block(t)
    return t


@pytest.mark.parametrize("name", list(MODELS))
def test_one_block_deep_a_class_token_head_is_packed_and_exact(name):
    model, explainer = _explained(name, 1)
    stream, x = explainer.stream_a, _batch()
    reference = stream.contributions(x, "tangents")
    packed = stream.contributions(x)
    assert packed.path == "whole head, packed"
    _same(packed, reference)
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(packed.positions.sum(1) + packed.tokens.sum(1), expected,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", list(MODELS))
def test_the_packed_path_equals_the_batched_path(name, monkeypatch):
    _, explainer = _explained(name, 1)
    stream, x = explainer.stream_a, _batch(seed=4)
    packed = stream.contributions(x, "batched")
    monkeypatch.setattr(token_packing, "plan", lambda *_: None)
    batched = stream.contributions(x, "batched")
    assert (packed.path, batched.path) == ("whole head, packed", "whole head, batched")
    _same(packed, batched)


class _TimmLikeBlock(nn.Module):
    """timm's ViT block as written there: one qkv projection split by reshape, permute and
    unbind, F.scaled_dot_product_attention, layer scale on both branches."""

    def __init__(self, width=32, heads=4):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width, eps=1e-6), nn.LayerNorm(width, eps=1e-6)
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)
        self.fc1, self.fc2 = nn.Linear(width, 4 * width), nn.Linear(4 * width, width)
        self.gamma1 = nn.Parameter(torch.rand(width) + 0.5)
        self.gamma2 = nn.Parameter(torch.rand(width) + 0.5)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        x = x + self.gamma1 * self.proj(attended)
        return x + self.gamma2 * self.fc2(F.gelu(self.fc1(self.norm2(x))))


class _TimmLikeViT(TorchViT):
    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(_TimmLikeBlock() for _ in range(3))


class _ReadBy(TorchViT):
    """The last block's output, normed, then read at one token or pooled the way `read` says
    (another token than the class token one block deep; at the last block, with no attention
    left in the head, a mean, a sum or any token)."""

    def __init__(self, read):
        super().__init__()
        self.read = read

    def forward(self, x):
        t = _blocks(self, x)
        return F.normalize(self.proj(self.read(self.norm(t))), dim=1)


@pytest.mark.parametrize("read", [lambda t: t[:, -1], lambda t: t.select(1, 5),
                                  lambda t: t[:, 7, :]], ids=["last", "select", "getitem"])
def test_any_one_token_read_by_the_head_is_packed(read):
    from simexplain import Explainer
    torch.manual_seed(0)
    model = _ReadBy(read).eval()
    stream = Explainer(model, "blocks.1", similarity="cosine").stream_a
    x = _batch(seed=5)
    packed = stream.contributions(x)
    assert packed.path == "whole head, packed"
    _same(packed, stream.contributions(x, "tangents"))


class _ReadsTwice(TorchViT):
    """Reads the class token twice (an embedding and a pooler beside it, as Hugging Face's
    ViTModel computes its pooler even when the embedding is the class token)."""

    def forward(self, x):
        t = _blocks(self, x)
        h = self.norm(t)
        return F.normalize(self.proj(h[:, 0]) + self.proj(torch.tanh(h[:, 0])), dim=1)


@pytest.mark.parametrize("model_class", [_TimmLikeViT, _ReadsTwice],
                         ids=["timm-like block", "token read twice"])
def test_other_forms_of_the_head_are_packed_and_exact(model_class):
    from simexplain import Explainer
    torch.manual_seed(0)
    stream = Explainer(model_class().eval(), "blocks.1", similarity="cosine").stream_a
    x = _batch(seed=10)
    packed = stream.contributions(x)
    assert packed.path == "whole head, packed"
    _same(packed, stream.contributions(x, "tangents"))


def test_a_hugging_face_vit_without_pooler_is_packed(tmp_path):
    import transformers

    from simexplain.zoo.hf import hf_explainer
    torch.manual_seed(0)
    config = transformers.ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                    intermediate_size=64, image_size=32, patch_size=8)
    transformers.ViTModel(config, add_pooling_layer=False).eval().save_pretrained(tmp_path)
    stream = hf_explainer(str(tmp_path)).stream_a
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(17))
    packed = stream.contributions(x)
    assert packed.path == "whole head, packed"
    _same(packed, stream.contributions(x, "tangents"))


def test_a_misread_head_is_caught_by_the_check_and_goes_on_to_the_batched_path(monkeypatch):
    """Frozen values after the attention left at their own token (a wrong plan): the parts
    still add up to the embedding, so only the weighted replay can tell."""
    _, explainer = _explained("torch-gelu-prenorm", 1)
    stream, x = explainer.stream_a, _batch(seed=6)
    reference = stream.contributions(x, "tangents")
    monkeypatch.setattr(token_packing, "_at_token", lambda value, *_: value)
    with monkeypatch.context() as unchecked:  # without the check: wrong parts, right total
        unchecked.setattr(token_packing, "_agrees", lambda *_: True)
        wrong = stream.contributions(x)
        assert wrong.path == "whole head, packed"
        assert float((wrong.positions - reference.positions).abs().max()) > \
            1e-2 * float(reference.positions.abs().max())
        torch.testing.assert_close(wrong.positions.sum(1) + wrong.tokens.sum(1),
                                   reference.embedding, rtol=1e-4, atol=1e-5)
    stream.affine_heads.clear()  # what the unchecked call learned (known heads skip the check)
    checked = stream.contributions(x)
    assert checked.path == "whole head, batched"
    _same(checked, reference)


def test_a_plan_for_the_wrong_token_is_caught(monkeypatch):
    _, explainer = _explained("hand-written", 1)
    stream, x = explainer.stream_a, _batch(seed=7)
    real_plan = token_packing.plan

    def wrong_token(*args):
        found = real_plan(*args)
        return None if found is None else dataclasses.replace(found, token=1)
    monkeypatch.setattr(token_packing, "plan", wrong_token)
    got = stream.contributions(x)
    assert got.path == "whole head, batched"
    _same(got, stream.contributions(x, "tangents"))


class _ConstantAfterTheBlock(TorchViT):
    """Adds a constant of its own (a buffer, not a bias the engine moves) after the last
    block: it leaks into every packed part, which the check sees. (One value on every channel
    would not: the norm after it takes the mean away.)"""

    def __init__(self):
        super().__init__()
        self.register_buffer("shift", torch.linspace(-1, 1, 32))

    def forward(self, x):
        t = _blocks(self, x)
        return F.normalize(self.proj(self.norm(t + self.shift)[:, 0]), dim=1)


class _MeanAfterTheBlock(TorchViT):
    def forward(self, x):
        t = _blocks(self, x)
        return F.normalize(self.proj(self.norm(t).mean(1)), dim=1)


def test_a_constant_of_the_heads_own_is_caught_by_the_check(monkeypatch):
    """Packed, the buffer is added to every position's part; the batched path puts it in the
    constant term (u_p = h(A_p) - h(0)), as the check makes the packed path do: refused."""
    from simexplain import Explainer
    torch.manual_seed(0)
    stream = Explainer(_ConstantAfterTheBlock().eval(), "blocks.1",
                       similarity="cosine").stream_a
    x = _batch(seed=9)
    got = stream.contributions(x)
    assert got.path == "whole head, batched"
    with monkeypatch.context() as unchecked:
        unchecked.setattr(token_packing, "_agrees", lambda *_: True)
        leaked = stream.contributions(x)
    assert leaked.path == "whole head, packed"
    assert float((leaked.positions - got.positions).abs().max()) > \
        1e-2 * float(got.positions.abs().max())


@pytest.mark.parametrize("model_class, layer", [
    (_MeanAfterTheBlock, "blocks.1"),  # every token read: no plan
    (TorchViT, "blocks.0"),  # two attentions: no plan
])
def test_heads_the_packing_does_not_fit_take_the_batched_path(model_class, layer):
    from simexplain import Explainer
    torch.manual_seed(0)
    stream = Explainer(model_class().eval(), layer, similarity="cosine").stream_a
    x = _batch(seed=8)
    got = stream.contributions(x)
    assert got.path == "whole head, batched"
    _same(got, stream.contributions(x, "tangents"))


# -- known by input size: later calls replay the program without recording it --------------------
def _count_tapes(monkeypatch) -> list[int]:
    from simexplain import adapters
    made, count = adapters.HeadTape, [0]

    def tape(*args, **kwargs):
        count[0] += 1
        return made(*args, **kwargs)
    monkeypatch.setattr(adapters, "HeadTape", tape)
    return count


@pytest.mark.parametrize("name", list(MODELS))
def test_a_packed_head_is_known_by_input_size_after_one_call(name, monkeypatch):
    _, explainer = _explained(name, 1)
    stream, x = explainer.stream_a, _batch(seed=11)
    tapes = _count_tapes(monkeypatch)
    first = stream.contributions(x)
    assert tapes[0] == 1 and stream.affine_heads.known_calls == 0
    for other in (x, _batch(seed=12)):  # any batch of this input size and batch size
        got = stream.contributions(other)
        assert got.path == "whole head, packed"
        _same(got, stream.contributions(other, "tangents"))
    assert tapes[0] == 1  # the packed calls do not record (nor does the reference path)
    assert stream.affine_heads.known_calls == 2
    # another batch size is another program (its reshapes hold the batch): recorded once,
    # known from then on, and the first stays known
    single = _pair(seed=13)[0]
    for _ in range(2):
        got = stream.contributions(single)
        _same(got, stream.contributions(single, "tangents"))
    assert tapes[0] == 2 and stream.affine_heads.known_calls == 3
    stream.contributions(x)
    assert tapes[0] == 2 and stream.affine_heads.known_calls == 4
    torch.testing.assert_close(stream.contributions(x).positions, first.positions, rtol=0,
                               atol=0)


def test_a_known_packed_head_follows_a_change_of_the_weights(monkeypatch):
    model, explainer = _explained("torch-gelu-prenorm", 1)
    stream, x = explainer.stream_a, _batch(seed=14)
    stream.contributions(x)
    stream.contributions(x)
    assert stream.affine_heads.known_calls == 1
    with torch.no_grad():  # in place: the tensors stay, their versions move
        model.blocks[-1].linear1.weight.mul_(1.5)
        model.norm.bias.add_(0.25)
    tapes = _count_tapes(monkeypatch)
    got = stream.contributions(x)
    assert tapes[0] == 1 and stream.affine_heads.known_calls == 1  # recorded again
    _same(got, stream.contributions(x, "tangents"))
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(got.positions.sum(1) + got.tokens.sum(1), expected, rtol=1e-4,
                               atol=1e-5)


def test_a_known_packed_head_that_disagrees_is_refused(monkeypatch):
    """A call whose replay freezes other values than the known program's (a head that
    branches on the data) is not answered by it: recorded from then on, still exact."""
    _, explainer = _explained("hand-written", 1)
    stream, x = explainer.stream_a, _batch(seed=15)
    stream.contributions(x)
    real = token_packing.record

    def one_more(*args):
        primal, marks = real(*args)
        return primal, marks + [marks[-1]]
    monkeypatch.setattr(token_packing, "record", one_more)
    tapes = _count_tapes(monkeypatch)
    got = stream.contributions(x)
    assert tapes[0] == 1 and stream.affine_heads.known_calls == 0
    monkeypatch.setattr(token_packing, "record", real)
    _same(got, stream.contributions(x, "tangents"))


def test_a_known_packed_head_is_not_checked_again_but_its_embedding_is(monkeypatch):
    """The check against the head holds for the program (made on the recorded call); a known
    call still compares its embedding with the model's own, and a model that no longer
    computes what the program says is recorded again."""
    model, explainer = _explained("torch-gelu-prenorm", 1)
    stream, x = explainer.stream_a, _batch(seed=18)
    checks = []
    real = token_packing._agrees
    monkeypatch.setattr(token_packing, "_agrees", lambda *a: checks.append(1) or real(*a))
    stream.contributions(x)
    got = stream.contributions(_batch(seed=19))
    assert len(checks) == 1 and stream.affine_heads.known_calls == 1
    _same(got, stream.contributions(_batch(seed=19), "tangents"))
    model.proj.weight = torch.nn.Parameter(model.proj.weight.detach() * 2)  # a new tensor
    again = stream.contributions(x)
    assert len(checks) == 2 and stream.affine_heads.known_calls == 1  # recorded and checked
    _same(again, stream.contributions(x, "tangents"))


# -- pooled heads: a mean of the tokens, or an attention with one query ---------------------------
POOLS = {
    "mean of the patches": lambda h: h[:, 1:].mean(1),
    "sum of every token": lambda h: h.sum(dim=1),
    "mean, keepdim": lambda h: torch.mean(h[:, 2:-3, :], dim=(1,), keepdim=True)[:, 0] * 2,
    "class token": lambda h: h[:, 0],
}


class _ProbePooled(TorchViT):
    """SigLIP's pooling head: a learned probe attends to the tokens (nn.MultiheadAttention,
    one query), then a norm and an MLP with a residual, and the one token is read."""

    def __init__(self):
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, 32))
        self.attention = nn.MultiheadAttention(32, 4, batch_first=True)
        self.pool_norm, self.fc1, self.fc2 = nn.LayerNorm(32), nn.Linear(32, 64), \
            nn.Linear(64, 32)

    def forward(self, x):
        t = _blocks(self, x)
        t = self.norm(t)
        pooled = self.attention(self.probe.expand(len(t), -1, -1), t, t)[0]
        pooled = pooled + self.fc2(F.gelu(self.fc1(self.pool_norm(pooled))))
        return F.normalize(self.proj(pooled[:, 0]), dim=1)


class _LatentPooled(TorchViT):
    """timm's attention pooling (AttentionPoolLatent): a learned latent query, keys and
    values from one projection, F.scaled_dot_product_attention (or written out: softmax, then
    the weights times the values), the heads merged."""

    def __init__(self, eager: bool = False):
        super().__init__()
        self.eager = eager
        self.latent = nn.Parameter(torch.randn(1, 1, 32))
        self.q, self.kv, self.out = nn.Linear(32, 32), nn.Linear(32, 64), nn.Linear(32, 32)

    def forward(self, x):
        t = _blocks(self, x)
        b, n, c = t.shape
        q = self.q(self.latent.expand(b, -1, -1)).reshape(b, 1, 4, 8).transpose(1, 2)
        k, v = self.kv(self.norm(t)).reshape(b, n, 2, 4, 8).permute(2, 0, 3, 1, 4).unbind(0)
        if self.eager:
            pooled = (q @ k.transpose(-2, -1) / 8 ** 0.5).softmax(dim=-1) @ v
        else:
            pooled = F.scaled_dot_product_attention(q, k, v)
        pooled = pooled.transpose(1, 2).reshape(b, 1, c)
        return F.normalize(self.proj(self.out(pooled).mean(1)), dim=1)


def _last_block(model: nn.Module):
    from simexplain import Explainer
    return Explainer(model.eval(), "blocks.2", similarity="cosine").stream_a


@pytest.mark.parametrize("pool", list(POOLS))
def test_a_head_that_pools_the_tokens_without_attention_is_packed(pool):
    torch.manual_seed(0)
    model = _ReadBy(POOLS[pool])
    stream, x = _last_block(model), _batch(seed=20)
    packed = stream.contributions(x)
    assert packed.path == "whole head, packed"
    _same(packed, stream.contributions(x, "tangents"))
    with torch.no_grad():
        expected = model(x)
    torch.testing.assert_close(packed.positions.sum(1) + packed.tokens.sum(1), expected,
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model_class", [_ProbePooled, _LatentPooled,
                                         lambda: _LatentPooled(eager=True)],
                         ids=["probe, nn.MultiheadAttention", "latent query, sdpa",
                              "latent query, softmax"])
def test_an_attention_pooling_head_of_one_query_is_packed(model_class):
    torch.manual_seed(0)
    stream, x = _last_block(model_class()), _batch(seed=21)
    packed = stream.contributions(x)
    assert packed.path == "whole head, packed"
    _same(packed, stream.contributions(x, "tangents"))
    assert float(packed.positions.abs().sum(-1).min()) > 0  # every position reaches it


def _small_hf(kind: str, attn: str):
    import transformers
    torch.manual_seed(0)
    shape = dict(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                 intermediate_size=64, image_size=32, patch_size=8, attn_implementation=attn)
    if kind == "siglip":
        return transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**shape))
    if kind == "dinov2":
        return transformers.Dinov2Model(transformers.Dinov2Config(**shape))
    return transformers.ViTModel(transformers.ViTConfig(**shape), add_pooling_layer=True)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kind, pooling", [("siglip", "auto"), ("dinov2", "mean"),
                                           ("vit", "mean")],
                         ids=["siglip pooling head", "dinov2 mean", "vit mean, pooler unused"])
def test_hugging_face_pooled_embeddings_at_their_default_layer_are_packed(kind, pooling, attn):
    """The default layer of an embedding pooled over the patches is the last block: SigLIP's
    probe attention, the mean of the patch tokens (ViT's pooler, computed from the class
    token beside it and unused, is left out of the plan)."""
    from simexplain.zoo.hf import hf_explainer
    explainer = hf_explainer(_small_hf(kind, attn).eval(), pooling=pooling)
    assert explainer.stream_a.layer_name == "blocks.2"
    stream = explainer.stream_a
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(22))
    packed = stream.contributions(x)
    assert packed.path == "whole head, packed"
    _same(packed, stream.contributions(x, "tangents"))


def test_a_pooling_head_one_block_deep_takes_the_batched_path():
    """SigLIP explained before its last block: the block's attention and the probe's (two)."""
    from simexplain.zoo.hf import hf_explainer
    stream = hf_explainer(_small_hf("siglip", "sdpa").eval(), layer="blocks.1").stream_a
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(23))
    got = stream.contributions(x)
    assert got.path == "whole head, batched"
    _same(got, stream.contributions(x, "tangents"))


@pytest.mark.parametrize("model_class, wrong", [
    (lambda: _ReadBy(POOLS["mean of the patches"]), dict(first=0)),
    (lambda: _ReadBy(POOLS["mean of the patches"]), dict(weights=(1.0,) * 16)),
    (_ProbePooled, dict(keep=False)),
], ids=["slice not followed", "mean taken as sum", "one query's axis dropped"])
def test_a_misread_pooling_is_caught(model_class, wrong, monkeypatch):
    """Wrong weights are caught by the check; a replay that fails on its shapes goes on to
    the batched path as well."""
    torch.manual_seed(0)
    stream, x = _last_block(model_class()), _batch(seed=24)
    real_plan = token_packing.plan

    def misread(*args):
        found = real_plan(*args)
        return None if found is None else dataclasses.replace(found, **wrong)
    monkeypatch.setattr(token_packing, "plan", misread)
    got = stream.contributions(x)
    assert got.path == "whole head, batched"
    _same(got, stream.contributions(x, "tangents"))


@pytest.mark.parametrize("make", [lambda: _ReadBy(POOLS["mean of the patches"]), _ProbePooled,
                                  _LatentPooled],
                         ids=["mean of the patches", "probe, nn.MultiheadAttention",
                              "latent query, sdpa"])
def test_a_pooled_head_is_known_after_one_call(make, monkeypatch):
    """A probe or latent query that the head repeats or projects for the batch is made in
    the forward pass: the known head checks the learned tensor it was made from."""
    torch.manual_seed(0)
    model = make()
    stream = _last_block(model)
    stream.contributions(_batch(seed=25))
    tapes = _count_tapes(monkeypatch)
    got = stream.contributions(_batch(seed=26))
    assert got.path == "whole head, packed"
    assert tapes[0] == 0 and stream.affine_heads.known_calls == 1
    _same(got, stream.contributions(_batch(seed=26), "tangents"))
    query = getattr(model, "probe", getattr(model, "latent", None))
    if query is not None:  # a new query: the known head no longer holds; recorded again
        with torch.no_grad():
            query.add_(0.5)
        got = stream.contributions(_batch(seed=26))
        assert tapes[0] == 1 and stream.affine_heads.known_calls == 1
        _same(got, stream.contributions(_batch(seed=26), "tangents"))


def test_a_siglip_pooling_head_is_known_after_one_call(monkeypatch):
    from simexplain.zoo.hf import hf_explainer
    stream = hf_explainer(_small_hf("siglip", "sdpa").eval()).stream_a
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(27))
    stream.contributions(x)
    tapes = _count_tapes(monkeypatch)
    got = stream.contributions(x * 0.5)
    assert got.path == "whole head, packed"
    assert tapes[0] == 0 and stream.affine_heads.known_calls == 1
    _same(got, stream.contributions(x * 0.5, "tangents"))


def test_a_saved_siglip_dual_encoder_is_explained_packed_at_its_image_features(tmp_path):
    """A whole SiglipModel folder: its vision tower, whose embedding is the model's
    get_image_features, explained at the last block through the pooling head, packed."""
    import transformers

    from simexplain.zoo.hf import hf_explainer
    torch.manual_seed(0)
    config = transformers.SiglipConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, image_size=32, patch_size=8),
        text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64))
    dual = transformers.SiglipModel(config).eval()
    dual.save_pretrained(tmp_path)
    explainer = hf_explainer(str(tmp_path))
    stream = explainer.stream_a
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(27))
    with torch.no_grad():
        features = dual.get_image_features(pixel_values=x)
    features = getattr(features, "pooler_output", features)  # transformers 5: an output
    packed = stream.contributions(x)
    assert stream.layer_name == "blocks.1" and packed.path == "whole head, packed"
    torch.testing.assert_close(packed.positions.sum(1) + packed.constant, features,
                               rtol=1e-4, atol=1e-5)
    _same(packed, stream.contributions(x, "tangents"))
