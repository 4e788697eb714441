"""Per-sample scalars frozen: a head's normalisations keep their value from the real forward pass
and carry no derivative (METHOD.md, "freeze, don't differentiate"); and raw embeddings (the
model's output before its final F.normalize) for Grad-CAM's "raw" variant."""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
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
            # detached before the norm: no derivative of the norm is ever computed (cheaper
            # under forward-mode transforms than computing one and dropping it)
            denom = a["input"].detach().norm(a["p"], a["dim"], keepdim=True).clamp_min(a["eps"])
            return a["input"] / denom
        if func is F.batch_norm:
            bound = _BATCH_NORM_SIG.bind(*args, **kwargs)
            bound.apply_defaults()
            if not bound.arguments["training"]:
                return _batch_norm_eval(**bound.arguments)
        if func is F.layer_norm:
            bound = _LAYER_NORM_SIG.bind(*args, **kwargs)
            bound.apply_defaults()
            return _layer_norm_frozen(**bound.arguments)
        if func in _SCALE_OPS:  # value kept, derivative never computed
            args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
            out = func(*args, **kwargs)
            return out.detach() if isinstance(out, torch.Tensor) else out
        return func(*args, **kwargs)


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
