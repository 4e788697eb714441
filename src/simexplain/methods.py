"""Saliency methods with one uniform call: `Method().attribute(explainer, a, b) -> (map_a, map_b)`.

Every method returns maps over both images' feature grids, so they can be compared cell by cell.
The decomposition and its relative map need no backward pass; the Grad-CAM family are the
paper's baselines; occlusion is a black-box baseline; random is the floor every evaluation
compares against.
"""

from __future__ import annotations

import torch

from .errors import SimexplainError
from .images import ImageInput

Maps = tuple[torch.Tensor, torch.Tensor]  # (Ha, Wa), (Hb, Wb)


class Method:
    """Base class: subclasses implement `attribute`."""

    name = ""

    def attribute(self, explainer, a: ImageInput, b: ImageInput) -> Maps:
        raise NotImplementedError


class Decomposition(Method):
    """Signed overall maps of the exact decomposition (METHOD.md)."""

    name = "decomposition"

    def attribute(self, explainer, a, b) -> Maps:
        result = explainer.explain(a, b)
        return result.overall_a.float(), result.overall_b.float()


class Relative(Method):
    """Signed relative maps: each position's contribution minus its share of the score
    (METHOD.md, "Relative maps"; PairExplanation.relative_a/b). Exact, no backward pass; for
    the cosine it is Grad-CAM before its ReLU under a GAP head."""

    name = "relative"

    def attribute(self, explainer, a, b) -> Maps:
        result = explainer.explain(a, b)
        return result.relative_a.float(), result.relative_b.float()


class _GradientMethod(Method):
    """Shared part: the similarity of both images as a function of both feature maps."""

    raw = False  # similarity on raw (pre-normalisation) embeddings

    def gradients(self, explainer, a, b):
        x_a, _ = explainer.prepare(a, "a")
        x_b, _ = explainer.prepare(b, "b")
        feats_a, e_a = explainer.stream_a.features_and_embedding(x_a, raw=self.raw)
        feats_b, e_b = explainer.stream_b.features_and_embedding(x_b, raw=self.raw)
        similarity = explainer.similarity
        if self.raw:
            similarity = similarity.without_normalisation()
        s = similarity.closeness(similarity.score(e_a[0], e_b[0]))
        grad_a, grad_b = torch.autograd.grad(s, [feats_a, feats_b])
        return (feats_a.detach(), grad_a), (feats_b.detach(), grad_b)

    def attribute(self, explainer, a, b) -> Maps:
        (f_a, g_a), (f_b, g_b) = self.gradients(explainer, a, b)
        return self.combine(f_a, g_a), self.combine(f_b, g_b)

    def combine(self, feats: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """Feature map and gradient (1, C, H, W) or (1, N, C) -> map (H, W)."""
        raise NotImplementedError


def _channels_last_grid(t: torch.Tensor) -> torch.Tensor:
    """(1, C, H, W) -> (H, W, C); (1, N, C) tokens -> (side, side, C) dropping prefix tokens."""
    if t.dim() == 4:
        return t[0].permute(1, 2, 0)
    tokens = t.shape[1]
    side = int(tokens ** 0.5)
    return t[0, tokens - side * side:].reshape(side, side, -1)


class GradCAM(_GradientMethod):
    """alpha_k = mean_p ds/dA_pk; map = ReLU(sum_k alpha_k A_pk), s on the model's embeddings."""

    name = "gradcam"

    def combine(self, feats, grads):
        f, g = _channels_last_grid(feats), _channels_last_grid(grads)
        alpha = g.mean(dim=(0, 1))
        return torch.relu((f * alpha).sum(-1))


class GradCAMRaw(GradCAM):
    """Grad-CAM on raw (pre-L2-normalisation) embeddings, dot product."""

    name = "gradcam-raw"
    raw = True


class RGradCAM(_GradientMethod):
    """Rectified Grad-CAM, no averaging: map_p = ReLU(sum_k ds/dA_pk A_pk)."""

    name = "rgradcam"

    def combine(self, feats, grads):
        f, g = _channels_last_grid(feats), _channels_last_grid(grads)
        return torch.relu((f * g).sum(-1))


class Occlusion(Method):
    """Black box: map[cell] = s - s(image with that cell's pixels filled), per feature cell.

    `window` is the occluder's side in feature cells (centred on the cell); fill is 0 in the
    model's input space (the dataset mean for normalised inputs).
    """

    name = "occlusion"

    def __init__(self, window: int = 1, batch_size: int = 32):
        self.window = window
        self.batch_size = batch_size

    def attribute(self, explainer, a, b) -> Maps:
        return self.side_map(explainer, a, b, "a"), self.side_map(explainer, a, b, "b")

    def side_map(self, explainer, a, b, side: str) -> torch.Tensor:
        """The occlusion map of one side only (half the forward passes of `attribute`)."""
        x_a, _ = explainer.prepare(a, "a")
        x_b, _ = explainer.prepare(b, "b")
        e_a = explainer.stream_a.embed(x_a)[0]
        e_b = explainer.stream_b.embed(x_b)[0]
        sim = explainer.similarity
        base = sim.score(e_a, e_b)
        stream, x, other = ((explainer.stream_a, x_a, e_b) if side == "a"
                            else (explainer.stream_b, x_b, e_a))
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
        scores = torch.cat([sim.score(stream.embed(chunk), other)
                            for chunk in occluded.split(self.batch_size)])
        return sim.closeness(base - scores).reshape(rows, cols)  # explain closeness


class RandomMap(Method):
    """Uniform random maps: the floor that evaluations compare against. Seeded."""

    name = "random"

    def __init__(self, seed: int = 0):
        self.generator = torch.Generator().manual_seed(seed)

    def attribute(self, explainer, a, b) -> Maps:
        x_a, _ = explainer.prepare(a, "a")
        x_b, _ = explainer.prepare(b, "b")
        grid_a, _ = explainer.stream_a.grid(x_a)
        grid_b, _ = explainer.stream_b.grid(x_b)
        return (torch.rand(grid_a, generator=self.generator),
                torch.rand(grid_b, generator=self.generator))


METHODS: dict[str, type[Method]] = {
    cls.name: cls for cls in (Decomposition, Relative, GradCAM, GradCAMRaw, RGradCAM, Occlusion,
                              RandomMap)}


def get_method(name: str, **options) -> Method:
    """A method by name, e.g. get_method("occlusion", window=2)."""
    if name not in METHODS:
        raise SimexplainError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name](**options)
