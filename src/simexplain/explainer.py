"""The Explainer: one embedding model (or a two-stream pair) and how to explain its similarities."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
from PIL import Image
from tqdm.auto import tqdm

from .adapters import SplitModel
from .errors import NoSpatialMap, SimexplainError
from .sides import pick
from .explanation import PairExplanation, Side
from .head import Contributions
from .images import ImageInput, Preprocess
from .inputs import InputPipeline, PreparedImage
from .similarity import Similarity, get as get_similarity

Transform = Callable[[Image.Image], torch.Tensor]
# Relative residual above which a head is reported as not exactly decomposable.
EXACT_TOLERANCE = 1e-4
# Largest input (values per image) whose pair runs as one batch on the CPU (`explain`), about
# 209x209 RGB. With the head known (no recording, affine_head.KnownHead) a second pass costs
# little besides the trunk, and a batch of two runs the trunk slower once its activations
# outgrow the caches: two passes took 0.94x the batch's time on the benchmark's grid model at
# 224x224 (0.85x at 448x448), 0.82x on efficientnet-lite0 (224x332); the batch stayed faster on
# facenet (160x160: two passes 1.17x), fmnist-gap and the grid model at 112x112 (1.41x).
CPU_PAIR_BATCH_NUMEL = 1 << 17


class Explainer:
    """Explain the similarity of an embedding model by activation decomposition.

    model: maps an image batch to embeddings (B, D).
    layer: name (from model.named_modules()) of the submodule whose output is explained.
    similarity: "cosine", "dot", "euclidean" (squared distance), or your own `Similarity`
        instance (see simexplain.similarity); `explainer.similarity` is the Similarity object.
    transform: PIL image -> (C, H, W) tensor; default: 224x224, ImageNet normalisation. It must
        map the whole image onto its output (resize, no cropping): `Preprocess` does.
    model_b, layer_b, transform_b: the second stream of a two-stream model (default: same).
    faces: detect the largest face of each photo and explain that crop (face-recognition
        models); points and regions are still given in the photo's pixels.
    model_name: what the model is called (a zoo name, a file, `module:factory`); recorded in
    index manifests and reports.
    """

    def __init__(self, model: torch.nn.Module, layer: str,
                 similarity: str | Similarity = "cosine", transform: Transform | None = None,
                 model_b: torch.nn.Module | None = None, layer_b: str | None = None,
                 transform_b: Transform | None = None, faces: bool = False,
                 model_name: str | None = None):
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
        self.faces = faces
        self.inputs_a = InputPipeline(self.transform_a, faces=faces)
        self.inputs_b = self.inputs_a if self.transform_b is self.transform_a else \
            InputPipeline(self.transform_b, faces=faces)
        self._warned_inexact = False
        self._warned_flat = False

    def resized(self, size: int | tuple[int, int]) -> Explainer:
        """This explainer at another input size (as `--size`, see `Preprocess.resized`): the
        same model(s), layer(s) and similarity; a larger input gives a finer feature grid."""
        import copy

        if not (isinstance(self.transform_a, Preprocess) and
                isinstance(self.transform_b, Preprocess)):
            raise SimexplainError("this model's input transform has no size to change (only "
                                  "a Preprocess transform does)")
        out = copy.copy(self)
        out.transform_a = self.transform_a.resized(size)
        out.transform_b = out.transform_a if self.transform_b is self.transform_a else \
            self.transform_b.resized(size)
        margin = self.inputs_a.face_margin
        out.inputs_a = InputPipeline(out.transform_a, faces=self.faces, face_margin=margin)
        out.inputs_b = out.inputs_a if out.transform_b is out.transform_a else \
            InputPipeline(out.transform_b, faces=self.faces, face_margin=margin)
        out._warned_inexact = False
        out._warned_flat = False
        return out

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
        """The model of one side ("a" or "b"; the same model for a one-stream model)."""
        return pick(side, self.stream_a, self.stream_b)

    def prepare(self, image: ImageInput, side: str = "a") -> PreparedImage:
        """The model input of an image (on the model's device), the photo, and where the input
        lies in the photo: see `simexplain.inputs`."""
        prepared = self.inputs(side).prepare(image, name=f"image {side}")
        prepared.tensor = prepared.tensor.to(self.stream(side).device)
        return prepared

    def inputs(self, side: str = "a") -> InputPipeline:
        """The input pipeline of one side (loading, face crop, resize, normalisation)."""
        return pick(side, self.inputs_a, self.inputs_b)

    def embed(self, images: Sequence[ImageInput] | torch.Tensor, side: str = "a",
              batch_size: int = 32, progress: bool = False) -> torch.Tensor:
        """(N, D) embeddings of images (paths, PIL images, or a (N, C, H, W) tensor)."""
        stream = self.stream(side)
        _check_batch_size(batch_size)
        if len(images) == 0:
            raise SimexplainError("embed: no images given")
        if isinstance(images, torch.Tensor):
            return torch.cat([stream.embed(chunk) for chunk in images.split(batch_size)])
        out = []
        for batch in _batches(list(images), batch_size, progress, "embedding"):
            tensors = [self.prepare(im, side).tensor for im in batch]
            rows: list[torch.Tensor | None] = [None] * len(tensors)
            for members in _by_shape(tensors).values():  # one forward pass per input shape
                embedded = stream.embed(torch.cat([tensors[i] for i in members]))
                for row, i in enumerate(members):
                    rows[i] = embedded[row]
            out.append(torch.stack([row for row in rows if row is not None]))  # all filled
        return torch.cat(out)

    # -- decomposition ---------------------------------------------------------------------------
    def contributions(self, x: torch.Tensor, side: str = "a") -> Contributions:
        """Per-position contributions of a preprocessed batch (B, C, H, W)."""
        result = self.stream(side).contributions(x)
        worst = result.read_back.worst_residual
        if worst > EXACT_TOLERANCE and not self._warned_inexact:
            self._warned_inexact = True
            warnings.warn(
                f"the head after layer {self.stream(side).layer_name!r} is not exactly "
                f"decomposable (relative residual {worst:.2e}); maps are a first-order "
                "linearisation and PairExplanation.residual reports the gap", stacklevel=3)
        if result.tokens is not None and not all(result.read_back.spatial) \
                and not self._warned_flat:
            self._warned_flat = True
            warnings.warn(
                f"at layer {self.stream(side).layer_name!r} the head reads only the class (prefix)"
                " tokens, so no position of the grid carries anything of its own: the maps have "
                "no spatial content (Side.spatial is False). Explain the output of an earlier "
                "block, e.g. one block before the end", NoSpatialMap, stacklevel=3)
        return result

    def side(self, image: ImageInput, side: str) -> Side:
        prepared = self.prepare(image, side)
        return _side(prepared, self.contributions(prepared.tensor, side), 0)

    def explain(self, a: ImageInput, b: ImageInput) -> PairExplanation:
        """Decompose the similarity of a and b."""
        return self.explain_prepared(self.prepare(a, "a"), self.prepare(b, "b"))

    def explain_prepared(self, prepared_a: PreparedImage, prepared_b: PreparedImage
                         ) -> PairExplanation:
        """`explain` for images already prepared (`prepare(image, side)`)."""
        if self._pair_in_one_batch(prepared_a.tensor, prepared_b.tensor):
            # both images share one forward pass and one head analysis (half the fixed cost)
            c = self.contributions(torch.cat([prepared_a.tensor, prepared_b.tensor]), "a")
            side_a, side_b = (_side(prepared, c, row)
                              for row, prepared in enumerate((prepared_a, prepared_b)))
        else:
            side_a = _side(prepared_a, self.contributions(prepared_a.tensor, "a"), 0)
            side_b = _side(prepared_b, self.contributions(prepared_b.tensor, "b"), 0)
        return PairExplanation.from_sides(side_a, side_b, self.similarity)

    def _pair_in_one_batch(self, x_a: torch.Tensor, x_b: torch.Tensor) -> bool:
        """One stream and one input size; on the CPU also a small input: there, a batch of
        two large inputs runs slower than two single passes (bench_explain.py, 48x48 grids:
        the convolutions' working set outgrows the caches)."""
        return (self.stream_b is self.stream_a and x_a.shape == x_b.shape and
                (x_a.device.type != "cpu" or x_a[0].numel() <= CPU_PAIR_BATCH_NUMEL))

    def explain_gallery(self, query: ImageInput, gallery: Iterable[ImageInput],
                        batch_size: int = 16, progress: bool = False) -> list[PairExplanation]:
        """Explain one query (side a) against many images (side b), in batches."""
        query_side = self.side(query, "a")
        return PairExplanation.one_to_many(
            query_side, list(self.sides(gallery, "b", batch_size, progress)), self.similarity)

    def sides(self, images: Iterable[ImageInput], side: str = "b", batch_size: int = 16,
              progress: bool = False) -> Iterator[Side]:
        """The decomposed Side of each image, in order, computed a batch at a time (images of
        one size share a forward pass)."""
        for batch in _batches(list(images), batch_size, progress, "explaining"):
            prepared = [self.prepare(image, side) for image in batch]
            done: dict[int, Side] = {}
            for members in _by_shape([p.tensor for p in prepared]).values():
                c = self.contributions(torch.cat([prepared[i].tensor for i in members]), side)
                for row, i in enumerate(members):
                    done[i] = _side(prepared[i], c, row)
            yield from (done[i] for i in range(len(prepared)))

    # -- saliency by any method ------------------------------------------------------------------
    def saliency(self, a: ImageInput, b: ImageInput, method: str = "decomposition",
                 **options: object) -> tuple[torch.Tensor, torch.Tensor]:
        """Overall maps (on the feature grids) of both images by `method`: any name in
        simexplain.METHODS (see simexplain.methods)."""
        from .methods import get_method
        return get_method(method, **options).attribute(self, a, b)


def side_from(prepared: PreparedImage, grid: tuple[int, int], contributions: torch.Tensor,
              embedding: torch.Tensor, projected: torch.Tensor | None = None,
              tokens: torch.Tensor | None = None, spatial: bool = True) -> Side:
    """The Side of the image `prepared` from its decomposition: contributions (P, D) on the
    feature grid `grid`, the model's embedding (D,), projected features (P, D) or None, the
    prefix tokens' contributions (T, D) or None and whether the grid carries anything of its
    own (see `head.Contributions`), computed now or earlier (an index's explain cache)."""
    return Side(image=prepared.photo, grid=(int(grid[0]), int(grid[1])),
                contributions=contributions, embedding=embedding, frame=prepared.frame,
                projected=projected, tokens=tokens, spatial=spatial)


def _side(prepared: PreparedImage, c: Contributions, row: int) -> Side:
    """Row `row` of a batch's contributions as the Side of the image `prepared`."""
    return side_from(prepared, c.grid, c.positions[row], c.embedding[row],
                     None if c.projected is None else c.projected[row],
                     None if c.tokens is None else c.tokens[row], c.read_back.spatial[row])


def _by_shape(tensors: Sequence[torch.Tensor]) -> dict[tuple, list[int]]:
    """Positions of the tensors grouped by shape: inputs that keep their aspect ratio differ
    in shape, and only tensors of one shape share a forward pass."""
    groups: dict[tuple, list[int]] = {}
    for i, tensor in enumerate(tensors):
        groups.setdefault(tuple(tensor.shape), []).append(i)
    return groups


def _check_batch_size(size: int) -> None:
    if not isinstance(size, int) or size < 1:
        raise SimexplainError(f"batch_size must be >= 1, got {size!r}")


def _batches(items: list, size: int, progress: bool, label: str):
    _check_batch_size(size)
    bar = tqdm(total=len(items), desc=label, unit="img", disable=not progress)
    for start in range(0, len(items), size):
        chunk = items[start:start + size]
        yield chunk
        bar.update(len(chunk))
    bar.close()
