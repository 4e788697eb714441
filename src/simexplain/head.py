"""Head analysis: per-position contributions u_p with sum_p u_p = e, without a backward pass.

The model is split at the explained layer into a trunk (up to the layer, output A) and a head
(everything after it). We multiply A by a mask m of ones (one entry per position) inside the
model's own forward pass and push forward-mode tangents through the head:

* tangent of m = one-hot at position p     ->  J A_p     (the linear part carried by p)
* tangent of every additive offset of the head (Linear/Conv biases, BatchNorm shifts and running
  means, LayerNorm shifts) = its own value, tangent of m = 0  ->  c (the head's constant term)

so u_p = J A_p + c / P. For heads that are positively homogeneous once per-sample scalars are
frozen (pooling: average, max, GeM; linear layers; batch norm in eval; ReLU/LeakyReLU gates;
dropout in eval; flatten), Euler's theorem gives e = J A + c exactly. The per-sample scalars
(L2 normalisation, the std of LayerNorm, any norm/sqrt/std in the head) are frozen by
`FreezeScales`: their tangents are dropped, which is what METHOD.md asks for ("freeze, don't
differentiate"). For any other head (GELU, softmax, sigmoid) the same computation is a
first-order linearisation and the residual |sum_p u_p - e| is reported.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.func import functional_call, jvp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

# Ops whose outputs act as per-sample scalars in a head: their value is kept, their tangent
# dropped ("frozen"). They appear as the denominators of normalisations.
_SCALE_OPS = {
    torch.norm, torch.Tensor.norm, torch.linalg.norm, torch.linalg.vector_norm,
    torch.sqrt, torch.Tensor.sqrt, torch.rsqrt, torch.Tensor.rsqrt,
    torch.std, torch.Tensor.std, torch.var, torch.Tensor.var,
}
_NORMALIZE_SIG = inspect.signature(F.normalize)
_BATCH_NORM_SIG = inspect.signature(F.batch_norm)
_LAYER_NORM_SIG = inspect.signature(F.layer_norm)


class RawEmbeddings(TorchFunctionMode):
    """Within the block, F.normalize is the identity: the model returns its raw
    (pre-normalisation) embedding, which Grad-CAM's "raw" variant needs."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.normalize:
            return _NORMALIZE_SIG.bind(*args, **kwargs).arguments["input"]
        return func(*args, **kwargs)


class FreezeScales(TorchFunctionMode):
    """Run a forward pass with per-sample scalars frozen (values unchanged, tangents dropped)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.normalize:
            bound = _NORMALIZE_SIG.bind(*args, **kwargs)
            bound.apply_defaults()
            a = bound.arguments
            denom = a["input"].norm(a["p"], a["dim"], keepdim=True).clamp_min(a["eps"])
            return a["input"] / denom.detach()
        if func is F.batch_norm:
            bound = _BATCH_NORM_SIG.bind(*args, **kwargs)
            bound.apply_defaults()
            if not bound.arguments["training"]:
                return _batch_norm_eval(**bound.arguments)
        if func is F.layer_norm:
            bound = _LAYER_NORM_SIG.bind(*args, **kwargs)
            bound.apply_defaults()
            return _layer_norm_frozen(**bound.arguments)
        out = func(*args, **kwargs)
        if func in _SCALE_OPS and isinstance(out, torch.Tensor):
            return out.detach()
        return out


def _batch_norm_eval(input, running_mean, running_var, weight, bias, eps, **_):
    # Written out so that running_mean and bias can carry tangents (torch's kernel refuses).
    shape = (1, -1) + (1,) * (input.dim() - 2)
    scale = (running_var + eps).rsqrt()
    if weight is not None:
        scale = scale * weight
    out = (input - running_mean.view(shape)) * scale.view(shape)
    return out if bias is None else out + bias.view(shape)


def _layer_norm_frozen(input, normalized_shape, weight, bias, eps):
    dims = tuple(range(-len(normalized_shape), 0))
    centred = input - input.mean(dim=dims, keepdim=True)
    std = (input.var(dim=dims, keepdim=True, unbiased=False) + eps).sqrt().detach()
    out = centred / std
    if weight is not None:
        out = out * weight
    return out if bias is None else out + bias


@dataclass
class Contributions:
    """Per-position contributions of one batch of images to their embeddings."""

    embedding: torch.Tensor  # (B, D), the model's own output
    positions: torch.Tensor  # (B, P, D), u_p including the constant term c / P
    grid: tuple[int, int]  # (H, W) of the feature grid, H * W = P
    constant: torch.Tensor  # (B, D), c

    @property
    def residual(self) -> torch.Tensor:
        """(B,) |sum_p u_p - e|, relative to |e|: 0 up to float error for exact heads."""
        total = self.positions.sum(1)
        return (total - self.embedding).norm(dim=1) / self.embedding.norm(dim=1).clamp_min(1e-12)


def head_offsets(model: torch.nn.Module, head_modules: list[str]) -> dict[str, torch.Tensor]:
    """The additive offsets (biases, BatchNorm running means) of the head's modules."""
    offsets: dict[str, torch.Tensor] = {}
    modules = dict(model.named_modules())
    for module_name in head_modules:
        module = modules[module_name]
        prefix = f"{module_name}." if module_name else ""
        for name, param in module.named_parameters(recurse=False):
            if name.endswith("bias") and param is not None:
                offsets[prefix + name] = param.detach()
        for name, buf in module.named_buffers(recurse=False):
            if name == "running_mean" and buf is not None:
                offsets[prefix + name] = buf.detach()
    return offsets


def mask_shape(feature_shape: torch.Size) -> tuple[int, ...]:
    """Shape of the position mask broadcast against the layer output (4-D or token 3-D)."""
    if len(feature_shape) == 4:  # (B, C, H, W)
        return (1, 1) + tuple(feature_shape[2:])
    return (1, feature_shape[1], 1)  # (B, N, C) tokens


def compute_contributions(
    model: torch.nn.Module,
    layer: torch.nn.Module,
    x: torch.Tensor,
    feature_shape: torch.Size,
    offsets: dict[str, torch.Tensor],
    grid: tuple[int, int],
    prefix_tokens: int = 0,
    chunk_size: int | None = None,
) -> Contributions:
    """Embeddings and per-position contributions of the batch `x` in one forward pass.

    `feature_shape` is the layer's output shape for this input size (from a probe pass).
    Prefix tokens of a transformer (class token) carry no place in the image: their
    contributions join the constant term.
    """
    shape = mask_shape(feature_shape)
    n_pos = int(torch.tensor(shape).prod())
    device, dtype = x.device, x.dtype
    ones = torch.ones(shape, device=device, dtype=dtype)

    def forward(mask: torch.Tensor, offset_values: dict[str, torch.Tensor]) -> torch.Tensor:
        handle = layer.register_forward_hook(lambda _m, _i, out: out * mask)
        try:
            with FreezeScales():
                return functional_call(model, offset_values, (x,), strict=False)
        finally:
            handle.remove()

    def tangent(mask_t: torch.Tensor, offset_t: dict[str, torch.Tensor]):
        return jvp(forward, (ones, offsets), (mask_t, offset_t))

    # One tangent per position, plus one for the constant term.
    eye = torch.eye(n_pos, device=device, dtype=dtype).view((n_pos,) + shape)
    mask_tangents = torch.cat([eye, torch.zeros((1,) + shape, device=device, dtype=dtype)])
    offset_tangents = {
        k: torch.cat([torch.zeros((n_pos,) + v.shape, device=device, dtype=v.dtype), v[None]])
        for k, v in offsets.items()}
    # Fused attention kernels have no forward-mode derivative: use the plain one.
    with torch.no_grad(), sdpa_kernel([SDPBackend.MATH]):
        primal, tangents = vmap(tangent, chunk_size=chunk_size)(mask_tangents, offset_tangents)
    embedding = primal[0]  # (B, D): the primal is the same in every row
    linear = tangents[:n_pos].transpose(0, 1)  # (B, N, D)
    constant = tangents[n_pos]  # (B, D)
    if prefix_tokens:
        constant = constant + linear[:, :prefix_tokens].sum(1)
        linear = linear[:, prefix_tokens:]
    n_grid = linear.shape[1]
    positions = linear + constant[:, None, :] / n_grid
    return Contributions(embedding=embedding, positions=positions, grid=grid, constant=constant)
