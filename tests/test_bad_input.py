"""Bad input gives a clear simexplain error, never a traceback from deep inside torch."""

import numpy as np
import pytest
import torch
from PIL import Image

from simexplain import Explainer, ImageError, LayerError, ModelError, SimexplainError
from simexplain.toy import HeadModel, tiny_cnn
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


# -- found by the bad-input review: each failed with a traceback from torch, pathlib, difflib,
# numpy or the model before its fix ------------------------------------------------------------

class _Wrapped(HeadModel):
    """HeadModel with its embedding changed by `change` (a model returning the wrong thing)."""

    def __init__(self, change):
        super().__init__("gap")
        self.change = change

    def forward(self, x):
        return self.change(super().forward(x))


@pytest.mark.parametrize("change,match", [
    (lambda e: (e * 100).long(), r"torch.int64 embeddings; expected floating point"),
    (lambda e: e[:1], r"shape \(1, 8\) for 2 inputs; expected \(2, D\)"),  # a row dropped
    (lambda e: e[:, :0], r"shape \(1, 0\) for 1 input; expected \(1, D\) with D >= 1"),
])
def test_model_returning_unusable_embeddings(change, match):
    explainer = Explainer(_Wrapped(change).eval(), "features")
    with pytest.raises(ModelError, match=match):
        list(explainer.sides([torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)]))


@pytest.mark.parametrize("error", [AssertionError, ValueError, TypeError, IndexError])
def test_model_raising_anything_is_a_model_error(error):
    """timm asserts the input size, other models raise ValueError on a shape they refuse."""
    def refuse(_embedding):
        raise error("Input height (32) doesn't match model (224)")
    explainer = Explainer(_Wrapped(refuse).eval(), "features")
    with pytest.raises(ModelError, match=r"failed on an input of shape \(1, 3, 32, 32\): "
                                         r"Input height \(32\)"):
        explainer.explain(torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("layer", [None, 3])
def test_layer_that_is_not_a_name(layer):
    with pytest.raises(LayerError, match=f"layer must be a name .* got {type(layer).__name__}"):
        Explainer(HeadModel("gap"), layer)


@pytest.mark.parametrize("image,match", [
    (np.zeros((32, 32, 3), np.uint8), r"got ndarray \(an array: PIL.Image.fromarray\(array\)\)"),
    (None, "got NoneType"), ([1, 2], "got list"), (b"a.png", "got bytes"),
    ("", "got an empty path"),
])
def test_image_of_the_wrong_type(explainer, image, match):
    with pytest.raises(ImageError, match="expected an image file path, a PIL image or a "
                                         r"\(1, C, H, W\) tensor, " + match):
        explainer.explain(image, photo())


def test_a_folder_or_a_link_to_nothing_given_as_an_image(explainer, tmp_path):
    """Both were "image file not found"."""
    (tmp_path / "photo.png").mkdir()
    with pytest.raises(ImageError, match="photo.png is a folder, not an image file"):
        explainer.explain(tmp_path / "photo.png", photo())
    (tmp_path / "loop.png").symlink_to(tmp_path / "loop.png")
    with pytest.raises(ImageError, match=r"loop.png: a link to nothing \(broken, or a loop"):
        explainer.explain(tmp_path / "loop.png", photo())


def test_empty_images_are_refused(explainer):
    with pytest.raises(ImageError, match=r"the image is empty \(0x0 pixels\)"):
        explainer.explain(Image.new("RGB", (0, 0)), photo())
    with pytest.raises(ImageError, match=r"the tensor is empty, shape \(1, 3, 0, 0\)"):
        explainer.explain(torch.randn(1, 3, 0, 0), photo())


@pytest.mark.parametrize("size", [0, -1, (3,), (0, 5), 3.5, (2.5, 4), True])
def test_sizes_that_are_no_size(explainer, size):
    with pytest.raises(SimexplainError, match="size"):
        explainer.resized(size)


def test_an_input_size_beyond_the_pixel_limit():
    from simexplain import Preprocess
    from simexplain.defaults import MAX_PIXELS
    with pytest.raises(SimexplainError, match=f"100000x100000 pixels exceeds the limit of "
                                              f"{MAX_PIXELS}"):
        Preprocess().resized(100_000)
    assert Preprocess().resized((224, 1232)).size == (224, 1232)  # a panorama is fine


@pytest.mark.parametrize("k", [1.5, 0, True, "3"])
def test_pattern_counts_that_are_no_count(k):
    explainer = Explainer(tiny_cnn(), "features")
    result = explainer.explain(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    with pytest.raises(SimexplainError, match="k must be a whole number >= 1"):
        result.patterns(k)


@pytest.mark.parametrize("size, expected", [(np.int64(40), (40, 40)),
                                            ((np.int32(40), 48), (40, 48))])
def test_numpy_integers_are_sizes(size, expected):
    from simexplain import Preprocess
    resized = Preprocess(size=(np.int64(32), 32)).resized(size)
    assert resized.size == expected and all(type(v) is int for v in resized.size)


def test_a_resample_filter_that_does_not_exist():
    from simexplain import Preprocess
    with pytest.raises(SimexplainError, match="unknown resample filter 'sharp'"):
        Preprocess(resample="sharp")


@pytest.mark.parametrize("call", [
    lambda e: e.embed([torch.randn(1, 3, 32, 32)], batch_size=0),
    lambda e: list(e.sides([torch.randn(1, 3, 32, 32)], batch_size=0)),
    lambda e: e.explain_gallery(torch.randn(1, 3, 32, 32), [photo()], batch_size=-2),
])
def test_batch_sizes_below_one(explainer, call):
    with pytest.raises(SimexplainError, match="batch_size must be >= 1"):
        call(explainer)


def test_embedding_no_images(explainer):
    with pytest.raises(SimexplainError, match="no images given"):
        explainer.embed([])


def test_method_options_it_does_not_take(explainer):
    a, b = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    with pytest.raises(SimexplainError, match=r"method 'occlusion' has no option 'windw'; its "
                                              r"options: window, batch_size"):
        explainer.saliency(a, b, method="occlusion", windw=2)
    with pytest.raises(SimexplainError, match="method 'gradcam' has no option 'seed'; its "
                                              "options: none"):
        explainer.saliency(a, b, method="gradcam", seed=1)
    with pytest.raises(SimexplainError, match="occlusion: window must be a whole number >= 1"):
        explainer.saliency(a, b, method="occlusion", window=0)
