"""Explainer: embeddings and pair scores equal the model's own forward pass, whatever the input
form, batching, stream or input size (the decomposition's exactness is tested in test_head.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import simexplain.explainer as explainer_module
from simexplain import Explainer
from simexplain.images import Preprocess
from simexplain.sides import pick
from simexplain.toy import HeadModel, toy_explainer


def photo(seed: int, size=(40, 52)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8))


def forward(explainer: Explainer, image: Image.Image, side: str = "a") -> torch.Tensor:
    """(D,) the model's own output for an image, preprocessed by that side's transform."""
    stream = explainer.stream(side)
    transform = pick(side, explainer.transform_a, explainer.transform_b)
    with torch.no_grad():
        return stream.model(transform(image).unsqueeze(0))[0]


def test_embed_equals_the_forward_for_paths_photos_and_tensors(tmp_path):
    explainer = toy_explainer("gem", keep_aspect=True)
    photos = [photo(0), photo(1, (64, 48)), photo(2)]  # two input shapes: two forward passes
    paths = []
    for i, image in enumerate(photos):
        paths.append(tmp_path / f"{i}.png")
        image.save(paths[-1])
    expected = torch.stack([forward(explainer, image) for image in photos])  # (3, D)
    for given in (photos, paths):
        assert torch.allclose(explainer.embed(given, batch_size=2), expected, atol=1e-5)
    batch = torch.stack([explainer.transform_a(photos[0]), explainer.transform_a(photos[2])])
    assert torch.allclose(explainer.embed(batch), expected[[0, 2]], atol=1e-5)


@pytest.mark.parametrize("similarity", ["cosine", "dot", "euclidean"])
def test_pair_score_equals_the_similarity_of_the_forward_outputs(similarity):
    explainer = toy_explainer("mlp", similarity=similarity)
    a, b = photo(3), photo(4)
    e_a, e_b = forward(explainer, a), forward(explainer, b)
    expected = {"cosine": F.cosine_similarity(e_a, e_b, dim=0),
                "dot": e_a @ e_b,
                "euclidean": ((e_a - e_b) ** 2).sum()}[similarity]
    result = explainer.explain(a, b)
    assert result.score == pytest.approx(float(expected), rel=1e-5, abs=1e-6)
    assert result.total == pytest.approx(result.score, rel=1e-4, abs=1e-5)


def test_one_batch_for_both_images_equals_two_passes(monkeypatch):
    explainer = toy_explainer("gap")
    a, b = photo(5), photo(6)
    monkeypatch.setattr(explainer_module, "CPU_PAIR_BATCH_NUMEL", 10**9)
    together = explainer.explain(a, b)
    monkeypatch.setattr(explainer_module, "CPU_PAIR_BATCH_NUMEL", 0)
    apart = explainer.explain(a, b)
    assert together.score == pytest.approx(apart.score, abs=1e-6)
    assert torch.allclose(together.a.contributions, apart.a.contributions, atol=1e-6)
    assert torch.allclose(together.b.contributions, apart.b.contributions, atol=1e-6)


def test_two_streams_run_their_own_model_and_transform():
    torch.manual_seed(1)
    model_a, model_b = HeadModel("gap").eval(), HeadModel("gmp").eval()
    explainer = Explainer(model_a, "features", model_b=model_b,
                          transform=Preprocess(size=(32, 32)),
                          transform_b=Preprocess(size=(48, 48)))
    a, b = photo(7), photo(8)
    e_a, e_b = forward(explainer, a, "a"), forward(explainer, b, "b")
    assert explainer.explain(a, b).score == pytest.approx(
        float(F.cosine_similarity(e_a, e_b, dim=0)), abs=1e-5)
    assert explainer.explain(a, b).b.input_size == (48, 48)
    assert torch.allclose(explainer.embed([b], side="b")[0], e_b, atol=1e-5)


def test_resized_explainer_keeps_the_model_and_changes_the_input():
    explainer = toy_explainer("gap", size=32)
    bigger = explainer.resized(64)
    a, b = photo(9), photo(10)
    result = bigger.explain(a, b)
    assert result.a.input_size == (64, 64) and result.a.grid == (16, 16)
    assert bigger.stream("a").model is explainer.stream("a").model
    e_a, e_b = forward(bigger, a), forward(bigger, b)
    assert result.score == pytest.approx(float(F.cosine_similarity(e_a, e_b, dim=0)), abs=1e-5)


def test_gallery_sides_keep_the_order_of_mixed_sizes():
    explainer = toy_explainer("gap", keep_aspect=True)
    query = photo(11)
    gallery = [photo(12, (32, 64)), photo(13), photo(14, (32, 64)), photo(15, (64, 32))]
    results = explainer.explain_gallery(query, gallery, batch_size=3)
    e_q = forward(explainer, query)
    for image, result in zip(gallery, results):
        expected = F.cosine_similarity(e_q, forward(explainer, image, "b"), dim=0)
        assert result.score == pytest.approx(float(expected), abs=1e-5)


class _PicksItsLinear(torch.nn.Module):
    """A head that picks one of two Linear layers by a flag: the first calls never run the
    second, whose bias the later calls add."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, padding=1),
                                            torch.nn.ReLU())
        self.first, self.second = torch.nn.Linear(16, 8), torch.nn.Linear(16, 8)
        with torch.no_grad():
            self.second.bias.fill_(0.5)
        self.use_second = False

    def forward(self, x):
        pooled = self.features(x).mean((2, 3))
        return F.normalize((self.second if self.use_second else self.first)(pooled), dim=1)


def test_a_head_that_picks_its_modules_later_stays_exact():
    """The head's additive offsets come from every module but the trunk's, including those the
    first call never ran: the bias of a Linear the head only picks later is spread as a
    constant, not lost (the maps then summed to another score, a residual of 1)."""
    model = _PicksItsLinear().eval()
    explainer = Explainer(model, "features", similarity="cosine")
    a, b = torch.randn(1, 3, 24, 24), torch.randn(1, 3, 24, 24)
    for use_second in (False, False, True, True):  # recorded, known, changed, known again
        model.use_second = use_second
        pair = explainer.explain(a, b)
        with torch.no_grad():
            score = float(model(a)[0] @ model(b)[0])
        assert pair.score == pytest.approx(score, abs=1e-6)
        assert float(pair.pairwise_flat.sum()) == pytest.approx(score, abs=1e-6)


def test_a_transformer_fed_another_aspect_ratio_gets_a_grid_of_that_aspect():
    """7x9 patches after a class token and 2 registers are 66 tokens, which is also 8x8 + 2:
    the input's aspect tells them apart, for the decomposition and for Grad-CAM."""
    from simexplain.toy import tiny_vit
    model = tiny_vit(registers=2)
    explainer = Explainer(model, "blocks.0", transform=Preprocess(size=(28, 28),
                                                                  keep_aspect=True))
    wide = Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 36, 3), np.uint8))
    square = Image.fromarray(np.random.default_rng(1).integers(0, 255, (28, 28, 3), np.uint8))
    result = explainer.explain(wide, square)
    assert (result.a.grid, result.b.grid) == ((7, 9), (7, 7))
    assert result.tokens_a.numel() == result.tokens_b.numel() == 3
    x_a = explainer.prepare(wide).tensor
    with torch.no_grad():
        e_a = model(x_a)[0]
    torch.testing.assert_close(result.a.contributions.sum(0) + result.a.tokens.sum(0), e_a,
                               rtol=1e-4, atol=1e-5)
    reference = explainer.stream_a.contributions(x_a, "tangents")
    torch.testing.assert_close(result.a.contributions, reference.positions[0], rtol=0,
                               atol=1e-5 * float(reference.positions.abs().max()))
    gradcam_a, _ = explainer.saliency(wide, square, "gradcam")
    assert tuple(gradcam_a.shape) == (7, 9)
