"""Saliency methods with one uniform call: `Method().attribute(explainer, a, b) -> (map_a, map_b)`.

Every method returns maps over both images' feature grids, so they can be compared cell by cell.
The decomposition needs no backward pass; the Grad-CAM family are the paper's baselines; occlusion
is a black-box baseline; random is the floor every evaluation compares against. For vision
transformers with a class token there are the baselines people use on them: attention rollout
(Abnar & Zuidema 2020), gradient-weighted attention relevance (Chefer, Gur & Wolf 2021) and
Grad-CAM on the last block's patch tokens; on other models they raise `NotApplicable`
(`Method.applies` asks first).

Each method declares what it is (exact or not, needs gradients, signed, gives point maps, costs a
forward pass per feature cell, a control rather than an explanation), and the registry `METHODS`
is the one list of methods: the web page, the demo and the evaluation read it. Methods that
explain the same pair share one `PreparedPair` (inputs prepared once, embeddings and gradients
computed once).
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import cast

import torch

from .attention import Trace, trace
from .defaults import METHOD_NAMES
from .errors import NotApplicable, SimexplainError
from .sides import pick
from .explanation import PairExplanation
from .geometry import channels_last_grid
from .images import ImageInput
from .inputs import PreparedImage
from .similarity import Similarity

if TYPE_CHECKING:
    from .explainer import Explainer

Maps = tuple[torch.Tensor, torch.Tensor]  # (Ha, Wa), (Hb, Wb)
Layout = tuple[tuple[int, int], int]  # ((rows, cols), prefix tokens) of a layer's grid


@dataclass
class PreparedPair:
    """Both images as model inputs, prepared once and shared by every method run on them."""

    a: PreparedImage  # model input (on the model's device), photo and frame
    b: PreparedImage
    cache: dict = field(default_factory=dict, repr=False)  # embeddings, gradients

    @classmethod
    def of(cls, explainer: Explainer, a: ImageInput | PreparedPair, b: ImageInput | None = None
           ) -> PreparedPair:
        """Prepare a and b (a PreparedPair given as `a` is returned as it is)."""
        if isinstance(a, PreparedPair):
            return a
        if b is None:
            raise SimexplainError("b: an image is needed (only a PreparedPair comes alone)")
        return cls(explainer.prepare(a, "a"), explainer.prepare(b, "b"))

    @property
    def x_a(self) -> torch.Tensor:
        return self.a.tensor

    @property
    def x_b(self) -> torch.Tensor:
        return self.b.tensor

    def x(self, side: str) -> torch.Tensor:
        return pick(side, self.x_a, self.x_b)

    def embeddings(self, explainer: Explainer) -> tuple[torch.Tensor, torch.Tensor]:
        """(e_a, e_b), each image embedded once (no gradients)."""
        if "embeddings" not in self.cache:
            self.cache["embeddings"] = (explainer.stream_a.embed(self.x_a)[0],
                                        explainer.stream_b.embed(self.x_b)[0])
        return self.cache["embeddings"]


def closeness(e_a: torch.Tensor, e_b: torch.Tensor, similarity: Similarity) -> torch.Tensor:
    """The similarity, signed so that larger means closer (minus a distance)."""
    return similarity.closeness(similarity.score(e_a, e_b))


class Method:
    """Base class: subclasses implement `maps` (one prepared pair -> both maps) and declare
    their properties."""

    name = ""
    label = ""  # for display
    exact = False  # the maps sum to the model's own score (up to the reported residual)
    needs_gradients = False
    signed = False  # negative values are meaningful (else the map is >= 0)
    point_maps = False  # also gives maps for a point or region of one image on the other
    per_cell_cost = False  # one forward pass per feature cell: slow on large grids
    control = False  # a floor to compare against, not an explanation (left out of displays)
    seeded = False  # takes `seed`: its maps depend on the seed only
    needs_attention = False  # explains class-token vision transformers only

    def attribute(self, explainer: Explainer, a: ImageInput | PreparedPair,
                  b: ImageInput | None = None,
                  sides: str = "ab") -> Maps:
        """Overall maps of a and b (or of the PreparedPair given as `a`). `sides` may name one
        side only ("a" or "b"); the other map is then None unless it came for free."""
        return self.maps(explainer, PreparedPair.of(explainer, a, b), sides)

    def maps(self, explainer: Explainer, pair: PreparedPair, sides: str = "ab") -> Maps:
        raise NotImplementedError

    def check(self, explainer: Explainer, pair: PreparedPair) -> None:
        """Raise NotApplicable where this method cannot explain the pair's model (every method
        can, but those that need attention)."""

    def applies(self, explainer: Explainer, a: ImageInput | PreparedPair,
                b: ImageInput | None = None
                ) -> bool:
        """Can this method explain the model of `explainer` (on these inputs)?"""
        try:
            self.check(explainer, PreparedPair.of(explainer, a, b))
        except NotApplicable:
            return False
        return True


class Decomposition(Method):
    """Signed overall maps of the exact decomposition (METHOD.md)."""

    name = "decomposition"
    label = "decomposition (exact)"
    exact = True
    signed = True
    point_maps = True

    def maps(self, explainer: Explainer, pair: PreparedPair, sides: str = "ab") -> Maps:
        if "decomposition" not in pair.cache:  # one decomposition for every method of its kind
            pair.cache["decomposition"] = explainer.explain_prepared(pair.a, pair.b)
        map_a, map_b = self.pick(pair.cache["decomposition"])
        return map_a.float(), map_b.float()

    def pick(self, result: PairExplanation) -> Maps:
        """Which maps of the decomposed pair this method shows."""
        return result.overall_a, result.overall_b


class Relative(Decomposition):
    """Signed relative maps: each position's contribution minus its share of the score
    (METHOD.md, "Relative maps"; PairExplanation.relative_a/b). Exact, no backward pass; for
    the cosine it is Grad-CAM before its ReLU under a GAP head."""

    name = "relative"
    label = "relative (exact, sums to 0)"
    exact = False  # computed exactly, but it sums to 0, not to the score

    def pick(self, result: PairExplanation) -> Maps:
        return result.relative_a, result.relative_b


class _GradientMethod(Method):
    """Shared part: the similarity of both images as a function of both feature maps."""

    needs_gradients = True
    raw = False  # similarity on raw (pre-normalisation) embeddings

    def gradients(self, explainer: Explainer, pair: PreparedPair):
        """((A_a, ds/dA_a), (A_b, ds/dA_b)), computed once per pair for all Grad-CAMs that
        share `raw`."""
        key = ("gradients", self.raw)
        if key not in pair.cache:
            feats_a, e_a = explainer.stream_a.features_and_embedding(pair.x_a, raw=self.raw)
            feats_b, e_b = explainer.stream_b.features_and_embedding(pair.x_b, raw=self.raw)
            similarity = explainer.similarity
            if self.raw:  # the paper's "without normalisation" variant (cosine -> dot)
                similarity = similarity.without_normalisation()
            s = closeness(e_a[0], e_b[0], similarity)
            grad_a, grad_b = torch.autograd.grad(s, [feats_a, feats_b])
            pair.cache[key] = ((feats_a.detach(), grad_a), (feats_b.detach(), grad_b))
        return pair.cache[key]

    def maps(self, explainer: Explainer, pair: PreparedPair, sides: str = "ab") -> Maps:
        (f_a, g_a), (f_b, g_b) = self.gradients(explainer, pair)
        return (self.combine(f_a, g_a, explainer.stream_a.grid(pair.x_a)),
                self.combine(f_b, g_b, explainer.stream_b.grid(pair.x_b)))

    def combine(self, feats: torch.Tensor, grads: torch.Tensor, layout: Layout
                ) -> torch.Tensor:
        """Feature map and gradient (1, C, H, W) or (1, N, C) -> map (H, W); `layout`:
        ((rows, cols), prefix tokens) of the layer (SplitModel.grid)."""
        raise NotImplementedError


def grad_cam(feats: torch.Tensor, grads: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Grad-CAM of a feature map or tokens and its gradient ((1, C, H, W) or (1, N, C)):
    alpha_k = mean_p ds/dA_pk over the grid (patch tokens only); map = ReLU(sum_k alpha_k A_pk)."""
    f, g = channels_last_grid(feats, layout), channels_last_grid(grads, layout)
    alpha = g.mean(dim=(0, 1))
    return torch.relu((f * alpha).sum(-1))


class GradCAM(_GradientMethod):
    """alpha_k = mean_p ds/dA_pk; map = ReLU(sum_k alpha_k A_pk), s on the model's embeddings."""

    name = "gradcam"
    label = "Grad-CAM"

    def combine(self, feats: torch.Tensor, grads: torch.Tensor, layout: Layout
                ) -> torch.Tensor:
        return grad_cam(feats, grads, layout)


class GradCAMRaw(GradCAM):
    """Grad-CAM on raw (pre-L2-normalisation) embeddings, dot product."""

    name = "gradcam-raw"
    label = "Grad-CAM (raw embeddings)"
    raw = True


class RGradCAM(_GradientMethod):
    """Rectified Grad-CAM, no averaging: map_p = ReLU(sum_k ds/dA_pk A_pk)."""

    name = "rgradcam"
    label = "RGrad-CAM"

    def combine(self, feats: torch.Tensor, grads: torch.Tensor, layout: Layout
                ) -> torch.Tensor:
        f, g = channels_last_grid(feats, layout), channels_last_grid(grads, layout)
        return torch.relu((f * g).sum(-1))


@dataclass
class Traced:
    """One image's traced forward pass (`attention.trace`) laid out on the explained layer's
    grid, with the gradients of the pair's similarity where they were asked for."""

    trace: Trace
    prefix: int  # tokens before the patch grid: the class token first, then any registers
    grid: tuple[int, int]
    attention_grads: list[torch.Tensor] = field(default_factory=list)  # ds/dA, per attention
    # "input" / "output" -> the last block's tokens and ds/d(tokens), where they were found
    last_block: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)


class _AttentionMethod(Method):
    """Shared part of the transformer baselines: each image's forward pass traced
    (`attention.trace`: the self-attention weights of every block and the blocks' outputs),
    once without gradients and once with the gradients of the pair's similarity, and checked
    to be a class-token transformer whose tokens the explained layer's grid lays out.

    Maps are over the patch tokens (the prefix tokens: class token first, then any registers,
    are left out), on the explained layer's grid.
    """

    needs_attention = True

    def check(self, explainer: Explainer, pair: PreparedPair) -> None:
        self.traced(explainer, pair, grad=False)

    def traced(self, explainer: Explainer, pair: PreparedPair, grad: bool) -> dict[str, Traced]:
        """side -> Traced, computed once per pair (and per grad) for all attention methods."""
        key = ("attention", grad)
        if "attention-not-applicable" in pair.cache:  # found out once per pair
            raise pair.cache["attention-not-applicable"]
        if key not in pair.cache:
            try:
                found = {side: self._layout(explainer, side, pair.x(side),
                                            trace(explainer.stream(side).model, pair.x(side),
                                                  grad))
                         for side in "ab"}
            except NotApplicable as exc:
                pair.cache["attention-not-applicable"] = exc
                raise
            if grad:
                _differentiate(explainer, found)
            pair.cache[key] = found
        return pair.cache[key]

    def _layout(self, explainer: Explainer, side: str, x: torch.Tensor, found: Trace) -> Traced:
        """The trace on the explained layer's grid, checked against its attention."""
        stream = explainer.stream(side)
        what = ("the attention methods (attention-rollout, chefer, gradcam-tokens) explain "
                "class-token vision transformers")
        if not found.attentions:
            raise NotApplicable(
                f"{what}, but {type(stream.model).__name__} computed no self-attention in its "
                "forward pass (a CNN?): no attention weights to explain it with")
        tokens = {a.weights.shape[-1] for a in found.attentions}
        grid, prefix = stream.grid(x)
        if len(tokens) > 1 or tokens != {prefix + grid[0] * grid[1]}:
            raise NotApplicable(
                f"{what}: the self-attention of {type(stream.model).__name__} runs over "
                f"{sorted(tokens)} tokens, but the explained layer {stream.layer_name!r} lays "
                f"out {prefix} prefix tokens and a {grid[0]}x{grid[1]} grid; explain a token "
                "layer of the transformer (a block's output)")
        if prefix < 1:
            raise NotApplicable(
                f"{what}: the tokens of {stream.layer_name!r} are a square grid with no class "
                "token in front, so there is no class token's row to read")
        return Traced(found, prefix, (int(grid[0]), int(grid[1])))

    def maps(self, explainer: Explainer, pair: PreparedPair, sides: str = "ab") -> Maps:
        found = self.traced(explainer, pair, grad=self.needs_gradients)
        return (self.grid_map(found["a"]).detach().float(),
                self.grid_map(found["b"]).detach().float())

    def grid_map(self, traced: Traced) -> torch.Tensor:
        """One image's map (H, W) from its trace."""
        raise NotImplementedError


def _differentiate(explainer: Explainer, found: dict[str, Traced]) -> None:
    """Gradients of the pair's similarity s (larger = closer) with respect to every attention
    and the last block's input and output tokens of both images, in one backward pass: with
    respect to one image's tensors, the other image's embedding is a constant."""
    s = closeness(found["a"].trace.output[0], found["b"].trace.output[0], explainer.similarity)
    targets: list[torch.Tensor] = []
    for side in "ab":
        t = found[side].trace
        targets += [a.source for a in t.attentions]
        targets += [block for block in (t.last_block("input"), t.last_block("output"))
                    if block is not None]
    grads = iter(torch.autograd.grad(s, targets, allow_unused=True))
    for side in "ab":
        traced = found[side]
        traced.trace = t = traced.trace.detached()  # the pair's cache keeps no graph
        traced.attention_grads = [a.gradient(next(grads)) for a in t.attentions]
        for where in ("input", "output"):
            tokens = t.last_block(where)
            if tokens is not None:
                g = next(grads)
                traced.last_block[where] = (tokens, torch.zeros_like(tokens) if g is None else g)


def _identity(weights: torch.Tensor) -> torch.Tensor:
    """The (N, N) identity for attention weights (B, heads, N, N), in float64 (products of
    many blocks)."""
    return torch.eye(weights.shape[-1], dtype=torch.float64, device=weights.device)


def _class_row(relevance: torch.Tensor, traced: Traced) -> torch.Tensor:
    """The class token's row of a token-to-token matrix (N, N), over the patch tokens."""
    return relevance[0, traced.prefix:].reshape(traced.grid)


class AttentionRollout(_AttentionMethod):
    """Attention rollout (Abnar & Zuidema 2020): per block, the attention averaged over heads
    plus the identity (the residual connection), rows normalised to sum to 1; the blocks'
    matrices multiplied from the first to the last (R = A_L ... A_1); the map is the class
    token's row of R over the patch tokens.

    Input-only: it depends on one image alone, never on the partner or the similarity, so the
    map of image a is the rollout of a's forward pass whatever b is (and likewise for b)."""

    name = "attention-rollout"
    label = "attention rollout"

    def grid_map(self, traced: Traced) -> torch.Tensor:
        attentions = traced.trace.attentions
        eye = _identity(attentions[0].weights)
        rollout = eye
        for attention in attentions:
            a = attention.weights[0].detach().double().mean(dim=0) + eye
            rollout = (a / a.sum(dim=-1, keepdim=True)) @ rollout
        return _class_row(rollout, traced)


class AttentionRelevance(_AttentionMethod):
    """Gradient-weighted attention relevance (Chefer, Gur & Wolf 2021, the rule for
    self-attention of "Generic Attention-model Explainability"): R = I; per block, from the
    first to the last, A_bar = mean over heads of ReLU(ds/dA * A) and R = R + A_bar R; the map
    is the class token's row of R over the patch tokens. s is the pair's similarity (larger =
    closer): image a's map follows s's gradient with b's embedding held fixed, and vice versa."""

    name = "chefer"
    label = "attention relevance (Chefer et al.)"
    needs_gradients = True

    def grid_map(self, traced: Traced) -> torch.Tensor:
        attentions = traced.trace.attentions
        relevance = _identity(attentions[0].weights)
        for attention, grad in zip(attentions, traced.attention_grads):
            a_bar = torch.relu(grad[0].double() * attention.weights[0].detach().double())
            relevance = relevance + a_bar.mean(dim=0) @ relevance
        return _class_row(relevance, traced)


class GradCAMTokens(_AttentionMethod):
    """Grad-CAM on the last block's patch tokens A (the last block: the one that computed the
    model's last self-attention): alpha_c = mean over patch tokens of ds/dA_pc, map =
    ReLU(sum_c alpha_c A_pc) over the patch grid. It does not depend on which layer is
    explained (only that layer's grid is used).

    tokens="input" (default): the tokens entering the last block (the usual choice for ViTs:
    pytorch-grad-cam's example takes them after that block's first LayerNorm). tokens="output":
    the tokens it outputs; where the head reads the class token alone,
    the patch tokens of the last output do not reach the embedding, ds/dA is 0 there and so is
    every map: that form only means something for heads that also read the patch tokens."""

    name = "gradcam-tokens"
    label = "Grad-CAM (last block's tokens)"
    needs_gradients = True

    def __init__(self, tokens: str = "input"):
        if tokens not in ("input", "output"):
            raise SimexplainError(f"tokens must be 'input' or 'output', got {tokens!r}")
        self.tokens = tokens

    def grid_map(self, traced: Traced) -> torch.Tensor:
        if self.tokens not in traced.last_block:
            block = traced.trace.attentions[-1].block
            raise NotApplicable(
                f"{self.label}: the block that computed the last self-attention "
                f"({block or 'none found'}) has no (B, N, C) token {self.tokens}; blocks are "
                "found as the items of an nn.ModuleList or nn.Sequential")
        tokens, grads = traced.last_block[self.tokens]
        rows, cols = traced.grid
        if tokens.shape[1] != traced.prefix + rows * cols:
            raise NotApplicable(
                f"{self.label}: the last block's {self.tokens} has {tokens.shape[1]} tokens, "
                f"not the {traced.prefix} + {rows}x{cols} of the explained layer")
        return grad_cam(tokens, grads, (traced.grid, traced.prefix))


class Occlusion(Method):
    """Black box: map[cell] = s - s(image with that cell's pixels filled), per feature cell.

    `window` is the occluder's side in feature cells (centred on the cell); fill is 0 in the
    model's input space (the dataset mean for normalised inputs).
    """

    name = "occlusion"
    label = "occlusion"
    signed = True
    per_cell_cost = True

    def __init__(self, window: int = 1, batch_size: int = 32):
        for option, value in (("window", window), ("batch_size", batch_size)):
            if not isinstance(value, int) or value < 1:
                raise SimexplainError(f"occlusion: {option} must be a whole number >= 1, "
                                      f"got {value!r}")
        self.window = window
        self.batch_size = batch_size

    def maps(self, explainer: Explainer, pair: PreparedPair, sides: str = "ab") -> Maps:
        e_a, e_b = pair.embeddings(explainer)
        base = closeness(e_a, e_b, explainer.similarity)
        map_a = self._side(explainer, pair, "a", e_b, base) if "a" in sides else None
        map_b = self._side(explainer, pair, "b", e_a, base) if "b" in sides else None
        # a side not in `sides` is None: callers read only the sides they asked for
        return cast(Maps, (map_a, map_b))

    def _side(self, explainer: Explainer, pair: PreparedPair, side: str, other: torch.Tensor,
              base: torch.Tensor) -> torch.Tensor:
        stream, x = explainer.stream(side), pair.x(side)
        (rows, cols), _ = stream.grid(x)
        height, width = x.shape[2:]
        half = (self.window - 1) / 2
        masks = []
        for r in range(rows):
            for c in range(cols):
                top = int(round((r - half) * height / rows))
                bottom = int(round((r + half + 1) * height / rows))
                left = int(round((c - half) * width / cols))
                right = int(round((c + half + 1) * width / cols))
                m = torch.ones(height, width, device=x.device, dtype=x.dtype)
                m[max(top, 0):bottom, max(left, 0):right] = 0
                masks.append(m)
        occluded = x * torch.stack(masks)[:, None]  # (P, C, H, W)
        scores = torch.cat([closeness(stream.embed(chunk), other, explainer.similarity)
                            for chunk in occluded.split(self.batch_size)])
        return (base - scores).reshape(rows, cols)


class RandomMap(Method):
    """Uniform random maps: the floor that evaluations compare against. Seeded."""

    name = "random"
    label = "random"
    control = True
    seeded = True

    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)

    def maps(self, explainer: Explainer, pair: PreparedPair, sides: str = "ab") -> Maps:
        grid_a, _ = explainer.stream_a.grid(pair.x_a)
        grid_b, _ = explainer.stream_b.grid(pair.x_b)
        return (torch.rand(grid_a, generator=self.generator),
                torch.rand(grid_b, generator=self.generator))


# The registry, in display order: the one list of methods.
METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (Decomposition, Relative, GradCAM, GradCAMRaw, RGradCAM,
                              AttentionRollout, AttentionRelevance, GradCAMTokens, Occlusion,
                              RandomMap)}
assert tuple(METHODS) == METHOD_NAMES, (tuple(METHODS), METHOD_NAMES)


def explanation_methods() -> list[str]:
    """The methods shown to people (the registry without controls such as random)."""
    return [name for name, cls in METHODS.items() if not cls.control]


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise SimexplainError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def get_method(name: str, **options: object) -> Method:
    """A method by name, e.g. get_method("occlusion", window=2)."""
    cls = method_class(name)
    accepted = list(inspect.signature(cls).parameters)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise SimexplainError(
            f"method {name!r} has no option {', '.join(map(repr, unknown))}; its options: "
            f"{', '.join(accepted) or 'none'}")
    return cls(**options)


def applicable_methods(explainer: Explainer, names: Iterable[str], a: ImageInput | PreparedPair,
                       b: ImageInput | None = None) -> list[str]:
    """The methods among `names` that can explain the model of `explainer`, decided on one
    pair of its inputs (the attention methods need a class-token transformer)."""
    pair = PreparedPair.of(explainer, a, b)
    return [name for name in names if method_class(name)().applies(explainer, pair)]
