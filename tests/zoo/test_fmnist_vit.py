"""fmnist-vit: the class-token ViT trained here on Fashion-MNIST (weights committed)."""

import tomllib
import warnings
from fnmatch import fnmatch
from pathlib import Path

import pytest
import torch
from PIL import Image

import simexplain
from simexplain import zoo
from simexplain.datasets import fashion_mnist
from simexplain.errors import ModelError
from simexplain.metrics import recall_at_k
from simexplain.zoo import samples
from simexplain.zoo.fmnist import FMNIST_PREPROCESS, weights_path
from simexplain.zoo.vit import (
    DEPTH, NAME, VIT_PREPROCESS, WEIGHTS, FashionViT, explained_layer, load_fmnist_vit)

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


@pytest.fixture(scope="module")
def model():
    return load_fmnist_vit()


@pytest.fixture(scope="module")
def test_items():
    images, labels = fashion_mnist("test")
    x = torch.stack([VIT_PREPROCESS(Image.fromarray(image)) for image in images[:500]])
    return x, torch.as_tensor(labels[:500])


def test_zoo_entry():
    assert NAME in zoo.list()
    spec = zoo.entry(NAME)
    assert spec.layer == explained_layer() == f"blocks.{DEPTH - 2}"
    assert spec.similarity == "cosine" and spec.embedding_dim == 64 and not spec.two_stream
    # fmnist-gap's normalisation, but inputs squashed to 28x28 (the grid it was trained on)
    assert spec.preprocess.size == (28, 28) and spec.preprocess.grayscale
    assert tuple(spec.preprocess.mean) == tuple(FMNIST_PREPROCESS.mean)
    assert tuple(spec.preprocess.std) == tuple(FMNIST_PREPROCESS.std)
    assert not spec.preprocess.keep_aspect
    assert spec.sample is samples.fashion_pair
    assert isinstance(zoo.model(NAME), FashionViT) and not zoo.model(NAME).training


def test_weights_are_small_half_precision_package_data():
    assert WEIGHTS == weights_path("vit") and WEIGHTS.is_file()
    assert WEIGHTS.stat().st_size < 500_000
    package = Path(simexplain.__file__).parent
    relative = WEIGHTS.relative_to(package).as_posix()
    globs = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]["package-data"]
    assert any(fnmatch(relative, g) for g in globs["simexplain"]), relative
    checkpoint = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert checkpoint["head"] == "vit"
    assert all(v.dtype == torch.float16 for v in checkpoint["state_dict"].values()
               if v.is_floating_point())


def test_named_blocks_are_standard_transformer_layers(model):
    modules = dict(model.named_modules())
    for i in range(DEPTH):
        block = modules[f"blocks.{i}"]
        assert isinstance(block, torch.nn.TransformerEncoderLayer) and block.norm_first
        assert isinstance(block.self_attn, torch.nn.MultiheadAttention)
    assert f"blocks.{DEPTH}" not in modules
    assert sum(p.numel() for p in model.parameters()) < 250_000


@pytest.mark.parametrize("grad", [False, True])  # no_grad may take the fused fast path
def test_shapes_and_unit_norm(model, grad, run_capturing):
    x = torch.randn(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.set_grad_enabled(grad):
        embedding, tokens = run_capturing(model, x, explained_layer())
    assert tokens.shape == (3, 50, 64)  # class token + 7x7 patches, width 64
    assert embedding.shape == (3, 64)
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(3))


def test_fused_fast_path_matches_the_plain_path(model, run_capturing):
    """In eval mode under no_grad, nn.TransformerEncoderLayer may run a fused kernel."""
    x = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        fast, fast_tokens = run_capturing(model, x, explained_layer())
    plain, plain_tokens = run_capturing(model, x, explained_layer())
    torch.testing.assert_close(fast, plain.detach(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(fast_tokens, plain_tokens.detach(), atol=1e-4, rtol=1e-4)


def test_batched_equals_single(model):
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batched = model(x)
        single = torch.cat([model(x[i:i + 1]) for i in range(len(x))])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)


def test_the_class_token_is_what_the_embedding_reads(model, run_capturing):
    """The last block's patch tokens do not reach the embedding; its class token does."""
    x = torch.randn(2, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        embedding, last = run_capturing(model, x, f"blocks.{DEPTH - 1}")
        head = lambda t: torch.nn.functional.normalize(  # noqa: E731
            model.embed(model.norm(t)[:, 0]), dim=1)
        torch.testing.assert_close(head(last), embedding)
        changed = last.clone()
        changed[:, 1:] = 0
        torch.testing.assert_close(head(changed), embedding)


def test_other_sizes_resize_the_position_embeddings(model):
    """A 56x56 composite gets a 14x14 grid (position embeddings resized); 28x28 is unchanged
    (the resizing is the identity there)."""
    with torch.no_grad():
        tokens = model.tokens(torch.zeros(2, 1, 56, 56))
        assert tokens.shape == (2, 1 + 14 * 14, model.pos_embed.shape[-1])
        x = torch.randn(2, 1, 28, 28)
        patches = model.patch_embed(x).flatten(2).transpose(1, 2)
        direct = torch.cat([model.cls_token.expand(2, -1, -1), patches], 1) + model.pos_embed
        torch.testing.assert_close(model.tokens(x), direct)


def test_rejects_bad_input(model):
    with pytest.raises(ModelError, match="multiples of 4"):
        model(torch.zeros(1, 1, 28, 30))
    with pytest.raises(ModelError, match=r"\(B, 1, H, W\)"):
        model(torch.zeros(1, 3, 28, 28))
    with pytest.raises(ModelError, match="not a ViT"):
        load_fmnist_vit(weights_path("gap"))


def _class_separation(model, x, labels) -> dict[str, float]:
    """How well cosine similarity separates the classes of the items: the share of items more
    similar to their class than to the other classes on average (`closer`), the probability
    that a same-class pair is more similar than a different-class one (`auc`), Recall@1."""
    with torch.no_grad():
        e = model(x)
    sim = e @ e.T
    same = (labels[:, None] == labels[None, :]) & ~torch.eye(len(labels), dtype=torch.bool)
    other = labels[:, None] != labels[None, :]
    closer = (sim * same).sum(1) / same.sum(1) > (sim * other).sum(1) / other.sum(1)
    positives, negatives = sim[same], sim[other]
    ranks = torch.cat([positives, negatives]).argsort().argsort()[:len(positives)] + 1.0
    n_p, n_n = len(positives), len(negatives)  # Mann-Whitney U / (n_p n_n)
    auc = (ranks.sum() - n_p * (n_p + 1) / 2) / (n_p * n_n)
    return {"closer": float(closer.float().mean()), "auc": float(auc),
            "recall": float(recall_at_k(e, labels, e, labels, k=1, exclude_self=True))}


def test_trained_model_separates_classes(model, test_items):
    x, labels = test_items
    trained = _class_separation(model, x, labels)
    torch.manual_seed(0)
    untrained = _class_separation(FashionViT().eval(), x, labels)
    # On these 500 items: trained 0.996 / 0.90 / 0.71; random inits (seeds 0-2) 0.85-0.89 /
    # 0.67-0.69 / 0.44-0.47 (a random ViT's embeddings already cluster a little).
    assert trained["closer"] > 0.95 > untrained["closer"]
    assert trained["auc"] > 0.85 and trained["auc"] > untrained["auc"] + 0.1
    assert trained["recall"] > 0.65 and trained["recall"] > untrained["recall"] + 0.15


def test_explains_its_sample_pair_on_the_patch_grid(model):
    a, b = zoo.entry(NAME).sample_pair()
    explainer = zoo.load(NAME)
    with warnings.catch_warnings():  # exactness is the engine's business (test_zoo.py)
        warnings.simplefilter("ignore")
        result = explainer.explain(a, b)
    assert result.a.grid == result.b.grid == (7, 7)
    x_a, x_b = (explainer.prepare(p).tensor for p in (a, b))
    with torch.no_grad():
        expected = float(model(x_a)[0] @ model(x_b)[0])
    assert result.score == pytest.approx(expected, abs=1e-5)
    assert result.score > 0.5  # two sneakers
