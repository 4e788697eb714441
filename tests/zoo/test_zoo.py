"""Every zoo model loads offline, has its documented size, and decomposes exactly."""

import pytest
import torch

from simexplain import SimexplainError, zoo

EXPECTED = {  # name: (embedding size, grid at the default input size)
    "efficientnet-lite0": (1280, (7, 7)),
    "facenet": (512, (3, 3)),
    "fmnist-gap": (64, (7, 7)),
    "fmnist-gmp": (64, (7, 7)),
    "fmnist-sketch": (64, (7, 7)),  # two streams: sketch (a) and item (b)
    "fmnist-vit": (64, (7, 7)),  # 7x7 patch tokens after a class token
}


def test_the_zoo_lists_every_model():
    assert zoo.list() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_model_loads_and_decomposes_exactly(name):
    explainer = zoo.load(name)
    spec = zoo.entry(name)
    size = spec.preprocess.size
    channels = 1 if spec.preprocess.grayscale else 3
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(1, channels, *size, generator=gen)
    b = torch.randn(1, channels, *size, generator=gen)
    dim, grid = EXPECTED[name]
    assert explainer.embed(a).shape == (1, dim)
    result = explainer.explain(a, b)
    assert result.a.grid == grid
    assert result.residual <= 1e-4 * max(abs(result.score), 1e-3)
    with torch.no_grad():
        e_a, e_b = zoo.model(name)(a)[0], zoo.model(name, "b")(b)[0]
    expected = float(torch.nn.functional.cosine_similarity(e_a, e_b, dim=0))
    assert result.score == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_larger_input_gives_a_finer_grid():
    explainer = zoo.load("facenet", size=224)
    x = torch.rand(1, 3, 224, 224)
    assert explainer.contributions(x).grid == (5, 5)


def test_unknown_name_lists_the_zoo():
    with pytest.raises(SimexplainError, match="the zoo has: efficientnet-lite0"):
        zoo.load("resnet50")


def test_efficientnet_still_classifies_a_cat():
    """The weights are the real ImageNet ones: the cat photo's top class is a cat."""
    from simexplain.datasets import skimage_photos
    model = zoo.model("efficientnet-lite0")
    x = zoo.entry("efficientnet-lite0").preprocess(skimage_photos(["chelsea"])["chelsea"])[None]
    with torch.no_grad():
        top = int(model.classify(x).argmax())
    assert 281 <= top <= 285  # ImageNet's domestic cat classes
