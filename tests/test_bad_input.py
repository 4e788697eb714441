"""Bad input gives a clear simexplain error, never a traceback from deep inside torch."""

import numpy as np
import pytest
import torch
from PIL import Image

from simexplain import Explainer, ImageError, LayerError, ModelError, SimexplainError
from simexplain.toy import HeadModel
from simexplain.toy import toy_explainer


@pytest.fixture(scope="module")
def explainer():
    return toy_explainer(similarity="cosine", size=32)


def photo(mode="RGB", size=(40, 30)):
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    return rgb.convert(mode)


def test_unknown_layer_lists_close_matches():
    with pytest.raises(LayerError, match="close matches: features") as info:
        Explainer(HeadModel("gap"), "featurs")
    assert "featurs" in str(info.value)


def test_layer_whose_output_is_not_a_feature_map(explainer):
    bad = Explainer(HeadModel("gap").eval(), "head.2")  # the Linear layer: (B, D)
    with pytest.raises(LayerError, match=r"outputs shape \(1, 8\)"):
        bad.explain(torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32))


def test_layer_that_is_never_called():
    model = HeadModel("gap").eval()
    model.unused = torch.nn.Conv2d(3, 3, 1)
    with pytest.raises(LayerError, match="never called"):
        Explainer(model, "unused").explain(torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32))


def test_missing_file(explainer, tmp_path):
    with pytest.raises(ImageError, match="not found"):
        explainer.explain(tmp_path / "nope.jpg", photo())


def test_non_image_file(explainer, tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image")
    with pytest.raises(ImageError, match="notes.jpg: not a readable image"):
        explainer.explain(path, photo())


def test_truncated_image_file(explainer, tmp_path):
    full = tmp_path / "full.png"
    photo(size=(200, 200)).save(full)
    cut = tmp_path / "cut.png"
    cut.write_bytes(full.read_bytes()[:300])
    with pytest.raises(ImageError, match="cut.png"):
        explainer.explain(cut, photo())


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "LA"])
def test_grayscale_and_transparent_images_are_converted(explainer, tmp_path, mode):
    path = tmp_path / f"image_{mode}.png"
    photo(mode).save(path)
    result = explainer.explain(path, photo())
    assert np.isfinite(result.score) and result.residual < 1e-4
    assert result.image("a").mode == "RGB"


@pytest.mark.parametrize("channels", [1, 4])  # a grayscale or RGBA tensor for an RGB model
def test_tensor_with_wrong_channels(explainer, channels):
    with pytest.raises(ModelError, match=rf"failed on an input of shape \(1, {channels}, 32, 32\)"):
        explainer.explain(torch.randn(1, channels, 32, 32), torch.randn(1, 3, 32, 32))


def test_tensor_with_wrong_rank(explainer):
    with pytest.raises(ImageError, match=r"expected a preprocessed tensor of shape"):
        explainer.explain(torch.randn(32, 32), torch.randn(1, 3, 32, 32))


def test_tensor_with_nan(explainer):
    a = torch.randn(1, 3, 32, 32)
    a[0, 0, 0, 0] = float("nan")
    with pytest.raises(ImageError, match="NaN"):
        explainer.explain(a, torch.randn(1, 3, 32, 32))


def test_model_returning_nan():
    class NaNModel(HeadModel):
        def forward(self, x):
            return super().forward(x) * float("nan")

    explainer = Explainer(NaNModel("gap").eval(), "features")
    with pytest.raises(ModelError, match="NaN"):
        explainer.explain(torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32))


def test_model_returning_a_feature_map_not_embeddings():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
    with pytest.raises(ModelError, match=r"embeddings of shape \(B, D\)"):
        Explainer(model, "0").explain(torch.randn(1, 3, 16, 16), torch.randn(1, 3, 16, 16))


def test_unknown_similarity():
    with pytest.raises(SimexplainError, match="unknown similarity 'cos'"):
        Explainer(HeadModel("gap"), "features", similarity="cos")


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    import simexplain.images as images
    monkeypatch.setattr(images, "MAX_PIXELS", 1000)
    path = tmp_path / "big.png"
    photo(size=(100, 100)).save(path)
    with pytest.raises(ImageError, match="exceeds the limit"):
        images.load_image(path)
