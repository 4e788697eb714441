import numpy as np
import pytest
import torch
from PIL import Image

from simexplain.datasets import fashion_mnist
from simexplain.errors import ModelError, SimexplainError
from simexplain.metrics import map_at_r, recall_at_k
from simexplain.zoo.fmnist import (
    EXPLAINED_LAYER, FMNIST_PREPROCESS, FashionNet, load_fmnist, weights_path)

HEADS = ["gap", "gmp"]


@pytest.fixture(scope="module")
def test_split():
    images, labels = fashion_mnist("test")
    return images[:1000], labels[:1000]


def _normalise(images: np.ndarray) -> torch.Tensor:
    return torch.stack([FMNIST_PREPROCESS(Image.fromarray(image)) for image in images])


@pytest.mark.parametrize("head", HEADS)
def test_committed_weights_load(head):
    assert weights_path(head).is_file()
    model = load_fmnist(head)
    assert isinstance(model, FashionNet) and model.head == head
    assert not model.training
    assert sum(p.numel() for p in model.parameters()) < 500_000
    pool = model.pool
    expected = torch.nn.AdaptiveAvgPool2d if head == "gap" else torch.nn.AdaptiveMaxPool2d
    assert isinstance(pool, expected)


@pytest.mark.parametrize("head", HEADS)
def test_embedding_and_feature_map_shapes(head, run_capturing):
    model = load_fmnist(head)
    torch.manual_seed(0)
    with torch.no_grad():
        single, fmap = run_capturing(model, torch.randn(3, 1, 28, 28), EXPLAINED_LAYER)
        assert single.shape == (3, 64)
        torch.testing.assert_close(single.norm(dim=1), torch.ones(3))
        assert fmap.shape == (3, model.channels, 7, 7)
        composite, fmap_wide = run_capturing(model, torch.randn(2, 1, 28, 56), EXPLAINED_LAYER)
        assert composite.shape == (2, 64)
        torch.testing.assert_close(composite.norm(dim=1), torch.ones(2))
        assert fmap_wide.shape == (2, model.channels, 7, 14)


@pytest.mark.parametrize("head", HEADS)
def test_head_uses_only_the_feature_map(head, run_capturing):
    """The embedding is a function of the `features` output alone."""
    model = load_fmnist(head)
    x = torch.randn(2, 1, 28, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        embedding, fmap = run_capturing(model, x, EXPLAINED_LAYER)
        torch.testing.assert_close(model.forward_head(fmap), embedding)
        # Changing the feature map changes the embedding (nothing bypasses it).
        assert not torch.allclose(model.forward_head(fmap.flip(-1) * 2 + 1), embedding)


def test_rejects_bad_input():
    model = load_fmnist("gap")
    with pytest.raises(ModelError, match="28x28"):
        model(torch.zeros(1, 1, 20, 28))
    with pytest.raises(ModelError, match=r"\(B, 1, H, W\)"):
        model(torch.zeros(1, 3, 28, 28))
    with pytest.raises(SimexplainError, match="head"):
        FashionNet(head="attention")


def test_missing_weights_error(tmp_path):
    with pytest.raises(ModelError, match="simexplain train fmnist"):
        load_fmnist("gap", path=tmp_path / "none.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="bad.pt"):
        load_fmnist("gap", path=bad)
    with pytest.raises(ModelError, match="gmp"):
        load_fmnist("gap", path=weights_path("gmp"))


def test_preprocess_matches_dataset_statistics(test_split):
    images, _ = test_split
    x = _normalise(images[:200])
    assert x.shape == (200, 1, 28, 28)
    assert abs(float(x.mean())) < 0.15 and 0.85 < float(x.std()) < 1.15


@pytest.mark.parametrize("head", HEADS)
def test_retrieval_quality(head, test_split):
    images, labels = test_split
    model = load_fmnist(head)
    with torch.no_grad():
        embeddings = model(_normalise(images))
    recall = recall_at_k(embeddings, labels, embeddings, labels, k=1, exclude_self=True)
    mapr = map_at_r(embeddings, labels, embeddings, labels, exclude_self=True)
    # An untrained FashionNet scores about 0.6 / 0.2 here; the trained ones about 0.9 / 0.76.
    assert recall > 0.85
    assert mapr > 0.6
