"""The Explainer: one embedding model (or a two-stream pair) and how to explain its similarities."""

from __future__ import annotations

import hashlib
import warnings
from typing import Callable, Iterable, Iterator, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from .adapters import SplitModel
from .errors import ImageError
from .explanation import PairExplanation, Side
from .head import Contributions
from .images import ImageInput, Preprocess, blank_image, check_tensor, load_image
from .similarity import Similarity, get as get_similarity

Transform = Callable[[Image.Image], torch.Tensor]
# Relative residual above which a head is reported as not exactly decomposable.
EXACT_TOLERANCE = 1e-4


class Explainer:
    """Explain the similarity of an embedding model by activation decomposition.

    model: maps an image batch to embeddings (B, D).
    layer: name (from model.named_modules()) of the submodule whose output is explained.
    similarity: "cosine", "dot", "euclidean" (squared distance), or your own `Similarity`
        instance (see simexplain.similarity); `explainer.similarity` is the Similarity object.
    transform: PIL image -> (C, H, W) tensor; default: 224x224, ImageNet normalisation.
    model_b, layer_b, transform_b: the second stream of a two-stream model (default: same).
    model_name: what the model is called (a zoo name, a file, `module:factory`); recorded in
    index manifests and reports, and it decides whether a zoo face model sees face crops.
    """

    def __init__(self, model: torch.nn.Module, layer: str,
                 similarity: str | Similarity = "cosine", transform: Transform | None = None,
                 model_b: torch.nn.Module | None = None, layer_b: str | None = None,
                 transform_b: Transform | None = None, model_name: str | None = None):
        self.model_name = model_name
        self._weights_sha256: str | None = None  # computed on first use (weights_sha256)
        self.similarity = get_similarity(similarity)
        self.stream_a = SplitModel(model, layer)
        if model_b is None and layer_b is None:
            self.stream_b = self.stream_a
        else:
            self.stream_b = SplitModel(model_b if model_b is not None else model,
                                       layer_b if layer_b is not None else layer)
        self.transform_a = transform or Preprocess()
        self.transform_b = transform_b or self.transform_a
        self._warned_inexact = False

    def weights_sha256(self) -> str:
        """sha256 over the parameters and buffers of the model(s): identifies the weights an
        index was built with. Computed once (the weights are assumed not to change)."""
        if self._weights_sha256 is None:
            digest = hashlib.sha256()
            streams = [self.stream_a] + ([] if self.stream_b is self.stream_a else [self.stream_b])
            for stream in streams:
                for name, tensor in stream.model.state_dict().items():
                    t = tensor.detach().cpu().contiguous()
                    digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
                    if t.dtype == torch.bfloat16:
                        t = t.float()
                    digest.update(t.numpy().tobytes())
            self._weights_sha256 = digest.hexdigest()
        return self._weights_sha256

    # -- inputs --------------------------------------------------------------------------------
    def stream(self, side: str) -> SplitModel:
        return self.stream_a if side == "a" else self.stream_b

    def prepare(self, image: ImageInput, side: str = "a") -> tuple[torch.Tensor, Image.Image]:
        """(1, C, H, W) model input on the model's device, and the image as the model sees it."""
        transform = self.transform_a if side == "a" else self.transform_b
        stream = self.stream(side)
        if isinstance(image, torch.Tensor):
            tensor = check_tensor(image, name=f"image {side}")
            if tensor.shape[0] != 1:
                raise ImageError(f"image {side}: expected one image (1, C, H, W), got "
                                 f"{tuple(tensor.shape)}")
            return tensor.to(stream.device), blank_image(tuple(tensor.shape[2:]))
        picture = load_image(image)
        shown = transform.resize(picture) if hasattr(transform, "resize") else picture
        tensor = check_tensor(transform(picture), name=f"image {side}")
        if shown.size != (tensor.shape[3], tensor.shape[2]):
            shown = shown.resize((tensor.shape[3], tensor.shape[2]), Image.BILINEAR)
        return tensor.to(stream.device), shown

    def embed(self, images: Sequence[ImageInput] | torch.Tensor, side: str = "a",
              batch_size: int = 32, progress: bool = False) -> torch.Tensor:
        """(N, D) embeddings of images (paths, PIL images, or a (N, C, H, W) tensor)."""
        stream = self.stream(side)
        if isinstance(images, torch.Tensor):
            return torch.cat([stream.embed(chunk) for chunk in images.split(batch_size)])
        out = []
        for batch in _batches(list(images), batch_size, progress, "embedding"):
            out.append(stream.embed(torch.cat([self.prepare(im, side)[0] for im in batch])))
        return torch.cat(out)

    # -- decomposition ---------------------------------------------------------------------------
    def contributions(self, x: torch.Tensor, side: str = "a") -> Contributions:
        """Per-position contributions of a preprocessed batch (B, C, H, W)."""
        result = self.stream(side).contributions(x)
        worst = float(result.residual.max())
        if worst > EXACT_TOLERANCE and not self._warned_inexact:
            self._warned_inexact = True
            warnings.warn(
                f"the head after layer {self.stream(side).layer_name!r} is not exactly "
                f"decomposable (relative residual {worst:.2e}); maps are a first-order "
                "linearisation and PairExplanation.residual reports the gap", stacklevel=3)
        return result

    def side(self, image: ImageInput, side: str) -> Side:
        tensor, shown = self.prepare(image, side)
        c = self.contributions(tensor, side)
        return Side(image=shown, grid=c.grid, contributions=c.positions[0],
                    embedding=c.embedding[0])

    def explain(self, a: ImageInput, b: ImageInput) -> PairExplanation:
        """Decompose the similarity of a and b."""
        return PairExplanation.from_sides(self.side(a, "a"), self.side(b, "b"), self.similarity)

    def explain_gallery(self, query: ImageInput, gallery: Iterable[ImageInput],
                        batch_size: int = 16, progress: bool = False) -> list[PairExplanation]:
        """Explain one query (side a) against many images (side b), in batches."""
        query_side = self.side(query, "a")
        return [PairExplanation.from_sides(query_side, other, self.similarity)
                for other in self.sides(gallery, "b", batch_size, progress)]

    def sides(self, images: Iterable[ImageInput], side: str = "b", batch_size: int = 16,
              progress: bool = False) -> Iterator[Side]:
        """The decomposed Side of each image, in order, computed a batch at a time (images of
        one size share a forward pass)."""
        for batch in _batches(list(images), batch_size, progress, "explaining"):
            prepared = [self.prepare(image, side) for image in batch]
            by_shape: dict[tuple, list[int]] = {}
            for i, (tensor, _) in enumerate(prepared):
                by_shape.setdefault(tuple(tensor.shape), []).append(i)
            done: dict[int, Side] = {}
            for members in by_shape.values():
                c = self.contributions(torch.cat([prepared[i][0] for i in members]), side)
                for row, i in enumerate(members):
                    done[i] = Side(image=prepared[i][1], grid=c.grid,
                                   contributions=c.positions[row], embedding=c.embedding[row])
            yield from (done[i] for i in range(len(prepared)))

    # -- saliency by any method ------------------------------------------------------------------
    def saliency(self, a: ImageInput, b: ImageInput, method: str = "decomposition",
                 **options) -> tuple[torch.Tensor, torch.Tensor]:
        """Overall maps (on the feature grids) of both images by `method`: any name in
        simexplain.METHODS (see simexplain.methods)."""
        from .methods import get_method
        return get_method(method, **options).attribute(self, a, b)


def _batches(items: list, size: int, progress: bool, label: str):
    bar = tqdm(total=len(items), desc=label, unit="img", disable=not progress)
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        yield chunk
        bar.update(len(chunk))
    bar.close()
